"""Every exercise check (parts I and II) passes the notebook's solution, fails its stub and fails plausible wrong answers.

The solutions and stubs are taken from the notebooks themselves: the exercise cells of
``solutions/NN_*.ipynb`` are executed (after the notebook's import cell) to get the solution functions,
and the same cells with their solution regions replaced by ``metagrad course build`` give the stubs.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exercises import assert_check_explains, exercise_functions, exercises

from metagrad.course import checks

EXERCISES = exercises("from metagrad.course import checks")
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


def score_gradient_python_loop(logits, actions, rewards):  # right eagerly, but float() breaks jit/vmap
    total = jnp.zeros_like(logits)
    for a, r in zip(actions, rewards):
        total = total + float(r) * jax.grad(lambda th: jax.nn.log_softmax(th)[a])(logits)
    return total / len(actions)


def _log_pi_derivatives(logits, actions):
    log_pi = lambda th, a: jax.nn.log_softmax(th)[a]  # noqa: E731
    scores = jax.vmap(jax.grad(log_pi), in_axes=(None, 0))(logits, actions)
    return scores, jax.vmap(jax.hessian(log_pi), in_axes=(None, 0))(logits, actions)


def score_hessian_naive(logits, actions, rewards):  # the surrogate's Hessian: no outer product
    return jax.hessian(lambda th: jnp.mean(rewards * jax.nn.log_softmax(th)[actions]))(logits)


def score_hessian_summed(logits, actions, rewards):
    scores, curvature = _log_pi_derivatives(logits, actions)
    return jnp.einsum("n,nij->ij", rewards, curvature) + jnp.einsum("n,ni,nj->ij", rewards, scores, scores)


def score_hessian_outer_of_mean(logits, actions, rewards):
    scores, curvature = _log_pi_derivatives(logits, actions)
    mean = jnp.einsum("n,ni->i", rewards, scores) / rewards.shape[0]
    return jnp.einsum("n,nij->ij", rewards, curvature) / rewards.shape[0] + jnp.outer(mean, mean)


def score_hessian_outer_only(logits, actions, rewards):
    scores, _ = _log_pi_derivatives(logits, actions)
    return jnp.einsum("n,ni,nj->ij", rewards, scores, scores) / rewards.shape[0]


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


def _surrogate_pieces(mdp, logits_fn, params):
    from metagrad import mdp as mdp_lib

    log_pi = lambda p: jax.nn.log_softmax(logits_fn(p), axis=-1)  # noqa: E731
    pi = jnp.exp(log_pi(params))
    v, q = mdp_lib.policy_evaluation(mdp, pi)
    d = mdp_lib.discounted_occupancy(mdp, pi)
    return jax.hessian(log_pi)(params), jax.jacobian(log_pi)(params), pi, v, q, d


def surrogate_hessian_with_q(mdp, logits_fn, params):  # no baseline: Q instead of A
    h, _, pi, v, q, d = _surrogate_pieces(mdp, logits_fn, params)
    return jnp.einsum("sa,sapq->pq", d[:, None] * pi * q, h)


def surrogate_hessian_start_only(mdp, logits_fn, params):  # only the start distribution, not the occupancy
    h, _, pi, v, q, d = _surrogate_pieces(mdp, logits_fn, params)
    return jnp.einsum("sa,sapq->pq", mdp.initial[:, None] * pi * (q - v[:, None]), h)


def surrogate_hessian_lvc(mdp, logits_fn, params):  # adds the score outer products
    h, g, pi, v, q, d = _surrogate_pieces(mdp, logits_fn, params)
    w = d[:, None] * pi * (q - v[:, None])
    return jnp.einsum("sa,sapq->pq", w, h) + jnp.einsum("sa,sap,saq->pq", w, g, g)


def surrogate_hessian_exact(mdp, logits_fn, params):  # "the library function for the wrong quantity": ∇²J
    from metagrad import exact

    return jax.hessian(lambda p: exact.value(mdp, logits_fn(p)))(params)


def surrogate_hessian_numpy(mdp, logits_fn, params):  # right numbers eagerly, but not traceable under jit
    h, _, pi, v, q, d = _surrogate_pieces(mdp, logits_fn, params)
    w = np.asarray(d)[:, None] * np.asarray(pi) * np.asarray(q - v[:, None])
    return np.einsum("sa,sapq->pq", w, np.asarray(h))


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


def _dr_returns(rewards, values, gamma):
    return jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), values[-1], rewards, reverse=True)[1]


def dr_gradient_undiscounted(rewards, values, gamma):
    return _dr_returns(rewards, values, gamma) - values[:-1]


def dr_gradient_td_error(rewards, values, gamma):
    return gamma ** jnp.arange(rewards.shape[0]) * (rewards + gamma * values[1:] - values[:-1])


def dr_gradient_no_baseline(rewards, values, gamma):
    return gamma ** jnp.arange(rewards.shape[0]) * _dr_returns(rewards, values, gamma)


def dr_gradient_numpy_loop(rewards, values, gamma):  # right values, but float() breaks jit
    g, out = float(values[-1]), []
    for t in reversed(range(rewards.shape[0])):
        g = float(rewards[t]) + gamma * g
        out.append(gamma**t * (g - float(values[t])))
    return jnp.array(out[::-1])


def dr_stop_gradient_ratios(log_ratios, rewards, values, gamma):  # right value, zero gradient
    def step(v_next, inputs):
        log_ratio, reward, value = inputs
        return value + jnp.exp(jax.lax.stop_gradient(log_ratio)) * (reward + gamma * v_next - value), None

    return jax.lax.scan(step, values[-1], (log_ratios, rewards, values[:-1]), reverse=True)[0]


def step_is_python_if(log_ratios, rewards, values, gamma):  # a Python `if` on a traced value
    v = values[-1]
    for t in reversed(range(rewards.shape[0])):
        if log_ratios[t] == 0:
            v = rewards[t] + gamma * v
        else:
            v = jnp.exp(log_ratios[t]) * (rewards[t] + gamma * v)
    return v


def _pg_pieces(mdp, logits):
    from metagrad import mdp as mdp_lib

    pi = jax.nn.softmax(logits, axis=-1)
    v, q = mdp_lib.policy_evaluation(mdp, pi)
    return pi, v, q


def occupancy_gradient_with_q(mdp, logits, occupancy):
    pi, v, q = _pg_pieces(mdp, logits)
    return occupancy[:, None] * pi * q


def occupancy_gradient_without_pi(mdp, logits, occupancy):
    pi, v, q = _pg_pieces(mdp, logits)
    return occupancy[:, None] * (q - v[:, None])


def occupancy_gradient_ignores_argument(mdp, logits, occupancy):  # always d^π: right only for d^π
    from metagrad import exact  # exact.gradient itself is refused (FORBIDDEN): its autodiff form, the same numbers

    return jax.grad(lambda th: exact.value(mdp, th))(logits)


def truncated_occupancy_no_transpose(mdp, policy, horizon):
    p, _ = _policy_transitions(mdp, policy)
    dist, out = mdp.initial, 0.0
    for t in range(horizon):
        out = out + mdp.gamma**t * dist
        dist = p @ dist
    return out


def truncated_occupancy_inclusive(mdp, policy, horizon):  # t = 0 … T: one step too many
    p, _ = _policy_transitions(mdp, policy)
    dist, out = mdp.initial, 0.0
    for t in range(horizon + 1):
        out = out + mdp.gamma**t * dist
        dist = p.T @ dist
    return out


def truncated_occupancy_full(mdp, policy, horizon):  # the library's d^π: ignores the horizon
    from metagrad import mdp as mdp_lib

    return mdp_lib.discounted_occupancy(mdp, policy)


WRONG_ANSWERS = [
    ("hvp", hvp_elementwise, "∇f(x)·v elementwise"),
    ("score_function_gradient", score_of_probability, "log π"),
    ("score_function_gradient", score_gradient_python_loop, "cannot trace"),
    ("score_function_hessian", score_hessian_naive, "Hessian of the surrogate"),
    ("score_function_hessian", score_hessian_summed, "N times too large"),
    ("score_function_hessian", score_hessian_outer_of_mean, "averaged score"),
    ("score_function_hessian", score_hessian_outer_only, "only the score outer products"),
    ("magic_box", magic_box_without_stop_gradient, "without stop_gradient"),
    ("magic_box", magic_box_plain_exp, "exactly 1"),
    ("policy_evaluation", policy_evaluation_transposed, "no transpose"),
    ("policy_evaluation", policy_evaluation_wrong_shape, "shape"),
    ("discounted_occupancy", occupancy_not_transposed, "transpose"),
    ("truncated_occupancy", truncated_occupancy_no_transpose, "transpose"),
    ("truncated_occupancy", truncated_occupancy_inclusive, "off by one"),
    ("truncated_occupancy", truncated_occupancy_full, "the full d^π"),
    ("reward_to_go", reward_to_go_off_by_one, "off by one"),
    ("reward_to_go", reward_to_go_undiscounted, "ignores γ"),
    ("reinforce_gradient", reinforce_time_indexed_critic, "indexed by time"),
    ("occupancy_policy_gradient", occupancy_gradient_with_q, "advantage"),
    ("occupancy_policy_gradient", occupancy_gradient_without_pi, "π(a|x) is missing"),
    ("occupancy_policy_gradient", occupancy_gradient_ignores_argument, "ignores the `occupancy` argument"),
    ("inner_step", inner_step_first_order, "first-order MAML"),
    ("inner_step", inner_step_descent, "gradient ascent"),
    ("missing_hessian_terms", missing_terms_outer_only, "cross terms"),
    ("missing_hessian_terms", missing_terms_inclusive, "off by one"),
    ("expected_surrogate_hessian", surrogate_hessian_with_q, "advantage"),
    ("expected_surrogate_hessian", surrogate_hessian_start_only, "occupancy"),
    ("expected_surrogate_hessian", surrogate_hessian_lvc, "LVC"),
    ("expected_surrogate_hessian", surrogate_hessian_exact, "wrong on"),
    ("expected_surrogate_hessian", surrogate_hessian_numpy, "cannot trace"),
    ("step_importance_sampling", trajectory_wise_is, "trajectory-wise IS"),
    ("step_importance_sampling", step_is_with_numpy, "cannot trace"),
    ("doubly_robust", dr_undiscounted, "ignores γ"),
    ("step_importance_sampling", step_is_python_if, "cannot trace"),
    ("doubly_robust", dr_stop_gradient_ratios, "value is right but its gradient is wrong"),
    ("dr_log_ratio_gradient", dr_gradient_undiscounted, "without the factor γ^t"),
    ("dr_log_ratio_gradient", dr_gradient_td_error, "one-step TD error"),
    ("dr_log_ratio_gradient", dr_gradient_no_baseline, "must be subtracted"),
    ("dr_log_ratio_gradient", dr_gradient_numpy_loop, "cannot trace"),
    ("doubly_robust", dr_next_state_critic, "off by one"),
]


def test_check_rejects_a_non_function():
    with pytest.raises(checks.ExerciseCheckFailed, match="pass the function itself"):
        checks.check_hvp(3.0)


def test_student_exceptions_become_one_sentence():
    def broken(mdp, policy):
        raise KeyError("oops")

    with pytest.raises(checks.ExerciseCheckFailed, match=r"raised KeyError: 'oops'\."):
        checks.check_policy_evaluation(broken)


# ---------------------------------------------------------------------------------------------------
# The shared diagnosis (checks/_diagnose.py): which part is wrong, mistakes on every case, jit and vmap.


def _toy_compare(student, **kwargs):
    from metagrad.course.checks import _diagnose as d

    def reference(x, gamma):
        return d._with_derivatives(lambda z: jnp.sum(gamma ** jnp.arange(z.shape[0]) * jnp.exp(z)))(x)

    def student_parts(x, gamma):
        return d._with_derivatives(lambda z: student(z, gamma))(x)

    cases = [
        ("x = [0, 0]", (jnp.zeros(2), 0.5)),
        ("x = [1, 2]", (jnp.array([1.0, 2.0]), 0.9)),
        ("x = [0.5, -1]", (jnp.array([0.5, -1.0]), 0.9)),
    ]
    d._compare(
        "toy", student_parts, reference, cases, expected_form="(a scalar)", parts=d.value_gradient_hessian_parts, **kwargs
    )


def test_compare_names_the_wrong_part_and_counts_the_wrong_inputs():
    def right(z, g):
        return jnp.sum(g ** jnp.arange(z.shape[0]) * jnp.exp(z))

    # (z − sg(z))²/2 has value 0 and gradient 0 but Hessian I: only the Hessian is wrong, on every input.
    with pytest.raises(checks.ExerciseCheckFailed, match=r"wrong on 3 of 3 inputs; first on x = \[0, 0\]: its value and gradient are right but its Hessian is wrong"):
        _toy_compare(lambda z, g: right(z, g) + 0.5 * jnp.sum((z - jax.lax.stop_gradient(z)) ** 2))
    # z − sg(z) changes the gradient only.
    with pytest.raises(checks.ExerciseCheckFailed, match="its value and Hessian are right but its gradient is wrong"):
        _toy_compare(lambda z, g: right(z, g) + jnp.sum(z - jax.lax.stop_gradient(z)))
    # A wrong value only where z ≠ 0: two of the three inputs.
    with pytest.raises(checks.ExerciseCheckFailed, match="wrong on 2 of 3 inputs; first on x = \\[1, 2\\]: its gradient and Hessian are right but its value is wrong"):
        _toy_compare(lambda z, g: right(z, g) + jax.lax.stop_gradient(jnp.sum(z**2)))


def test_a_mistake_is_recognised_even_when_the_first_wrong_input_cannot_show_it():
    from metagrad.course.checks import _diagnose as d

    def undiscounted(x, gamma):
        return jnp.sum(x)

    def reference(x, gamma):
        return jnp.sum(gamma ** jnp.arange(x.shape[0]) * x)

    def student(x, gamma):  # ignores γ, and adds an error only on the first input, where the hint cannot match
        return jnp.sum(x) + (x[0] == 7.0)

    cases = [("x0", (jnp.array([7.0, 1.0]), 0.5)), ("x1", (jnp.array([1.0, 1.0]), 0.5)), ("x2", (jnp.array([2.0, 3.0]), 0.9))]
    with pytest.raises(checks.ExerciseCheckFailed, match="ignores γ"):
        d._compare("toy", student, reference, cases, expected_form="", mistakes=[(undiscounted, "It ignores γ.")])


def test_compare_runs_the_function_under_jit_and_vmap():
    _toy_compare(lambda z, g: jnp.sum(g ** jnp.arange(z.shape[0]) * jnp.exp(z)), jit=True, vmap_in_axes=(0, None))
    from metagrad.course.checks import _diagnose as d

    cases = [("x0", (jnp.array([1.0, 2.0]),)), ("x1", (jnp.array([3.0, 4.0]),))]
    with pytest.raises(checks.ExerciseCheckFailed, match="under jax.jit.*cannot trace"):
        d._compare("toy", lambda x: float(x[0]) + x[1], lambda x: x[0] + x[1], cases, expected_form="", jit=True)
    with pytest.raises(checks.ExerciseCheckFailed, match="under jax.vmap because JAX cannot trace"):
        d._compare(
            "toy", lambda x: np.sum(np.asarray(x)), lambda x: jnp.sum(x), cases, expected_form="", vmap_in_axes=(0,)
        )


def test_compare_names_shape_and_dtype_problems():
    from metagrad.course.checks import _diagnose as d

    cases = [("x0", (jnp.array([1.0, 2.0]),))]
    with pytest.raises(checks.ExerciseCheckFailed, match="integers"):
        d._compare("toy", lambda x: jnp.array([1, 2]), lambda x: x, cases, expected_form="")
    with pytest.raises(checks.ExerciseCheckFailed, match="shape .*transpose"):
        d._compare("toy", lambda x: x[:, None], lambda x: x, cases, expected_form="")


# ---------------------------------------------------------------------------------------------------
# Third edition (issue 19): at least three wrong answers per exercise of notebooks 00–04, each named.


def hvp_gradient_only(f, x, v):
    return jax.grad(f)(x)


def hvp_diagonal_only(f, x, v):  # right whenever the Hessian is diagonal
    return jnp.diag(jax.hessian(f)(x)) * v


def score_gradient_summed(logits, actions, rewards):
    return jax.grad(lambda th: jnp.sum(rewards * jax.nn.log_softmax(th)[actions]))(logits)


def score_gradient_of_logit(logits, actions, rewards):  # forgets the softmax normaliser
    return jax.grad(lambda th: jnp.mean(rewards * th[actions]))(logits)


def magic_box_flipped(x):
    return jnp.exp(jax.lax.stop_gradient(x) - x)


def magic_box_first_order(x):  # value 1, first derivative right, nothing beyond
    return 1.0 + x - jax.lax.stop_gradient(x)


def magic_box_second_order(x):  # a Taylor polynomial: right up to the second derivative, wrong at the third
    y = x - jax.lax.stop_gradient(x)
    return 1.0 + y + 0.5 * y**2


def policy_evaluation_one_step(mdp, policy):
    return _policy_transitions(mdp, policy)[1]


def policy_evaluation_float32(mdp, policy):
    p_pi, r_pi = _policy_transitions(mdp, policy)
    a = (jnp.eye(mdp.num_states) - mdp.gamma * p_pi).astype(jnp.float32)
    return jnp.linalg.solve(a, r_pi.astype(jnp.float32))


def occupancy_normalised(mdp, policy):
    p_pi, _ = _policy_transitions(mdp, policy)
    return (1 - mdp.gamma) * jnp.linalg.solve(jnp.eye(mdp.num_states) - mdp.gamma * p_pi.T, mdp.initial)


def occupancy_loop_200(mdp, policy):  # a loop where a linear solve is needed
    p_pi, _ = _policy_transitions(mdp, policy)
    p, out = mdp.initial, jnp.zeros(mdp.num_states)
    for t in range(200):
        out = out + mdp.gamma**t * p
        p = p_pi.T @ p
    return out


def truncated_occupancy_capped(mdp, policy, horizon):  # a fixed buffer of 100 steps
    p_pi, _ = _policy_transitions(mdp, policy)
    p, out = mdp.initial, jnp.zeros(mdp.num_states)
    for t in range(min(horizon, 100)):
        out = out + mdp.gamma**t * p
        p = p_pi.T @ p
    return out


def reward_to_go_no_bootstrap(rewards, gamma, bootstrap=0.0):
    def step(g, r):
        return r + gamma * g, r + gamma * g

    return jax.lax.scan(step, jnp.zeros((), rewards.dtype), rewards, reverse=True)[1]


def reward_to_go_buffer_128(rewards, gamma, bootstrap=0.0):  # sums at most 128 rewards ahead
    t = jnp.arange(rewards.shape[0])
    window = jnp.arange(128)
    idx = t[:, None] + window[None, :]
    padded = jnp.concatenate([rewards, jnp.zeros(128, rewards.dtype)])
    tail = jnp.where(t + 128 >= rewards.shape[0], gamma ** (rewards.shape[0] - t) * bootstrap, 0.0)
    return jnp.sum(gamma**window * padded[idx], axis=1) + tail


def _reinforce(logits, trajectories, critic, gamma, *, baseline=True, bootstrap=True, mean=True, discount=True):
    from metagrad.tabular import log_policy

    states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
    values = critic[states]
    last = values[:, -1] if bootstrap else jnp.zeros(rewards.shape[0])

    def one(r, b):
        return jax.lax.scan(lambda g, x: (x + gamma * g, x + gamma * g), b, r, reverse=True)[1]

    returns = jax.vmap(one)(rewards, last)
    advantages = jax.lax.stop_gradient(returns - values[:, :-1] if baseline else returns)
    weights = gamma ** jnp.arange(rewards.shape[1]) if discount else jnp.ones(rewards.shape[1])

    def surrogate(theta):
        per = jnp.sum(weights * advantages * log_policy(theta, states[:, :-1], actions), axis=1)
        return jnp.mean(per) if mean else jnp.sum(per)

    return jax.grad(surrogate)(logits)


def reinforce_no_baseline(logits, trajectories, critic, gamma):
    return _reinforce(logits, trajectories, critic, gamma, baseline=False)


def reinforce_no_bootstrap(logits, trajectories, critic, gamma):
    return _reinforce(logits, trajectories, critic, gamma, bootstrap=False)


def reinforce_summed(logits, trajectories, critic, gamma):
    return _reinforce(logits, trajectories, critic, gamma, mean=False)


def reinforce_undiscounted(logits, trajectories, critic, gamma):
    return _reinforce(logits, trajectories, critic, gamma, discount=False)


def inner_step_ignores_step_size(mdp, logits, step_size):
    from metagrad import exact

    return logits + exact.gradient(mdp, logits)


def missing_terms_undiscounted(scores, advantages, gamma):
    past = jnp.cumsum(scores, axis=0) - scores
    outer = jnp.einsum("t,ti,tj->ij", advantages, scores, scores)
    cross = jnp.einsum("t,ti,tj->ij", advantages, scores, past)
    return outer + cross + cross.T


def missing_terms_one_sided(scores, advantages, gamma):
    past = jnp.cumsum(scores, axis=0) - scores
    weights = gamma ** jnp.arange(scores.shape[0]) * advantages
    return jnp.einsum("t,ti,tj->ij", weights, scores, scores) + jnp.einsum("t,ti,tj->ij", weights, scores, past)


def hvp_full_hessian(f, x, v):  # right values, but builds the n×n Hessian the exercise forbids
    return jax.hessian(f)(x) @ v


def hvp_jacfwd_of_grad(f, x, v):
    return jax.jacfwd(jax.grad(f))(x) @ v


def hvp_sign_flipped(f, x, v):
    return -jax.jvp(jax.grad(f), (x,), (v,))[1]


def policy_evaluation_normalised(mdp, policy):
    p, r = _p_pi_r_pi(mdp, policy)
    return (1 - mdp.gamma) * jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p, r)


def occupancy_gradient_own_occupancy(mdp, logits, occupancy):  # ignores the `occupancy` argument
    from metagrad import mdp as mdp_lib

    pi = jax.nn.softmax(logits, axis=-1)
    v, q = mdp_lib.policy_evaluation(mdp, pi)
    return mdp_lib.discounted_occupancy(mdp, pi)[:, None] * pi * (q - v[:, None])


def occupancy_gradient_one_minus_pi(mdp, logits, occupancy):
    from metagrad import mdp as mdp_lib

    pi = jax.nn.softmax(logits, axis=-1)
    v, q = mdp_lib.policy_evaluation(mdp, pi)
    return occupancy[:, None] * (1 - pi) * (q - v[:, None])


def _expected_surrogate_with_occupancy(occupancy_of):
    from metagrad import mdp as mdp_lib

    def wrong(mdp, logits_fn, params):
        log_pi = lambda p: jax.nn.log_softmax(logits_fn(p), axis=-1)  # noqa: E731
        pi = jnp.exp(log_pi(params))
        v, q = mdp_lib.policy_evaluation(mdp, pi)
        weights = occupancy_of(mdp, pi)[:, None] * pi * (q - v[:, None])
        return jnp.einsum("sa,sapq->pq", weights, jax.hessian(log_pi)(params))

    return wrong


def _start_in_state_0(mdp, pi):
    from metagrad import mdp as mdp_lib

    return mdp_lib.discounted_occupancy(mdp._replace(initial=jnp.eye(mdp.num_states)[0]), pi)


def _normalised_occupancy(mdp, pi):
    from metagrad import mdp as mdp_lib

    return (1 - mdp.gamma) * mdp_lib.discounted_occupancy(mdp, pi)


expected_surrogate_start_0 = _expected_surrogate_with_occupancy(_start_in_state_0)
expected_surrogate_start_0.__name__ = "expected_surrogate_start_0"
expected_surrogate_normalised = _expected_surrogate_with_occupancy(_normalised_occupancy)
expected_surrogate_normalised.__name__ = "expected_surrogate_normalised"

def step_is_kappa_as_ratio(log_ratios, rewards, values, gamma):
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * jnp.cumprod(log_ratios) * rewards) + gamma ** rewards.shape[0] * jnp.prod(log_ratios) * values[-1]


def step_is_bootstrap_undiscounted(log_ratios, rewards, values, gamma):
    t = jnp.arange(rewards.shape[0])
    weights = jnp.exp(jnp.cumsum(log_ratios))
    return jnp.sum(gamma**t * weights * rewards) + weights[-1] * values[-1]


def step_is_bootstrap_without_ratios(log_ratios, rewards, values, gamma):
    t = jnp.arange(rewards.shape[0])
    return jnp.sum(gamma**t * jnp.exp(jnp.cumsum(log_ratios)) * rewards) + gamma ** rewards.shape[0] * values[-1]


def step_is_bootstrap_v0(log_ratios, rewards, values, gamma):
    t = jnp.arange(rewards.shape[0])
    weights = jnp.exp(jnp.cumsum(log_ratios))
    return jnp.sum(gamma**t * weights * rewards) + gamma ** rewards.shape[0] * weights[-1] * values[0]


def dr_no_bootstrap(log_ratios, rewards, values, gamma):
    def step(v_next, inputs):
        log_ratio, reward, value = inputs
        v = value + jnp.exp(log_ratio) * (reward + gamma * v_next - value)
        return v, None

    return jax.lax.scan(step, jnp.zeros(()), (log_ratios, rewards, values[:-1]), reverse=True)[0]


def _p_pi_r_pi(mdp, policy):
    return jnp.einsum("sa,sat->st", policy, mdp.transitions), jnp.sum(policy * mdp.rewards, axis=-1)


def policy_evaluation_plus_sign(mdp, policy):
    p, r = _p_pi_r_pi(mdp, policy)
    return jnp.linalg.solve(jnp.eye(p.shape[0]) + mdp.gamma * p, r)


def policy_evaluation_action_0_rewards(mdp, policy):
    p, _ = _p_pi_r_pi(mdp, policy)
    return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p, mdp.rewards[:, 0])


def occupancy_ones_rhs(mdp, policy):
    p, _ = _p_pi_r_pi(mdp, policy)
    return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p.T, jnp.ones(p.shape[0]))


def truncated_occupancy_one_short(mdp, policy, horizon):
    p_pi, _ = _p_pi_r_pi(mdp, policy)
    p, out = mdp.initial, jnp.zeros_like(mdp.initial)
    for t in range(horizon - 1):
        out, p = out + mdp.gamma**t * p, p_pi.T @ p
    return out


def score_gradient_flipped(logits, actions, rewards):
    return -jax.grad(lambda t: jnp.mean(rewards * jax.nn.log_softmax(t)[actions]))(logits)


def score_gradient_mean_times_mean(logits, actions, rewards):
    return jnp.mean(rewards) * jax.grad(lambda t: jnp.mean(jax.nn.log_softmax(t)[actions]))(logits)


def score_gradient_no_rewards(logits, actions, rewards):
    return jax.grad(lambda t: jnp.mean(jax.nn.log_softmax(t)[actions]))(logits)


def _score_hessian_with_outer(factor):
    def wrong(logits, actions, rewards):
        log_pi = lambda t, a: jax.nn.log_softmax(t)[a]  # noqa: E731
        scores = jax.vmap(jax.grad(log_pi), in_axes=(None, 0))(logits, actions)
        curvature = jax.vmap(jax.hessian(log_pi), in_axes=(None, 0))(logits, actions)
        n = rewards.shape[0]
        return (jnp.einsum("n,nij->ij", rewards, curvature) + factor * jnp.einsum("n,ni,nj->ij", rewards, scores, scores)) / n

    return wrong


def magic_box_constant_one(x):  # value 1, no derivative at all
    return jnp.ones_like(x)


score_hessian_minus_outer = _score_hessian_with_outer(-1.0)
score_hessian_minus_outer.__name__ = "score_hessian_minus_outer"
score_hessian_double_outer = _score_hessian_with_outer(2.0)
score_hessian_double_outer.__name__ = "score_hessian_double_outer"


def reward_to_go_forward_scan(rewards, gamma, bootstrap):
    return jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), jnp.asarray(bootstrap, rewards.dtype), rewards)[1]


def reward_to_go_bootstrap_times_gamma(rewards, gamma, bootstrap):
    return jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), gamma * bootstrap, rewards, reverse=True)[1]


def _missing_terms_with_past(cross_factor, past_outer):
    def wrong(scores, advantages, gamma):
        past = jnp.cumsum(scores, axis=0) - scores
        weights = gamma ** jnp.arange(scores.shape[0]) * advantages
        cross = jnp.einsum("t,ti,tj->ij", weights, scores, past)
        return (
            jnp.einsum("t,ti,tj->ij", weights, scores, scores)
            + cross_factor * (cross + cross.T)
            + past_outer * jnp.einsum("t,ti,tj->ij", weights, past, past)
        )

    return wrong


missing_terms_unregrouped = _missing_terms_with_past(1.0, 1.0)
missing_terms_unregrouped.__name__ = "missing_terms_unregrouped"
missing_terms_doubled_cross = _missing_terms_with_past(2.0, 0.0)
missing_terms_doubled_cross.__name__ = "missing_terms_doubled_cross"

def reinforce_next_state_critic(logits, trajectories, critic, gamma):
    from metagrad.tabular import log_policy

    states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards

    def per_trajectory(s, a, r):
        returns = jax.lax.scan(lambda g, x: (x + gamma * g, x + gamma * g), critic[s[-1]], r, reverse=True)[1]
        weights = gamma ** jnp.arange(r.shape[0]) * (returns - critic[s[1:]])
        return lambda theta: jnp.sum(weights * log_policy(theta, s[:-1], a))

    return jax.grad(lambda th: jnp.mean(jax.vmap(lambda s, a, r: per_trajectory(s, a, r)(th))(states, actions, rewards)))(logits)


PART_ONE_MORE = [
    ("reinforce_gradient", reinforce_next_state_critic, "critic of the next state"),
    ("missing_hessian_terms", missing_terms_unregrouped, "(S_{<t} + g_t)(S_{<t} + g_t)ᵀ"),
    ("missing_hessian_terms", missing_terms_doubled_cross, "cross terms are doubled"),
    ("reward_to_go", reward_to_go_forward_scan, "forwards in time"),
    ("reward_to_go", reward_to_go_bootstrap_times_gamma, "G_T = γ · bootstrap"),
    ("score_function_gradient", score_gradient_flipped, "sign is flipped"),
    ("score_function_gradient", score_gradient_mean_times_mean, "mean(r) × mean(∇ log π)"),
    ("score_function_gradient", score_gradient_no_rewards, "ignores the rewards"),
    ("score_function_hessian", score_hessian_minus_outer, "outer product has the wrong sign"),
    ("score_function_hessian", score_hessian_double_outer, "counted twice"),
    ("magic_box", magic_box_constant_one, "a constant"),
    ("policy_evaluation", policy_evaluation_plus_sign, "(I + γ P^π)"),
    ("policy_evaluation", policy_evaluation_action_0_rewards, "rewards of action 0"),
    ("discounted_occupancy", occupancy_ones_rhs, "vector of ones"),
    ("truncated_occupancy", truncated_occupancy_one_short, "sums T − 1 terms"),
    ("step_importance_sampling", step_is_kappa_as_ratio, "ρ_t = exp(κ_t)"),
    ("step_importance_sampling", step_is_bootstrap_undiscounted, "lacks the discount γ^T"),
    ("step_importance_sampling", step_is_bootstrap_without_ratios, "lacks the ratios"),
    ("step_importance_sampling", step_is_bootstrap_v0, "bootstraps with V(x_0)"),
    ("doubly_robust", dr_no_bootstrap, "does not bootstrap"),
    ("occupancy_policy_gradient", occupancy_gradient_own_occupancy, "ignores the `occupancy` argument"),
    ("occupancy_policy_gradient", occupancy_gradient_one_minus_pi, "1 − π(a|x)"),
    ("expected_surrogate_hessian", expected_surrogate_start_0, "starts every trajectory in state 0"),
    ("expected_surrogate_hessian", expected_surrogate_normalised, "(1 − γ) times too small"),
    ("hvp", hvp_full_hessian, "builds an n×n array"),
    ("hvp", hvp_jacfwd_of_grad, "builds an n×n array"),
    ("hvp", hvp_sign_flipped, "sign is flipped"),
    ("policy_evaluation", policy_evaluation_normalised, "(1 − γ)·V^π"),
    ("hvp", hvp_gradient_only, "direction v is missing"),
    ("hvp", hvp_diagonal_only, "only the diagonal of the Hessian"),
    ("score_function_gradient", score_gradient_summed, "N times too large"),
    ("score_function_gradient", score_gradient_of_logit, "normaliser"),
    ("magic_box", magic_box_flipped, "sign is flipped"),
    ("magic_box", magic_box_first_order, "right to first order only"),
    ("magic_box", magic_box_second_order, "right to second order only"),
    ("policy_evaluation", policy_evaluation_one_step, "one-step reward"),
    ("policy_evaluation", policy_evaluation_float32, "float32"),
    ("discounted_occupancy", occupancy_normalised, "normalised occupancy"),
    ("discounted_occupancy", occupancy_loop_200, "stopped after 200 steps"),
    ("truncated_occupancy", truncated_occupancy_capped, "stops after 100 steps on T = 400"),
    ("reward_to_go", reward_to_go_no_bootstrap, "ignores `bootstrap`"),
    ("reward_to_go", reward_to_go_buffer_128, "caps the horizon at 128"),
    ("reinforce_gradient", reinforce_no_baseline, "ignores the baseline"),
    ("reinforce_gradient", reinforce_no_bootstrap, "does not bootstrap"),
    ("reinforce_gradient", reinforce_summed, "sums over the trajectories"),
    ("reinforce_gradient", reinforce_undiscounted, "γ^t weight"),
    ("inner_step", inner_step_ignores_step_size, "ignores `step_size`"),
    ("missing_hessian_terms", missing_terms_undiscounted, "ignores γ"),
    ("missing_hessian_terms", missing_terms_one_sided, "not symmetric"),
]


@pytest.mark.parametrize("name,wrong,explanation", WRONG_ANSWERS + PART_ONE_MORE,
                         ids=[w.__name__ for _, w, _ in WRONG_ANSWERS + PART_ONE_MORE])
def test_check_explains_a_wrong_answer(name, wrong, explanation):
    assert_check_explains(checks, name, wrong, explanation)


def test_every_exercise_of_part_one_has_three_named_wrong_answers():
    part_one = [name for name, notebook in checks.CHECKS.items() if notebook in ("00", "01", "02", "03", "04")]
    tried = [name for name, _, _ in WRONG_ANSWERS + PART_ONE_MORE]
    assert {name: tried.count(name) for name in part_one if tried.count(name) < 3} == {}


def dr_one_step_targets(log_ratios, rewards, values, gamma):  # V(x_{t+1}) where V̂_{t+1} belongs
    def step(v_next, inputs):
        log_ratio, reward, value, next_value = inputs
        return value + jnp.exp(log_ratio) * (reward + gamma * next_value - value), None

    return jax.lax.scan(step, values[-1], (log_ratios, rewards, values[:-1], values[1:]), reverse=True)[0]


def dr_flipped_control_variate(log_ratios, rewards, values, gamma):
    def step(v_next, inputs):
        log_ratio, reward, value = inputs
        return -value + jnp.exp(log_ratio) * (reward + gamma * v_next + value), None

    return jax.lax.scan(step, values[-1], (log_ratios, rewards, values[:-1]), reverse=True)[0]


PART_ONE_DR = [
    ("doubly_robust", dr_one_step_targets, "next estimate V̂_{t+1}"),
    ("doubly_robust", dr_flipped_control_variate, "wrong sign"),
]


@pytest.mark.parametrize("name,wrong,explanation", PART_ONE_DR, ids=[w.__name__ for _, w, _ in PART_ONE_DR])
def test_doubly_robust_check_names_the_mistake(name, wrong, explanation):
    assert_check_explains(checks, name, wrong, explanation)


# Trial A of the third edition: wrong answers that got the generic message or a misnamed one.


def _reinforce_with_returns(shift):
    """REINFORCE whose step-t weight uses G_{t+1} (shift "next") or G_0 (shift "start") instead of G_t."""
    from metagrad.tabular import log_policy

    def wrong(logits, trajectories, critic, gamma):
        states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
        values = critic[states]
        returns = jax.vmap(lambda r, b: jax.lax.scan(lambda g, x: (x + gamma * g, x + gamma * g), b, r, reverse=True)[1])(
            rewards, values[:, -1]
        )
        if shift == "next":
            returns = jnp.concatenate([returns[:, 1:], values[:, -1:]], axis=1)
        else:
            returns = jnp.broadcast_to(returns[:, :1], returns.shape)
        weights = gamma ** jnp.arange(rewards.shape[1]) * (returns - values[:, :-1])
        return jax.grad(lambda th: jnp.mean(jnp.sum(weights * log_policy(th, states[:, :-1], actions), 1)))(logits)

    wrong.__name__ = f"reinforce_returns_from_{shift}"
    return wrong


def reinforce_flipped(logits, trajectories, critic, gamma):
    return -_reinforce(logits, trajectories, critic, gamma)


def occupancy_gradient_flipped(mdp, logits, occupancy):
    pi, v, q = _pg_pieces(mdp, logits)
    return occupancy[:, None] * pi * (v[:, None] - q)


def occupancy_gradient_extra_gamma(mdp, logits, occupancy):
    pi, v, q = _pg_pieces(mdp, logits)
    return mdp.gamma * occupancy[:, None] * pi * (q - v[:, None])


def occupancy_gradient_immediate_reward(mdp, logits, occupancy):
    pi, _, _ = _pg_pieces(mdp, logits)
    return occupancy[:, None] * pi * (mdp.rewards - jnp.sum(pi * mdp.rewards, axis=1, keepdims=True))


def _missing_terms(scores, advantages, gamma, *, power_offset=0, own=True, cross=True):
    past = jnp.cumsum(scores, axis=0) - scores
    weights = gamma ** (jnp.arange(scores.shape[0]) + power_offset) * advantages
    c = jnp.einsum("t,ti,tj->ij", weights, scores, past)
    return own * jnp.einsum("t,ti,tj->ij", weights, scores, scores) + cross * (c + c.T)


def missing_terms_flipped(scores, advantages, gamma):
    return -_missing_terms(scores, advantages, gamma)


def missing_terms_one_discount_too_many(scores, advantages, gamma):
    return _missing_terms(scores, advantages, gamma, power_offset=1)


def missing_terms_cross_only(scores, advantages, gamma):
    return _missing_terms(scores, advantages, gamma, own=False)


def missing_terms_total_outer(scores, advantages, gamma):
    total = jnp.sum(scores, axis=0)
    return jnp.sum(gamma ** jnp.arange(scores.shape[0]) * advantages) * jnp.outer(total, total)


def _dr_variant(form):
    def wrong(log_ratios, rewards, values, gamma):
        def step(v_next, inputs):
            log_ratio, reward, value = inputs
            rho = jnp.exp(log_ratio)
            if form == "discount outside":
                return value + rho * (reward - value) + gamma * v_next, None
            return reward + gamma * rho * v_next, None  # the ratio on the next estimate only

        return jax.lax.scan(step, values[-1], (log_ratios, rewards, values[:-1]), reverse=True)[0]

    wrong.__name__ = "dr_" + form.replace(" ", "_")
    return wrong


def dr_gradient_next_return(rewards, values, gamma):
    returns = _dr_returns(rewards, values, gamma)
    return gamma ** jnp.arange(rewards.shape[0]) * (jnp.append(returns[1:], values[-1]) - values[:-1])


def dr_gradient_flipped(rewards, values, gamma):
    return -gamma ** jnp.arange(rewards.shape[0]) * (_dr_returns(rewards, values, gamma) - values[:-1])


def dr_gradient_one_discount_too_many(rewards, values, gamma):
    return gamma ** (jnp.arange(rewards.shape[0]) + 1) * (_dr_returns(rewards, values, gamma) - values[:-1])


def step_is_undiscounted(log_ratios, rewards, values, gamma):
    weights = jnp.exp(jnp.cumsum(log_ratios))
    return jnp.sum(weights * rewards) + weights[-1] * values[-1]


def step_is_inverse_ratios(log_ratios, rewards, values, gamma):  # μ/π instead of π/μ
    weights = jnp.exp(-jnp.cumsum(log_ratios))
    return jnp.sum(gamma ** jnp.arange(rewards.shape[0]) * weights * rewards) + gamma ** rewards.shape[0] * weights[-1] * values[-1]


def step_is_with_control_variate(log_ratios, rewards, values, gamma):  # doubly robust where step-wise IS is asked
    def step(v_next, inputs):
        log_ratio, reward, value = inputs
        return value + jnp.exp(log_ratio) * (reward + gamma * v_next - value), None

    return jax.lax.scan(step, values[-1], (log_ratios, rewards, values[:-1]), reverse=True)[0]


def reward_to_go_bootstrap_one_short(rewards, gamma, bootstrap):
    t = jnp.arange(rewards.shape[0])
    plain = jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), 0.0 * bootstrap, rewards, reverse=True)[1]
    return plain + gamma ** (rewards.shape[0] - 1 - t) * bootstrap


def reward_to_go_discounted_from_start(rewards, gamma, bootstrap):
    returns = jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), jnp.asarray(bootstrap, rewards.dtype), rewards, reverse=True)[1]
    return gamma ** jnp.arange(rewards.shape[0]) * returns


def hvp_central_differences(f, x, v):  # approximate: passes a loose tolerance, not an exactness test
    return (jax.grad(f)(x + 1e-4 * v) - jax.grad(f)(x - 1e-4 * v)) / 2e-4


def hvp_ones_direction(f, x, v):  # ignores v
    return jax.jvp(jax.grad(f), (x,), (jnp.ones_like(v),))[1]


def _plug_in_table(logits, actions, rewards):
    counts = jnp.zeros_like(logits).at[actions].add(1.0)
    return jnp.zeros_like(logits).at[actions].add(rewards) / jnp.maximum(counts, 1.0)


def score_gradient_plug_in(logits, actions, rewards):  # exact gradient with the empirical reward table
    return jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * _plug_in_table(logits, actions, rewards)))(logits)


def score_hessian_plug_in(logits, actions, rewards):
    return jax.hessian(lambda t: jnp.sum(jax.nn.softmax(t) * _plug_in_table(logits, actions, rewards)))(logits)


def _score_hessian_weighted(outer_factor, reward_power):
    def wrong(logits, actions, rewards):
        def log_pi(t, a):
            return jax.nn.log_softmax(t)[a]

        scores = jax.vmap(jax.grad(log_pi), in_axes=(None, 0))(logits, actions)
        curvature = jax.vmap(jax.hessian(log_pi), in_axes=(None, 0))(logits, actions)
        return jnp.mean(
            rewards[:, None, None] * curvature
            + outer_factor * (rewards**reward_power)[:, None, None] * scores[:, :, None] * scores[:, None, :],
            axis=0,
        )

    wrong.__name__ = f"score_hessian_outer_times_{outer_factor}_r_power_{reward_power}"
    return wrong


def magic_box_ratio(x):  # value 1, derivative 1/x
    return x / jax.lax.stop_gradient(x)


def _policy_evaluation_parts(mdp, policy):
    p_pi = jnp.einsum("sa,sat->st", policy, mdp.transitions)
    return p_pi, jnp.sum(policy * mdp.rewards, axis=-1)


def policy_evaluation_from_next_step(mdp, policy):  # V − r^π = γ P^π V
    p_pi, r_pi = _policy_evaluation_parts(mdp, policy)
    return jnp.linalg.solve(jnp.eye(p_pi.shape[0]) - mdp.gamma * p_pi, r_pi) - r_pi


def policy_evaluation_uniform_rewards(mdp, policy):
    p_pi, _ = _policy_evaluation_parts(mdp, policy)
    return jnp.linalg.solve(jnp.eye(p_pi.shape[0]) - mdp.gamma * p_pi, jnp.mean(mdp.rewards, axis=-1))


def policy_evaluation_100_backups(mdp, policy):
    p_pi, r_pi = _policy_evaluation_parts(mdp, policy)
    value = jnp.zeros_like(r_pi)
    for _ in range(100):
        value = r_pi + mdp.gamma * p_pi @ value
    return value


def policy_evaluation_wrong_axes(mdp, policy):  # π(a|x) paired with transitions[x', a, x]
    p_pi = jnp.einsum("xa,yax->xy", policy, mdp.transitions)
    return jnp.linalg.solve(jnp.eye(p_pi.shape[0]) - mdp.gamma * p_pi, jnp.sum(policy * mdp.rewards, axis=-1))


def occupancy_from_step_one(mdp, policy):  # d^π − p_0
    p_pi, _ = _policy_evaluation_parts(mdp, policy)
    return jnp.linalg.solve(jnp.eye(p_pi.shape[0]) - mdp.gamma * p_pi.T, mdp.initial) - mdp.initial


def occupancy_never_moves(mdp, policy):
    return mdp.initial / (1 - mdp.gamma)


def occupancy_uniform_start(mdp, policy):
    p_pi, _ = _policy_evaluation_parts(mdp, policy)
    n = p_pi.shape[0]
    return jnp.linalg.solve(jnp.eye(n) - mdp.gamma * p_pi.T, jnp.full(n, 1.0 / n))


def _truncated_occupancy_loop(mdp, policy, horizon, first_power):
    p_pi, _ = _policy_evaluation_parts(mdp, policy)
    p, out = mdp.initial, jnp.zeros_like(mdp.initial)
    for t in range(horizon):
        out = out + mdp.gamma ** (t + first_power) * p
        p = p_pi.T @ p
    return out


def truncated_occupancy_one_discount_too_many(mdp, policy, horizon):
    return _truncated_occupancy_loop(mdp, policy, horizon, 1)


def truncated_occupancy_scaled(mdp, policy, horizon):
    from metagrad import mdp as mdp_lib

    return (1 - mdp.gamma**horizon) * mdp_lib.discounted_occupancy(mdp, policy)


PART_ONE_TRIAL = [
    ("hvp", hvp_central_differences, "finite differences are approximate"),
    ("hvp", hvp_ones_direction, "ignores the argument v"),
    ("score_function_gradient", score_gradient_plug_in, "plug-in estimate"),
    ("score_function_hessian", score_hessian_plug_in, "plug-in estimate"),
    ("score_function_hessian", _score_hessian_weighted(1.0, 2), "by r_i²"),
    ("score_function_hessian", _score_hessian_weighted(0.5, 1), "weighted by ½"),
    ("magic_box", magic_box_ratio, "divides by the value"),
    ("policy_evaluation", policy_evaluation_from_next_step, "V^π − r^π"),
    ("policy_evaluation", policy_evaluation_uniform_rewards, "uniformly over actions"),
    ("policy_evaluation", policy_evaluation_100_backups, "100 Bellman backups"),
    ("policy_evaluation", policy_evaluation_wrong_axes, "contracts the wrong axes"),
    ("discounted_occupancy", occupancy_from_step_one, "d^π − p_0"),
    ("discounted_occupancy", occupancy_never_moves, "p_0/(1 − γ)"),
    ("discounted_occupancy", occupancy_uniform_start, "uniform distribution"),
    ("truncated_occupancy", truncated_occupancy_one_discount_too_many, "γ^(t+1)"),
    ("truncated_occupancy", truncated_occupancy_scaled, "(1 − γ^T)·d^π"),
    ("step_importance_sampling", step_is_undiscounted, "ignores γ everywhere"),
    ("step_importance_sampling", step_is_inverse_ratios, "inverse ratios μ/π"),
    ("step_importance_sampling", step_is_with_control_variate, "matches doubly robust"),
    ("reward_to_go", reward_to_go_bootstrap_one_short, "γ^(T−1−t), one factor short"),
    ("reward_to_go", reward_to_go_discounted_from_start, "discounts from time 0"),
    ("reinforce_gradient", reinforce_flipped, "wrong sign"),
    ("reinforce_gradient", _reinforce_with_returns("next"), "G_{t+1} (off by one)"),
    ("reinforce_gradient", _reinforce_with_returns("start"), "whole return G_0"),
    ("occupancy_policy_gradient", occupancy_gradient_flipped, "wrong sign"),
    ("occupancy_policy_gradient", occupancy_gradient_extra_gamma, "extra factor γ"),
    ("occupancy_policy_gradient", occupancy_gradient_immediate_reward, "immediate reward"),
    ("missing_hessian_terms", missing_terms_flipped, "wrong sign"),
    ("missing_hessian_terms", missing_terms_one_discount_too_many, "γ^(t+1)"),
    ("missing_hessian_terms", missing_terms_cross_only, "only the cross terms"),
    ("missing_hessian_terms", missing_terms_total_outer, "total score"),
    ("doubly_robust", _dr_variant("discount outside"), "outside the ratio"),
    ("doubly_robust", _dr_variant("next only"), "next estimate only"),
    ("dr_log_ratio_gradient", dr_gradient_next_return, "G_{t+1} (off by one)"),
    ("dr_log_ratio_gradient", dr_gradient_flipped, "wrong sign"),
    ("dr_log_ratio_gradient", dr_gradient_one_discount_too_many, "γ^(t+1)"),
]


@pytest.mark.parametrize("name,wrong,explanation", PART_ONE_TRIAL, ids=[w.__name__ for _, w, _ in PART_ONE_TRIAL])
def test_check_names_the_mistakes_trial_a_found_unnamed(name, wrong, explanation):
    """Named on every wrong input (not "On … it matches", a coincidence of some inputs), in one or two sentences."""
    with pytest.raises(checks.ExerciseCheckFailed) as info:
        getattr(checks, f"check_{name}")(wrong)
    message = str(info.value)
    assert explanation in message and "matches a known mistake" not in message, message
    assert len(message) < 400 and checks.results()[name] is False


def test_a_mistake_that_explains_only_some_inputs_names_those_inputs():
    from metagrad.course.checks._diagnose import _diagnose

    def plus_one(x):
        return x + 1.0

    results = [("input A", (np.zeros(2),), np.ones(2)), ("input B", (np.zeros(2),), np.full(2, 5.0))]
    hint = _diagnose(results, [(plus_one, "It adds one.")])
    assert hint == "On input A it matches a known mistake: It adds one."
    assert _diagnose(results[:1], [(plus_one, "It adds one.")]) == "It adds one."


@pytest.mark.parametrize(
    "name,wrong",
    [
        ("occupancy_policy_gradient", occupancy_gradient_own_occupancy),
        ("expected_surrogate_hessian", expected_surrogate_start_0),
        ("expected_surrogate_hessian", expected_surrogate_normalised),
    ],
)
def test_an_ignored_argument_fails_on_more_than_one_input(name, wrong):
    with pytest.raises(checks.ExerciseCheckFailed) as info:
        getattr(checks, f"check_{name}")(wrong)
    wrong_inputs = re.search(r"wrong on (\d+) of \d+ inputs", str(info.value))
    assert wrong_inputs and int(wrong_inputs.group(1)) >= 2, str(info.value)


@pytest.mark.parametrize(
    "exact_hvp",
    [
        lambda f, x, v: jax.grad(lambda y: jnp.vdot(jax.grad(f)(y), v))(x),  # reverse over reverse
        lambda f, x, v: jax.vjp(jax.grad(f), x)[1](v)[0],  # the Hessian is symmetric
        lambda f, x, v: jax.linearize(jax.grad(f), x)[1](v),
    ],
    ids=["grad_of_grad_dot_v", "vjp_of_grad", "linearize_of_grad"],
)
def test_hvp_check_accepts_every_exact_matrix_free_product(exact_hvp, capsys):
    """The exactness test (float64, 1e-10 relative) refuses finite differences, not other exact autodiff forms;
    jax.hessian(f)(x) @ v and jacfwd(grad) @ v pass it too and are refused only for the n×n array (tests above)."""
    checks.check_hvp(exact_hvp)
    assert checks.results()["hvp"] is True


def test_no_finite_difference_step_passes_the_hvp_exactness_test():
    """On the check's function, the best central difference over 800 steps h is still ≥ 10× the tolerance."""
    from metagrad.course.checks.nb00 import _EXACT_RTOL, _exactness_case

    f, x, v, _ = _exactness_case()
    exact = np.asarray(jax.jvp(jax.grad(f), (x,), (v,))[1])
    grad = jax.jit(jax.grad(f))
    best = min(
        float(np.max(np.abs((grad(x + h * v) - grad(x - h * v)) / (2 * h) - exact)) / np.max(np.abs(exact)))
        for h in np.logspace(-9, -1, 800)
    )
    assert best > 6e-9 > 10 * _EXACT_RTOL, best  # the bound the ✓ line and the docstring state
