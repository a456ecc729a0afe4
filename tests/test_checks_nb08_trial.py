"""Notebook 08's checks name the wrong answers of the third fresh-reader trial (each written here independently)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from _exercises import assert_check_explains

from metagrad import estimators, exact
from metagrad.course import checks
from metagrad.tabular import log_policy


def _step(logits, batch, critic, gamma, step_size, estimator):
    def inner(theta):
        return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], gamma)

    return logits + step_size * jax.grad(inner)(logits)


def inner_step_without_step_size(logits, batch, critic, gamma, step_size, estimator):
    return _step(logits, batch, critic, gamma, 1.0, estimator)


def inner_step_with_zero_critic(logits, batch, critic, gamma, step_size, estimator):
    return _step(logits, batch, 0.0 * critic, gamma, step_size, estimator)


def meta_gradient_negated(theta, mdp, batch, critic, gamma, step_size, estimator):
    return -jax.grad(lambda th: exact.value(mdp, _step(th, batch, critic, gamma, step_size, estimator)))(theta)


def meta_gradient_exact_inner_step(theta, mdp, batch, critic, gamma, step_size, estimator):
    return jax.grad(lambda th: exact.value(mdp, th + step_size * exact.gradient(mdp, th)))(theta)


def meta_gradient_surrogate_outer_value(theta, mdp, batch, critic, gamma, step_size, estimator):
    def outer(th):
        adapted = _step(th, batch, critic, gamma, step_size, estimator)
        return estimators.surrogate(estimator, log_policy, adapted, batch, critic[batch.observations], gamma)

    return jax.grad(outer)(theta)


def _hessians(log_prob, params, obs, actions):
    return jax.vmap(lambda a: jax.hessian(log_prob)(params, obs, a))(actions)


def spread_of_first_two_actions(log_prob, params, obs, actions):
    h = _hessians(log_prob, params, obs, actions)
    return jnp.max(jnp.abs(h[1] - h[0]))


def spread_signed(log_prob, params, obs, actions):
    h = _hessians(log_prob, params, obs, actions)
    return jnp.max(h - h[0])


def spread_mean(log_prob, params, obs, actions):
    h = _hessians(log_prob, params, obs, actions)
    return jnp.mean(jnp.abs(h - h[0]))


WRONG_ANSWERS = [
    ("sampled_inner_step", inner_step_without_step_size, "step of size 1"),
    ("sampled_inner_step", inner_step_with_zero_critic, "`critic` is ignored"),
    ("task_meta_gradient", meta_gradient_negated, "wrong sign"),
    ("task_meta_gradient", meta_gradient_exact_inner_step, "exact inner step"),
    ("task_meta_gradient", meta_gradient_surrogate_outer_value, "outer value is the batch surrogate"),
    ("hessian_spread_over_actions", spread_of_first_two_actions, "first two actions"),
    ("hessian_spread_over_actions", spread_signed, "signed difference"),
    ("hessian_spread_over_actions", spread_mean, "averages the differences"),
]


@pytest.mark.parametrize("name,wrong,explanation", WRONG_ANSWERS, ids=[w.__name__ for _, w, _ in WRONG_ANSWERS])
def test_check_explains_a_wrong_answer(name, wrong, explanation):
    assert_check_explains(checks, name, wrong, explanation)
