"""The identities of Tang et al. (2021), paper-notes §4, per trajectory, to float64 precision.

Derivatives are in the tabular softmax logits θ [S, A], one trajectory at a time (each trajectory is a
batch of one for :func:`metagrad.estimators.tabular_derivatives`, vmapped over the sampled batch), with a
critic whose entries differ per state, on trajectories sampled by :func:`metagrad.rollout.sample` from a
random MDP. The closed-form Hessians are written as naive Python loops here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import estimators, mdp as mdp_lib
from metagrad.rollout import sample, tabular_softmax_policy

S, A, N, T, GAMMA = 4, 3, 6, 6, 0.8
RTOL, ATOL = 1e-9, 1e-11


@pytest.fixture(scope="module")
def setting():
    mdp = mdp_lib.random_mdp(jax.random.PRNGKey(0), S, A, gamma=GAMMA, dirichlet=1.0, start_state=None)
    logits = jax.random.normal(jax.random.PRNGKey(1), (S, A))
    behaviour = jax.random.normal(jax.random.PRNGKey(2), (S, A))
    critic = jnp.array([1.5, -0.7, 3.0, 0.2])  # differs per state
    on = sample(jax.random.PRNGKey(3), mdp, tabular_softmax_policy, logits, N, T)
    off = sample(jax.random.PRNGKey(4), mdp, tabular_softmax_policy, behaviour, N, T)
    return dict(logits=logits, behaviour=behaviour, critic=critic, on=on, off=off)


_cache = {}


def ell_derivatives(setting, name, order, off_policy=False, **options):
    """Derivatives of orders 1..order of each trajectory's objective in its log-probabilities ℓ [T].

    θ enters every estimator only through ℓ, so equal ℓ-derivatives up to order k give equal
    θ-derivatives up to order k (chain rule); comparing in ℓ (T = 6 inputs) keeps this file fast.
    """
    key = ("ell", name, order, off_policy, tuple(sorted(options.items())))
    if key not in _cache:
        batch = setting["off" if off_policy else "on"]
        log_pi = jax.nn.log_softmax(setting["logits"])[batch.observations[:, :-1], batch.actions]
        source = setting["behaviour"] if off_policy else setting["logits"]
        log_mu = jax.nn.log_softmax(source)[batch.observations[:, :-1], batch.actions]
        values = setting["critic"][batch.observations]

        def fn(lp, lm, r, v):
            return estimators.trajectory_objective(name, lp, lm, r, v, GAMMA, **options)

        derivs = [jax.grad(fn)]
        for _ in range(order - 1):
            derivs.append(jax.jacfwd(derivs[-1]))
        all_orders = jax.jit(jax.vmap(lambda *args: tuple(d(*args) for d in derivs)))
        _cache[key] = all_orders(log_pi, log_mu, batch.rewards, values)
    return _cache[key]


def per_trajectory(setting, name, order=2, **options):
    """θ-derivatives (tabular logits) of orders 1..order of each on-policy trajectory's surrogate."""
    key = ("theta", name, order, tuple(sorted(options.items())))
    if key not in _cache:

        def one(traj):
            single = jax.tree_util.tree_map(lambda x: x[None], traj)
            return estimators.tabular_derivatives(
                name, setting["logits"], single, setting["critic"], discount=GAMMA, order=order, **options
            )

        _cache[key] = jax.jit(jax.vmap(one))(setting["on"])
    return _cache[key]


def assert_same(a, b, orders=(1, 2, 3)):
    for k in orders:
        np.testing.assert_allclose(a[k - 1], b[k - 1], rtol=RTOL, atol=ATOL, err_msg=f"order {k}")


def assert_differ(a, b, order, at_least=1e-3):
    gap = float(np.max(np.abs(np.asarray(a[order - 1]) - np.asarray(b[order - 1]))))
    assert gap > at_least, f"order-{order} derivatives were expected to differ; max gap {gap:.2e}"


# ------------------------------------------------------------------------------- Table 1 identities
def test_importance_sampling_is_dice_all_orders(setting):
    assert_same(ell_derivatives(setting, "is", 3), ell_derivatives(setting, "dice", 3))


def test_doubly_robust_is_loaded_dice_with_lambda_one_and_dice_with_baseline(setting):
    dr = ell_derivatives(setting, "dr", 3)
    assert_same(dr, ell_derivatives(setting, "loaded_dice", 3, lam=1.0, tau=1.0))
    assert_same(dr, ell_derivatives(setting, "dice", 3, baseline=True))
    assert_differ(dr, ell_derivatives(setting, "dice", 3), 2)  # the baseline matters per trajectory


def test_taypo1_is_loaded_dice_with_lambda_zero_is_lvc(setting):
    taypo1 = ell_derivatives(setting, "taypo1", 2)
    assert_same(taypo1, ell_derivatives(setting, "loaded_dice", 2, lam=0.0), orders=(1, 2))
    assert_same(taypo1, ell_derivatives(setting, "lvc", 2), orders=(1, 2))


def test_taypo2_matches_dr_to_second_order_on_policy_only(setting):
    dr, taypo2 = ell_derivatives(setting, "dr", 3), ell_derivatives(setting, "taypo2", 3)
    assert_same(dr, taypo2, orders=(1, 2))
    assert_differ(dr, taypo2, 3)  # third order: TayPO-2 lacks the triple products
    assert_same(dr, ell_derivatives(setting, "taypo3", 3))  # TayPO-3 agrees up to order 3
    dr_off, taypo2_off = ell_derivatives(setting, "dr", 2, True), ell_derivatives(setting, "taypo2", 2, True)
    assert_differ(dr_off, taypo2_off, 1)
    assert_differ(dr_off, taypo2_off, 2)


def test_taypo_of_order_horizon_is_dr_off_policy(setting):
    dr_off = ell_derivatives(setting, "dr", 2, True)
    assert_same(ell_derivatives(setting, f"taypo{T}", 2, True), dr_off, orders=(1, 2))
    assert_differ(ell_derivatives(setting, f"taypo{T - 1}", 2, True), dr_off, 1, 1e-8)


def test_vtrace_tie_convention_gives_dr_derivatives_on_policy(setting):
    assert_same(ell_derivatives(setting, "vtrace", 3), ell_derivatives(setting, "dr", 3))


def test_dice_with_baseline_is_dr_off_policy(setting):
    assert_same(ell_derivatives(setting, "dice", 2, True, baseline=True), ell_derivatives(setting, "dr", 2, True), (1, 2))


# ------------------------------------------------------------------------ closed forms (naive loops)
def score_terms(setting, n):
    """For trajectory n: Γ_t Â_t, ∇ℓ_t [S, A] and ∇²ℓ_t [S, A, S, A] for t < T, by naive loops."""
    batch, critic = setting["on"], np.asarray(setting["critic"])
    pi = np.asarray(jax.nn.softmax(setting["logits"], axis=-1))
    x, a, r = (np.asarray(batch.observations[n]), np.asarray(batch.actions[n]), np.asarray(batch.rewards[n]))
    g = critic[x[T]]  # bootstrap with the critic at the last *state*
    weights = np.zeros(T)
    for t in reversed(range(T)):
        g = r[t] + GAMMA * g
        weights[t] = GAMMA**t * (g - critic[x[t]])
    grads, hessians = [], []
    for t in range(T):
        d = np.zeros((S, A))
        d[x[t]] = -pi[x[t]]
        d[x[t], a[t]] += 1.0
        h = np.zeros((S, A, S, A))
        h[x[t], :, x[t], :] = -(np.diag(pi[x[t]]) - np.outer(pi[x[t]], pi[x[t]]))
        grads.append(d)
        hessians.append(h)
    return weights, grads, hessians


def closed_form(setting, n, kind):
    weights, grads, hessians = score_terms(setting, n)
    grad, hess = np.zeros((S, A)), np.zeros((S, A, S, A))
    before = np.zeros((S, A))  # S_{<t} = Σ_{s<t} ∇ℓ_s
    for t in range(T):
        g_t = grads[t]
        term = hessians[t].copy()
        if kind in ("dr", "lvc"):
            term += np.einsum("ij,kl->ijkl", g_t, g_t)
        if kind == "dr":
            term += np.einsum("ij,kl->ijkl", g_t, before) + np.einsum("ij,kl->ijkl", before, g_t)
        hess += weights[t] * term
        grad += weights[t] * g_t
        before = before + g_t
    return grad, hess


@pytest.mark.parametrize(
    "kind, names",
    [("dr", ["dr"]), ("lvc", ["taypo1"]), ("maml", ["maml"])],
)
def test_closed_form_hessians(setting, kind, names):
    expected = [closed_form(setting, n, kind) for n in range(N)]
    for name in names:
        got = per_trajectory(setting, name, 2)
        for n in range(N):
            np.testing.assert_allclose(got[0][n], expected[n][0], rtol=RTOL, atol=ATOL, err_msg=f"{name} gradient")
            np.testing.assert_allclose(got[1][n], expected[n][1], rtol=RTOL, atol=ATOL, err_msg=f"{name} Hessian")
    # The three closed forms really are different on these trajectories (no vacuous pass).
    for other in {"dr", "lvc", "maml"} - {kind}:
        gap = max(np.max(np.abs(closed_form(setting, n, other)[1] - expected[n][1])) for n in range(N))
        assert gap > 1e-3, (kind, other, gap)


def test_all_unbiased_gradient_estimators_share_the_policy_gradient(setting):
    """On-policy every gradient is Σ_t Γ_t Â_t ∇ℓ_t, i.e. ∂f/∂ℓ_t = Γ_t Â_t for every estimator f
    (IS and DiCE without baseline: Γ_t G_t, the same with a zero critic except the bootstrap V(x_T))."""
    weights = np.stack([score_terms(setting, n)[0] for n in range(N)])  # Γ_t Â_t
    for name in ["dr", "vtrace", "taypo1", "taypo2", "taypo3", "maml", "fomaml", "loaded_dice", "lvc"]:
        np.testing.assert_allclose(ell_derivatives(setting, name, 1)[0], weights, rtol=RTOL, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(ell_derivatives(setting, "dice", 1, baseline=True)[0], weights, rtol=RTOL, atol=ATOL)
    batch, critic = setting["on"], np.asarray(setting["critic"])
    baseline = GAMMA ** np.arange(T) * critic[np.asarray(batch.observations[:, :-1])]  # Γ_t V(x_t)
    for name in ["is", "dice"]:
        got = ell_derivatives(setting, name, 1)[0]
        np.testing.assert_allclose(got, weights + baseline, rtol=RTOL, atol=ATOL, err_msg=name)
    # and in θ, from the tabular pipeline: Σ_t Γ_t Â_t ∇ℓ_t (naive loop)
    expected = np.stack([closed_form(setting, n, "dr")[0] for n in range(N)])
    np.testing.assert_allclose(per_trajectory(setting, "dr", 2)[0], expected, rtol=RTOL, atol=ATOL)


def test_fomaml_has_no_higher_derivatives(setting):
    out = per_trajectory(setting, "fomaml", 2)
    assert np.all(np.asarray(out[1]) == 0)
    np.testing.assert_allclose(out[0], per_trajectory(setting, "maml", 2)[0], rtol=RTOL, atol=ATOL)
    assert np.max(np.abs(np.asarray(out[0]))) > 1e-3
