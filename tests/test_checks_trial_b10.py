"""Notebook 05 after trial B10: the new `dice_hessian` exercise, and the wrong answers trials B9, B10, C1 (05) and
A7 (00–04) found passing, misnamed or unnamed.

Each wrong answer is written as a student would write it (loops, NumPy-free jax.numpy), independently of the check's
own variants, and the check must name its mistake. `dice_hessian`'s reference is also compared with a naive double
loop over (t, s, s') and with autodiff through DiCE's objective, so the closed form itself is tested.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exercises import assert_check_explains

from metagrad import ope, prior
from metagrad.course import checks
from metagrad.course.checks import nb05


def _box(w):
    return jnp.exp(w - jax.lax.stop_gradient(w))


# --------------------------------------------------------------------------------------------- dice_hessian
def _dice_hessian_loop(g, h, r, v, gamma, *, cross=True, second=1.0, causal="prefix", bootstrap=True, discount=True):
    """A student's loop (NumPy): Σ_t c_t (S S_ᵀ + second · Σ_s ∇²ℓ_s) with S = Σ_s g_s over the steps s that `causal`
    selects (up to t, t alone, all), or Σ_s g_s g_sᵀ in place of S Sᵀ when `cross` is False."""
    g, h, r, v = (np.asarray(x, dtype=np.float64) for x in (g, h, r, v))
    horizon, size = g.shape
    coefficients = [(gamma**t if discount else 1.0) * r[t] for t in range(horizon)]
    if bootstrap:
        coefficients[-1] += gamma**horizon * v[-1]
    out = np.zeros((size, size))
    score, squares, hessian = np.zeros(size), np.zeros((size, size)), np.zeros((size, size))
    for t in range(horizon):
        if causal == "prefix":
            score, squares, hessian = score + g[t], squares + np.outer(g[t], g[t]), hessian + h[t]
        elif causal == "own":
            score, squares, hessian = g[t], np.outer(g[t], g[t]), h[t]
        else:
            score, squares, hessian = g.sum(0), np.einsum("ti,tj->ij", g, g), h.sum(0)
        products = np.outer(score, score) if cross else squares
        out += coefficients[t] * (products + second * hessian)
    return out


def dice_hessian_loop(g, h, r, v, gamma):
    return _dice_hessian_loop(g, h, r, v, gamma)


def dice_hessian_no_cross_terms(g, h, r, v, gamma):
    return _dice_hessian_loop(g, h, r, v, gamma, cross=False)


def dice_hessian_no_second_derivative_of_log_pi(g, h, r, v, gamma):
    return _dice_hessian_loop(g, h, r, v, gamma, second=0.0)


def dice_hessian_own_step_only(g, h, r, v, gamma):
    return _dice_hessian_loop(g, h, r, v, gamma, causal="own")


def dice_hessian_whole_trajectory(g, h, r, v, gamma):
    return _dice_hessian_loop(g, h, r, v, gamma, causal="all")


def dice_hessian_no_bootstrap(g, h, r, v, gamma):
    return _dice_hessian_loop(g, h, r, v, gamma, bootstrap=False)


def dice_hessian_undiscounted(g, h, r, v, gamma):
    return _dice_hessian_loop(g, h, r, v, gamma, discount=False)


def dice_hessian_surrogate_only(g, h, r, v, gamma):  # the Hessian of Σ_t γ^t r_t Σ_{s≤t} ℓ_s
    return jnp.einsum("t,tij->ij", gamma ** jnp.arange(r.shape[0]) * r, jnp.cumsum(h, axis=0)) + gamma ** r.shape[0] * v[
        -1] * jnp.sum(h, axis=0)


def dice_hessian_one_sided(g, h, r, v, gamma):  # g_t S_tᵀ counted twice, S_t g_tᵀ never
    c = (gamma ** jnp.arange(r.shape[0]) * r).at[-1].add(gamma ** r.shape[0] * v[-1])
    s = jnp.cumsum(g, axis=0)
    return 2 * jnp.einsum("t,ti,tj->ij", c, g, s - g) + jnp.einsum("t,ti,tj->ij", c, g, g) + jnp.einsum(
        "t,tij->ij", c, jnp.cumsum(h, axis=0))


def dice_hessian_by_autodiff(g, h, r, v, gamma):  # ℓ_t(δ) = ℓ_t + g_t·δ + ½ δᵀ h_t δ, then jax.hessian at δ = 0
    def objective(delta):
        log_pi = g @ delta + 0.5 * jnp.einsum("tij,i,j->t", h, delta, delta)
        return prior.dice_objective(log_pi, r, v, gamma)

    return jax.hessian(objective)(jnp.zeros(g.shape[1]))


def test_dice_hessian_loop_passes():
    nb05.check_dice_hessian(dice_hessian_loop)  # raises ExerciseCheckFailed when wrong


@pytest.mark.parametrize("horizon", [1, 5])
def test_dice_hessian_reference_is_autodiff_through_dice(horizon):
    """The closed form equals jax.hessian of DiCE's objective with ℓ_t quadratic in θ (so ∇ℓ_t, ∇²ℓ_t are exact)."""
    keys = jax.random.split(jax.random.PRNGKey(horizon), 5)
    g = jax.random.normal(keys[0], (horizon, 3))
    half = jax.random.normal(keys[1], (horizon, 3, 3))
    h = half + jnp.swapaxes(half, 1, 2)
    r, v = jax.random.normal(keys[2], (horizon,)), jax.random.normal(keys[3], (horizon + 1,))
    expected = dice_hessian_by_autodiff(g, h, r, v, 0.8)
    np.testing.assert_allclose(nb05.reference_dice_hessian(g, h, r, v, 0.8), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dice_hessian_loop(g, h, r, v, 0.8), expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------- dice_objective
def dice_flipped_box(log_pi, rewards, values, gamma):
    w = jnp.cumsum(log_pi)
    t = jnp.arange(rewards.shape[0])
    flipped = jnp.exp(jax.lax.stop_gradient(w) - w)
    return jnp.sum(gamma**t * flipped * rewards) + gamma ** rewards.shape[0] * flipped[-1] * values[-1]


def dice_trajectory_box(log_pi, rewards, values, gamma):
    t = jnp.arange(rewards.shape[0])
    return _box(jnp.sum(log_pi)) * (jnp.sum(gamma**t * rewards) + gamma ** rewards.shape[0] * values[-1])


# --------------------------------------------------------------------------------------------- loaded_dice
def _loaded_dice(log_pi, states, rewards, critic, gamma, lam, *, box=_box, baseline_shift=0, reverse=False,
                 extra_discount=False):
    values = critic[states]
    baseline = values[baseline_shift:baseline_shift + rewards.shape[0]]
    advantages = jax.lax.stop_gradient(ope.returns(rewards, values, gamma) - baseline)
    x = log_pi - jax.lax.stop_gradient(log_pi)
    w = jax.lax.scan(lambda c, y: (lam * c + y,) * 2, 0.0 * x[0], x, reverse=reverse)[1]
    discounts = gamma ** ((2 if extra_discount else 1) * jnp.arange(rewards.shape[0]))
    return jnp.sum(discounts * advantages * (box(w) - box(w - x)))


def loaded_dice_taylor2_box(log_pi, states, rewards, critic, gamma, lam):  # passed before: only orders ≤ 2 were compared
    def taylor2(w):
        u = w - jax.lax.stop_gradient(w)
        return 1 + u + u**2 / 2

    return _loaded_dice(log_pi, states, rewards, critic, gamma, lam, box=taylor2)


def loaded_dice_lambda_hard_coded_zero(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice(log_pi, states, rewards, critic, gamma, 0.0)


def loaded_dice_critic_one_step_late(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice(log_pi, states, rewards, critic, gamma, lam, baseline_shift=1)


def loaded_dice_reversed_scan(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice(log_pi, states, rewards, critic, gamma, lam, reverse=True)


def loaded_dice_right(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice(log_pi, states, rewards, critic, gamma, lam)


def test_loaded_dice_with_scalar_gamma_in_returns_passes():
    """`ope.returns` takes a scalar γ now (B10 met a raw scan error); this answer uses it and is right."""
    nb05.check_loaded_dice(loaded_dice_right)


def test_returns_refuses_discounts_of_another_length():
    with pytest.raises(ValueError, match="`discounts` must be a scalar γ or per-step discounts"):
        ope.returns(jnp.ones(3), jnp.ones(4), jnp.ones(2))


# --------------------------------------------------------------------------------------------- trial B9, 07–09
def squared_bias_pooled_variance(estimates, truth):
    m, d = estimates.shape
    return jnp.sum((estimates.mean(0) - truth) ** 2) - d * jnp.var(estimates, ddof=1) / m


def log_linear_hessian_plus_score_outer(theta, features, action):
    pi = jax.nn.softmax(features @ theta)
    centred = features - pi @ features
    return -(centred.T @ (pi[:, None] * centred) + jnp.outer(centred[action], centred[action]))


def maml_objective_hessian_first_jacobian_adapted(at_theta, at_adapted, step_size):
    (_, hess, third), (grad_adapted, hess_adapted, _) = at_theta, at_adapted
    eye = jnp.eye(hess.shape[0])
    return ((eye + step_size * hess_adapted) @ hess_adapted @ (eye + step_size * hess)
            + step_size * jnp.einsum("ijk,k->ij", third, grad_adapted))


# --------------------------------------------------------------------------------------------- trial C1 (05) and A7 (03)
def on_policy_is_float32_ratios(log_pi, rewards, values, gamma):  # passed: orders 1–3 off by ~1e-8
    return ope.step_importance_sampling((log_pi - jax.lax.stop_gradient(log_pi)).astype(jnp.float32), rewards, values,
                                        gamma)


def on_policy_is_gamma_hard_coded(log_pi, rewards, values, gamma):
    return ope.step_importance_sampling(log_pi - jax.lax.stop_gradient(log_pi), rewards, values, 0.9)


def loaded_dice_float32_buffer(log_pi, states, rewards, critic, gamma, lam):  # passed: a loop filling a float32 array
    w, previous = jnp.zeros(rewards.shape[0], dtype=jnp.float32), 0.0
    for t in range(rewards.shape[0]):
        previous = lam * previous + (log_pi[t] - jax.lax.stop_gradient(log_pi[t]))
        w = w.at[t].set(previous)
    x = log_pi - jax.lax.stop_gradient(log_pi)
    values = critic[states]
    advantages = jax.lax.stop_gradient(ope.returns(rewards, values, gamma) - values[:-1])
    return jnp.sum(gamma ** jnp.arange(rewards.shape[0]) * advantages * (jnp.exp(w) - jnp.exp(w - x)))


def loaded_dice_discounted_twice(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice(log_pi, states, rewards, critic, gamma, lam, extra_discount=True)


def dice_hessian_finite_differences_of_the_value(g, h, r, v, gamma):  # the value is constant: a zero matrix
    return jnp.zeros((g.shape[1], g.shape[1]))


def dice_hessian_exclusive_scores(g, h, r, v, gamma):  # S_{<t} in the products, Σ_{s≤t} ∇²ℓ_s kept
    c = (gamma ** jnp.arange(r.shape[0]) * r).at[-1].add(gamma ** r.shape[0] * v[-1])
    past = jnp.cumsum(g, axis=0) - g
    return jnp.einsum("t,ti,tj->ij", c, past, past) + jnp.einsum("t,tij->ij", c, jnp.cumsum(h, axis=0))


def dice_hessian_bootstrap_first_value(g, h, r, v, gamma):
    return nb05.reference_dice_hessian(g, h, r, v.at[-1].set(v[0]), gamma)


def missing_hessian_terms_one_cross_term(scores, advantages, gamma):  # g gᵀ + S_{<t} gᵀ: the transpose is missing
    past = jnp.cumsum(scores, axis=0) - scores
    weights = gamma ** jnp.arange(scores.shape[0]) * advantages
    return jnp.einsum("t,ti,tj->ij", weights, scores, scores) + jnp.einsum("t,ti,tj->ij", weights, past, scores)


def reward_to_go_divided_by_discounts(rewards, gamma, bootstrap):  # γ^−t Σ_{s≥t} γ^s r_s: 0/0 at γ = 0
    horizon = rewards.shape[0]
    discounts = gamma ** jnp.arange(horizon)
    tail = jnp.cumsum((discounts * rewards)[::-1])[::-1] + gamma**horizon * bootstrap
    return tail / discounts


def occupancy_policy_gradient_max_baseline(mdp, logits, occupancy):
    from metagrad import mdp as mdp_lib

    pi = jax.nn.softmax(logits, axis=-1)
    q = mdp_lib.policy_evaluation(mdp, pi)[1]
    return occupancy[:, None] * pi * (q - q.max(-1, keepdims=True))


def occupancy_policy_gradient_uniform_values(mdp, logits, occupancy):
    from metagrad import mdp as mdp_lib

    pi = jax.nn.softmax(logits, axis=-1)
    v, q = mdp_lib.policy_evaluation(mdp, jnp.full_like(pi, 1.0 / pi.shape[-1]))
    return occupancy[:, None] * pi * (q - v[:, None])


def inner_step_mean_state_value(mdp, logits, step_size):
    from metagrad import mdp as mdp_lib

    def mean_value(th):
        return jnp.mean(mdp_lib.policy_evaluation(mdp, jax.nn.softmax(th, axis=-1))[0])

    return logits + step_size * jax.grad(mean_value)(logits)


def expected_surrogate_hessian_without_advantage(mdp, logits_fn, params):
    from metagrad import mdp as mdp_lib

    def log_pi(p):
        return jax.nn.log_softmax(logits_fn(p), axis=-1)

    pi = jnp.exp(log_pi(params))
    d = mdp_lib.discounted_occupancy(mdp, pi)
    return jnp.einsum("sa,sapq->pq", d[:, None] * pi, jax.hessian(log_pi)(params))


# --------------------------------------------------------------------------------------------- every wrong answer
WRONG_ANSWERS = [
    ("nb05", "dice_hessian", dice_hessian_no_cross_terms, "products of two different steps' scores"),
    ("nb05", "dice_hessian", dice_hessian_no_second_derivative_of_log_pi, "its own second derivative ∇²ℓ_s"),
    ("nb05", "dice_hessian", dice_hessian_surrogate_only, "It has only the ∇²ℓ terms"),
    ("nb05", "dice_hessian", dice_hessian_own_step_only, "Its box of r_t holds ℓ_t alone"),
    ("nb05", "dice_hessian", dice_hessian_whole_trajectory, "the whole trajectory's derivatives"),
    ("nb05", "dice_hessian", dice_hessian_no_bootstrap, "It ignores the bootstrap term"),
    ("nb05", "dice_hessian", dice_hessian_undiscounted, "It drops the discount γ^t"),
    ("nb05", "dice_hessian", dice_hessian_one_sided, "It is not symmetric"),
    ("nb05", "dice_hessian", dice_hessian_by_autodiff, "automatic differentiation"),
    ("nb05", "dice_objective", dice_flipped_box, "the exponent reversed"),
    ("nb05", "dice_objective", dice_trajectory_box, "trajectory-wise IS"),
    ("nb05", "loaded_dice", loaded_dice_taylor2_box, "expanded to second order"),
    ("nb05", "loaded_dice", loaded_dice_lambda_hard_coded_zero, "Loaded DiCE at λ = 0 whatever `lam` is"),
    ("nb05", "loaded_dice", loaded_dice_critic_one_step_late, "one step late"),
    ("nb05", "loaded_dice", loaded_dice_reversed_scan, "reverse=True"),
    ("nb05", "on_policy_importance_sampling", on_policy_is_float32_ratios, "the precision of float32"),
    ("nb05", "on_policy_importance_sampling", on_policy_is_gamma_hard_coded, "It ignores `gamma`"),
    ("nb05", "loaded_dice", loaded_dice_float32_buffer, "the precision of float32"),
    ("nb05", "loaded_dice", loaded_dice_discounted_twice, "It applies γ^t twice"),
    ("nb05", "dice_hessian", dice_hessian_finite_differences_of_the_value, "It is the zero matrix"),
    ("nb05", "dice_hessian", dice_hessian_exclusive_scores, "Its sums of scores stop before step t"),
    ("nb05", "dice_hessian", dice_hessian_bootstrap_first_value, "uses V(x_0)"),
    ("nb03", "missing_hessian_terms", missing_hessian_terms_one_cross_term, "It is not symmetric"),
    ("nb02", "reward_to_go", reward_to_go_divided_by_discounts, "a division by γ"),
    ("nb02", "occupancy_policy_gradient", occupancy_policy_gradient_max_baseline, "Its baseline is max_b Q^π(x, b)"),
    ("nb02", "occupancy_policy_gradient", occupancy_policy_gradient_uniform_values, "those of the uniform policy"),
    ("nb03", "inner_step", inner_step_mean_state_value, "the mean of V^π over states"),
    ("nb03", "expected_surrogate_hessian", expected_surrogate_hessian_without_advantage, "no advantage weight"),
    ("nb07", "squared_bias", squared_bias_pooled_variance, "pools one variance over all M·D entries"),
    ("nb08", "log_linear_hessian", log_linear_hessian_plus_score_outer, "It adds −ssᵀ"),
    ("nb09", "maml_objective_hessian", maml_objective_hessian_first_jacobian_adapted, "One of its factors is I + ηH(θ′)"),
]


@pytest.mark.parametrize(("module", "exercise", "wrong", "explanation"), WRONG_ANSWERS,
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_wrong_answer_is_named(module, exercise, wrong, explanation):
    assert_check_explains(getattr(checks, module), exercise, wrong, explanation)
