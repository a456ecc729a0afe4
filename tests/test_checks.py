"""Every exercise check (parts I and II) passes the notebook's solution, fails its stub and fails plausible wrong answers.

The solutions and stubs are taken from the notebooks themselves: the exercise cells of
``solutions/NN_*.ipynb`` are executed (after the notebook's import cell) to get the solution functions,
and the same cells with their solution regions replaced by ``metagrad course build`` give the stubs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exercises import assert_check_explains, exercise_functions, exercises

from metagrad.course import checks

EXERCISES = exercises("from metagrad.course import checks\n")
ALL = [(nb, name, checks) for nb, name in EXERCISES]


def test_every_exercise_has_a_check_and_every_check_an_exercise():
    assert sorted(name for _, name in EXERCISES) == sorted(checks.EXERCISES)
    assert len(set(checks.EXERCISES)) == len(checks.EXERCISES), "exercise names must be unique"


@pytest.mark.parametrize("notebook,name,module", ALL, ids=[n for _, n, _ in ALL])
def test_check_passes_the_solution(notebook, name, module, capsys):
    fn = exercise_functions(notebook, stubs=False)[name]
    getattr(module, f"check_{name}")(fn)
    assert capsys.readouterr().out.startswith(f"✓ Exercise `{name}` passed")
    assert checks.results()[name] is True


@pytest.mark.parametrize("notebook,name,module", ALL, ids=[n for _, n, _ in ALL])
def test_check_fails_the_stub_with_a_friendly_message(notebook, name, module):
    fn = exercise_functions(notebook, stubs=True)[name]
    with pytest.raises(checks.ExerciseCheckFailed, match="not implemented yet") as info:
        getattr(module, f"check_{name}")(fn)
    assert checks.results()[name] is False
    rendered = info.value._render_traceback_()
    assert len(rendered) == 1 and rendered[0].startswith("✗ Exercise") and "Traceback" not in rendered[0]


# ---------------------------------------------------------------------------------------------------
# Plausible wrong answers, each with the words the check must use to explain it.


def _policy_transitions(mdp, policy):
    return jnp.einsum("xa,xay->xy", policy, mdp.transitions), jnp.sum(policy * mdp.rewards, axis=1)


def hvp_elementwise(f, x, v):
    return jax.grad(f)(x) * v


def score_of_probability(logits, actions, rewards):
    return jax.grad(lambda th: jnp.mean(rewards * jax.nn.softmax(th)[actions]))(logits)


def magic_box_without_stop_gradient(x):
    return jnp.exp(x - x)


def magic_box_plain_exp(x):
    return jnp.exp(x)


def policy_evaluation_transposed(mdp, policy):
    p, r = _policy_transitions(mdp, policy)
    return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p.T, r)


def policy_evaluation_wrong_shape(mdp, policy):
    p, r = _policy_transitions(mdp, policy)
    return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p, r)[None]


def occupancy_not_transposed(mdp, policy):
    p, _ = _policy_transitions(mdp, policy)
    return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p, mdp.initial)


def reward_to_go_off_by_one(rewards, gamma, bootstrap=0.0):
    out, running = [], bootstrap
    for r in reversed(list(rewards)):
        out.append(running)  # forgets r_t: the return *after* step t
        running = r + gamma * running
    return jnp.array(out[::-1])


def reward_to_go_undiscounted(rewards, gamma, bootstrap=0.0):
    return jnp.cumsum(rewards[::-1])[::-1] + bootstrap


def reinforce_time_indexed_critic(logits, trajectories, critic, gamma):
    from metagrad.tabular import log_policy

    states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
    horizon = rewards.shape[1]
    returns = []
    for n in range(rewards.shape[0]):
        g, row = critic[states[n, -1]], []
        for t in reversed(range(horizon)):
            g = rewards[n, t] + gamma * g
            row.append(g)
        returns.append(row[::-1])
    advantages = jnp.array(returns) - critic[jnp.arange(horizon)]  # the pitfall: critic[t], not critic[x_t]
    weights = gamma ** jnp.arange(horizon)
    return jax.grad(lambda th: jnp.mean(jnp.sum(weights * advantages * log_policy(th, states[:, :-1], actions), 1)))(logits)


def inner_step_first_order(mdp, logits, step_size):
    from metagrad import exact

    return logits + step_size * jax.lax.stop_gradient(jax.grad(exact.value, argnums=1)(mdp, logits))


def inner_step_descent(mdp, logits, step_size):
    from metagrad import exact

    return logits - step_size * jax.grad(exact.value, argnums=1)(mdp, logits)


def missing_terms_outer_only(scores, advantages, gamma):
    w = gamma ** jnp.arange(scores.shape[0]) * advantages
    return jnp.einsum("t,ti,tj->ij", w, scores, scores)


def missing_terms_inclusive(scores, advantages, gamma):
    past = jnp.cumsum(scores, axis=0)  # includes step t: off by one
    w = gamma ** jnp.arange(scores.shape[0]) * advantages
    cross = jnp.einsum("t,ti,tj->ij", w, scores, past)
    return jnp.einsum("t,ti,tj->ij", w, scores, scores) + cross + cross.T


def trajectory_wise_is(log_ratios, rewards, values, gamma):
    t = jnp.arange(rewards.shape[0])
    return jnp.exp(jnp.sum(log_ratios)) * (jnp.sum(gamma**t * rewards) + gamma ** rewards.shape[0] * values[-1])


def step_is_with_numpy(log_ratios, rewards, values, gamma):
    rho = np.exp(np.asarray(log_ratios))  # NumPy: right value, but not differentiable
    v = float(values[-1])
    for t in reversed(range(len(rho))):
        v = rho[t] * (float(rewards[t]) + gamma * v)
    return v


def dr_undiscounted(log_ratios, rewards, values, gamma):
    v = values[-1]
    for t in reversed(range(rewards.shape[0])):
        v = values[t] + jnp.exp(log_ratios[t]) * (rewards[t] + v - values[t])
    return v


def dr_next_state_critic(log_ratios, rewards, values, gamma):
    v = values[-1]
    for t in reversed(range(rewards.shape[0])):
        v = values[t + 1] + jnp.exp(log_ratios[t]) * (rewards[t] + gamma * v - values[t + 1])
    return v


WRONG_ANSWERS = [
    ("hvp", hvp_elementwise, "differentiate the gradient"),
    ("score_function_gradient", score_of_probability, "log π"),
    ("magic_box", magic_box_without_stop_gradient, "without stop_gradient"),
    ("magic_box", magic_box_plain_exp, "exactly 1"),
    ("policy_evaluation", policy_evaluation_transposed, "no transpose"),
    ("policy_evaluation", policy_evaluation_wrong_shape, "shape"),
    ("discounted_occupancy", occupancy_not_transposed, "transpose"),
    ("reward_to_go", reward_to_go_off_by_one, "off by one"),
    ("reward_to_go", reward_to_go_undiscounted, "ignores γ"),
    ("reinforce_gradient", reinforce_time_indexed_critic, "indexed by time"),
    ("inner_step", inner_step_first_order, "first-order MAML"),
    ("inner_step", inner_step_descent, "gradient ascent"),
    ("missing_hessian_terms", missing_terms_outer_only, "cross terms"),
    ("missing_hessian_terms", missing_terms_inclusive, "off by one"),
    ("step_importance_sampling", trajectory_wise_is, "trajectory-wise IS"),
    ("step_importance_sampling", step_is_with_numpy, "differentiated in the log-ratios"),
    ("doubly_robust", dr_undiscounted, "ignores γ"),
    ("doubly_robust", dr_next_state_critic, "off by one"),
]


@pytest.mark.parametrize("name,wrong,explanation", WRONG_ANSWERS, ids=[w.__name__ for _, w, _ in WRONG_ANSWERS])
def test_check_explains_a_wrong_answer(name, wrong, explanation):
    assert_check_explains(checks, name, wrong, explanation)


def test_check_rejects_a_non_function():
    with pytest.raises(checks.ExerciseCheckFailed, match="pass the function itself"):
        checks.check_hvp(3.0)


def test_student_exceptions_become_one_sentence():
    def broken(mdp, policy):
        raise KeyError("oops")

    with pytest.raises(checks.ExerciseCheckFailed, match=r"raised KeyError: 'oops'\."):
        checks.check_policy_evaluation(broken)
