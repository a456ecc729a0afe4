"""Notebook 05 after trial B10: the new `dice_hessian` exercise, and the wrong answers trials B9, B10, C1 (05) and
A7 (00–04) found passing, misnamed or unnamed, and those of trials C2 and C3 (06–09): 09's `off_policy_inner_step`
read log μ from `batch.log_probs` and ignored `behaviour_logits` (it passed: the batch came from μ; the check now has a
batch that does not record log μ), and 06's `taypo_k` written as a Python loop ran for minutes in the 300-step case (it
is now refused in a second by the size of its traced program).

Each wrong answer is written as a student would write it (loops, NumPy or jax.numpy), independently of the check's own
variants, and the check must name its mistake. `dice_hessian`'s reference is also compared with a student's loop and
with autodiff through DiCE's objective, so the closed form itself is tested.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exercises import assert_check_explains

from metagrad import estimators, ope, prior
from metagrad.course import checks
from metagrad.course.checks import nb05
from metagrad.tabular import log_policy


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


# --------------------------------------------------------------------------------------------- trials C2 and C3 (06–09)
def off_policy_inner_step_recorded_log_probs(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    def inner(theta):
        return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], gamma,
                                    behaviour_log_probs=batch.log_probs)

    return logits + step_size * jax.grad(inner)(logits)


def taypo_k_python_loop(log_ratios, rewards, values, gamma, order):
    d = jnp.expm1(log_ratios)
    advantages = ope.returns(rewards, values, gamma) - values[:-1]
    e = [1.0] + [0.0] * (order - 1)
    total = ope.returns(rewards, values, gamma)[0]
    for t in range(rewards.shape[0]):
        total = total + gamma**t * d[t] * advantages[t] * sum(e)
        e = [e[0]] + [e[j] + d[t] * e[j - 1] for j in range(1, order)]
    return total


def _taypo2(log_ratios, rewards, values, gamma, *, stop_prefix=False, discount_shift=0):
    d = jnp.expm1(log_ratios)
    returns = ope.returns(rewards, values, gamma)
    prefix = jnp.cumsum(d) - d
    prefix = jax.lax.stop_gradient(prefix) if stop_prefix else prefix
    weights = gamma ** (jnp.arange(rewards.shape[0]) + discount_shift) * (returns - values[:-1])
    return returns[0] + jnp.sum(weights * d * (1 + prefix))


def taypo2_stopped_prefix(log_ratios, rewards, values, gamma):
    return _taypo2(log_ratios, rewards, values, gamma, stop_prefix=True)


def taypo2_discount_one_ahead(log_ratios, rewards, values, gamma):
    return _taypo2(log_ratios, rewards, values, gamma, discount_shift=1)


def taypo_k_log_ratio_as_d(log_ratios, rewards, values, gamma, order):
    advantages = ope.returns(rewards, values, gamma) - values[:-1]

    def step(e, d_t):
        return e + d_t * jnp.concatenate([jnp.zeros(1), e[:-1]]), jnp.sum(e)

    _, factors = jax.lax.scan(step, jnp.zeros(order).at[0].set(1.0), log_ratios)
    return ope.returns(rewards, values, gamma)[0] + jnp.sum(
        gamma ** jnp.arange(rewards.shape[0]) * log_ratios * advantages * factors)


def taypo1_dropped_terms_discount_one_ahead(scores, advantages, gamma):
    past = jnp.cumsum(scores, axis=0) - scores
    weights = gamma ** (jnp.arange(scores.shape[0]) + 1) * advantages
    cross = jnp.einsum("t,ti,tj->ij", weights, scores, past)
    return cross + cross.T


def taypo1_dropped_terms_past_outer(scores, advantages, gamma):
    past = jnp.cumsum(scores, axis=0) - scores
    return jnp.einsum("t,ti,tj->ij", gamma ** jnp.arange(scores.shape[0]) * advantages, past, past)


def hessian_spread_around_the_mean(log_prob, params, obs, actions):
    hessians = jax.vmap(lambda a: jax.hessian(log_prob)(params, obs, a))(actions)
    return jnp.max(jnp.abs(hessians - hessians.mean(0)))


def sampled_inner_step_gamma_hard_coded(logits, batch, critic, gamma, step_size, estimator):
    def inner(theta):
        return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], 0.99)

    return logits + step_size * jax.grad(inner)(logits)


def log_linear_hessian_uniform_mean(theta, features, action):
    pi = jax.nn.softmax(features @ theta)
    mean = features.mean(0)
    return -(features.T @ (pi[:, None] * features) - jnp.outer(mean, mean))


def maml_objective_hessian_jacobians_on_one_side(at_theta, at_adapted, step_size):
    (_, hess, third), (grad_adapted, hess_adapted, _) = at_theta, at_adapted
    jacobian = jnp.eye(hess.shape[0]) + step_size * hess
    return jacobian @ jacobian @ hess_adapted + step_size * jnp.einsum("ijk,k->ij", third, grad_adapted)


def hessian_spread_difference_of_sizes(log_prob, params, obs, actions):  # trial C3
    sizes = jax.vmap(lambda a: jnp.max(jnp.abs(jax.hessian(log_prob)(params, obs, a))))(actions)
    return jnp.max(sizes - sizes[0])


def taypo2_last_return(log_ratios, rewards, values, gamma):  # trial C3: G[-1] in place of G[0]
    d = jnp.expm1(log_ratios)
    returns = ope.returns(rewards, values, gamma)
    weights = gamma ** jnp.arange(rewards.shape[0]) * (returns - values[:-1])
    return returns[-1] + jnp.sum(weights * d * (1 + jnp.cumsum(d) - d))


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
    ("nb09", "off_policy_inner_step", off_policy_inner_step_recorded_log_probs, "It reads log μ from batch.log_probs"),
    ("nb06", "taypo_k", taypo_k_python_loop, "a Python loop over the steps"),
    ("nb06", "taypo2", taypo2_stopped_prefix, "under stop_gradient"),
    ("nb06", "taypo2", taypo2_discount_one_ahead, "γ^(t+1)"),
    ("nb06", "taypo_k", taypo_k_log_ratio_as_d, "Its d_t is the log-ratio"),
    ("nb06", "taypo1_dropped_terms", taypo1_dropped_terms_discount_one_ahead, "γ^(t+1)"),
    ("nb06", "taypo1_dropped_terms", taypo1_dropped_terms_past_outer, "S_{<t} S_{<t}ᵀ"),
    ("nb08", "hessian_spread_over_actions", hessian_spread_around_the_mean, "spread around the mean Hessian"),
    ("nb08", "sampled_inner_step", sampled_inner_step_gamma_hard_coded, "It ignores `gamma`"),
    ("nb08", "log_linear_hessian", log_linear_hessian_uniform_mean, "plain average over actions"),
    ("nb09", "maml_objective_hessian", maml_objective_hessian_jacobians_on_one_side, "on the same side"),
    ("nb08", "hessian_spread_over_actions", hessian_spread_difference_of_sizes, "It subtracts the sizes of the Hessians"),
    ("nb06", "taypo2", taypo2_last_return, "Its zeroth-order term is G_{T−1}"),
]


@pytest.mark.parametrize(("module", "exercise", "wrong", "explanation"), WRONG_ANSWERS,
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_wrong_answer_is_named(module, exercise, wrong, explanation):
    assert_check_explains(getattr(checks, module), exercise, wrong, explanation)


def test_hessian_spread_finite_differences_still_named():
    """A finite-difference Hessian (loops, h = 1e-4) is named as such, not as a known mistake that its value happens to
    match where the largest change sits on the diagonal."""
    def finite_differences(log_prob, params, obs, actions, h=1e-4):
        size = params.shape[0]
        eye = h * np.eye(size)

        def hessian(a):
            f = lambda d: log_prob(params + d, obs, a)  # noqa: E731
            return jnp.stack([jnp.stack([(f(eye[i] + eye[j]) - f(eye[i] - eye[j]) - f(eye[j] - eye[i])
                                          + f(-eye[i] - eye[j])) / (4 * h * h) for j in range(size)])
                              for i in range(size)])

        first = hessian(actions[0])
        return jnp.max(jnp.stack([jnp.max(jnp.abs(hessian(actions[k]) - first)) for k in range(actions.shape[0])]))

    assert_check_explains(checks.nb08, "hessian_spread_over_actions", finite_differences, "finite differences?")
