"""Wrong answers from trial A3 (notebooks 00–04): each is refused, and the message names the mistake.

Finite differences where autodiff is asked (score-function gradient and Hessian, REINFORCE, the surrogate's
expected Hessian), a magic box that overflows at large |x| or returns float32, and four answers whose message
used to name another mistake (greedy reward, whole return, a reward table, float32 step-wise IS).

Trial A4 (`TRIAL_A4_WRONG_ANSWERS`, notebooks 00–04): float32 results accepted when close, a γ-scaled answer named
as an iteration count, a normalised occupancy named (1 − γ), an η(1 − γ) step named "ignores step_size", a float32
gradient named finite differences, and answers that got only "differs", each now named.

Trial B4 (`TRIAL_B4_WRONG_ANSWERS`, notebooks 05, 06, 08, 09): a float32 Hessian spread accepted, TD-error weights in
Loaded DiCE named as a □(w_{t−1}) second box, G_0 added to Û_1 named as the cumulative estimates, and answers that got
only "differs", each now named.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exercises import assert_check_explains

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


def test_shift_makes_every_finite_difference_step_inexact():
    """The premise of the refusal: on the shifted logits no step h gets within 1e-9, autodiff within 1e-15."""
    logits, actions, rewards = nb00._shifted_bandit_case()
    f = lambda t: jnp.mean(rewards * jax.nn.log_softmax(t)[actions])  # noqa: E731
    exact = np.asarray(jax.grad(f)(logits))
    for h in 10.0 ** -np.arange(1, 11):
        fd = np.asarray(_central(f, logits, h))
        assert np.max(np.abs(fd - exact)) / np.max(np.abs(exact)) > 10 * nb00._EXACT_RTOL, h


# --- trial A4 (notebooks 00–04): wrong answers that passed, were misnamed, or got only "differs" ------------------


def _p_r_pi(mdp, policy):
    return jnp.einsum("xa,xay->xy", policy, mdp.transitions), jnp.sum(policy * mdp.rewards, axis=1)


def policy_evaluation_float32(mdp, policy):
    p_pi, r_pi = _p_r_pi(mdp, policy)
    return jnp.linalg.solve(jnp.eye(mdp.num_states) - mdp.gamma * p_pi, r_pi).astype(jnp.float32)


def reward_to_go_float32(rewards, gamma, bootstrap=0.0):
    def step(g, r):
        g = r + gamma * g
        return g, g

    return jax.lax.scan(step, jnp.asarray(bootstrap, dtype=rewards.dtype), rewards, reverse=True)[1].astype(jnp.float32)


def policy_evaluation_discounted_reward(mdp, policy):
    p_pi, r_pi = _p_r_pi(mdp, policy)
    return jnp.linalg.solve(jnp.eye(mdp.num_states) - mdp.gamma * p_pi, mdp.gamma * r_pi)


def occupancy_discounted_start(mdp, policy):
    p_pi, _ = _p_r_pi(mdp, policy)
    return jnp.linalg.solve(jnp.eye(mdp.num_states) - mdp.gamma * p_pi.T, mdp.gamma * mdp.initial)


def occupancy_in_float32(mdp, policy):
    p_pi = jnp.einsum("xa,xay->xy", policy.astype(jnp.float32), mdp.transitions.astype(jnp.float32))
    a = jnp.eye(mdp.num_states, dtype=jnp.float32) - jnp.float32(mdp.gamma) * p_pi.T
    return jnp.linalg.solve(a, mdp.initial.astype(jnp.float32))


def occupancy_gradient_normalised(mdp, logits, occupancy):
    pi = jax.nn.softmax(logits, axis=-1)
    from metagrad import mdp as mdp_lib

    v, q = mdp_lib.policy_evaluation(mdp, pi)
    return (occupancy / occupancy.sum())[:, None] * pi * (q - v[:, None])


def inner_step_one_minus_gamma(mdp, logits, step_size):
    from metagrad import exact

    return logits + step_size * (1 - mdp.gamma) * jax.grad(exact.value, argnums=1)(mdp, logits)


def inner_step_float32_gradient(mdp, logits, step_size):
    from metagrad import exact

    return logits + step_size * jax.grad(exact.value, argnums=1)(mdp, logits).astype(jnp.float32)


def hvp_gauss_newton(f, x, v):
    g = jax.grad(f)(x)
    return g * jnp.dot(g, v)


def score_hessian_no_rewards(logits, actions, rewards):
    log_pi = lambda t, a: jax.nn.log_softmax(t)[a]  # noqa: E731
    scores = jax.vmap(jax.grad(log_pi), in_axes=(None, 0))(logits, actions)
    curvature = jax.vmap(jax.hessian(log_pi), in_axes=(None, 0))(logits, actions)
    return jnp.mean(curvature, axis=0) + jnp.einsum("ni,nj->ij", scores, scores) / actions.shape[0]


def magic_box_common_shift(x):
    return jnp.exp(x - jax.lax.stop_gradient(x.mean()))


def policy_evaluation_undiscounted(mdp, policy):
    p_pi, r_pi = _p_r_pi(mdp, policy)
    return jnp.linalg.solve(jnp.eye(mdp.num_states) - p_pi, r_pi)


def occupancy_undiscounted(mdp, policy):
    p_pi, _ = _p_r_pi(mdp, policy)
    return jnp.linalg.solve(jnp.eye(mdp.num_states) - p_pi.T, mdp.initial)


def reinforce_next_states(logits, trajectories, critic, gamma):
    from metagrad.tabular import log_policy

    states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
    values = critic[states]
    boot = values[:, -1]
    returns = jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), boot, rewards.T, reverse=True)[1].T
    advantages = returns - values[:, :-1]
    discount = gamma ** jnp.arange(rewards.shape[1])
    surrogate = lambda t: jnp.mean(jnp.sum(discount * advantages * log_policy(t, states[:, 1:], actions), axis=1))  # noqa: E731
    return jax.grad(surrogate)(logits)


def occupancy_gradient_uniform_baseline(mdp, logits, occupancy):
    from metagrad import mdp as mdp_lib

    pi = jax.nn.softmax(logits, axis=-1)
    _, q = mdp_lib.policy_evaluation(mdp, pi)
    return occupancy[:, None] * pi * (q - q.mean(1, keepdims=True))


def _hessian_terms(scores, advantages, gamma, cross_factor=1.0, partners="past"):
    weights = gamma ** jnp.arange(scores.shape[0]) * advantages
    total = scores.sum(0)
    past = jnp.cumsum(scores, axis=0) - scores
    other = past if partners == "past" else total[None, :] - scores
    outer = jnp.einsum("t,ti,tj->ij", weights, scores, scores)
    cross = jnp.einsum("t,ti,tj->ij", weights, scores, other)
    return outer + cross_factor * (cross + cross.T)


def missing_terms_halved_cross(scores, advantages, gamma):
    return _hessian_terms(scores, advantages, gamma, cross_factor=0.5)


def missing_terms_non_causal(scores, advantages, gamma):
    return _hessian_terms(scores, advantages, gamma, partners="all")


def missing_terms_doubled(scores, advantages, gamma):
    return 2.0 * _hessian_terms(scores, advantages, gamma)


def _surrogate_hessian(mdp, logits_fn, params, advantage):
    from metagrad import mdp as mdp_lib

    log_pi = lambda p: jax.nn.log_softmax(logits_fn(p), axis=-1)  # noqa: E731
    pi = jnp.exp(log_pi(params))
    v, q = mdp_lib.policy_evaluation(mdp, pi)
    adv = {"a": q - v[:, None], "r-v": mdp.rewards - v[:, None], "r": mdp.rewards}[advantage]
    weights = mdp_lib.discounted_occupancy(mdp, pi)[:, None] * pi * adv
    return jnp.einsum("sa,sapq->pq", weights, jax.hessian(log_pi)(params))


def surrogate_hessian_sign(mdp, logits_fn, params):
    return -_surrogate_hessian(mdp, logits_fn, params, "a")


def surrogate_hessian_reward_minus_value(mdp, logits_fn, params):
    return _surrogate_hessian(mdp, logits_fn, params, "r-v")


def surrogate_hessian_reward(mdp, logits_fn, params):
    return _surrogate_hessian(mdp, logits_fn, params, "r")


def step_is_log_ratios_cumprod(log_ratios, rewards, values, gamma):
    w = jnp.cumprod(log_ratios)
    horizon = rewards.shape[0]
    return jnp.sum(gamma ** jnp.arange(horizon) * w * rewards) + gamma**horizon * w[-1] * values[-1]


def step_is_log_ratios_cumsum(log_ratios, rewards, values, gamma):
    w = jnp.cumsum(log_ratios)
    horizon = rewards.shape[0]
    return jnp.sum(gamma ** jnp.arange(horizon) * w * rewards) + gamma**horizon * w[-1] * values[-1]


def doubly_robust_gamma_control_variate(log_ratios, rewards, values, gamma):
    def step(v_next, inputs):
        k, r, v = inputs
        return gamma * v + jnp.exp(k) * (r + gamma * v_next - gamma * v), None

    return jax.lax.scan(step, values[-1], (log_ratios, rewards, values[:-1]), reverse=True)[0]


def doubly_robust_gamma_inside(log_ratios, rewards, values, gamma):
    def step(v_next, inputs):
        k, r, v = inputs
        return v + jnp.exp(k) * (r + gamma * (v_next - v)), None

    return jax.lax.scan(step, values[-1], (log_ratios, rewards, values[:-1]), reverse=True)[0]


TRIAL_A4_WRONG_ANSWERS = [
    ("policy_evaluation", policy_evaluation_float32, "float32"),
    ("reward_to_go", reward_to_go_float32, "float32"),
    ("policy_evaluation", policy_evaluation_discounted_reward, "γ times"),
    ("discounted_occupancy", occupancy_discounted_start, "γ times"),
    ("discounted_occupancy", occupancy_in_float32, "float32"),
    ("occupancy_policy_gradient", occupancy_gradient_normalised, "normalises the occupancy"),
    ("inner_step", inner_step_one_minus_gamma, "(1 − γ)"),
    ("inner_step", inner_step_float32_gradient, "float32"),
    ("hvp", hvp_gauss_newton, "Gauss–Newton"),
    ("score_function_hessian", score_hessian_no_rewards, "ignores the rewards"),
    ("magic_box", magic_box_common_shift, "elementwise"),
    ("policy_evaluation", policy_evaluation_undiscounted, "is γ missing"),
    ("discounted_occupancy", occupancy_undiscounted, "is γ missing"),
    ("reinforce_gradient", reinforce_next_states, "next state"),
    ("occupancy_policy_gradient", occupancy_gradient_uniform_baseline, "uniform average"),
    ("missing_hessian_terms", missing_terms_halved_cross, "halved"),
    ("missing_hessian_terms", missing_terms_non_causal, "later"),
    ("missing_hessian_terms", missing_terms_doubled, "twice the"),
    ("expected_surrogate_hessian", surrogate_hessian_sign, "wrong sign"),
    ("expected_surrogate_hessian", surrogate_hessian_reward_minus_value, "immediate reward"),
    ("expected_surrogate_hessian", surrogate_hessian_reward, "immediate reward"),
    ("step_importance_sampling", step_is_log_ratios_cumprod, "log-ratios κ_t as the ratios"),
    ("step_importance_sampling", step_is_log_ratios_cumsum, "log-ratios κ_t as the ratios"),
    ("doubly_robust", doubly_robust_gamma_control_variate, "γ V(x_t)"),
    ("doubly_robust", doubly_robust_gamma_inside, "γ V(x_t)"),
]




# --- trial B4 (notebooks 05, 06, 08, 09): wrong answers that passed, were misnamed, or got only "differs" ----------


def _box(w):
    return jnp.exp(w - jax.lax.stop_gradient(w))


def _discounted_returns(rewards, values, gamma):
    from metagrad import ope

    return ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))


def _spread_hessians(log_prob, params, obs, actions):
    return jax.vmap(lambda a: jax.hessian(log_prob)(params, obs, a))(actions)


def spread_in_float32(log_prob, params, obs, actions):
    hessians = jax.vmap(lambda a: jax.hessian(lambda p: log_prob(p.astype(jnp.float32), obs, a))(params))(actions)
    return jnp.max(jnp.abs(hessians - hessians[0]))


def spread_in_float32_cast_back(log_prob, params, obs, actions):
    return spread_in_float32(log_prob, params, obs, actions).astype(jnp.float64)


def loaded_dice_td_error(log_pi, states, rewards, critic, gamma, lam):
    values = critic[states]
    delta = jax.lax.stop_gradient(rewards + gamma * values[1:] - values[:-1])
    weights = gamma ** jnp.arange(rewards.shape[0]) * delta
    x = log_pi - jax.lax.stop_gradient(log_pi)
    w = jax.lax.scan(lambda c, y: (lam * c + y, lam * c + y), jnp.zeros((), log_pi.dtype), x)[1]
    return jnp.sum(weights * (jnp.exp(w) - jnp.exp(w - x)))


def loaded_dice_second_box_previous_w(log_pi, states, rewards, critic, gamma, lam):
    values = critic[states]
    adv = jax.lax.stop_gradient(_discounted_returns(rewards, values, gamma) - values[:-1])
    weights = gamma ** jnp.arange(rewards.shape[0]) * adv
    x = log_pi - jax.lax.stop_gradient(log_pi)
    w = jax.lax.scan(lambda c, y: (lam * c + y, lam * c + y), jnp.zeros((), log_pi.dtype), x)[1]
    w_before = jnp.concatenate([jnp.zeros((1,), w.dtype), w[:-1]])
    return jnp.sum(weights * (jnp.exp(w) - jnp.exp(w_before)))


def taypo_terms_g0_in_first(log_ratios, rewards, values, gamma, order):
    d = jnp.expm1(log_ratios)
    g = _discounted_returns(rewards, values, gamma)
    weights = gamma ** jnp.arange(rewards.shape[0]) * jax.lax.stop_gradient(g - values[:-1]) * d

    def step(e, inputs):
        d_t, w_t = inputs
        return e + d_t * jnp.concatenate([jnp.zeros((1,), e.dtype), e[:-1]]), w_t * e

    _, contributions = jax.lax.scan(step, jnp.zeros((order,), d.dtype).at[0].set(1.0), (d, weights))
    return jnp.sum(contributions, axis=0).at[0].add(g[0])


def taypo_terms_cumulative(log_ratios, rewards, values, gamma, order):
    g0 = _discounted_returns(rewards, values, gamma)[0]
    return g0 + jnp.cumsum(taypo_terms_g0_in_first(log_ratios, rewards, values, gamma, order).at[0].add(-g0))


def spread_float32_result(log_prob, params, obs, actions):
    hessians = _spread_hessians(log_prob, params, obs, actions)
    return jnp.max(jnp.abs(hessians - hessians[0])).astype(jnp.float32)


def spread_around_mean(log_prob, params, obs, actions):
    hessians = _spread_hessians(log_prob, params, obs, actions)
    return jnp.max(jnp.abs(hessians - hessians.mean(axis=0)))


def spread_relative(log_prob, params, obs, actions):
    hessians = _spread_hessians(log_prob, params, obs, actions)
    return jnp.max(jnp.abs(hessians - hessians[0])) / jnp.max(jnp.abs(hessians[0]))


def spread_frobenius(log_prob, params, obs, actions):
    hessians = _spread_hessians(log_prob, params, obs, actions)
    return jnp.max(jnp.linalg.norm(hessians - hessians[0], axis=(1, 2)))


def spread_consecutive(log_prob, params, obs, actions):
    hessians = _spread_hessians(log_prob, params, obs, actions)
    return jnp.max(jnp.abs(hessians[1:] - hessians[:-1]))


def log_linear_hessian_half_covariance(theta, features, action):
    pi = jax.nn.softmax(features @ theta)
    centred = features - pi @ features
    return -0.5 * centred.T @ (pi[:, None] * centred)


def dice_reverse_cumsum(log_pi, rewards, values, gamma):
    horizon = rewards.shape[0]
    from_t = jnp.cumsum(log_pi[::-1])[::-1]  # Σ_{s≥t} ℓ_s
    discounts = gamma ** jnp.arange(horizon)
    return jnp.sum(discounts * _box(from_t) * rewards) + gamma**horizon * _box(jnp.sum(log_pi)) * values[-1]


def dice_discount_shifted(log_pi, rewards, values, gamma):
    horizon = rewards.shape[0]
    through_t = jnp.cumsum(log_pi)
    discounts = gamma ** (jnp.arange(horizon) + 1)
    return jnp.sum(discounts * _box(through_t) * rewards) + gamma**horizon * _box(through_t[-1]) * values[-1]


def on_policy_is_doubly_robust(log_pi, rewards, values, gamma):
    from metagrad import ope

    log_ratios = log_pi - jax.lax.stop_gradient(log_pi)
    return ope.doubly_robust(log_ratios, rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))


def _loaded_dice_variant(log_pi, states, rewards, critic, gamma, lam, newest_weight, second, returns_gamma):
    values = critic[states]
    adv = jax.lax.stop_gradient(_discounted_returns(rewards, values, returns_gamma) - values[:-1])
    weights = gamma ** jnp.arange(rewards.shape[0]) * adv
    x = log_pi - jax.lax.stop_gradient(log_pi)
    w = jax.lax.scan(lambda c, y: (lam * (c + y) if newest_weight else lam * c + y,) * 2, jnp.zeros((), log_pi.dtype), x)[1]
    w_before = jnp.concatenate([jnp.zeros((1,), w.dtype), w[:-1]])
    return jnp.sum(weights * (jnp.exp(w) - jnp.exp(second(w, w_before, x))))


def loaded_dice_lambda_on_newest(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_variant(log_pi, states, rewards, critic, gamma, lam, True, lambda w, wb, x: w - x, gamma)


def loaded_dice_lambda_on_newest_lambda_w(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_variant(log_pi, states, rewards, critic, gamma, lam, True, lambda w, wb, x: lam * wb, gamma)


def loaded_dice_undiscounted_returns(log_pi, states, rewards, critic, gamma, lam):
    return _loaded_dice_variant(log_pi, states, rewards, critic, gamma, lam, False, lambda w, wb, x: w - x, 1.0)


def _taypo2_variant(log_ratios, rewards, values, gamma, pairs, zeroth):
    d = jnp.expm1(log_ratios)
    g = _discounted_returns(rewards, values, gamma)
    advantages = jax.lax.stop_gradient(g - values[:-1])
    base = g[0] if zeroth == "G_0" else values[0]
    return base + jnp.sum(gamma ** jnp.arange(rewards.shape[0]) * d * advantages * (1.0 + pairs(d)))


def taypo2_suffix(log_ratios, rewards, values, gamma):
    return _taypo2_variant(log_ratios, rewards, values, gamma, lambda d: jnp.cumsum(d[::-1])[::-1] - d, "G_0")


def taypo2_value_not_return(log_ratios, rewards, values, gamma):
    return _taypo2_variant(log_ratios, rewards, values, gamma, lambda d: jnp.cumsum(d) - d, "V")


def taypo_k_in_place(log_ratios, rewards, values, gamma, order):
    d = jnp.expm1(log_ratios)
    g = _discounted_returns(rewards, values, gamma)
    weights = gamma ** jnp.arange(rewards.shape[0]) * jax.lax.stop_gradient(g - values[:-1])
    e = jnp.zeros((order,), d.dtype).at[0].set(1.0)
    total = g[0]
    for t in range(rewards.shape[0]):
        total = total + weights[t] * d[t] * jnp.sum(e)
        for j in range(1, order):  # e_j += d_t e_{j−1}, with e_{j−1} already updated
            e = e.at[j].add(d[t] * e[j - 1])
    return total


def dice_reverse_cumsum_bootstrap_last(log_pi, rewards, values, gamma):
    horizon = rewards.shape[0]
    from_t = jnp.cumsum(log_pi[::-1])[::-1]
    discounts = gamma ** jnp.arange(horizon)
    return jnp.sum(discounts * _box(from_t) * rewards) + gamma**horizon * _box(from_t[-1]) * values[-1]


def dice_discount_shifted_everywhere(log_pi, rewards, values, gamma):  # γ^(t+1) on r_t and γ^(T+1) on V(x_T)
    horizon = rewards.shape[0]
    through_t = jnp.cumsum(log_pi)
    discounts = gamma ** (jnp.arange(horizon) + 1)
    return jnp.sum(discounts * _box(through_t) * rewards) + gamma ** (horizon + 1) * _box(through_t[-1]) * values[-1]


TRIAL_B4_WRONG_ANSWERS = [
    ("hessian_spread_over_actions", spread_in_float32, "float32"),
    ("hessian_spread_over_actions", spread_in_float32_cast_back, "float32"),
    ("hessian_spread_over_actions", spread_float32_result, "float32"),
    ("loaded_dice", loaded_dice_td_error, "TD error"),
    ("loaded_dice", loaded_dice_second_box_previous_w, "second box is □(w_{t−1})"),
    ("taypo_terms", taypo_terms_g0_in_first, "first term"),
    ("taypo_terms", taypo_terms_cumulative, "cumulative estimates"),
    ("hessian_spread_over_actions", spread_around_mean, "mean Hessian"),
    ("hessian_spread_over_actions", spread_relative, "relative spread"),
    ("hessian_spread_over_actions", spread_frobenius, "Frobenius norm"),
    ("hessian_spread_over_actions", spread_consecutive, "consecutive actions"),
    ("log_linear_hessian", log_linear_hessian_half_covariance, "−½ Cov_π[φ]"),
    ("dice_objective", dice_reverse_cumsum, "Σ_{s≥t} ℓ_s"),
    ("dice_objective", dice_reverse_cumsum_bootstrap_last, "Σ_{s≥t} ℓ_s"),
    ("dice_objective", dice_discount_shifted, "γ^(t+1)"),
    ("dice_objective", dice_discount_shifted_everywhere, "γ^(t+1)"),
    ("on_policy_importance_sampling", on_policy_is_doubly_robust, "derivatives are DR's"),
    ("loaded_dice", loaded_dice_lambda_on_newest, "w_t = λ (w_{t−1} + ℓ_t)"),
    ("loaded_dice", loaded_dice_lambda_on_newest_lambda_w, "w_t = λ (w_{t−1} + ℓ_t)"),
    ("loaded_dice", loaded_dice_undiscounted_returns, "undiscounted"),
    ("taypo2", taypo2_suffix, "Σ_{s>t} d_s"),
    ("taypo2", taypo2_value_not_return, "V(x_0)"),
    ("taypo_k", taypo_k_in_place, "in place"),
]


ALL_NAMED = NAMED + TRIAL_A4_WRONG_ANSWERS + TRIAL_B4_WRONG_ANSWERS  # the three trials' lists: see their comments


@pytest.mark.parametrize("name,wrong,explanation", ALL_NAMED, ids=[w.__name__ for _, w, _ in ALL_NAMED])
def test_trial_wrong_answers_are_named(name, wrong, explanation):
    assert_check_explains(checks, name, wrong, explanation, on_every_input=True)


def _spread_pairwise_loop(log_prob, params, obs, actions):  # another exact form: one Hessian per action, a Python loop
    first = jax.jacfwd(jax.jacrev(log_prob))(params, obs, actions[0])
    return jnp.max(jnp.stack([jnp.max(jnp.abs(jax.jacfwd(jax.jacrev(log_prob))(params, obs, a) - first))
                              for a in actions]))


@pytest.mark.parametrize("source", ["solution", "loop"])
def test_hessian_spread_float64_answers_still_pass(source, capsys):
    """The float32 refusal (dtype, or agreement to only ~7 digits) leaves exact float64 answers passing."""
    if source == "solution":
        from _exercises import exercise_functions

        fn = exercise_functions("08_maml_end_to_end.ipynb", stubs=False)["hessian_spread_over_actions"]
    else:
        fn = _spread_pairwise_loop
    checks.check_hessian_spread_over_actions(fn)
    assert "✓" in capsys.readouterr().out and checks.results()["hessian_spread_over_actions"] is True
