"""Wrong answers from trial A5 (notebooks 00–04) whose message was only generic; each is now named.

A fresh reader's wrong answers that got only "the result differs from the reference (largest absolute error X)":
a Hessian-vector product that is the directional derivative of f broadcast (a first derivative), a score-function
Hessian built from the batch-mean score, γ hard-coded at 0.9 instead of mdp.gamma, a truncated occupancy whose tail
is spread uniformly over the states, REINFORCE weights γ^(t+1), an ignored `occupancy` argument, two inner steps
instead of one, unsymmetrised or past-squared missing Hessian terms, the stationary distribution / (1 − γ) in place
of d^π, OPE estimates with stop_gradient on the log-ratios (value right, gradient zero), and a DR log-ratio derivative
without the reward r_t. Each row of `TRIAL_A5_GENERIC_WRONG_ANSWERS` is (exercise, wrong function, phrase the message
must contain); the message must also explain every wrong input (no "On … it matches a known mistake" partial match).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exercises import assert_check_explains

from metagrad.course import checks

# --- 00 -----------------------------------------------------------------------------------------------------------


def hvp_directional_broadcast(f, x, v):
    return jax.jvp(f, (x,), (v,))[1] * jnp.ones_like(x)


def _scores_and_curvature(logits, actions):
    log_pi = lambda t, a: jax.nn.log_softmax(t)[a]  # noqa: E731
    scores = jax.vmap(jax.grad(log_pi), in_axes=(None, 0))(logits, actions)
    curvature = jax.vmap(jax.hessian(log_pi), in_axes=(None, 0))(logits, actions)
    return scores, curvature


def score_hessian_mean_score_outer(logits, actions, rewards):
    scores, curvature = _scores_and_curvature(logits, actions)
    mean_score = jnp.mean(scores, axis=0)
    return jnp.einsum("n,nij->ij", rewards, curvature) / rewards.shape[0] + jnp.mean(rewards) * jnp.outer(mean_score, mean_score)


def score_hessian_mean_score_outer_only(logits, actions, rewards):
    scores, _ = _scores_and_curvature(logits, actions)
    mean_score = jnp.mean(scores, axis=0)
    return jnp.mean(rewards) * jnp.outer(mean_score, mean_score)


# --- 01 -----------------------------------------------------------------------------------------------------------


def _p_pi(mdp, policy):
    return jnp.einsum("xa,xay->xy", policy, mdp.transitions)


def policy_evaluation_gamma_09(mdp, policy):
    r_pi = jnp.sum(policy * mdp.rewards, axis=1)
    return jnp.linalg.solve(jnp.eye(mdp.num_states) - 0.9 * _p_pi(mdp, policy), r_pi)


def policy_evaluation_gamma_099(mdp, policy):
    r_pi = jnp.sum(policy * mdp.rewards, axis=1)
    return jnp.linalg.solve(jnp.eye(mdp.num_states) - 0.99 * _p_pi(mdp, policy), r_pi)


def occupancy_gamma_09(mdp, policy):
    return jnp.linalg.solve(jnp.eye(mdp.num_states) - 0.9 * _p_pi(mdp, policy).T, mdp.initial)


def truncated_occupancy_gamma_09(mdp, policy, horizon):
    p_pi = _p_pi(mdp, policy)
    visits = jax.lax.scan(lambda p, _: (p_pi.T @ p, p), mdp.initial, None, length=horizon)[1]
    return jnp.einsum("t,ts->s", 0.9 ** jnp.arange(horizon), visits)


def truncated_occupancy_uniform_tail(mdp, policy, horizon):
    d = jnp.linalg.solve(jnp.eye(mdp.num_states) - mdp.gamma * _p_pi(mdp, policy).T, mdp.initial)
    return d - mdp.gamma**horizon / (1 - mdp.gamma) / mdp.num_states


# --- 02 -----------------------------------------------------------------------------------------------------------


def reinforce_one_discount_too_many(logits, trajectories, critic, gamma):
    from metagrad.course.checks.nb02 import reference_reward_to_go
    from metagrad.tabular import log_policy

    states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
    values = critic[states]
    returns = jnp.stack([jnp.asarray(reference_reward_to_go(r, gamma, b)) for r, b in zip(np.asarray(rewards), np.asarray(values[:, -1]))])
    advantages = returns - values[:, :-1]
    discount = gamma ** (jnp.arange(rewards.shape[1]) + 1)

    def surrogate(theta):
        return jnp.mean(jnp.sum(discount * advantages * log_policy(theta, states[:, :-1], actions), axis=1))

    return jax.grad(surrogate)(logits)


def occupancy_gradient_ones(mdp, logits, occupancy):
    from metagrad import mdp as mdp_lib

    pi = mdp_lib.softmax_policy(logits)
    v, q = mdp_lib.policy_evaluation(mdp, pi)
    return jnp.ones_like(occupancy)[:, None] * pi * (q - v[:, None])


def occupancy_gradient_uniform_states(mdp, logits, occupancy):
    return occupancy_gradient_ones(mdp, logits, occupancy) / occupancy.shape[0]


# --- 03 -----------------------------------------------------------------------------------------------------------


def inner_step_two_steps(mdp, logits, step_size):
    from metagrad import exact

    grad = jax.grad(exact.value, argnums=1)
    once = logits + step_size * grad(mdp, logits)
    return once + step_size * grad(mdp, once)


def inner_step_three_steps(mdp, logits, step_size):
    from metagrad import exact

    for _ in range(3):
        logits = logits + step_size * jax.grad(exact.value, argnums=1)(mdp, logits)
    return logits


def missing_terms_unsymmetrised(scores, advantages, gamma):
    past = jnp.cumsum(scores, axis=0) - scores
    weights = gamma ** jnp.arange(scores.shape[0]) * advantages
    return jnp.einsum("t,ti,tj->ij", weights, scores, scores) + 2 * jnp.einsum("t,ti,tj->ij", weights, scores, past)


def missing_terms_past_squared(scores, advantages, gamma):
    past = jnp.cumsum(scores, axis=0) - scores
    weights = gamma ** jnp.arange(scores.shape[0]) * advantages
    return jnp.einsum("t,ti,tj->ij", weights, scores, scores) + jnp.einsum("t,ti,tj->ij", weights, past, past)


def surrogate_hessian_stationary(mdp, logits_fn, params):
    from metagrad import mdp as mdp_lib

    log_pi = lambda p: jax.nn.log_softmax(logits_fn(p), axis=-1)  # noqa: E731
    pi = jnp.exp(log_pi(params))
    v, q = mdp_lib.policy_evaluation(mdp, pi)
    p_pi = _p_pi(mdp, pi)
    # the stationary distribution: the left eigenvector of P^π with eigenvalue 1, normalised
    system = jnp.concatenate([(p_pi.T - jnp.eye(mdp.num_states)), jnp.ones((1, mdp.num_states))])
    target = jnp.concatenate([jnp.zeros(mdp.num_states), jnp.ones(1)])
    stationary = jnp.linalg.lstsq(system, target)[0]
    weights = (stationary / (1 - mdp.gamma))[:, None] * pi * (q - v[:, None])
    return jnp.einsum("sa,sapq->pq", weights, jax.hessian(log_pi)(params))


# --- 04 -----------------------------------------------------------------------------------------------------------


def step_is_stopped_log_ratios(log_ratios, rewards, values, gamma):
    log_ratios = jax.lax.stop_gradient(log_ratios)

    def step(v_next, inputs):
        log_ratio, reward = inputs
        return jnp.exp(log_ratio) * (reward + gamma * v_next), None

    return jax.lax.scan(step, values[-1], (log_ratios, rewards), reverse=True)[0]


def doubly_robust_stopped_log_ratios(log_ratios, rewards, values, gamma):
    ratios = jnp.exp(jax.lax.stop_gradient(log_ratios))

    def step(v_next, inputs):
        ratio, reward, value = inputs
        return value + ratio * (reward + gamma * v_next - value), None

    return jax.lax.scan(step, values[-1], (ratios, rewards, values[:-1]), reverse=True)[0]


def dr_gradient_without_reward(rewards, values, gamma):
    returns = jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), values[-1], rewards, reverse=True)[1]
    return gamma ** jnp.arange(rewards.shape[0]) * (returns - rewards - values[:-1])


TRIAL_A5_GENERIC_WRONG_ANSWERS = [
    ("hvp", hvp_directional_broadcast, "directional derivative ∇f(x)·v"),
    ("score_function_hessian", score_hessian_mean_score_outer, "batch-mean score"),
    ("score_function_hessian", score_hessian_mean_score_outer_only, "batch-mean score"),
    ("policy_evaluation", policy_evaluation_gamma_09, "γ is fixed at 0.9 instead of mdp.gamma"),
    ("policy_evaluation", policy_evaluation_gamma_099, "γ is fixed at 0.99 instead of mdp.gamma"),
    ("discounted_occupancy", occupancy_gamma_09, "γ is fixed at 0.9 instead of mdp.gamma"),
    ("truncated_occupancy", truncated_occupancy_gamma_09, "γ is fixed at 0.9 instead of mdp.gamma"),
    ("truncated_occupancy", truncated_occupancy_uniform_tail, "spread evenly over the states"),
    ("reinforce_gradient", reinforce_one_discount_too_many, "γ^(t+1)"),
    ("occupancy_policy_gradient", occupancy_gradient_ones, "every state with weight 1"),
    ("occupancy_policy_gradient", occupancy_gradient_uniform_states, "every state equally (1/S)"),
    ("inner_step", inner_step_two_steps, "two gradient steps"),
    ("inner_step", inner_step_three_steps, "three gradient steps"),
    ("missing_hessian_terms", missing_terms_unsymmetrised, "not symmetric"),
    ("missing_hessian_terms", missing_terms_past_squared, "S_{<t} S_{<t}ᵀ"),
    ("expected_surrogate_hessian", surrogate_hessian_stationary, "stationary distribution"),
    ("step_importance_sampling", step_is_stopped_log_ratios, "stop_gradient"),
    ("doubly_robust", doubly_robust_stopped_log_ratios, "stop_gradient"),
    ("dr_log_ratio_gradient", dr_gradient_without_reward, "reward r_t"),
]


@pytest.mark.parametrize("name,wrong,explanation", TRIAL_A5_GENERIC_WRONG_ANSWERS,
                         ids=[w.__name__ for _, w, _ in TRIAL_A5_GENERIC_WRONG_ANSWERS])
def test_trial_a5_generic_wrong_answers_are_named(name, wrong, explanation):
    assert_check_explains(checks, name, wrong, explanation, on_every_input=True)
