"""Every part II exercise check fails plausible wrong answers; ``tests/test_checks.py`` proves that each passes
the notebook's solution and fails its stub. The wrong answers are the mistakes students make: a missing ``stop_gradient``, a time-indexed critic, LVC (TayPO-1)
where TayPO-2 was asked, an off-by-one prefix sum, a decision rule that ignores the bias or the budget.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from _exercises import assert_check_explains

from metagrad import estimators, exact, ope, prior, tabular
from metagrad.course import checks
from metagrad.course.checks import nb06


# Wrong answers built from the library's own functions call them through these aliases: the checks refuse a call of
# `ope.taylor_expansion` / `prior.dice_objective` / `prior.loaded_dice_objective` made by the student's code (the
# shortcut tests at the end call them by name and are refused).
_taylor_expansion = functools.partial(ope.taylor_expansion)
_dice_objective = functools.partial(prior.dice_objective)
_loaded_dice_objective = functools.partial(prior.loaded_dice_objective)

# ---------------------------------------------------------------------------------------------------
# Plausible wrong answers, each with the words the check must use to explain it.


def _step_is_loop(log_ratios, rewards, values, gamma):
    """Step-wise IS written as a plain loop (the reference form of notebook 04)."""
    total, weight = 0.0, 1.0
    for t in range(rewards.shape[0]):
        weight = weight * jnp.exp(log_ratios[t])
        total = total + gamma**t * weight * rewards[t]
    return total + gamma ** rewards.shape[0] * weight * values[-1]


def on_policy_is_without_stop_gradient(log_pi, rewards, values, gamma):
    return _step_is_loop(log_pi, rewards, values, gamma)  # ratios π instead of π / sg(π)


def on_policy_is_constant_ratios(log_pi, rewards, values, gamma):
    return _step_is_loop(jnp.zeros_like(log_pi), rewards, values, gamma)


def on_policy_is_reversed(log_pi, rewards, values, gamma):
    return _step_is_loop(jax.lax.stop_gradient(log_pi) - log_pi, rewards, values, gamma)


def on_policy_is_without_bootstrap(log_pi, rewards, values, gamma):
    return _step_is_loop(log_pi - jax.lax.stop_gradient(log_pi), rewards, jnp.zeros_like(values), gamma)


def on_policy_is_trajectory_weight(log_pi, rewards, values, gamma):
    w = jnp.exp(jnp.sum(log_pi - jax.lax.stop_gradient(log_pi)))
    t = jnp.arange(rewards.shape[0])
    return w * (jnp.sum(gamma**t * rewards) + gamma ** rewards.shape[0] * values[-1])


def on_policy_is_undiscounted(log_pi, rewards, values, gamma):
    return _step_is_loop(log_pi - jax.lax.stop_gradient(log_pi), rewards, values, 1.0)


def on_policy_is_numpy(log_pi, rewards, values, gamma):
    import numpy as np

    return float(np.sum(np.asarray(rewards)))  # float(): cannot be traced


def dice_without_stop_gradient(log_pi, rewards, values, gamma):
    w = jnp.cumsum(log_pi)
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * jnp.exp(w) * rewards) + gamma ** rewards.shape[0] * jnp.exp(w[-1]) * values[-1]


def dice_boxing_one_step(log_pi, rewards, values, gamma):
    box = prior.magic_box
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * box(log_pi) * rewards) + gamma ** rewards.shape[0] * box(jnp.sum(log_pi)) * values[-1]


def loaded_dice_time_indexed_critic(log_pi, states, rewards, critic, gamma, lam):
    values = critic[jnp.arange(states.shape[0])]  # the mistake: V(t) instead of V(x_t)
    return _loaded_dice_objective(log_pi, rewards, values, gamma, lam=lam)


def loaded_dice_without_stop_gradient(log_pi, states, rewards, critic, gamma, lam):
    values = critic[states]
    discounts = jnp.full(rewards.shape, gamma, rewards.dtype)
    weights = gamma ** jnp.arange(rewards.shape[0]) * (ope.returns(rewards, values, discounts) - values[:-1])
    w = jax.lax.scan(lambda c, x: (lam * c + x, lam * c + x), jnp.zeros((), log_pi.dtype), log_pi)[1]
    return jnp.sum(weights * (jnp.exp(w) - jnp.exp(w - log_pi)))


def taypo2_is_lvc(log_ratios, rewards, values, gamma):
    return _taylor_expansion(log_ratios, rewards, values, gamma, order=1)


def _taypo2_with_second_factor(prefix_of, scale=1.0):
    def taypo2(log_ratios, rewards, values, gamma):
        d = jnp.expm1(log_ratios)
        g = ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))
        t = jnp.arange(rewards.shape[0])
        return g[0] + jnp.sum(gamma**t * d * (g - values[:-1]) * (1.0 + scale * prefix_of(d)))

    return taypo2


taypo2_half_second_order = _taypo2_with_second_factor(lambda d: jnp.cumsum(d) - d, 0.5)  # a Taylor ½ that is not there
taypo2_all_other_steps = _taypo2_with_second_factor(lambda d: jnp.sum(d) - d)  # pairs d_t with every s ≠ t


def taypo2_inclusive_prefix(log_ratios, rewards, values, gamma):
    d = jnp.expm1(log_ratios)
    discounts = jnp.full(rewards.shape, gamma, rewards.dtype)
    g = ope.returns(rewards, values, discounts)
    t = jnp.arange(rewards.shape[0])
    return g[0] + jnp.sum(gamma**t * d * (g - values[:-1]) * (1.0 + jnp.cumsum(d)))  # Σ_{s≤t}: off by one


def taypo_k_updates_before_use(log_ratios, rewards, values, gamma, order):
    d = jnp.expm1(log_ratios)
    discounts = jnp.full(rewards.shape, gamma, rewards.dtype)
    g = ope.returns(rewards, values, discounts)
    weights = gamma ** jnp.arange(rewards.shape[0]) * (g - values[:-1])

    def step(e, d_t):
        e = e + d_t * jnp.concatenate([jnp.zeros((1,), e.dtype), e[:-1]])
        return e, jnp.sum(e)  # the mistake: the prefix already contains d_t

    _, factors = jax.lax.scan(step, jnp.zeros((order,), d.dtype).at[0].set(1.0), d)
    return g[0] + jnp.sum(weights * d * factors)


def _dropped_loop(scores, advantages, gamma, pair):
    import numpy as np

    scores = np.asarray(scores)
    out = np.zeros((scores.shape[1], scores.shape[1]))
    for t in range(scores.shape[0]):
        for s in range(scores.shape[0]):
            if pair(s, t):
                out += gamma**t * float(advantages[t]) * (np.outer(scores[t], scores[s]) + np.outer(scores[s], scores[t]))
    return out


def dropped_terms_with_own_outer(scores, advantages, gamma):
    import numpy as np

    extra = sum(gamma**t * float(advantages[t]) * np.outer(g, g) for t, g in enumerate(np.asarray(scores)))
    return _dropped_loop(scores, advantages, gamma, lambda s, t: s < t) + extra


def dropped_terms_inclusive(scores, advantages, gamma):
    return _dropped_loop(scores, advantages, gamma, lambda s, t: s <= t)


def dropped_terms_one_sided(scores, advantages, gamma):
    s_before = jnp.cumsum(scores, axis=0) - scores
    t = jnp.arange(scores.shape[0])
    return jnp.einsum("t,ti,tj->ij", gamma**t * advantages, scores, s_before)  # g_t S_{<t}ᵀ only


def dropped_terms_undiscounted(scores, advantages, gamma):
    return _dropped_loop(scores, advantages, 1.0, lambda s, t: s < t)


def dropped_terms_later_steps(scores, advantages, gamma):
    return _dropped_loop(scores, advantages, gamma, lambda s, t: s > t)


def spread_of_gradients(log_prob, params, obs, actions):
    grads = jax.vmap(lambda a: jax.grad(log_prob)(params, obs, a))(actions)
    return jnp.max(jnp.abs(grads - grads[0]))


def spread_of_hessian_sizes(log_prob, params, obs, actions):
    return jnp.max(jnp.abs(jax.vmap(lambda a: jax.hessian(log_prob)(params, obs, a))(actions)))


def spread_of_first_and_last(log_prob, params, obs, actions):
    hessian = jax.hessian(log_prob)
    return jnp.max(jnp.abs(hessian(params, obs, actions[-1]) - hessian(params, obs, actions[0])))


def spread_by_finite_differences(log_prob, params, obs, actions, eps=1e-4):
    def hessian(a):  # central differences of the exact gradient, one column per unit vector
        grad = jax.grad(log_prob)
        return jax.vmap(lambda e: (grad(params + eps * e, obs, a) - grad(params - eps * e, obs, a)) / (2 * eps))(
            jnp.eye(params.shape[0]))

    hessians = jax.vmap(hessian)(actions)
    return jnp.max(jnp.abs(hessians - hessians[0]))


def spread_as_a_list(log_prob, params, obs, actions):
    hessians = jax.vmap(lambda a: jax.hessian(log_prob)(params, obs, a))(actions)
    return jnp.max(jnp.abs(hessians - hessians[0]), axis=(1, 2))  # the mistake: one number per action


def squared_bias_uncorrected(estimates, truth):
    return jnp.sum((estimates.mean(0) - truth) ** 2)  # the mistake: noise reported as bias


def squared_bias_population_variance(estimates, truth):
    return jnp.sum((estimates.mean(0) - truth) ** 2) - jnp.sum(estimates.var(0)) / estimates.shape[0]  # ddof = 0


def squared_bias_variance_of_one(estimates, truth):
    return jnp.sum((estimates.mean(0) - truth) ** 2) - jnp.sum(estimates.var(0, ddof=1))  # forgot the 1 / M


def squared_bias_clipped(estimates, truth):
    m = estimates.shape[0]
    return jnp.maximum(jnp.sum((estimates.mean(0) - truth) ** 2) - jnp.sum(estimates.var(0, ddof=1)) / m, 0.0)


def squared_bias_norm(estimates, truth):
    m = estimates.shape[0]
    return jnp.sqrt(jnp.abs(jnp.sum((estimates.mean(0) - truth) ** 2) - jnp.sum(estimates.var(0, ddof=1)) / m))


def squared_bias_mean_squared_error(estimates, truth):
    return jnp.mean(jnp.sum((estimates - truth) ** 2, axis=1))


def squared_bias_per_coordinate(estimates, truth):
    m = estimates.shape[0]
    return (estimates.mean(0) - truth) ** 2 - estimates.var(0, ddof=1) / m  # the mistake: no sum over coordinates


def squared_bias_numpy(estimates, truth):
    import numpy as np

    return float(np.sum((np.asarray(estimates).mean(0) - np.asarray(truth)) ** 2))  # float(): cannot be traced


def squared_bias_independent_halves(estimates, truth):
    """Another unbiased estimate (not the notebook's): the product of the errors of two independent halves."""
    half = estimates.shape[0] // 2
    return jnp.dot(estimates[:half].mean(0) - truth, estimates[half : 2 * half].mean(0) - truth)


def choose_lowest_variance(squared_bias, variance, num_trajectories):
    return min(variance, key=variance.get)


def choose_ignoring_budget(squared_bias, variance, num_trajectories):
    return min(squared_bias, key=lambda name: max(squared_bias[name], 0.0) + variance[name])


def choose_squaring_twice(squared_bias, variance, num_trajectories):
    return min(squared_bias, key=lambda name: squared_bias[name] ** 2 + variance[name] / num_trajectories)


def choose_unclipped(squared_bias, variance, num_trajectories):
    return min(squared_bias, key=lambda name: squared_bias[name] + variance[name] / num_trajectories)


def choose_adding_the_norm(squared_bias, variance, num_trajectories):
    return min(squared_bias, key=lambda name: max(squared_bias[name], 0.0) ** 0.5 + variance[name] / num_trajectories)


def _inner_gradient(logits, batch, values, gamma, estimator, behaviour_log_probs=None):
    def surrogate(theta):
        return estimators.surrogate(estimator, tabular.log_policy, theta, batch, values, gamma,
                                    behaviour_log_probs=behaviour_log_probs)

    return jax.grad(surrogate)(logits)


def inner_step_downhill(logits, batch, critic, gamma, step_size, estimator):
    return logits - step_size * _inner_gradient(logits, batch, critic[batch.observations], gamma, estimator)


def inner_step_time_indexed_critic(logits, batch, critic, gamma, step_size, estimator):
    steps = jnp.minimum(jnp.arange(batch.observations.shape[1]), critic.shape[0] - 1)  # the mistake: V(t)
    values = jnp.broadcast_to(critic[steps], batch.observations.shape)
    return logits + step_size * _inner_gradient(logits, batch, values, gamma, estimator)


def inner_step_stopped(logits, batch, critic, gamma, step_size, estimator):
    gradient = _inner_gradient(logits, batch, critic[batch.observations], gamma, estimator)
    return logits + step_size * jax.lax.stop_gradient(gradient)  # the mistake: θ' no longer carries the Hessian


def meta_gradient_first_order(theta, mdp, batch, critic, gamma, step_size, estimator):
    return jax.grad(lambda th: exact.value(mdp, inner_step_stopped(th, batch, critic, gamma, step_size, estimator)))(theta)


def meta_gradient_before_adaptation(theta, mdp, batch, critic, gamma, step_size, estimator):
    return jax.grad(lambda th: exact.value(mdp, th))(theta)


def taypo_terms_cumulative(log_ratios, rewards, values, gamma, order):
    estimates = jnp.stack([_taylor_expansion(log_ratios, rewards, values, gamma, order=k) for k in range(1, order + 1)])
    return estimates  # the mistake: V̂_1 … V̂_K instead of Û_1 … Û_K


def taypo_terms_updates_before_use(log_ratios, rewards, values, gamma, order):
    d = jnp.expm1(log_ratios)
    discounts = jnp.full(rewards.shape, gamma, rewards.dtype)
    g = ope.returns(rewards, values, discounts)
    weights = gamma ** jnp.arange(rewards.shape[0]) * (g - values[:-1]) * d

    def step(e, inputs):
        d_t, w_t = inputs
        e = e + d_t * jnp.concatenate([jnp.zeros((1,), e.dtype), e[:-1]])
        return e, w_t * e  # the mistake: the prefix already contains d_t

    _, contributions = jax.lax.scan(step, jnp.zeros((order,), d.dtype).at[0].set(1.0), (d, weights))
    return jnp.sum(contributions, axis=0)


def off_policy_step_on_policy(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    return logits + step_size * _inner_gradient(logits, batch, critic[batch.observations], gamma, estimator)


def off_policy_step_trainable_behaviour(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    def surrogate(theta):
        log_mu = tabular.log_policy(theta, batch.observations[:, :-1], batch.actions)  # the mistake: μ from θ, no stop_gradient
        return estimators.surrogate(estimator, tabular.log_policy, theta, batch, critic[batch.observations], gamma,
                                    behaviour_log_probs=log_mu)

    return logits + step_size * jax.grad(surrogate)(logits)


# Third edition: mistakes that only extreme or separating inputs reveal (order three, underflow, long horizons,
# an ignored argument).


def _second_order_box(x):
    u = x - jax.lax.stop_gradient(x)
    return 1.0 + u + 0.5 * u**2  # exp(u) to second order: right up to the Hessian only


def on_policy_is_ratio_of_probabilities(log_pi, rewards, values, gamma):
    ratios = jnp.exp(log_pi) / jax.lax.stop_gradient(jnp.exp(log_pi))  # 0/0 once π underflows
    weights = jnp.cumprod(ratios)
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * weights * rewards) + gamma ** rewards.shape[0] * weights[-1] * values[-1]


def on_policy_is_second_order_ratio(log_pi, rewards, values, gamma):
    weights = jnp.cumprod(_second_order_box(log_pi))
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * weights * rewards) + gamma ** rewards.shape[0] * weights[-1] * values[-1]


def dice_second_order_box(log_pi, rewards, values, gamma):
    w = jnp.cumsum(log_pi)
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * _second_order_box(w) * rewards) + gamma ** rewards.shape[0] * _second_order_box(w[-1]) * values[-1]


def dice_ratio_of_exponentials(log_pi, rewards, values, gamma):
    w = jnp.cumsum(log_pi)
    box = jnp.exp(w) / jax.lax.stop_gradient(jnp.exp(w))  # 0/0 once the cumulative log-probability underflows
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * box * rewards) + gamma ** rewards.shape[0] * box[-1] * values[-1]


def loaded_dice_ignores_lambda(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_objective(log_pi, rewards, critic[states], gamma, lam=1.0)


def loaded_dice_ratio_of_exponentials(log_pi, states, rewards, critic, gamma, lam):
    values = critic[states]
    discounts = jnp.full(rewards.shape, gamma, rewards.dtype)
    weights = gamma ** jnp.arange(rewards.shape[0]) * jax.lax.stop_gradient(ope.returns(rewards, values, discounts) - values[:-1])
    w = jax.lax.scan(lambda c, x: (lam * c + x, lam * c + x), jnp.zeros((), log_pi.dtype), log_pi)[1]
    box = lambda x: jnp.exp(x) / jax.lax.stop_gradient(jnp.exp(x))  # noqa: E731
    return jnp.sum(weights * (box(w) - box(w - log_pi)))


def taypo2_without_g0(log_ratios, rewards, values, gamma):
    discounts = jnp.full(rewards.shape, gamma, rewards.dtype)
    return _taylor_expansion(log_ratios, rewards, values, gamma, order=2) - ope.returns(rewards, values, discounts)[0]


def taypo_k_top_term_only(log_ratios, rewards, values, gamma, order):
    full = _taylor_expansion(log_ratios, rewards, values, gamma, order=order)
    if order == 1:
        return full
    g0 = ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))[0]
    return full - _taylor_expansion(log_ratios, rewards, values, gamma, order=order - 1) + g0


def taypo_k_fixed_buffer(log_ratios, rewards, values, gamma, order):
    horizon = min(rewards.shape[0], 64)  # the mistake: a buffer sized for the short examples
    return _taylor_expansion(log_ratios[:horizon], rewards[:horizon],
                                jnp.concatenate([values[:horizon], values[-1:]]), gamma, order=order)


def inner_step_ignores_estimator(logits, batch, critic, gamma, step_size, estimator):
    return logits + step_size * _inner_gradient(logits, batch, critic[batch.observations], gamma, "dr")


def meta_gradient_ignores_estimator(theta, mdp, batch, critic, gamma, step_size, estimator):
    def adapted(th):
        return th + step_size * _inner_gradient(th, batch, critic[batch.observations], gamma, "dr")

    return jax.grad(lambda th: exact.value(mdp, adapted(th)))(theta)


def meta_gradient_downhill(theta, mdp, batch, critic, gamma, step_size, estimator):
    return jax.grad(lambda th: exact.value(mdp, inner_step_downhill(th, batch, critic, gamma, step_size, estimator)))(theta)


def taypo_terms_shifted(log_ratios, rewards, values, gamma, order):
    g0 = ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))[:1]
    previous = g0[0]
    terms = [g0[0]]
    for k in range(1, order):
        current = _taylor_expansion(log_ratios, rewards, values, gamma, order=k)
        terms.append(current - previous)
        previous = current
    return jnp.stack(terms)  # the mistake: Û_0 … Û_{K−1}


def off_policy_step_swapped(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    log_mu = tabular.log_policy(logits, batch.observations[:, :-1], batch.actions)  # the mistake: μ from θ's logits ...

    def surrogate(theta):
        return estimators.surrogate(estimator, tabular.log_policy, theta, batch, critic[batch.observations], gamma,
                                    behaviour_log_probs=log_mu)

    return logits + step_size * jax.grad(surrogate)(behaviour_logits)  # ... and π at the behaviour's logits


# Wrong answers of the third edition's fresh-reader trial: off-by-one prefixes, float32, and the mistakes that
# used to get a generic message or the wrong one.


def _box(w):
    return jnp.exp(w - jax.lax.stop_gradient(w))


def on_policy_is_exclusive_prefix(log_pi, rewards, values, gamma):
    """V̂_t = r_t + γ ρ_t V̂_{t+1}: r_t weighted by Π_{s<t} ρ_s, the bootstrap by Π_{s<T} ρ_s."""
    log_ratios = log_pi - jax.lax.stop_gradient(log_pi)

    def step(v_next, inputs):
        log_ratio, reward = inputs
        return reward + gamma * jnp.exp(log_ratio) * v_next, None

    return jax.lax.scan(step, values[-1], (log_ratios, rewards), reverse=True)[0]


def on_policy_is_exclusive_everywhere(log_pi, rewards, values, gamma):
    """Π_{s<t} ρ_s for r_t and, shifted the same way, Π_{s<T−1} ρ_s for the bootstrap."""
    log_ratios = log_pi - jax.lax.stop_gradient(log_pi)
    w = jnp.cumsum(log_ratios) - log_ratios
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * jnp.exp(w) * rewards) + gamma ** rewards.shape[0] * jnp.exp(w[-1]) * values[-1]


def on_policy_is_float32(log_pi, rewards, values, gamma):
    f32 = jnp.float32
    return ope.step_importance_sampling((log_pi - jax.lax.stop_gradient(log_pi)).astype(f32), rewards.astype(f32),
                                        values.astype(f32), jnp.full(rewards.shape, gamma, f32))


def dice_exclusive_everywhere(log_pi, rewards, values, gamma):
    w = jnp.concatenate([jnp.zeros(1, log_pi.dtype), jnp.cumsum(log_pi)[:-1]])  # Σ_{s<t} ℓ_s, also for V(x_T)
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * _box(w) * rewards) + gamma ** rewards.shape[0] * _box(w[-1]) * values[-1]


def dice_float32(log_pi, rewards, values, gamma):
    f32 = jnp.float32
    return _dice_objective(log_pi.astype(f32), rewards.astype(f32), values.astype(f32), gamma)


def dice_first_order_box(log_pi, rewards, values, gamma):
    w = jnp.cumsum(log_pi)
    u = w - jax.lax.stop_gradient(w)  # 1 + u: the box to first order
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * (1.0 + u) * rewards) + gamma ** rewards.shape[0] * (1.0 + u[-1]) * values[-1]


def dice_unboxed_bootstrap(log_pi, rewards, values, gamma):
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * _box(jnp.cumsum(log_pi)) * rewards) + gamma ** rewards.shape[0] * values[-1]


def _loaded_dice_variant(log_pi, states, rewards, critic, gamma, lam, *, sign=1.0, returns_only=False, lam_outside=False):
    values = critic[states]
    g = ope.returns(rewards, values, jnp.full(rewards.shape, gamma))
    weights = jax.lax.stop_gradient(gamma ** jnp.arange(rewards.shape[0]) * (g if returns_only else g - values[:-1]))

    def update(w, ell):
        w = lam * (w + ell) if lam_outside else lam * w + ell
        return w, w

    w = jax.lax.scan(update, jnp.zeros((), log_pi.dtype), log_pi)[1]
    return sign * jnp.sum(weights * (_box(w) - _box(w - log_pi)))


def _loaded_dice_boxes(log_pi, states, rewards, critic, gamma, lam, *, second, plus_g0=False):
    values = critic[states]
    returns = ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))
    weights = gamma ** jnp.arange(rewards.shape[0]) * jax.lax.stop_gradient(returns - values[:-1])
    x = log_pi - jax.lax.stop_gradient(log_pi)
    w = jax.lax.scan(lambda c, y: (lam * c + y, lam * c + y), jnp.zeros((), log_pi.dtype), x)[1]
    w_before = jnp.concatenate([jnp.zeros((1,), w.dtype), w[:-1]])
    value = jnp.sum(weights * (jnp.exp(w) - second(w, w_before, x)))
    return value + returns[0] if plus_g0 else value


def loaded_dice_second_box_previous_w(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_boxes(log_pi, states, rewards, critic, gamma, lam, second=lambda w, wb, x: jnp.exp(wb))


def loaded_dice_second_box_one(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_boxes(log_pi, states, rewards, critic, gamma, lam, second=lambda w, wb, x: 1.0)


def loaded_dice_plus_g0(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_boxes(log_pi, states, rewards, critic, gamma, lam, second=lambda w, wb, x: jnp.exp(w - x), plus_g0=True)


def loaded_dice_returns_not_advantages(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_variant(log_pi, states, rewards, critic, gamma, lam, returns_only=True)


def loaded_dice_flipped_sign(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_variant(log_pi, states, rewards, critic, gamma, lam, sign=-1.0)


def loaded_dice_lambda_outside(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_variant(log_pi, states, rewards, critic, gamma, lam, lam_outside=True)


def loaded_dice_float32(log_pi, states, rewards, critic, gamma, lam):
    values = critic[states].astype(jnp.float32)
    return _loaded_dice_objective(log_pi.astype(jnp.float32), rewards.astype(jnp.float32), values, gamma, lam=lam)


def _taypo2_variant(log_ratios, rewards, values, gamma, *, d=None, discount=True, bootstrap=True):
    d = jnp.expm1(log_ratios) if d is None else d
    g = ope.returns(rewards, values if bootstrap else values.at[-1].set(0.0), jnp.full(rewards.shape, gamma))
    weights = (gamma ** jnp.arange(rewards.shape[0]) if discount else 1.0) * (g - values[:-1])
    return g[0] + jnp.sum(weights * d * (1.0 + jnp.cumsum(d) - d))


def taypo2_undiscounted(log_ratios, rewards, values, gamma):
    return _taypo2_variant(log_ratios, rewards, values, gamma, discount=False)


def taypo2_log_ratio_as_d(log_ratios, rewards, values, gamma):
    return _taypo2_variant(log_ratios, rewards, values, gamma, d=log_ratios)


def taypo2_no_bootstrap(log_ratios, rewards, values, gamma):
    return _taypo2_variant(log_ratios, rewards, values, gamma, bootstrap=False)


def taypo2_float32(log_ratios, rewards, values, gamma):
    f32 = jnp.float32
    return _taylor_expansion(log_ratios.astype(f32), rewards.astype(f32), values.astype(f32), gamma, order=2)


def taypo_k_without_g0(log_ratios, rewards, values, gamma, order):
    g0 = ope.returns(rewards, values, jnp.full(rewards.shape, gamma))[0]
    return _taylor_expansion(log_ratios, rewards, values, gamma, order=order) - g0


def taypo_k_float32(log_ratios, rewards, values, gamma, order):
    f32 = jnp.float32
    return _taylor_expansion(log_ratios.astype(f32), rewards.astype(f32), values.astype(f32), gamma, order=order)


def choose_with_square_root_of_n(squared_bias, variance, num_trajectories):
    return min(squared_bias, key=lambda k: max(squared_bias[k], 0.0) + variance[k] / num_trajectories**0.5)


def _taypo_terms(log_ratios, rewards, values, gamma, order):
    estimates = [ope.returns(rewards, values, jnp.full(rewards.shape, gamma))[0]]
    estimates += [_taylor_expansion(log_ratios, rewards, values, gamma, order=k) for k in range(1, order + 1)]
    return jnp.diff(jnp.stack(estimates)), estimates[0]


def taypo_terms_partial_sums(log_ratios, rewards, values, gamma, order):
    terms, _ = _taypo_terms(log_ratios, rewards, values, gamma, order)
    return jnp.cumsum(terms)


def taypo_terms_plus_g0(log_ratios, rewards, values, gamma, order):
    terms, g0 = _taypo_terms(log_ratios, rewards, values, gamma, order)
    return terms + g0


def inner_step_critic_by_time_wrapped(logits, batch, critic, gamma, step_size, estimator):
    steps = jnp.arange(batch.observations.shape[1]) % critic.shape[0]  # the mistake: V(t mod S) instead of V(x_t)
    values = jnp.broadcast_to(critic[steps], batch.observations.shape)

    def surrogate(theta):
        return estimators.surrogate(estimator, tabular.log_policy, theta, batch, values, gamma)

    return logits + step_size * jax.grad(surrogate)(logits)


def off_policy_step_probabilities(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    mu = jnp.exp(tabular.log_policy(behaviour_logits, batch.observations[:, :-1], batch.actions))  # the mistake: μ, not log μ

    def surrogate(theta):
        return estimators.surrogate(estimator, tabular.log_policy, theta, batch, critic[batch.observations], gamma,
                                    behaviour_log_probs=mu)

    return logits + step_size * jax.grad(surrogate)(logits)


# Trial B (notebooks 07 and 09): wrong answers that passed or got a generic message.


def squared_bias_subtracts_the_noise_level(estimates, truth):
    m = estimates.shape[0]
    return jnp.sum((estimates.mean(0) - truth) ** 2) - jnp.sqrt(jnp.sum(estimates.var(0, ddof=1)) / m)  # √, not squared


def squared_bias_float32(estimates, truth):
    m = estimates.shape[0]
    e = estimates.astype(jnp.float32)  # the mistake: half the digits
    return jnp.sum((e.mean(0) - truth.astype(jnp.float32)) ** 2) - jnp.sum(e.var(0, ddof=1)) / m


def choose_absolute_squared_bias(squared_bias, variance, num_trajectories):
    return min(squared_bias, key=lambda k: abs(squared_bias[k]) + variance[k] / num_trajectories)  # |b²|, not max(b², 0)


def choose_variance_over_n_squared(squared_bias, variance, num_trajectories):
    return min(squared_bias, key=lambda k: max(squared_bias[k], 0.0) + variance[k] / num_trajectories**2)


def _taypo_terms_by_scan(log_ratios, rewards, values, gamma, order, discounted=True, d_of=jnp.expm1):
    d = d_of(log_ratios)
    g = ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))
    discount = gamma ** jnp.arange(rewards.shape[0]) if discounted else 1.0
    weights = discount * (g - values[:-1]) * d

    def step(e, inputs):
        d_t, w_t = inputs
        return e + d_t * jnp.concatenate([jnp.zeros((1,), e.dtype), e[:-1]]), w_t * e

    _, contributions = jax.lax.scan(step, jnp.zeros((order,), d.dtype).at[0].set(1.0), (d, weights))
    return jnp.sum(contributions, axis=0)


def taypo_terms_without_discount(log_ratios, rewards, values, gamma, order):
    return _taypo_terms_by_scan(log_ratios, rewards, values, gamma, order, discounted=False)  # no γ^t


def taypo_terms_ratio_for_d(log_ratios, rewards, values, gamma, order):
    return _taypo_terms_by_scan(log_ratios, rewards, values, gamma, order, d_of=jnp.exp)  # ρ_t where d_t = ρ_t − 1


def off_policy_step_stopped_gradient(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    log_mu = tabular.log_policy(behaviour_logits, batch.observations[:, :-1], batch.actions)
    gradient = _inner_gradient(logits, batch, critic[batch.observations], gamma, estimator, behaviour_log_probs=log_mu)
    return logits + step_size * jax.lax.stop_gradient(gradient)  # the mistake: θ' no longer depends on θ through it


def off_policy_step_next_state(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    log_mu = tabular.log_policy(behaviour_logits, batch.observations[:, 1:], batch.actions)  # the mistake: x_{t+1}
    return logits + step_size * _inner_gradient(logits, batch, critic[batch.observations], gamma, estimator,
                                                behaviour_log_probs=log_mu)


def off_policy_step_raw_logits(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    log_mu = behaviour_logits[batch.observations[:, :-1], batch.actions]  # the mistake: no log-softmax
    return logits + step_size * _inner_gradient(logits, batch, critic[batch.observations], gamma, estimator,
                                                behaviour_log_probs=log_mu)


WRONG_ANSWERS = [
    ("on_policy_importance_sampling", on_policy_is_without_stop_gradient, "ℓ_t − stop_gradient(ℓ_t)"),
    ("on_policy_importance_sampling", on_policy_is_constant_ratios, "derivatives are all zero"),
    ("on_policy_importance_sampling", on_policy_is_reversed, "wrong sign"),
    ("on_policy_importance_sampling", on_policy_is_without_bootstrap, "bootstrap"),
    ("on_policy_importance_sampling", on_policy_is_trajectory_weight, "whole trajectory's ratio"),
    ("on_policy_importance_sampling", on_policy_is_undiscounted, "discount"),
    ("on_policy_importance_sampling", on_policy_is_numpy, "cannot trace"),
    ("dice_objective", dice_without_stop_gradient, "stop_gradient"),
    ("dice_objective", dice_boxing_one_step, "It boxes ℓ_t alone"),
    ("loaded_dice", loaded_dice_time_indexed_critic, "indexed by time"),
    ("loaded_dice", loaded_dice_without_stop_gradient, "stop_gradient"),
    ("taypo2", taypo2_is_lvc, "TayPO-1"),
    ("taypo2", taypo2_inclusive_prefix, "off by one"),
    ("taypo_k", taypo_k_updates_before_use, "off by one"),
    ("squared_bias", squared_bias_uncorrected, "contains the noise of the mean"),
    ("squared_bias", squared_bias_population_variance, "instead of M − 1"),
    ("squared_bias", squared_bias_variance_of_one, "variance of ONE estimate"),
    ("squared_bias", squared_bias_clipped, "clips negative values"),
    ("squared_bias", squared_bias_norm, "returns a norm"),
    ("squared_bias", squared_bias_mean_squared_error, "mean squared error of ONE estimate"),
    ("squared_bias", squared_bias_per_coordinate, "expected a scalar"),
    ("squared_bias", squared_bias_numpy, "cannot trace"),
    ("taypo1_dropped_terms", dropped_terms_with_own_outer, "TayPO-1 keeps"),
    ("taypo1_dropped_terms", dropped_terms_inclusive, "off by one"),
    ("taypo1_dropped_terms", dropped_terms_one_sided, "without its transpose"),
    ("taypo1_dropped_terms", dropped_terms_undiscounted, "discount"),
    ("taypo1_dropped_terms", dropped_terms_later_steps, "later steps"),
    ("hessian_spread_over_actions", spread_of_gradients, "compares the gradients"),
    ("hessian_spread_over_actions", spread_of_hessian_sizes, "size of the Hessians"),
    ("hessian_spread_over_actions", spread_of_first_and_last, "first and the last"),
    ("hessian_spread_over_actions", spread_as_a_list, "expected one number"),
    ("hessian_spread_over_actions", spread_by_finite_differences, "finite differences"),
    ("choose_estimator", choose_lowest_variance, "ignores the bias"),
    ("choose_estimator", choose_ignoring_budget, "ignores N"),
    ("choose_estimator", choose_squaring_twice, "squares the squared bias"),
    ("choose_estimator", choose_unclipped, "negative squared-bias estimate"),
    ("choose_estimator", choose_adding_the_norm, "adds the bias, not its square"),
    ("sampled_inner_step", inner_step_downhill, "downhill"),
    ("sampled_inner_step", inner_step_time_indexed_critic, "indexed by time"),
    ("sampled_inner_step", inner_step_stopped, "derivative in θ is not"),
    ("task_meta_gradient", meta_gradient_first_order, "first-order MAML"),
    ("task_meta_gradient", meta_gradient_before_adaptation, "before adaptation"),
    ("taypo_terms", taypo_terms_cumulative, "cumulative"),
    ("taypo_terms", taypo_terms_updates_before_use, "off by one"),
    ("off_policy_inner_step", off_policy_step_on_policy, "on-policy"),
    ("off_policy_inner_step", off_policy_step_trainable_behaviour, "unchanged"),
    ("on_policy_importance_sampling", on_policy_is_ratio_of_probabilities, "underflows"),
    ("on_policy_importance_sampling", on_policy_is_second_order_ratio, "third derivative is wrong"),
    ("dice_objective", dice_second_order_box, "only up to the Hessian"),
    ("dice_objective", dice_ratio_of_exponentials, "underflows"),
    ("loaded_dice", loaded_dice_ignores_lambda, "ignores λ"),
    ("loaded_dice", loaded_dice_ratio_of_exponentials, "underflows"),
    ("taypo2", taypo2_without_g0, "zeroth-order term"),
    ("taypo_k", taypo_k_top_term_only, "top term"),
    ("taypo_k", taypo_k_fixed_buffer, "fixed length"),
    ("sampled_inner_step", inner_step_ignores_estimator, "whatever `estimator` says"),
    ("task_meta_gradient", meta_gradient_ignores_estimator, "whatever `estimator` says"),
    ("task_meta_gradient", meta_gradient_downhill, "downhill"),
    ("taypo_terms", taypo_terms_shifted, "shifted by one order"),
    ("off_policy_inner_step", off_policy_step_swapped, "swaps the roles"),
    ("on_policy_importance_sampling", on_policy_is_exclusive_prefix, "Π_{s<t} ρ_s (off by one)"),
    ("on_policy_importance_sampling", on_policy_is_exclusive_everywhere, "Π_{s<t} ρ_s (off by one)"),
    ("on_policy_importance_sampling", on_policy_is_float32, "float32"),
    ("dice_objective", dice_exclusive_everywhere, "Σ_{s<t} ℓ_s (off by one)"),
    ("dice_objective", dice_float32, "float32"),
    ("dice_objective", dice_first_order_box, "first order"),
    ("dice_objective", dice_unboxed_bootstrap, "has no box"),
    ("loaded_dice", loaded_dice_returns_not_advantages, "instead of the advantage"),
    ("loaded_dice", loaded_dice_flipped_sign, "wrong sign"),
    ("loaded_dice", loaded_dice_lambda_outside, "λ discounts only the past"),
    ("loaded_dice", loaded_dice_float32, "float32"),
    ("loaded_dice", loaded_dice_second_box_previous_w, "□(w_{t−1})"),
    ("loaded_dice", loaded_dice_second_box_one, "second box is 1"),
    ("loaded_dice", loaded_dice_plus_g0, "adds G_0"),
    ("taypo2", taypo2_undiscounted, "discount γ^t"),
    ("taypo2", taypo2_log_ratio_as_d, "d_t is the log-ratio"),
    ("taypo2", taypo2_no_bootstrap, "bootstrapped"),
    ("taypo2", taypo2_float32, "float32"),
    ("taypo2", taypo2_half_second_order, "factor ½"),
    ("taypo2", taypo2_all_other_steps, "every s ≠ t"),
    ("taypo_k", taypo_k_without_g0, "zeroth-order term"),
    ("taypo_k", taypo_k_float32, "float32"),
    ("choose_estimator", choose_with_square_root_of_n, "by √N"),
    ("taypo_terms", taypo_terms_partial_sums, "partial sums"),
    ("taypo_terms", taypo_terms_plus_g0, "adds G_0 to every term"),
    ("sampled_inner_step", inner_step_critic_by_time_wrapped, "indexed by time"),
    ("off_policy_inner_step", off_policy_step_probabilities, "probabilities"),
    ("squared_bias", squared_bias_subtracts_the_noise_level, "noise level"),
    ("squared_bias", squared_bias_float32, "float32"),
    ("choose_estimator", choose_absolute_squared_bias, "absolute value"),
    ("choose_estimator", choose_variance_over_n_squared, "by N²"),
    ("taypo_terms", taypo_terms_without_discount, "discount γ^t"),
    ("taypo_terms", taypo_terms_ratio_for_d, "d_t = ρ_t − 1"),
    ("off_policy_inner_step", off_policy_step_stopped_gradient, "do not depend on θ through the inner gradient"),
    ("off_policy_inner_step", off_policy_step_next_state, "next state"),
    ("off_policy_inner_step", off_policy_step_raw_logits, "raw behaviour logits"),
]


def test_check_rejects_a_non_function():
    with pytest.raises(checks.ExerciseCheckFailed, match="pass the function itself"):
        checks.check_taypo2(None)


def test_on_policy_importance_sampling_accepts_a_plain_loop():
    def loop(log_pi, rewards, values, gamma):
        return _step_is_loop(log_pi - jax.lax.stop_gradient(log_pi), rewards, values, gamma)

    checks.check_on_policy_importance_sampling(loop)
    assert checks.results()["on_policy_importance_sampling"] is True


def test_squared_bias_accepts_another_unbiased_estimate():
    checks.check_squared_bias(squared_bias_independent_halves)
    assert checks.results()["squared_bias"] is True


def test_library_squared_bias_and_choice_pass_notebook_07s_checks():
    """09 uses `maml_experiments.squared_bias_report` / `choose_by_mse` in place of 07's answers: they must pass 07's checks."""
    from metagrad.experiments import maml_experiments

    checks.check_squared_bias(maml_experiments.squared_bias)
    checks.check_choose_estimator(maml_experiments.choose_by_mse)
    assert checks.results()["squared_bias"] is True and checks.results()["choose_estimator"] is True


def test_taypo1_dropped_terms_reference_is_the_autodiff_difference():
    """Independent check of the check's reference: ∇²(TayPO-2) − ∇²(TayPO-1) at π = μ, by autodiff, for a softmax
    policy with non-linear logits tanh(Φθ), whose ∇²ℓ depends on the action (nothing special to tabular softmax)."""
    key = jax.random.split(jax.random.PRNGKey(3), 5)
    T, A, P = 6, 3, 4
    features = jax.random.normal(key[0], (T, A, P))
    actions = jax.random.randint(key[1], (T,), 0, A)
    rewards, values = jax.random.uniform(key[2], (T,)), jax.random.uniform(key[3], (T + 1,))
    theta = jax.random.normal(key[4], (P,))

    def log_pi(th):
        return jax.vmap(lambda f, a: jax.nn.log_softmax(jnp.tanh(f @ th))[a])(features, actions)

    def surrogate(order):
        def f(th):
            lp = log_pi(th)
            return _taylor_expansion(lp - jax.lax.stop_gradient(lp), rewards, values, 0.9, order=order)

        return jax.hessian(f)(theta)

    scores = jax.jacobian(log_pi)(theta)
    advantages = ope.returns(rewards, values, jnp.full((T,), 0.9)) - values[:-1]
    expected = nb06.reference_taypo1_dropped_terms(scores, advantages, 0.9)
    assert jnp.allclose(surrogate(2) - surrogate(1), expected, atol=1e-10)


# Trial B2 (notebooks 05, 06, 07, 09): wrong answers that got a generic or a misnamed message, and the library
# shortcuts each exercise refuses.


def dice_undiscounted(log_pi, rewards, values, gamma):
    w = jnp.cumsum(log_pi)
    return jnp.sum(_box(w) * rewards) + _box(w[-1]) * values[-1]  # the mistake: no γ^t, no γ^T


def dice_bootstrap_one_step_short(log_pi, rewards, values, gamma):
    w = jnp.cumsum(log_pi)
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * _box(w) * rewards) + gamma ** (rewards.shape[0] - 1) * _box(w[-1]) * values[-1]


def dice_stops_only_the_last(log_pi, rewards, values, gamma):
    w = jnp.cumsum(log_pi)
    t = jnp.arange(rewards.shape[0])
    stopped = jax.lax.stop_gradient(log_pi)  # the mistake: exp(w_t − sg(ℓ_t)), not exp(w_t − sg(w_t))
    return (jnp.sum(gamma**t * jnp.exp(w - stopped) * rewards)
            + gamma ** rewards.shape[0] * jnp.exp(w[-1] - stopped[-1]) * values[-1])


def _loaded_dice_parts(log_pi, states, rewards, critic, gamma, lam, bootstrap=True):
    values = critic[states]
    returns = ope.returns(rewards, values if bootstrap else values.at[-1].set(0.0), jnp.full(rewards.shape, gamma))
    weights = gamma ** jnp.arange(rewards.shape[0]) * (returns - values[:-1])
    x = log_pi - jax.lax.stop_gradient(log_pi)
    w = jax.lax.scan(lambda c, y: (lam * c + y, lam * c + y), jnp.zeros((), log_pi.dtype), x)[1]
    return weights, w, x


def loaded_dice_without_bootstrap(log_pi, states, rewards, critic, gamma, lam):
    weights, w, x = _loaded_dice_parts(log_pi, states, rewards, critic, gamma, lam, bootstrap=False)
    return jnp.sum(weights * (jnp.exp(w) - jnp.exp(w - x)))


def loaded_dice_first_box_only(log_pi, states, rewards, critic, gamma, lam):
    weights, w, _ = _loaded_dice_parts(log_pi, states, rewards, critic, gamma, lam)
    return jnp.sum(weights * jnp.exp(w))  # the mistake: no second box


def loaded_dice_advantages_not_stopped(log_pi, states, rewards, critic, gamma, lam):
    weights, w, x = _loaded_dice_parts(log_pi, states, rewards, critic, gamma, lam)  # no stop_gradient on Â: harmless
    return jnp.sum(weights * (jnp.exp(w) - jnp.exp(w - x)))


def taypo2_ratio_as_d(log_ratios, rewards, values, gamma):
    return _taypo2_variant(log_ratios, rewards, values, gamma, d=jnp.exp(log_ratios))


def taypo2_only_second_order(log_ratios, rewards, values, gamma):
    d = jnp.expm1(log_ratios)
    g = ope.returns(rewards, values, jnp.full(rewards.shape, gamma))
    return g[0] + jnp.sum(gamma ** jnp.arange(rewards.shape[0]) * (g - values[:-1]) * d * (jnp.cumsum(d) - d))


def taypo2_returns_not_advantages(log_ratios, rewards, values, gamma):
    d = jnp.expm1(log_ratios)
    g = ope.returns(rewards, values, jnp.full(rewards.shape, gamma))
    return g[0] + jnp.sum(gamma ** jnp.arange(rewards.shape[0]) * g * d * (1.0 + jnp.cumsum(d) - d))


def taypo2_float32_inside(log_ratios, rewards, values, gamma):
    d = jnp.expm1(log_ratios.astype(jnp.float32))  # the mistake: d in float32, the result float64
    g = ope.returns(rewards, values, jnp.full(rewards.shape, gamma))
    return g[0] + jnp.sum(gamma ** jnp.arange(rewards.shape[0]) * (g - values[:-1]) * d * (1.0 + jnp.cumsum(d) - d))


def _taypo_k_scan(log_ratios, rewards, values, gamma, order, shift=None, discounted=True):
    d = jnp.expm1(log_ratios)
    g = ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))
    weights = (gamma ** jnp.arange(rewards.shape[0]) if discounted else 1.0) * (g - values[:-1]) * d
    shift = shift or (lambda e: jnp.concatenate([jnp.zeros((1,), e.dtype), e[:-1]]))

    def step(e, inputs):
        d_t, w_t = inputs
        return e + d_t * shift(e), w_t * jnp.sum(e)

    _, contributions = jax.lax.scan(step, jnp.zeros((order,), d.dtype).at[0].set(1.0), (d, weights))
    return g[0] + jnp.sum(contributions)


def taypo_k_fixed_order(log_ratios, rewards, values, gamma, order):
    return _taypo_k_scan(log_ratios, rewards, values, gamma, 2)  # the mistake: `order` ignored, K = 2


def taypo_k_rolled(log_ratios, rewards, values, gamma, order):
    return _taypo_k_scan(log_ratios, rewards, values, gamma, order, shift=lambda e: jnp.roll(e, 1))


def taypo_k_undiscounted(log_ratios, rewards, values, gamma, order):
    return _taypo_k_scan(log_ratios, rewards, values, gamma, order, discounted=False)


def taypo_k_always_dr(log_ratios, rewards, values, gamma, order):
    return _taypo_k_scan(log_ratios, rewards, values, gamma, rewards.shape[0])


def taypo_k_one_higher(log_ratios, rewards, values, gamma, order):
    return _taypo_k_scan(log_ratios, rewards, values, gamma, order + 1)


def dropped_terms_symmetrised_half(scores, advantages, gamma):
    m = dropped_terms_one_sided(scores, advantages, gamma)  # Σ_t γ^t Â_t g_t S_{<t}ᵀ
    return 0.5 * (m + m.T)  # the mistake: ½(M + Mᵀ) halves both cross terms


def dropped_terms_all_other_steps(scores, advantages, gamma):
    total = scores.sum(0)
    t = jnp.arange(scores.shape[0])
    others = total[None] - scores
    w = gamma**t * advantages
    return jnp.einsum("t,ti,tj->ij", w, scores, others) + jnp.einsum("t,ti,tj->ij", w, others, scores)


def squared_bias_over_m_minus_one(estimates, truth):
    m = estimates.shape[0]
    return jnp.sum((estimates.mean(0) - truth) ** 2) - jnp.sum(estimates.var(0, ddof=1)) / (m - 1)


def squared_bias_flattened_variance(estimates, truth):
    m = estimates.shape[0]
    return jnp.sum((estimates.mean(0) - truth) ** 2) - jnp.var(estimates, ddof=1) / m


def squared_bias_adds_the_noise(estimates, truth):
    m = estimates.shape[0]
    return jnp.sum((estimates.mean(0) - truth) ** 2) + jnp.sum(estimates.var(0, ddof=1)) / m


def choose_variance_times_n(squared_bias, variance, num_trajectories):
    return min(squared_bias, key=lambda k: max(squared_bias[k], 0.0) + variance[k] * num_trajectories)


def choose_largest(squared_bias, variance, num_trajectories):
    return max(squared_bias, key=lambda k: max(squared_bias[k], 0.0) + variance[k] / num_trajectories)


def taypo_terms_without_bootstrap(log_ratios, rewards, values, gamma, order):
    return _taypo_terms_by_scan(log_ratios, rewards, values.at[-1].set(0.0), gamma, order) + 0.0 * values[-1]


def taypo_terms_log_ratio_as_d(log_ratios, rewards, values, gamma, order):
    return _taypo_terms_by_scan(log_ratios, rewards, values, gamma, order, d_of=lambda x: x)  # log ρ_t, not ρ_t − 1


def taypo_terms_reversed(log_ratios, rewards, values, gamma, order):
    return _taypo_terms_by_scan(log_ratios, rewards, values, gamma, order)[::-1]


def _off_policy_gradient(logits, batch, values, behaviour_logits, gamma, estimator):
    log_mu = tabular.log_policy(behaviour_logits, batch.observations[:, :-1], batch.actions)
    return _inner_gradient(logits, batch, values, gamma, estimator, behaviour_log_probs=log_mu)


def off_policy_step_critic_by_time(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    steps = jnp.arange(batch.observations.shape[1])
    values = jnp.broadcast_to(critic[steps], batch.observations.shape)  # the mistake: V(t), clipped by the gather
    return logits + step_size * _off_policy_gradient(logits, batch, values, behaviour_logits, gamma, estimator)


def off_policy_step_always_dr(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    return logits + step_size * _off_policy_gradient(logits, batch, critic[batch.observations], behaviour_logits, gamma, "dr")


def off_policy_step_gradient_at_behaviour(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    return logits + step_size * _off_policy_gradient(behaviour_logits, batch, critic[batch.observations],
                                                     behaviour_logits, gamma, estimator)


def off_policy_step_downhill(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    return logits - step_size * _off_policy_gradient(logits, batch, critic[batch.observations], behaviour_logits, gamma,
                                                     estimator)


def off_policy_step_without_step_size(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    return logits + _off_policy_gradient(logits, batch, critic[batch.observations], behaviour_logits, gamma, estimator)


TRIAL_B2_WRONG_ANSWERS = [
    ("dice_objective", dice_undiscounted, "discount γ^t"),
    ("dice_objective", dice_bootstrap_one_step_short, "γ^(T−1)"),
    ("dice_objective", dice_stops_only_the_last, "stop_gradient(ℓ_t) alone"),
    ("loaded_dice", loaded_dice_without_bootstrap, "bootstrapped with the critic"),
    ("loaded_dice", loaded_dice_first_box_only, "only the first box"),
    ("taypo2", taypo2_ratio_as_d, "d_t is the ratio ρ_t"),
    ("taypo2", taypo2_only_second_order, "only the second-order term"),
    ("taypo2", taypo2_returns_not_advantages, "instead of the advantage"),
    ("taypo2", taypo2_float32_inside, "float32"),
    ("taypo_k", taypo_k_fixed_order, "ignores `order`"),
    ("taypo_k", taypo_k_rolled, "jnp.roll, e_{K−1} wraps around"),  # with the wrap-around nothing is dropped: DR
    ("taypo_k", taypo_k_undiscounted, "discount γ^t"),
    ("taypo_k", taypo_k_always_dr, "doubly robust (every order) whatever `order` is"),
    ("taypo_k", taypo_k_one_higher, "TayPO-(K+1)"),
    ("taypo1_dropped_terms", dropped_terms_symmetrised_half, "half the dropped terms"),
    ("taypo1_dropped_terms", dropped_terms_all_other_steps, "every s ≠ t"),
    ("squared_bias", squared_bias_over_m_minus_one, "by M − 1"),
    ("squared_bias", squared_bias_flattened_variance, "one variance over all M·D entries"),
    ("squared_bias", squared_bias_adds_the_noise, "It adds tr Σ̂ / M"),
    ("choose_estimator", choose_variance_times_n, "multiplies the variance by N"),
    ("choose_estimator", choose_largest, "picks the largest"),
    ("choose_estimator", choose_lowest_variance, "picks the smallest variance and ignores the bias"),
    ("taypo_terms", taypo_terms_without_bootstrap, "bootstrapped"),
    ("taypo_terms", taypo_terms_log_ratio_as_d, "d_t is the log-ratio"),
    ("taypo_terms", taypo_terms_reversed, "reverse order"),
    ("off_policy_inner_step", off_policy_step_critic_by_time, "indexed by time"),
    ("off_policy_inner_step", off_policy_step_always_dr, "whatever `estimator` says"),
    ("off_policy_inner_step", off_policy_step_gradient_at_behaviour, "gradient at behaviour_logits"),
    ("off_policy_inner_step", off_policy_step_downhill, "downhill"),
    ("off_policy_inner_step", off_policy_step_without_step_size, "leaves out the step size"),
]


def test_dropped_terms_misnamed_before_are_named_now():
    """½(M + Mᵀ) used to get "without its transpose"; a fixed K "It equals TayPO-(K−1)"; variance·N "ignores the bias"."""
    for name, wrong, old in [("taypo1_dropped_terms", dropped_terms_symmetrised_half, "without its transpose"),
                             ("taypo_k", taypo_k_fixed_order, "TayPO-(K−1)"),
                             ("choose_estimator", choose_variance_times_n, "ignores the bias")]:
        with pytest.raises(checks.ExerciseCheckFailed) as info:
            getattr(checks, f"check_{name}")(wrong)
        assert old not in str(info.value), str(info.value)


def test_loaded_dice_passes_without_stop_gradient_on_the_advantages():
    """Â_t does not depend on log_pi: with or without stop_gradient it is the same function (the text says so)."""
    checks.check_loaded_dice(loaded_dice_advantages_not_stopped)
    assert checks.results()["loaded_dice"] is True


def _library_shortcuts():
    from metagrad.experiments import maml_experiments

    def dice(log_pi, rewards, values, gamma):
        return prior.dice_objective(log_pi, rewards, values, gamma)

    def loaded(log_pi, states, rewards, critic, gamma, lam):
        return prior.loaded_dice_objective(log_pi, rewards, critic[states], gamma, lam=lam)

    def taypo2(log_ratios, rewards, values, gamma):
        return ope.taylor_expansion(log_ratios, rewards, values, gamma, order=2)

    def taypo_k(log_ratios, rewards, values, gamma, order):
        return ope.taylor_expansion(log_ratios, rewards, values, gamma, order=order)

    def taypo_terms(log_ratios, rewards, values, gamma, order):
        estimates = [ope.taylor_expansion(log_ratios, rewards, values, gamma, order=k) for k in range(order + 1)]
        return jnp.diff(jnp.stack(estimates))

    def squared_bias(estimates, truth):
        return maml_experiments.squared_bias(estimates, truth)

    def squared_bias_from_report(estimates, truth):
        return maml_experiments.squared_bias_report(estimates, truth)[0]

    def choose(squared_bias, variance, num_trajectories):
        return maml_experiments.choose_by_mse(squared_bias, variance, num_trajectories)

    return [
        ("dice_objective", dice, "metagrad.prior.dice_objective"),
        ("loaded_dice", loaded, "metagrad.prior.loaded_dice_objective"),
        ("taypo2", taypo2, "metagrad.ope.taylor_expansion"),
        ("taypo_k", taypo_k, "metagrad.ope.taylor_expansion"),
        ("taypo_terms", taypo_terms, "metagrad.ope.taylor_expansion"),
        ("squared_bias", squared_bias, "maml_experiments.squared_bias"),
        ("squared_bias", squared_bias_from_report, "maml_experiments.squared_bias_report"),
        ("choose_estimator", choose, "maml_experiments.choose_by_mse"),
    ]


@pytest.mark.parametrize("index", range(8))
def test_a_library_shortcut_is_refused_and_named(index):
    name, shortcut, library = _library_shortcuts()[index]
    assert_check_explains(checks, name, shortcut, f"{library}`, the library's own version")


# Wrong answers of trial B3 that got a generic message or the wrong one.


def dice_bootstrap_boxed_short(log_pi, rewards, values, gamma):
    t = jnp.arange(rewards.shape[0])
    c = jnp.cumsum(log_pi)
    box = lambda w: jnp.exp(w - jax.lax.stop_gradient(w))  # noqa: E731
    return jnp.sum(gamma**t * box(c) * rewards) + gamma ** rewards.shape[0] * box(c[-2]) * values[-1]  # the mistake: c[-2]


def loaded_dice_lambda_squared(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_objective(log_pi, rewards, critic[states], gamma, lam=lam**2)  # the mistake: λ² per step


def taypo_k_stopped_carry(log_ratios, rewards, values, gamma, order):
    d = jnp.expm1(log_ratios)
    g = ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))
    weights = gamma ** jnp.arange(rewards.shape[0]) * (g - values[:-1])

    def step(e, d_t):
        new = e + d_t * jnp.concatenate([jnp.zeros((1,), e.dtype), e[:-1]])
        return jax.lax.stop_gradient(new), jnp.sum(e)  # the mistake: the carried e_j lose their gradient

    _, factors = jax.lax.scan(step, jnp.zeros((order,), d.dtype).at[0].set(1.0), d)
    return g[0] + jnp.sum(weights * d * factors)


def squared_bias_norm_minus_root_noise(estimates, truth):
    noise = jnp.sqrt(jnp.sum(jnp.var(estimates, axis=0, ddof=1)) / estimates.shape[0])
    return jnp.linalg.norm(jnp.mean(estimates, axis=0) - truth) - noise  # the mistake: norms, not squares


def _terms_from_taylor(log_ratios, rewards, values, gamma, order):
    estimates = [ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))[0]]
    estimates += [_taylor_expansion(log_ratios, rewards, values, gamma, order=k) for k in range(1, order + 1)]
    return jnp.diff(jnp.stack(estimates))


def taypo_terms_shifted_in_zero(log_ratios, rewards, values, gamma, order):
    terms = _terms_from_taylor(log_ratios, rewards, values, gamma, order)
    return jnp.concatenate([jnp.zeros((1,), terms.dtype), terms[:-1]])  # the mistake: [0, Û_1 … Û_{K−1}]


def taypo_terms_returns_not_advantages(log_ratios, rewards, values, gamma, order):
    d = jnp.expm1(log_ratios)
    g = ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))
    weights = gamma ** jnp.arange(rewards.shape[0]) * g * d  # the mistake: G_t instead of Â_t = G_t − V(x_t)

    def step(e, w_t_d_t):
        w, d_t = w_t_d_t
        return e + d_t * jnp.concatenate([jnp.zeros((1,), e.dtype), e[:-1]]), w * e

    _, contributions = jax.lax.scan(step, jnp.zeros((order,), d.dtype).at[0].set(1.0), (weights, d))
    return jnp.sum(contributions, axis=0)


def off_policy_step_swapped_roles(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    def surrogate(theta):  # the mistake: the surrogate at μ's logits, with log π_θ as the behaviour
        log_pi = tabular.log_policy(theta, batch.observations[:, :-1], batch.actions)
        return estimators.surrogate(estimator, tabular.log_policy, behaviour_logits, batch, critic[batch.observations],
                                    gamma, behaviour_log_probs=log_pi)

    return logits + step_size * jax.grad(surrogate)(logits)


TRIAL_B3_WRONG_ANSWERS = [
    ("dice_objective", dice_bootstrap_boxed_short, "boxes only the first T − 1 log-probabilities"),
    ("loaded_dice", loaded_dice_lambda_squared, "by λ² per step"),
    ("taypo_k", taypo_k_stopped_carry, "stops the gradient through the carried e_j"),
    ("squared_bias", squared_bias_norm_minus_root_noise, "from the norm ‖ḡ − g‖"),
    ("taypo_terms", taypo_terms_shifted_in_zero, "[0, Û_1, …, Û_{K−1}]"),
    ("taypo_terms", taypo_terms_returns_not_advantages, "the return G_t instead of the advantage"),
    ("off_policy_inner_step", off_policy_step_swapped_roles, "evaluates the surrogate at behaviour_logits"),
]


# ---------------------------------------------------------------------------------------------------
# The derive exercises of notebooks 08 (log_linear_hessian) and 09 (maml_objective_hessian): wrong derivations,
# each written here independently of the checks' own mistake lists.


def _log_linear_probabilities(theta, features):
    logits = features @ theta
    weights = jnp.exp(logits - jnp.max(logits))
    return weights / jnp.sum(weights)


def log_linear_second_moment_only(theta, features, action):
    pi = _log_linear_probabilities(theta, features)
    return -jnp.einsum("b,bi,bj->ij", pi, features, features)


def log_linear_positive_covariance(theta, features, action):
    pi = _log_linear_probabilities(theta, features)
    mean = pi @ features
    return jnp.einsum("b,bi,bj->ij", pi, features, features) - jnp.outer(mean, mean)


def log_linear_score_outer_product(theta, features, action):
    score = features[action] - _log_linear_probabilities(theta, features) @ features
    return -jnp.outer(score, score)


def log_linear_uniform_weights(theta, features, action):
    mean = features.mean(axis=0)
    return -(features.T @ features / features.shape[0] - jnp.outer(mean, mean))


def log_linear_unstable_exp(theta, features, action):
    weights = jnp.exp(features @ theta)
    pi = weights / weights.sum()
    mean = pi @ features
    return -(jnp.einsum("b,bi,bj->ij", pi, features, features) - jnp.outer(mean, mean))


def log_linear_by_autodiff(theta, features, action):
    return jax.hessian(lambda t: jax.nn.log_softmax(features @ t)[action])(theta)


def log_linear_by_differences(theta, features, action, h=1e-4):
    def log_pi(t):
        return jax.nn.log_softmax(features @ t)[action]

    basis = h * jnp.eye(theta.shape[0])
    return jnp.array([[(log_pi(theta + u + v) - log_pi(theta + u - v) - log_pi(theta - u + v) + log_pi(theta - u - v))
                       / (4 * h * h) for v in basis] for u in basis])


def _jacobian_sandwich(hess, middle, step_size):
    jacobian = jnp.eye(hess.shape[0]) + step_size * hess
    return jacobian @ middle @ jacobian


def meta_hessian_without_third_derivative(at_theta, at_adapted, step_size):
    return _jacobian_sandwich(at_theta[1], at_adapted[1], step_size)


def meta_hessian_third_derivative_at_adapted(at_theta, at_adapted, step_size):
    return (_jacobian_sandwich(at_theta[1], at_adapted[1], step_size)
            + step_size * jnp.tensordot(at_adapted[2], at_adapted[0], axes=1))


def meta_hessian_contracted_with_gradient_at_theta(at_theta, at_adapted, step_size):
    return (_jacobian_sandwich(at_theta[1], at_adapted[1], step_size)
            + step_size * jnp.tensordot(at_theta[2], at_theta[0], axes=1))


def meta_hessian_one_jacobian(at_theta, at_adapted, step_size):
    jacobian = jnp.eye(at_theta[1].shape[0]) + step_size * at_theta[1]
    return jacobian @ at_adapted[1] + step_size * jnp.tensordot(at_theta[2], at_adapted[0], axes=1)


def meta_hessian_jacobian_at_adapted(at_theta, at_adapted, step_size):
    return (_jacobian_sandwich(at_adapted[1], at_adapted[1], step_size)
            + step_size * jnp.tensordot(at_theta[2], at_adapted[0], axes=1))


def meta_hessian_third_without_step_size(at_theta, at_adapted, step_size):
    return _jacobian_sandwich(at_theta[1], at_adapted[1], step_size) + jnp.tensordot(at_theta[2], at_adapted[0], axes=1)


DERIVE_WRONG_ANSWERS = [
    ("log_linear_hessian", log_linear_second_moment_only, "a second moment"),
    ("log_linear_hessian", log_linear_positive_covariance, "wrong sign"),
    ("log_linear_hessian", log_linear_score_outer_product, "the score of the given action"),
    ("log_linear_hessian", log_linear_uniform_weights, "weights every action equally"),
    ("log_linear_hessian", log_linear_unstable_exp, "overflows"),
    ("log_linear_hessian", log_linear_by_autodiff, "automatic differentiation"),
    ("log_linear_hessian", log_linear_by_differences, "finite differences"),
    ("maml_objective_hessian", meta_hessian_without_third_derivative, "only the Hessian terms"),
    ("maml_objective_hessian", meta_hessian_third_derivative_at_adapted, "taken at θ′"),
    ("maml_objective_hessian", meta_hessian_contracted_with_gradient_at_theta, "contracts ∇³V(θ) with ∇V(θ)"),
    ("maml_objective_hessian", meta_hessian_one_jacobian, "one factor I + ηH(θ) only"),
    ("maml_objective_hessian", meta_hessian_jacobian_at_adapted, "Its factors are I + ηH(θ′)"),
    ("maml_objective_hessian", meta_hessian_third_without_step_size, "lacks the factor η"),
]


def test_maml_objective_hessian_reference_is_autodiff_of_the_meta_objective():
    """The check's closed form equals jax.hessian of F(θ) = V(θ + η∇V(θ)) for a smooth non-quadratic V."""
    from metagrad.course.checks import nb09

    def value(x):
        return jnp.sum(jnp.sin(x) * jnp.arange(1.0, 4.0)) + jnp.prod(x) + 0.3 * jnp.sum(x**4)

    x, eta = jnp.array([0.3, -0.7, 1.1]), 0.4
    adapted = x + eta * jax.grad(value)(x)
    derivatives = [jax.grad(value), jax.hessian(value), jax.jacfwd(jax.hessian(value))]
    at = lambda point: tuple(d(point) for d in derivatives)  # noqa: E731
    expected = jax.hessian(lambda y: value(y + eta * jax.grad(value)(y)))(x)
    assert jnp.allclose(nb09.reference_maml_objective_hessian(at(x), at(adapted), eta), expected, atol=1e-12)


def test_log_linear_hessian_reference_is_autodiff():
    from metagrad.course.checks import nb08

    features = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    theta = jax.random.normal(jax.random.PRNGKey(1), (3,))
    for action in range(5):
        expected = jax.hessian(lambda t: jax.nn.log_softmax(features @ t)[action])(theta)
        assert jnp.allclose(nb08.reference_log_linear_hessian(theta, features, action), expected, atol=1e-13)


# Trial A5 (fresh reader, 00–04): answers that passed or got a misnamed message.
def doubly_robust(log_ratios, rewards, values, gamma):
    """A student's own DR of exercise 2 (here the library's): what dr_log_ratio_gradient may not call."""
    return ope.doubly_robust(log_ratios, rewards, values, gamma)


def dr_gradient_by_central_differences(rewards, values, gamma):
    steps = jnp.eye(rewards.shape[0])
    return jnp.stack([(doubly_robust(1e-6 * e, rewards, values, gamma) - doubly_robust(-1e-6 * e, rewards, values, gamma)) / 2e-6
                      for e in steps])


def dr_gradient_by_doubling_one_ratio(rewards, values, gamma):  # exact (DR is affine in each ρ_t), but not derived
    steps = jnp.eye(rewards.shape[0])
    return jnp.stack([doubly_robust(jnp.log(2.0) * e, rewards, values, gamma) - doubly_robust(0 * e, rewards, values, gamma)
                      for e in steps])


def dr_gradient_by_library_differences(rewards, values, gamma):
    steps = jnp.eye(rewards.shape[0])
    return jnp.stack([(ope.doubly_robust(1e-6 * e, rewards, values, gamma) - ope.doubly_robust(-1e-6 * e, rewards, values, gamma))
                      / 2e-6 for e in steps])


def reward_to_go_bootstrap_undiscounted(rewards, gamma, bootstrap):
    no_tail = jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), 0.0, rewards, reverse=True)[1]
    return no_tail + bootstrap


def step_is_own_ratio_per_reward(log_ratios, rewards, values, gamma):
    return jnp.sum(gamma ** jnp.arange(rewards.shape[0]) * jnp.exp(log_ratios) * rewards) + gamma ** rewards.shape[0] * values[-1]


TRIAL_A5_WRONG_ANSWERS = [
    ("dr_log_ratio_gradient", dr_gradient_by_central_differences, "It calls doubly_robust"),
    ("dr_log_ratio_gradient", dr_gradient_by_doubling_one_ratio, "It calls doubly_robust"),
    ("dr_log_ratio_gradient", dr_gradient_by_library_differences, "It calls doubly_robust"),
    ("reward_to_go", reward_to_go_bootstrap_undiscounted, "adds the bootstrap undiscounted"),
    ("step_importance_sampling", step_is_own_ratio_per_reward, "its own ratio ρ_t only"),
]


def test_dr_log_ratio_gradient_leaves_the_students_doubly_robust_in_place():
    """The refusal of the student's own doubly_robust is undone after the check, whatever its outcome."""
    original = globals()["doubly_robust"]
    with pytest.raises(AssertionError):
        checks.check_dr_log_ratio_gradient(dr_gradient_by_doubling_one_ratio)
    assert globals()["doubly_robust"] is original


# Trial B5 (fresh reader, 05–09): DiCE written with ratios passed the check that asks for it without them. (A cumulative
# product of boxes is left alone: it is DiCE's exact value and derivatives, and refusing jnp.cumprod would also refuse
# the library's discounts and a student's γ^t.)
def on_policy_importance_sampling(log_pi, rewards, values, gamma):
    """A student's exercise 1 of notebook 05 (step-wise IS at μ = sg(π)): what dice_objective may not call."""
    return ope.step_importance_sampling(log_pi - jax.lax.stop_gradient(log_pi), rewards, values, gamma)


def dice_by_calling_exercise_one(log_pi, rewards, values, gamma):
    return on_policy_importance_sampling(log_pi, rewards, values, gamma)


def choose_largest_error(squared_bias, variance, num_trajectories):
    return max(squared_bias, key=lambda k: max(squared_bias[k], 0.0) + variance[k] / num_trajectories)


def taypo2_pairs_d_with_itself(log_ratios, rewards, values, gamma):
    d = jnp.expm1(log_ratios)
    returns = jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), values[-1], rewards, reverse=True)[1]
    return returns[0] + jnp.sum(gamma ** jnp.arange(rewards.shape[0]) * d * (returns - values[:-1]) * (1.0 + d))


def _hessians_over_actions(log_prob, params, obs, actions):
    return jax.vmap(lambda a: jax.hessian(log_prob)(params, obs, a))(actions)


def spread_over_every_pair(log_prob, params, obs, actions):
    h = _hessians_over_actions(log_prob, params, obs, actions)
    return jnp.max(jnp.abs(h[:, None] - h[None]))


def spread_of_the_diagonals(log_prob, params, obs, actions):
    h = _hessians_over_actions(log_prob, params, obs, actions)
    return jnp.max(jnp.abs(jnp.diagonal(h - h[0], axis1=1, axis2=2)))


def dice_by_doubly_robust_with_zero_critic(log_pi, rewards, values, gamma):  # trial B6: DR with V = 0 is step-wise IS
    critic = jnp.zeros_like(values).at[-1].set(values[-1])
    return ope.doubly_robust(log_pi - jax.lax.stop_gradient(log_pi), rewards, critic, gamma)


def dice_in_float32(log_pi, rewards, values, gamma):  # trial B6: float32 inside, float64 out (promoted by gamma, values)
    through_t = jnp.cumsum(log_pi.astype(jnp.float32))
    box = jnp.exp(through_t - jax.lax.stop_gradient(through_t))
    rewards = rewards.astype(jnp.float32)
    return jnp.sum(gamma ** jnp.arange(rewards.shape[0]) * box * rewards) + gamma ** rewards.shape[0] * box[-1] * values[-1]


TRIAL_B5_WRONG_ANSWERS = [
    ("dice_objective", dice_by_doubly_robust_with_zero_critic, "It multiplies ratios"),
    ("dice_objective", dice_in_float32, "the precision of float32"),
    ("taypo2", taypo2_pairs_d_with_itself, "pairs d_t with itself"),
    ("hessian_spread_over_actions", spread_over_every_pair, "every pair of actions"),
    ("hessian_spread_over_actions", spread_of_the_diagonals, "only the diagonals"),
    ("dice_objective", dice_by_calling_exercise_one, "It multiplies ratios"),
    ("choose_estimator", choose_largest_error, "the smallest predicted mean squared error"),
]


def test_choose_estimator_message_does_not_state_the_rule():
    """A wrong choice that no known rule explains gets the verdict, not the formula the exercise asks for."""
    with pytest.raises(AssertionError) as failure:
        checks.check_choose_estimator(lambda b, v, n: sorted(b)[0])
    assert "variance / N" not in str(failure.value) and "smallest predicted mean squared error" in str(failure.value)


ALL_WRONG_ANSWERS = (WRONG_ANSWERS + TRIAL_B2_WRONG_ANSWERS + TRIAL_B3_WRONG_ANSWERS + DERIVE_WRONG_ANSWERS
                     + TRIAL_A5_WRONG_ANSWERS + TRIAL_B5_WRONG_ANSWERS)  # the trials' lists: see their comments


@pytest.mark.parametrize("name,wrong,explanation", ALL_WRONG_ANSWERS, ids=[w.__name__ for _, w, _ in ALL_WRONG_ANSWERS])
def test_check_explains_a_wrong_answer(name, wrong, explanation):
    assert_check_explains(checks, name, wrong, explanation)
