"""Wrong answers from trial A3 (notebooks 00–04): each is refused, and the message names the mistake.

Finite differences where autodiff is asked (score-function gradient and Hessian, REINFORCE, the surrogate's
expected Hessian), a magic box that overflows at large |x| or returns float32, and four answers whose message
used to name another mistake (greedy reward, whole return, a reward table, float32 step-wise IS).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad.course import checks
from metagrad.course.checks import nb00


def _central(f, x, h):
    """Central differences of scalar- or array-valued f along each coordinate of x (flattened), stacked last."""
    flat = x.reshape(-1)
    cols = [(f((flat + h * e).reshape(x.shape)) - f((flat - h * e).reshape(x.shape))) / (2 * h) for e in jnp.eye(flat.size)]
    return jnp.stack(cols, axis=-1).reshape(jnp.shape(f(x)) + x.shape)


# --- finite differences -----------------------------------------------------------------------------------------


def score_gradient_fd(h):
    def wrong(logits, actions, rewards):
        return _central(lambda t: jnp.mean(rewards * jax.nn.log_softmax(t)[actions]), logits, h)

    return wrong


def score_hessian_fd(h):
    def wrong(logits, actions, rewards):
        grad = lambda t: jax.grad(lambda u: jnp.mean(rewards * jax.nn.log_softmax(u)[actions]))(t)  # noqa: E731
        scores = jax.vmap(jax.grad(lambda t, a: jax.nn.log_softmax(t)[a]), in_axes=(None, 0))(logits, actions)
        return _central(grad, logits, h) + jnp.einsum("n,ni,nj->ij", rewards, scores, scores) / rewards.shape[0]

    return wrong


def reinforce_fd(h):
    from metagrad.course.checks.nb02 import _reinforce_reference

    def wrong(logits, trajectories, critic, gamma):
        from metagrad.tabular import log_policy

        exact = _reinforce_reference(logits, trajectories, critic, gamma)
        # the surrogate whose gradient is the estimate: Σ_s,a exact[s,a]·logits is not it; differentiate numerically
        states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
        horizon = rewards.shape[1]
        disc = gamma ** jnp.arange(horizon)
        boot = critic[states[:, -1]]
        returns = jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), boot, rewards.T, reverse=True)[1].T
        adv = returns - critic[states[:, :-1]]
        surrogate = lambda t: jnp.mean(jnp.sum(disc * adv * log_policy(t, states[:, :-1], actions), axis=1))  # noqa: E731
        del exact
        return _central(surrogate, logits, h)

    return wrong


def expected_hessian_fd(h):
    from metagrad import mdp as mdp_lib

    def wrong(mdp, logits_fn, params):
        log_pi = lambda p: jax.nn.log_softmax(logits_fn(p), axis=-1)  # noqa: E731
        pi = jnp.exp(log_pi(params))
        v, q = mdp_lib.policy_evaluation(mdp, pi)
        w = mdp_lib.discounted_occupancy(mdp, pi)[:, None] * pi * (q - v[:, None])
        hess = _central(jax.jacobian(log_pi), params, h)  # [S, A, P, P]
        return jnp.einsum("sa,sapq->pq", w, hess)

    return wrong


STEPS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


@pytest.mark.parametrize("h", STEPS)
@pytest.mark.parametrize(
    "name,make",
    [("score_function_gradient", score_gradient_fd), ("score_function_hessian", score_hessian_fd),
     ("reinforce_gradient", reinforce_fd), ("expected_surrogate_hessian", expected_hessian_fd)],
)
def test_finite_differences_are_named(name, make, h):
    with pytest.raises(checks.ExerciseCheckFailed) as info:
        getattr(checks, f"check_{name}")(make(h))
    message = str(info.value)
    assert "finite differences" in message and ("shifted by 10⁴" in message or "10⁴ + θ" in message), message
    assert len(message) < 400 and checks.results()[name] is False


def test_logits_that_overflow_are_named():
    def naive(logits, actions, rewards):  # log π from exp(logits) directly: inf / inf at logits near 10⁴
        log_pi = lambda t: jnp.log(jnp.exp(t) / jnp.sum(jnp.exp(t)))[actions]  # noqa: E731
        return jax.grad(lambda t: jnp.mean(rewards * log_pi(t)))(logits)

    with pytest.raises(checks.ExerciseCheckFailed) as info:
        checks.check_score_function_gradient(naive)
    assert "NaN or infinity" in str(info.value) and "overflows" in str(info.value), str(info.value)


# --- magic box ------------------------------------------------------------------------------------------------


def magic_box_ratio(x):
    return jnp.exp(x) / jnp.exp(jax.lax.stop_gradient(x))


def magic_box_float32(x):
    return jnp.exp((x - jax.lax.stop_gradient(x)).astype(jnp.float32))


def test_magic_box_overflow_is_named():
    with pytest.raises(checks.ExerciseCheckFailed) as info:
        checks.check_magic_box(magic_box_ratio)
    message = str(info.value)
    assert "800" in message and "overflows" in message and len(message) < 400, message


def test_magic_box_float32_is_named():
    with pytest.raises(checks.ExerciseCheckFailed) as info:
        checks.check_magic_box(magic_box_float32)
    assert "float32" in str(info.value), str(info.value)


# --- misnamed before ------------------------------------------------------------------------------------------


def policy_evaluation_greedy_reward(mdp, policy):
    p = jnp.einsum("sa,sat->st", policy, mdp.transitions)
    return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p, jnp.max(mdp.rewards, -1))


def policy_evaluation_action_0(mdp, policy):
    p = jnp.einsum("sa,sat->st", policy, mdp.transitions)
    return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p, mdp.rewards[:, 0])


def reward_to_go_whole_return(rewards, gamma, bootstrap=0.0):
    horizon = rewards.shape[0]
    return jnp.full((horizon,), jnp.sum(gamma ** jnp.arange(horizon) * rewards) + gamma**horizon * bootstrap)


def score_gradient_reward_table(logits, actions, rewards):
    return jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * jnp.zeros_like(t).at[actions].set(rewards)))(logits)


def step_is_float32(log_ratios, rewards, values, gamma):
    k = log_ratios.astype(jnp.float32)
    t = jnp.arange(rewards.shape[0])
    w = jnp.cumprod(jnp.exp(k))
    horizon = rewards.shape[0]
    return (jnp.sum(gamma**t * w * rewards) + gamma**horizon * w[-1] * values[-1]).astype(jnp.float32)


NAMED = [
    ("policy_evaluation", policy_evaluation_greedy_reward, "largest reward of each state"),
    ("policy_evaluation", policy_evaluation_action_0, "rewards of action 0 only"),
    ("reward_to_go", reward_to_go_whole_return, "whole return G_0"),
    ("score_function_gradient", score_gradient_reward_table, "reward table"),
    ("step_importance_sampling", step_is_float32, "float32"),
]


@pytest.mark.parametrize("name,wrong,explanation", NAMED, ids=[w.__name__ for _, w, _ in NAMED])
def test_trial_a3_wrong_answers_are_named(name, wrong, explanation):
    with pytest.raises(checks.ExerciseCheckFailed) as info:
        getattr(checks, f"check_{name}")(wrong)
    message = str(info.value)
    assert explanation in message and "matches a known mistake" not in message, message
    assert len(message) < 400 and checks.results()[name] is False


def test_shift_makes_every_finite_difference_step_inexact():
    """The premise of the refusal: on the shifted logits no step h gets within 1e-9, autodiff within 1e-15."""
    logits, actions, rewards = nb00._shifted_bandit_case()
    f = lambda t: jnp.mean(rewards * jax.nn.log_softmax(t)[actions])  # noqa: E731
    exact = np.asarray(jax.grad(f)(logits))
    for h in 10.0 ** -np.arange(1, 11):
        fd = np.asarray(_central(f, logits, h))
        assert np.max(np.abs(fd - exact)) / np.max(np.abs(exact)) > 10 * nb00._EXACT_RTOL, h
