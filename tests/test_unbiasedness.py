"""Unbiasedness (and measurable bias) of the derivative estimators against exact oracles.

Many seeded trajectories from a small random MDP; per-trajectory derivative estimates (``jax.vmap`` over
batches of one) give the mean and its standard error (s.e.) entry by entry. "Unbiased" means every entry
is within Z = 5 s.e. of the truth; "biased" means some entry is more than 10 s.e. away. Each test also
checks that its s.e. is small compared with the truth, so it cannot pass vacuously. Seeded: no flakes.

**The target.** Trajectories have T steps and are bootstrapped with a critic c (a fixed table, not a
function of θ), so every estimator estimates the derivatives of the truncated, bootstrapped value

    J_T(θ) = p_0ᵀ [ Σ_{t<T} (γ P^π)^t r^π + (γ P^π)^T c ],

not of V^π (bootstrapping with c = V^{π_θ} fixes the value at θ but not its derivatives, because the
critic table is a constant). :func:`truncated_value` computes J_T exactly, differentiable through π_θ;
:func:`test_truncated_oracle_is_the_exact_oracle_for_long_horizons` ties it to :mod:`metagrad.exact`
(for T → ∞, and in value for c = V^π at any T). The critic is V^π plus noise, different in every state.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import estimators, exact, mdp as mdp_lib
from metagrad.rollout import sample, tabular_softmax_policy

S, A, T, GAMMA = 3, 2, 4, 0.7
N = 20_000
Z_UNBIASED, Z_BIASED = 5.0, 10.0


def truncated_value(mdp, logits, critic, horizon):
    """J_T(θ) = p_0ᵀ [Σ_{t<T} (γP^π)^t r^π + (γP^π)^T c] by T matrix-vector products (backwards)."""
    p_pi, r_pi = mdp_lib.policy_transitions(mdp, jax.nn.softmax(logits, axis=-1))
    v = jax.lax.fori_loop(0, horizon, lambda _, v: r_pi + mdp.gamma * p_pi @ v, critic)
    return mdp.initial @ v


@functools.partial(jax.jit, static_argnums=(3, 4))
def truncated_derivatives(mdp, logits, critic, horizon, order):
    fn = functools.partial(truncated_value, mdp, critic=critic, horizon=horizon)
    out, d = [], jax.grad(fn)
    for _ in range(order):
        out.append(d(logits))
        d = jax.jacfwd(d)
    return out


@pytest.fixture(scope="module")
def setting():
    mdp = mdp_lib.random_mdp(jax.random.PRNGKey(10), S, A, gamma=GAMMA, dirichlet=1.0)
    logits = 0.7 * jax.random.normal(jax.random.PRNGKey(11), (S, A))
    behaviour = 0.7 * jax.random.normal(jax.random.PRNGKey(12), (S, A))
    v_pi, _ = mdp_lib.policy_evaluation(mdp, jax.nn.softmax(logits, axis=-1))
    critic = v_pi + jnp.array([1.5, -1.5, 1.0])  # a noisy critic that differs per state
    on = sample(jax.random.PRNGKey(13), mdp, tabular_softmax_policy, logits, N, T)
    off = sample(jax.random.PRNGKey(14), mdp, tabular_softmax_policy, behaviour, N, T)
    truth = truncated_derivatives(mdp, logits, critic, T, 3)
    return dict(mdp=mdp, logits=logits, behaviour=behaviour, critic=critic, on=on, off=off, truth=truth)


_cache = {}


def per_trajectory(setting, name, order, off_policy=False, **options):
    key = (name, order, off_policy, tuple(sorted(options.items())))
    if key not in _cache:
        behaviour = setting["behaviour"] if off_policy else None

        def one(traj):
            single = jax.tree_util.tree_map(lambda x: x[None], traj)
            return estimators.tabular_derivatives(
                name, setting["logits"], single, setting["critic"], discount=GAMMA,
                behaviour_logits=behaviour, order=order, **options,
            )

        _cache[key] = jax.jit(jax.vmap(one))(setting["off" if off_policy else "on"])
    return _cache[key]


def z_scores(samples, truth):
    """|mean − truth| / s.e. per entry (entries with zero s.e. must match exactly), and max s.e./max|truth|."""
    samples, truth = np.asarray(samples), np.asarray(truth)
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    err = np.abs(mean - truth)
    z = np.where(se > 0, err / np.where(se > 0, se, 1.0), np.where(err > 1e-10, np.inf, 0.0))
    return z, float(se.max() / np.abs(truth).max())


def assert_unbiased(samples, truth, label, informative=0.1):
    z, rel_se = z_scores(samples, truth)
    assert rel_se < informative, f"{label}: s.e. too large for an informative test ({rel_se:.3f} of the truth)"
    assert z.max() < Z_UNBIASED, f"{label}: an entry is {z.max():.1f} s.e. from the exact value"


def assert_biased(samples, truth, label, informative=0.1):
    z, rel_se = z_scores(samples, truth)
    assert rel_se < informative, f"{label}: s.e. too large for an informative test ({rel_se:.3f} of the truth)"
    assert z.max() > Z_BIASED, f"{label}: expected a bias of many s.e.; the largest is {z.max():.1f} s.e."


# ------------------------------------------------------------------------------------------ oracles
def test_truncated_oracle_is_the_exact_oracle_for_long_horizons(setting):
    mdp, logits, critic = setting["mdp"], setting["logits"], setting["critic"]

    @jax.jit
    def both(logits):
        long = truncated_derivatives(mdp, logits, critic, 150, 2)  # γ^150 ≈ 1e-23
        return long, (exact.gradient(mdp, logits), exact.hessian(mdp, logits))

    long, oracle = both(logits)
    for k in range(2):
        np.testing.assert_allclose(long[k], oracle[k], rtol=1e-9, atol=1e-12)
    v_pi, _ = mdp_lib.policy_evaluation(mdp, jax.nn.softmax(logits, axis=-1))
    np.testing.assert_allclose(truncated_value(mdp, logits, v_pi, T), exact.value(mdp, logits), rtol=1e-12)
    # ... while at T = 4 the derivatives differ: the target really is J_T, not V^π.
    assert np.max(np.abs(np.asarray(setting["truth"][0] - oracle[0]))) > 1e-3


# ------------------------------------------------------------------------------------------ on-policy
@pytest.mark.parametrize("name", ["is", "dr", "taypo2"])
def test_on_policy_hessians_are_unbiased(setting, name):
    out = per_trajectory(setting, name, 3 if name in ("is", "taypo2") else 2)
    assert_unbiased(out[0], setting["truth"][0], f"{name} gradient")
    assert_unbiased(out[1], setting["truth"][1], f"{name} Hessian")


@pytest.mark.parametrize("name", ["taypo1", "lvc", "maml"])
def test_first_order_and_maml_hessians_are_biased_on_policy(setting, name):
    out = per_trajectory(setting, name, 2)
    assert_unbiased(out[0], setting["truth"][0], f"{name} gradient")  # the gradient is fine ...
    assert_biased(out[1], setting["truth"][1], f"{name} Hessian")  # ... the Hessian is not


def test_third_derivatives_on_policy(setting):
    """DiCE/IS and TayPO-3 have unbiased third derivatives; TayPO-2's is biased (Eq. 10: orders ≤ K)."""
    truth = setting["truth"][2]  # third derivatives are noisier: an s.e. up to 25 % of the largest entry
    assert_unbiased(per_trajectory(setting, "is", 3)[2], truth, "IS/DiCE third derivative", informative=0.25)
    assert_unbiased(per_trajectory(setting, "taypo3", 3)[2], truth, "TayPO-3 third derivative", informative=0.25)
    assert_biased(per_trajectory(setting, "taypo2", 3)[2], truth, "TayPO-2 third derivative", informative=0.25)


# ----------------------------------------------------------------------------------------- off-policy
@pytest.mark.parametrize("name", ["is", "dr"])
def test_off_policy_gradients_are_unbiased(setting, name):
    out = per_trajectory(setting, name, 1, off_policy=True)
    # importance weights make off-policy estimates noisier: an s.e. up to 20 % of the largest entry
    assert_unbiased(out[0], setting["truth"][0], f"off-policy {name} gradient", informative=0.2)


# ------------------------------------------------------------------- pitfall: a time-indexed critic
def test_time_indexed_critic_is_biased_state_indexed_is_not(setting):
    """The authors' toy code indexed the state-value critic by time offset (JAX clamps t ≥ S silently).

    Our tabular path indexes by state (``critic[observations]``) and is unbiased (test above). The same
    DR surrogate fed ``critic[min(t, S − 1)]`` instead estimates a different quantity: measurably biased.
    """
    batch, critic = setting["on"], setting["critic"]
    time_indexed = critic[jnp.minimum(jnp.arange(T + 1), S - 1)]  # what a clamped critic[t] returns
    values = jnp.broadcast_to(time_indexed, (N, T + 1))

    def one(traj, v):
        single = jax.tree_util.tree_map(lambda x: x[None], traj)
        log_prob = lambda p, x, a: jax.nn.log_softmax(p, axis=-1)[x, a]  # noqa: E731
        return jax.grad(estimators.surrogate, argnums=2)("dr", log_prob, setting["logits"], single, v[None], GAMMA)

    wrong = jax.jit(jax.vmap(one))(batch, values)
    assert_biased(wrong, setting["truth"][0], "DR gradient with a time-indexed critic")
    right = jax.jit(jax.vmap(one))(batch, critic[batch.observations])
    assert_unbiased(right, setting["truth"][0], "DR gradient with a state-indexed critic")
    np.testing.assert_allclose(right.mean(0), per_trajectory(setting, "dr", 2)[0].mean(0), rtol=1e-10, atol=1e-12)
