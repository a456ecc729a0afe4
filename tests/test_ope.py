"""Tests of metagrad.ope against naive loops written here (readable references for students).

Every estimator is checked on random trajectories, with per-step discounts that terminate the trajectory,
jitted and un-jitted; the tie convention of V-trace, the exact TayPO-K recursion (against an explicit sum
over index tuples) and the input checks are tested too.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import ope

T = 5


def random_inputs(seed, horizon=T, scale=0.4):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(scale * rng.normal(size=horizon)),  # log-ratios
        jnp.asarray(rng.uniform(size=horizon)),  # rewards
        jnp.asarray(rng.normal(size=horizon + 1)),  # critic at the visited states
    )


# A scalar γ and per-step discounts with termination at step 2 (γ_t = 0 for t ≥ 2).
DISCOUNTS = [0.8, np.array([0.8, 0.7, 0.0, 0.0, 0.0])]


def as_steps(discounts, horizon=T):
    return np.broadcast_to(np.asarray(discounts, dtype=float), (horizon,))


# ---------------------------------------------------------------------------------------- naive loops
def naive_is(lr, r, v, discounts):
    g = as_steps(discounts, len(r))
    total, gamma_t, prod = 0.0, 1.0, 1.0
    for t in range(len(r)):
        prod *= np.exp(lr[t])
        total += gamma_t * prod * r[t]
        gamma_t *= g[t]
    return total + gamma_t * prod * v[-1]


def naive_dr(lr, r, v, discounts):
    g = as_steps(discounts, len(r))
    est = v[-1]
    for t in reversed(range(len(r))):
        est = v[t] + np.exp(lr[t]) * (r[t] + g[t] * est - v[t])
    return est


def naive_dr_q(lr, r, actions, q, probs, discounts):
    g = as_steps(discounts, len(r))
    est = np.dot(probs[-1], q[-1])
    for t in reversed(range(len(r))):
        est = np.dot(probs[t], q[t]) + np.exp(lr[t]) * (r[t] + g[t] * est - q[t, actions[t]])
    return est


def naive_vtrace(lr, r, v, discounts, rho_bar, c_bar):
    """Espeholt et al.'s closed form: v_0 = V(x_0) + Σ_t (Π_{i<t} γ_i c_i) ρ̄_t δ_t."""
    g = as_steps(discounts, len(r))
    rho = np.exp(lr)
    total, trace = v[0], 1.0
    for t in range(len(r)):
        delta = r[t] + g[t] * v[t + 1] - v[t]
        total += trace * min(rho[t], rho_bar) * delta
        trace *= g[t] * min(rho[t], c_bar)
    return total


def naive_taylor(lr, r, v, discounts, order):
    """G_0 + Σ_{k=1..K} Σ_{t_1<…<t_k} Γ_{t_k} (Π_i d_{t_i}) Â_{t_k}, by enumerating the index tuples."""
    g = as_steps(discounts, len(r))
    horizon = len(r)
    returns = np.zeros(horizon + 1)
    returns[horizon] = v[-1]
    for t in reversed(range(horizon)):
        returns[t] = r[t] + g[t] * returns[t + 1]
    adv = returns[:horizon] - v[:horizon]
    big_gamma = np.concatenate([[1.0], np.cumprod(g)])
    d = np.expm1(lr)
    total = returns[0]
    for k in range(1, order + 1):
        for idx in itertools.combinations(range(horizon), k):
            total += big_gamma[idx[-1]] * np.prod(d[list(idx)]) * adv[idx[-1]]
    return total


def maybe_jit(fn, jit, **static):
    f = lambda *args: fn(*args, **static)  # noqa: E731
    return jax.jit(f) if jit else f


# ------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("discounts", DISCOUNTS, ids=["gamma", "terminated"])
@pytest.mark.parametrize(
    "estimate, naive", [(ope.step_importance_sampling, naive_is), (ope.doubly_robust, naive_dr)], ids=["is", "dr"]
)
def test_importance_sampling_and_doubly_robust_match_loops(estimate, naive, jit, discounts):
    fn = maybe_jit(estimate, jit)
    for seed in range(3):
        lr, r, v = random_inputs(seed)
        got = fn(lr, r, v, jnp.asarray(discounts))
        np.testing.assert_allclose(got, naive(lr, r, v, discounts), rtol=1e-12)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("discounts", DISCOUNTS, ids=["gamma", "terminated"])
def test_doubly_robust_q_matches_loop(jit, discounts):
    rng = np.random.default_rng(7)
    lr, r, _ = random_inputs(7)
    actions = jnp.asarray(rng.integers(0, 3, size=T))
    q = jnp.asarray(rng.normal(size=(T + 1, 3)))
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(T + 1, 3))), axis=-1)
    got = maybe_jit(ope.doubly_robust_q, jit)(lr, r, actions, q, probs, jnp.asarray(discounts))
    np.testing.assert_allclose(got, naive_dr_q(lr, r, actions, q, probs, discounts), rtol=1e-12)


def test_doubly_robust_q_with_state_critic_is_doubly_robust():
    lr, r, v = random_inputs(3)
    q = jnp.tile(v[:, None], (1, 3))
    probs = jnp.full((T + 1, 3), 1 / 3)
    actions = jnp.array([0, 2, 1, 1, 0])
    np.testing.assert_allclose(ope.doubly_robust_q(lr, r, actions, q, probs, 0.9), ope.doubly_robust(lr, r, v, 0.9))


def test_doubly_robust_q_depends_on_theta_through_the_expected_critic():
    """Eq. 3: Q(x, π_θ) carries gradient; differentiate the logits of target_probs at π = μ."""
    rng = np.random.default_rng(4)
    _, r, _ = random_inputs(4)
    actions = jnp.asarray(rng.integers(0, 3, size=T))
    q = jnp.asarray(rng.normal(size=(T + 1, 3)))
    logits = jnp.asarray(rng.normal(size=(T + 1, 3)))

    def estimate(theta):
        log_p = jax.nn.log_softmax(theta, axis=-1)
        ell = log_p[jnp.arange(T), actions]
        return ope.doubly_robust_q(ell - jax.lax.stop_gradient(ell), r, actions, q, jnp.exp(log_p), 0.9)

    def naive(theta):  # the same recursion, differentiated by the loop's arithmetic in jnp
        log_p = jax.nn.log_softmax(theta, axis=-1)
        p = jnp.exp(log_p)
        est = jnp.dot(p[-1], q[-1])
        for t in reversed(range(T)):
            rho = jnp.exp(log_p[t, actions[t]] - jax.lax.stop_gradient(log_p[t, actions[t]]))
            est = jnp.dot(p[t], q[t]) + rho * (r[t] + 0.9 * est - q[t, actions[t]])
        return est

    grad = jax.grad(estimate)(logits)
    np.testing.assert_allclose(grad, jax.grad(naive)(logits), rtol=1e-10, atol=1e-12)
    assert np.abs(np.asarray(grad[-1])).max() > 1e-3  # the bootstrap row only enters through Q(x_T, π_θ)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("discounts", DISCOUNTS, ids=["gamma", "terminated"])
@pytest.mark.parametrize("levels", [(1.0, 1.0), (1.2, 0.9)])
def test_vtrace_matches_loop(jit, discounts, levels):
    rho_bar, c_bar = levels
    fn = maybe_jit(ope.vtrace, jit, rho_bar=rho_bar, c_bar=c_bar)
    for seed in range(3):
        lr, r, v = random_inputs(seed, scale=0.6)
        got = fn(lr, r, v, jnp.asarray(discounts))
        np.testing.assert_allclose(got, naive_vtrace(lr, r, v, discounts, rho_bar, c_bar), rtol=1e-12)


def test_vtrace_without_truncation_is_doubly_robust():
    lr, r, v = random_inputs(5)
    np.testing.assert_allclose(ope.vtrace(lr, r, v, 0.8, rho_bar=1e6, c_bar=1e6), ope.doubly_robust(lr, r, v, 0.8))


def test_vtrace_tie_convention_takes_the_untruncated_derivative():
    """At ρ = ρ̄ = c̄ = 1 (on-policy) V-trace has DR's value, gradient and Hessian in the log-ratios."""
    _, r, v = random_inputs(6)
    zeros = jnp.zeros(T)
    vt = lambda lr: ope.vtrace(lr, r, v, 0.8)  # noqa: E731
    dr = lambda lr: ope.doubly_robust(lr, r, v, 0.8)  # noqa: E731
    np.testing.assert_allclose(vt(zeros), dr(zeros))
    np.testing.assert_allclose(jax.grad(vt)(zeros), jax.grad(dr)(zeros), rtol=1e-12)
    np.testing.assert_allclose(jax.hessian(vt)(zeros), jax.hessian(dr)(zeros), rtol=1e-12, atol=1e-14)
    # Just above the truncation level the derivative through the truncated ρ̄_t vanishes.
    up = jnp.full(T, 1e-3)
    assert not np.allclose(jax.grad(vt)(up), jax.grad(dr)(up))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("discounts", DISCOUNTS, ids=["gamma", "terminated"])
@pytest.mark.parametrize("order", [1, 2, 4])
def test_taylor_expansion_matches_sum_over_index_tuples(jit, discounts, order):
    fn = maybe_jit(ope.taylor_expansion, jit, order=order)
    for seed in range(3):
        lr, r, v = random_inputs(seed)
        got = fn(lr, r, v, jnp.asarray(discounts))
        np.testing.assert_allclose(got, naive_taylor(lr, r, v, discounts, order), rtol=1e-12)


def test_taylor_low_orders_have_their_closed_forms():
    lr, r, v = random_inputs(8)
    gamma = 0.8
    g = np.asarray(ope.returns(r, v, jnp.full(T, gamma)))
    adv, d, disc = g - v[:-1], np.expm1(lr), gamma ** np.arange(T)
    taypo1 = g[0] + np.sum(disc * d * adv)
    taypo2 = g[0] + np.sum(disc * d * adv * (1 + np.concatenate([[0.0], np.cumsum(d)[:-1]])))
    np.testing.assert_allclose(ope.taylor_expansion(lr, r, v, gamma, order=1), taypo1, rtol=1e-12)
    np.testing.assert_allclose(ope.taylor_expansion(lr, r, v, gamma, order=2), taypo2, rtol=1e-12)


@pytest.mark.parametrize("discounts", DISCOUNTS, ids=["gamma", "terminated"])
def test_taylor_of_order_horizon_is_doubly_robust(discounts):
    """Σ_j e_j(d_0..d_{t−1}) = Π_{s<t}(1 + d_s): with K ≥ T (and Û_0 = G_0) TayPO-K is DR exactly."""
    for seed in range(3):
        lr, r, v = random_inputs(seed, scale=0.8)
        dr = ope.doubly_robust(lr, r, v, jnp.asarray(discounts))
        for order in (T, T + 3):
            np.testing.assert_allclose(ope.taylor_expansion(lr, r, v, jnp.asarray(discounts), order=order), dr, rtol=1e-12)
        lower = ope.taylor_expansion(lr, r, v, jnp.asarray(discounts), order=T - 1)
        if np.ndim(discounts) == 0:  # with all T steps alive, degree T−1 misses the product of all T d's
            assert abs(float(lower - dr)) > 1e-6
        else:  # terminated after 3 steps: degree 3 already covers every live step
            np.testing.assert_allclose(lower, dr, rtol=1e-12)


def test_on_policy_values():
    """At ρ = 1 every estimate is the bootstrapped return G_0 (V-trace, TayPO and DR alike)."""
    _, r, v = random_inputs(9)
    zeros, gamma = jnp.zeros(T), 0.8
    g0 = ope.returns(r, v, jnp.full(T, gamma))[0]
    for fn in (ope.step_importance_sampling, ope.doubly_robust, ope.vtrace):
        np.testing.assert_allclose(fn(zeros, r, v, gamma), g0, rtol=1e-12)
    np.testing.assert_allclose(ope.taylor_expansion(zeros, r, v, gamma, order=2), g0, rtol=1e-12)


@pytest.mark.parametrize("fn", [ope.step_importance_sampling, ope.doubly_robust, ope.vtrace])
def test_termination_ignores_everything_after_the_terminal_step(fn):
    """With γ_t = 0 from step 2 on, the estimate equals that of the 3-step prefix with V(x_3) = 0 and
    does not depend on the (padding) log-ratios, rewards or critic values after step 2."""
    lr, r, v = random_inputs(10)
    discounts = jnp.asarray(DISCOUNTS[1])
    full = fn(lr, r, v, discounts)
    prefix = fn(lr[:3], r[:3], v[:4].at[3].set(0.0), discounts[:3])
    np.testing.assert_allclose(full, prefix, rtol=1e-12)
    noisy = fn(lr.at[3:].set(5.0), r.at[3:].set(7.0), v.at[3:].set(-9.0), discounts)
    np.testing.assert_allclose(noisy, full, rtol=1e-12)


def test_taylor_termination_and_gradients_are_finite():
    lr, r, v = random_inputs(11)
    discounts = jnp.asarray(DISCOUNTS[1])
    grad = jax.grad(lambda x: ope.taylor_expansion(x, r, v, discounts, order=3))(lr)
    assert np.all(np.asarray(grad[3:]) == 0.0)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_vmap_over_a_batch():
    batch = [random_inputs(s) for s in range(4)]
    lr, r, v = (jnp.stack(x) for x in zip(*batch))
    got = jax.vmap(ope.doubly_robust, in_axes=(0, 0, 0, None))(lr, r, v, 0.8)
    np.testing.assert_allclose(got, [naive_dr(*b, 0.8) for b in batch], rtol=1e-12)


# -------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args, match",
    [
        ((jnp.zeros((T, 1)), jnp.zeros(T), jnp.zeros(T + 1), 0.9), "`log_ratios` must have shape \\[T\\]"),
        ((jnp.zeros(T), jnp.zeros(T - 1), jnp.zeros(T + 1), 0.9), "`rewards` must have shape \\[T\\]"),
        ((jnp.zeros(T), jnp.zeros(T), jnp.zeros(T), 0.9), "`values` must have shape \\[T\\+1\\]"),
        ((jnp.zeros(T), jnp.zeros(T), jnp.zeros(T + 1), jnp.zeros(T + 1)), "`discounts` must be a scalar"),
        ((jnp.zeros(T), jnp.zeros(T), jnp.zeros(T + 1), -0.1), "`discounts` must lie in \\[0, 1\\]"),
        ((jnp.zeros(T), jnp.zeros(T).at[1].set(jnp.nan), jnp.zeros(T + 1), 0.9), "`rewards` must be finite"),
        ((jnp.zeros(T, int), jnp.zeros(T), jnp.zeros(T + 1), 0.9), "`log_ratios` must be a floating-point"),
    ],
)
@pytest.mark.parametrize("fn", [ope.step_importance_sampling, ope.doubly_robust, ope.vtrace])
def test_bad_input_raises_a_clear_error(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_bad_options_raise():
    lr, r, v = random_inputs(0)
    for order in (0, 1.5, True):
        with pytest.raises(ValueError, match="`order` must be a Python integer"):
            ope.taylor_expansion(lr, r, v, 0.9, order=order)
    with pytest.raises(ValueError, match="`rho_bar` must be a positive"):
        ope.vtrace(lr, r, v, 0.9, rho_bar=-1.0)
    with pytest.raises(ValueError, match="`actions` must hold action indices in \\[0, 3\\)"):
        ope.doubly_robust_q(lr, r, jnp.array([0, 1, 2, 3, 0]), jnp.zeros((T + 1, 3)), jnp.ones((T + 1, 3)) / 3, 0.9)
    with pytest.raises(ValueError, match="`target_probs` must have shape"):
        ope.doubly_robust_q(lr, r, jnp.zeros(T, int), jnp.zeros((T + 1, 3)), jnp.ones((T, 3)) / 3, 0.9)
