"""Every part II exercise check fails plausible wrong answers; ``tests/test_checks.py`` proves that each passes
the notebook's solution and fails its stub. The wrong answers are the mistakes students make: a missing ``stop_gradient``, a time-indexed critic, LVC (TayPO-1)
where TayPO-2 was asked, an off-by-one prefix sum, a decision rule that ignores the bias or the budget.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from _exercises import assert_check_explains

from metagrad import estimators, exact, ope, prior, tabular
from metagrad.course import checks

# ---------------------------------------------------------------------------------------------------
# Plausible wrong answers, each with the words the check must use to explain it.


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
    return prior.loaded_dice_objective(log_pi, rewards, values, gamma, lam=lam)


def loaded_dice_without_stop_gradient(log_pi, states, rewards, critic, gamma, lam):
    values = critic[states]
    discounts = jnp.full(rewards.shape, gamma, rewards.dtype)
    weights = gamma ** jnp.arange(rewards.shape[0]) * (ope.returns(rewards, values, discounts) - values[:-1])
    w = jax.lax.scan(lambda c, x: (lam * c + x, lam * c + x), jnp.zeros((), log_pi.dtype), log_pi)[1]
    return jnp.sum(weights * (jnp.exp(w) - jnp.exp(w - log_pi)))


def taypo2_is_lvc(log_ratios, rewards, values, gamma):
    return ope.taylor_expansion(log_ratios, rewards, values, gamma, order=1)


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


def choose_lowest_variance(bias, variance, num_trajectories):
    return min(variance, key=variance.get)


def choose_ignoring_budget(bias, variance, num_trajectories):
    return min(bias, key=lambda name: bias[name] ** 2 + variance[name])


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
    estimates = jnp.stack([ope.taylor_expansion(log_ratios, rewards, values, gamma, order=k) for k in range(1, order + 1)])
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


WRONG_ANSWERS = [
    ("dice_objective", dice_without_stop_gradient, "stop_gradient"),
    ("dice_objective", dice_boxing_one_step, "Σ_{s≤t} ℓ_s"),
    ("loaded_dice", loaded_dice_time_indexed_critic, "indexed by time"),
    ("loaded_dice", loaded_dice_without_stop_gradient, "stop_gradient"),
    ("taypo2", taypo2_is_lvc, "TayPO-1"),
    ("taypo2", taypo2_inclusive_prefix, "off by one"),
    ("taypo_k", taypo_k_updates_before_use, "off by one"),
    ("choose_estimator", choose_lowest_variance, "ignores the bias"),
    ("choose_estimator", choose_ignoring_budget, "ignores N"),
    ("sampled_inner_step", inner_step_downhill, "downhill"),
    ("sampled_inner_step", inner_step_time_indexed_critic, "indexed by time"),
    ("sampled_inner_step", inner_step_stopped, "derivative in θ is not"),
    ("task_meta_gradient", meta_gradient_first_order, "first-order MAML"),
    ("task_meta_gradient", meta_gradient_before_adaptation, "before adaptation"),
    ("taypo_terms", taypo_terms_cumulative, "cumulative"),
    ("taypo_terms", taypo_terms_updates_before_use, "off by one"),
    ("off_policy_inner_step", off_policy_step_on_policy, "on-policy"),
    ("off_policy_inner_step", off_policy_step_trainable_behaviour, "unchanged"),
]


@pytest.mark.parametrize("name,wrong,explanation", WRONG_ANSWERS, ids=[w.__name__ for _, w, _ in WRONG_ANSWERS])
def test_check_explains_a_wrong_answer(name, wrong, explanation):
    assert_check_explains(checks, name, wrong, explanation)


def test_check_rejects_a_non_function():
    with pytest.raises(checks.ExerciseCheckFailed, match="pass the function itself"):
        checks.check_taypo2(None)
