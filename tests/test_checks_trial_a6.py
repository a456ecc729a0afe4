"""Wrong answers from trial A6 (notebooks 00–04) that passed, were misnamed or got only "differs"; each is now named.

Passed: a 400 000-step `fori_loop` for `policy_evaluation` / `discounted_occupancy` (the exercise asks for one linear
solve) and an occupancy cut off after 300 steps in `expected_surrogate_hessian`. Misnamed (as finite differences or
an off-by-one): a float32 step inside a float64 `score_function_gradient`, the occupancy cut off after 100 steps,
and a doubly robust estimate whose control variate is V(x_T) at every step. Generic: a Hessian-vector product
times 2, G_t = γ r_t + G_{t+1}, REINFORCE without the critic, θ' = sg(θ) + η∇J, step-wise IS divided by the mean
ratio. Each row is (check module, exercise, wrong function, phrase the message must contain).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from _exercises import assert_check_explains

from metagrad import exact
from metagrad import mdp as mdp_lib
from metagrad.course.checks import nb00, nb01, nb02, nb03, nb04


def _p_and_r(mdp, policy):
    return jnp.einsum("sa,sat->st", policy, mdp.transitions), jnp.sum(policy * mdp.rewards, axis=-1)


def values_by_long_loop(mdp, policy):
    p, r = _p_and_r(mdp, policy)
    return jax.lax.fori_loop(0, 400_000, lambda _, v: r + mdp.gamma * p @ v, jnp.zeros_like(r))


def occupancy_by_long_loop(mdp, policy):
    p, _ = _p_and_r(mdp, policy)
    return jax.lax.fori_loop(0, 400_000, lambda _, d: mdp.initial + mdp.gamma * p.T @ d, jnp.zeros_like(mdp.initial))


def surrogate_hessian_cut_off(horizon):
    def expected_surrogate_hessian(mdp, logits_fn, params):
        log_pi = lambda p: jax.nn.log_softmax(logits_fn(p), axis=-1)  # noqa: E731
        pi = jnp.exp(log_pi(params))
        v, q = mdp_lib.policy_evaluation(mdp, pi)
        p_pi, _ = _p_and_r(mdp, pi)
        step = lambda t, c: (c[0] + mdp.gamma**t * c[1], c[1] @ p_pi)  # noqa: E731
        d, _ = jax.lax.fori_loop(0, horizon, step, (jnp.zeros_like(mdp.initial), mdp.initial))
        return jnp.einsum("sa,sapq->pq", d[:, None] * pi * (q - v[:, None]), jax.hessian(log_pi)(params))

    return expected_surrogate_hessian


def score_gradient_in_float32(logits, actions, rewards):
    log_pi = lambda t, a: jax.nn.log_softmax(t)[a]  # noqa: E731
    scores = jax.vmap(jax.grad(log_pi), in_axes=(None, 0))(logits.astype(jnp.float32), actions)
    return jnp.mean(rewards.astype(jnp.float32)[:, None] * scores, axis=0).astype(jnp.float64)


def dr_last_value_as_control_variate(log_ratios, rewards, values, gamma):
    estimate = values[-1]
    for t in reversed(range(rewards.shape[0])):
        estimate = values[-1] + jnp.exp(log_ratios[t]) * (rewards[t] + gamma * estimate - values[-1])
    return estimate


def reward_to_go_discounting_now(rewards, gamma, bootstrap=0.0):
    def step(later, reward):
        g = gamma * reward + later
        return g, g

    return jax.lax.scan(step, jnp.asarray(bootstrap, dtype=rewards.dtype), rewards, reverse=True)[1]


def reinforce_without_critic(logits, trajectories, critic, gamma):
    states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
    returns = jnp.flip(jnp.cumsum(jnp.flip(rewards * gamma ** jnp.arange(rewards.shape[1]), 1), 1), 1)
    returns = returns / gamma ** jnp.arange(rewards.shape[1])  # G_t = Σ_{s≥t} γ^(s−t) r_s, no bootstrap

    def surrogate(theta):
        log_pi = jnp.take_along_axis(jax.nn.log_softmax(theta[states[:, :-1]], -1), actions[..., None], -1)[..., 0]
        return jnp.mean(jnp.sum(gamma ** jnp.arange(rewards.shape[1]) * returns * log_pi, axis=1))

    return jax.grad(surrogate)(logits)


def step_is_over_mean_ratio(log_ratios, rewards, values, gamma):
    def step(later, inputs):
        log_ratio, reward = inputs
        return jnp.exp(log_ratio) * (reward + gamma * later), None

    return jax.lax.scan(step, values[-1], (log_ratios, rewards), reverse=True)[0] / jnp.mean(jnp.exp(log_ratios))


TRIAL_A6_WRONG_ANSWERS = [
    (nb01, "policy_evaluation", values_by_long_loop, "its program loops"),
    (nb01, "discounted_occupancy", occupancy_by_long_loop, "its program loops"),
    (nb03, "expected_surrogate_hessian", surrogate_hessian_cut_off(300), "Its occupancy stops after 300 steps"),
    (nb03, "expected_surrogate_hessian", surrogate_hessian_cut_off(100), "Its occupancy stops after 100 steps"),
    (nb00, "score_function_gradient", score_gradient_in_float32, "below float32's resolution"),
    (nb04, "doubly_robust", dr_last_value_as_control_variate, "as the control variate at every step"),
    (nb00, "hvp", lambda f, x, v: 2 * jax.jvp(jax.grad(f), (x,), (v,))[1], "It is 2 times the right answer"),
    (nb02, "reward_to_go", reward_to_go_discounting_now, "It discounts the current reward"),
    (nb02, "reinforce_gradient", reinforce_without_critic, "It ignores the critic altogether"),
    (
        nb03,
        "inner_step",
        lambda mdp, logits, eta: jax.lax.stop_gradient(logits) + eta * jax.grad(exact.value, argnums=1)(mdp, logits),
        "without its identity term",
    ),
    (nb04, "step_importance_sampling", step_is_over_mean_ratio, "a factor that changes with the input"),
]


@pytest.mark.parametrize(
    ("module", "name", "wrong", "explanation"),
    TRIAL_A6_WRONG_ANSWERS,
    ids=[f"{row[1]}-{i}" for i, row in enumerate(TRIAL_A6_WRONG_ANSWERS)],
)
def test_trial_a6_wrong_answer_is_named(module, name, wrong, explanation):
    assert_check_explains(module, name, wrong, explanation)
