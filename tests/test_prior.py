"""Tests of metagrad.prior: each prior-work surrogate against a naive loop of its paper's formula, their
exact relations in value to the OPE estimates (Tang et al. 2021, Table 1), and first-order MAML.

Derivative identities per trajectory in θ live in test_identities.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import ope, prior

T = 5
GAMMA = 0.8
TERMINATED = np.array([0.8, 0.7, 0.0, 0.0, 0.0])


def random_inputs(seed, scale=0.4):
    rng = np.random.default_rng(seed)
    log_pi = jnp.asarray(np.log(rng.uniform(0.2, 0.9, size=T)))
    log_mu = log_pi - scale * jnp.asarray(rng.normal(size=T))
    return log_pi, log_mu, jnp.asarray(rng.uniform(size=T)), jnp.asarray(rng.normal(size=T + 1))


def box_exponents(log_pi, log_mu):
    return np.asarray(log_pi) - np.asarray(log_mu)


def naive_returns(r, v, g):
    out = np.zeros(T + 1)
    out[T] = v[-1]
    for t in reversed(range(T)):
        out[t] = r[t] + g[t] * out[t + 1]
    return out[:T]


def cum(g):
    return np.concatenate([[1.0], np.cumprod(g)])


# ------------------------------------------------------------------------ naive loops of the papers
def naive_dice(lam_t, r, v, g, baseline):
    """Σ_t Γ_t □(Σ_{s≤t}) r_t + Γ_T □(Σ_{s<T}) V(x_T) [+ Σ_t Γ_t (1 − □(λ_t)) □(Σ_{s<t}) V(x_t)]."""
    big = cum(g)
    total, w = 0.0, 0.0
    for t in range(T):
        before = w
        w += lam_t[t]
        total += big[t] * np.exp(w) * r[t]
        if baseline:
            total += big[t] * (1 - np.exp(lam_t[t])) * np.exp(before) * v[t]
    return total + big[T] * np.exp(w) * v[-1]


def naive_loaded_dice(lam_t, r, v, g, lam, tau):
    big = cum(g)
    gae, a = np.zeros(T), 0.0
    for t in reversed(range(T)):
        a = r[t] + g[t] * v[t + 1] - v[t] + g[t] * tau * a
        gae[t] = a
    total, w = 0.0, 0.0
    for t in range(T):
        w = lam * w + lam_t[t]
        total += big[t] * gae[t] * (np.exp(w) - np.exp(w - lam_t[t]))
    return total


def naive_lvc(lam_t, r, v, g):
    adv = naive_returns(r, v, g) - v[:T]
    return sum(cum(g)[t] * np.exp(lam_t[t]) * adv[t] for t in range(T))


def naive_maml(log_pi, r, v, g):
    adv = naive_returns(r, v, g) - v[:T]
    return sum(cum(g)[t] * log_pi[t] * adv[t] for t in range(T))


DISCOUNTS = [np.full(T, GAMMA), TERMINATED]


@pytest.mark.parametrize("g", DISCOUNTS, ids=["gamma", "terminated"])
@pytest.mark.parametrize("baseline", [False, True])
def test_dice_matches_loop(g, baseline):
    log_pi, log_mu, r, v = random_inputs(0)
    got = prior.dice_objective(log_pi, r, v, jnp.asarray(g), baseline=baseline, log_mu=log_mu)
    np.testing.assert_allclose(got, naive_dice(box_exponents(log_pi, log_mu), r, v, g, baseline), rtol=1e-12)
    # On-policy (log_mu=None: the magic box) the value is the (bootstrapped) return.
    on = prior.dice_objective(log_pi, r, v, jnp.asarray(g), baseline=baseline)
    np.testing.assert_allclose(on, naive_returns(r, v, g)[0], rtol=1e-12)


@pytest.mark.parametrize("g", DISCOUNTS, ids=["gamma", "terminated"])
@pytest.mark.parametrize("lam, tau", [(1.0, 1.0), (0.0, 1.0), (0.5, 0.7)])
def test_loaded_dice_matches_loop(g, lam, tau):
    log_pi, log_mu, r, v = random_inputs(1)
    got = prior.loaded_dice_objective(log_pi, r, v, jnp.asarray(g), lam=lam, tau=tau, log_mu=log_mu)
    np.testing.assert_allclose(got, naive_loaded_dice(box_exponents(log_pi, log_mu), r, v, g, lam, tau), rtol=1e-12)


@pytest.mark.parametrize("g", DISCOUNTS, ids=["gamma", "terminated"])
def test_lvc_and_maml_match_loops(g):
    log_pi, log_mu, r, v = random_inputs(2)
    lvc = prior.lvc_objective(log_pi, r, v, jnp.asarray(g), log_mu=log_mu)
    np.testing.assert_allclose(lvc, naive_lvc(box_exponents(log_pi, log_mu), r, v, g), rtol=1e-12)
    maml = prior.maml_surrogate(log_pi, r, v, jnp.asarray(g))
    np.testing.assert_allclose(maml, naive_maml(np.asarray(log_pi), r, v, g), rtol=1e-12)


@pytest.mark.parametrize("g", DISCOUNTS, ids=["gamma", "terminated"])
def test_relations_to_ope_in_value_for_any_behaviour(g):
    """Table 1 in value: DiCE = IS; DiCE + baseline = DR; Loaded DiCE(λ=1) = DR − G_0;
    Loaded DiCE(λ=0) = TayPO-1 − G_0; LVC = TayPO-1 − G_0 + Σ Γ_t Â_t. Exact for every π, μ."""
    log_pi, log_mu, r, v = random_inputs(3, scale=0.7)
    g = jnp.asarray(g)
    lr = log_pi - log_mu
    g0 = naive_returns(r, v, np.asarray(g))[0]
    adv_sum = np.sum(cum(np.asarray(g))[:T] * (naive_returns(r, v, np.asarray(g)) - v[:T]))
    dr, taypo1 = ope.doubly_robust(lr, r, v, g), ope.taylor_expansion(lr, r, v, g, order=1)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)  # noqa: E731
    close(prior.dice_objective(log_pi, r, v, g, log_mu=log_mu), ope.step_importance_sampling(lr, r, v, g))
    close(prior.dice_objective(log_pi, r, v, g, baseline=True, log_mu=log_mu), dr)
    close(prior.loaded_dice_objective(log_pi, r, v, g, lam=1.0, log_mu=log_mu), dr - g0)
    close(prior.loaded_dice_objective(log_pi, r, v, g, lam=0.0, log_mu=log_mu), taypo1 - g0)
    close(prior.lvc_objective(log_pi, r, v, g, log_mu=log_mu), taypo1 - g0 + adv_sum)


def test_magic_box():
    w = jnp.array(0.3)
    assert prior.magic_box(w) == 1.0
    np.testing.assert_allclose(jax.grad(lambda x: prior.magic_box(3 * x))(w), 3.0)
    np.testing.assert_allclose(jax.grad(jax.grad(lambda x: prior.magic_box(3 * x)))(w), 9.0)


def test_first_order_keeps_value_and_gradient_and_zeroes_the_rest():
    fn = lambda p, c: jnp.sum(jnp.sin(p["a"]) * c) + jnp.exp(p["b"])  # noqa: E731
    params = {"a": jnp.array([0.1, 0.7]), "b": jnp.array(0.4)}
    fo = prior.first_order(fn)
    np.testing.assert_allclose(fo(params, 2.0), fn(params, 2.0))
    for got, want in zip(jax.tree_util.tree_leaves(jax.grad(fo)(params, 2.0)), jax.tree_util.tree_leaves(jax.grad(fn)(params, 2.0))):
        np.testing.assert_allclose(got, want)
    hess = jax.hessian(fo)(params, 2.0)
    assert all(np.all(np.asarray(h) == 0) for h in jax.tree_util.tree_leaves(hess))
    log_pi, _, r, v = random_inputs(4)
    np.testing.assert_allclose(prior.fomaml_surrogate(log_pi, r, v, GAMMA), prior.maml_surrogate(log_pi, r, v, GAMMA))


def test_jit_matches_eager():
    log_pi, log_mu, r, v = random_inputs(5)
    fn = lambda lp, lm: prior.loaded_dice_objective(lp, r, v, GAMMA, lam=0.5, tau=0.9, log_mu=lm)  # noqa: E731
    np.testing.assert_allclose(jax.jit(fn)(log_pi, log_mu), fn(log_pi, log_mu), rtol=1e-12)


def test_bad_input_raises():
    log_pi, log_mu, r, v = random_inputs(6)
    with pytest.raises(ValueError, match="`log_mu` must have shape \\[T\\]"):
        prior.dice_objective(log_pi, r, v, GAMMA, log_mu=log_mu[:-1])
    with pytest.raises(ValueError, match="`values` must have shape \\[T\\+1\\]"):
        prior.lvc_objective(log_pi, r, v[:-1], GAMMA)
    with pytest.raises(ValueError, match="`rewards` must be finite"):
        prior.maml_surrogate(log_pi, r.at[0].set(jnp.nan), v, GAMMA)
    with pytest.raises(ValueError, match="`discounts` must lie in"):
        prior.loaded_dice_objective(log_pi, r, v, -0.5)


@pytest.mark.parametrize("fn", [prior.dice_objective, prior.loaded_dice_objective, prior.lvc_objective])
def test_magic_box_form_equals_stop_gradient_behaviour(fn):
    """log_mu=None (the papers' magic box) has the same value and derivatives as log_mu = sg(log_pi)."""
    log_pi, _, r, v = random_inputs(7)
    box = lambda lp: fn(lp, r, v, GAMMA)  # noqa: E731
    ratio = lambda lp: fn(lp, r, v, GAMMA, log_mu=jax.lax.stop_gradient(lp))  # noqa: E731
    np.testing.assert_allclose(box(log_pi), ratio(log_pi), rtol=1e-12)
    np.testing.assert_allclose(jax.hessian(box)(log_pi), jax.hessian(ratio)(log_pi), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "name, fn",
    [
        ("dice", lambda lp, r, v, g, lm: prior.dice_objective(lp, r, v, g, log_mu=lm)),
        ("dice+baseline", lambda lp, r, v, g, lm: prior.dice_objective(lp, r, v, g, baseline=True, log_mu=lm)),
        ("loaded_dice", lambda lp, r, v, g, lm: prior.loaded_dice_objective(lp, r, v, g, log_mu=lm)),
    ],
)
def test_dice_family_does_not_overflow_in_float32_off_policy(name, fn):
    """Issue 13: T = 66, ratios 4.2, γ = 0.8 — the box alone is 4.2⁶⁶ ≈ 1e41 (beyond float32), Γ_T·□ ≈ 1e35
    is not.
    IS and DR give the finite 9.74e34 there; the DiCE family used to return NaN. Value, gradient and Hessian in
    float32 must match the float64 computation of the same surrogate."""
    horizon = 66
    rng = np.random.default_rng(0)

    def inputs(dtype):
        log_mu = jnp.asarray(np.log(rng.uniform(0.1, 0.2, horizon)), dtype)
        log_pi = log_mu + jnp.log(jnp.asarray(4.2, dtype))  # every ratio π/μ = 4.2
        return log_pi, jnp.ones(horizon, dtype), jnp.zeros(horizon + 1, dtype), jnp.asarray(0.8, dtype), log_mu

    lp32, r32, v32, g32, lm32 = inputs(jnp.float32)
    lp64, r64, v64, g64, lm64 = (jnp.asarray(x, jnp.float64) for x in (lp32, r32, v32, g32, lm32))
    is32 = ope.step_importance_sampling(lp32 - lm32, r32, v32, g32)
    assert is32.dtype == jnp.float32 and float(is32) == pytest.approx(9.74e34, rel=1e-3)
    for order, derivative in enumerate((lambda f: f, jax.grad, jax.hessian)):
        out32 = derivative(fn)(lp32, r32, v32, g32, lm32)
        out64 = derivative(fn)(lp64, r64, v64, g64, lm64)
        assert out32.dtype == jnp.float32, (name, order)
        assert np.all(np.isfinite(np.asarray(out32))), f"{name}: order-{order} derivative overflows in float32"
        scale = float(jnp.max(jnp.abs(out64)))
        np.testing.assert_allclose(np.asarray(out32, np.float64), np.asarray(out64), rtol=2e-4, atol=1e-6 * scale,
                                   err_msg=f"{name}, order {order}")
