"""Wrong answers from trial A2 (notebooks 00–04): each is refused, and the message names the mistake.

Three kinds: answers that used to pass (a fixed number of iterations where a linear solve is needed, finite
differences in `inner_step`), answers that were refused with a generic or a wrong explanation, and the
shortcuts an exercise forbids (`FORBIDDEN` in `metagrad.course.checks._diagnose`: the library's own version,
autodiff where a closed form is asked, stop_gradient in the score-function Hessian).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exercises import assert_check_explains

from metagrad.course import checks


def _p_r(mdp, policy):
    return jnp.einsum("sa,sat->st", policy, mdp.transitions), jnp.sum(policy * mdp.rewards, axis=-1)


# --- answers that passed -------------------------------------------------------------------------------------


def policy_evaluation_scan_5000(mdp, policy):
    p, r = _p_r(mdp, policy)
    return jax.lax.scan(lambda v, _: (r + mdp.gamma * p @ v, None), jnp.zeros_like(r), None, length=5000)[0]


def policy_evaluation_scan_300(mdp, policy):
    p, r = _p_r(mdp, policy)
    return jax.lax.scan(lambda v, _: (r + mdp.gamma * p @ v, None), jnp.zeros_like(r), None, length=300)[0]


def occupancy_iterated_5000(mdp, policy):
    p, _ = _p_r(mdp, policy)
    return jax.lax.scan(lambda d, _: (mdp.initial + mdp.gamma * p.T @ d, None), jnp.zeros_like(mdp.initial), None, length=5000)[0]


def policy_evaluation_inv(mdp, policy):  # not a mistake: inv is accepted (the text gives solve as advice)
    p, r = _p_r(mdp, policy)
    return jnp.linalg.inv(jnp.eye(r.shape[0]) - mdp.gamma * p) @ r


def inner_step_central_differences(mdp, logits, step_size):
    from metagrad import exact

    h = 1e-5
    grad = jnp.zeros_like(logits)
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            e = jnp.zeros_like(logits).at[i, j].set(1.0)
            grad = grad.at[i, j].set((exact.value(mdp, logits + h * e) - exact.value(mdp, logits - h * e)) / (2 * h))
    return logits + step_size * grad


def test_fixed_iterations_at_gamma_near_one_are_named():
    for wrong in (policy_evaluation_scan_5000, policy_evaluation_scan_300):
        assert_check_explains(checks, "policy_evaluation", wrong, "iterations of the fixed-point update")
    assert_check_explains(checks, "policy_evaluation", policy_evaluation_scan_5000, "solve the linear system")
    assert_check_explains(checks, "discounted_occupancy", occupancy_iterated_5000, "5000 iterations")


def test_inv_is_accepted(capsys):
    checks.check_policy_evaluation(policy_evaluation_inv)
    assert checks.results()["policy_evaluation"] is True


def test_inner_step_by_finite_differences_is_refused():
    assert_check_explains(checks, "inner_step", inner_step_central_differences, "finite differences of J")


def test_no_finite_difference_step_passes_the_inner_step_exactness_test():
    """On the check's task the best central difference over 120 steps h is still ≥ 100× the tolerance."""
    from metagrad import exact
    from metagrad.course.checks.nb03 import _STEP_RTOL, _step_exactness_case

    mdp, theta, _ = _step_exactness_case()
    grad = np.asarray(exact.gradient(mdp, theta))
    basis = jnp.eye(theta.size).reshape(-1, *theta.shape)
    value = jax.jit(jax.vmap(lambda logits: exact.value(mdp, logits)))
    best = min(
        float(np.max(np.abs(np.asarray((value(theta + h * basis) - value(theta - h * basis)) / (2 * h)).reshape(theta.shape) - grad))
              / np.max(np.abs(grad)))
        for h in np.logspace(-8, -2, 120)
    )
    assert best > 4e-9 > 100 * _STEP_RTOL, best  # the bound the ✓ line states
    autodiff = np.asarray(jax.grad(lambda logits: exact.value(mdp, logits))(theta))
    assert np.max(np.abs(autodiff - grad)) / np.max(np.abs(grad)) < _STEP_RTOL


# --- misnamed and generic rejections -------------------------------------------------------------------------


def truncated_occupancy_normalised(mdp, policy, horizon):
    p, _ = _p_r(mdp, policy)
    out, d = jnp.zeros_like(mdp.initial), mdp.initial
    for t in range(horizon):
        out, d = out + mdp.gamma**t * d, p.T @ d
    return (1 - mdp.gamma) * out


def step_is_bootstrap_one_power_short(log_ratios, rewards, values, gamma):
    t = jnp.arange(rewards.shape[0])
    w = jnp.exp(jnp.cumsum(log_ratios))
    return jnp.sum(gamma**t * w * rewards) + gamma ** (rewards.shape[0] - 1) * w[-1] * values[-1]


def hvp_directional_times_v(f, x, v):
    return jax.jvp(f, (x,), (v,))[1] * v


def hvp_swapped(f, x, v):
    return jax.jvp(jax.grad(f), (v,), (x,))[1]


def score_gradient_batch_baseline(logits, actions, rewards):
    return jax.grad(lambda t: jnp.mean((rewards - jnp.mean(rewards)) * jax.nn.log_softmax(t)[actions]))(logits)


def score_hessian_unweighted_outer(logits, actions, rewards):
    lp = lambda t, a: jax.nn.log_softmax(t)[a]  # noqa: E731
    g = jax.vmap(jax.grad(lp), in_axes=(None, 0))(logits, actions)
    h = jax.vmap(jax.hessian(lp), in_axes=(None, 0))(logits, actions)
    return jnp.einsum("n,nij->ij", rewards, h) / rewards.shape[0] + jnp.einsum("ni,nj->ij", g, g) / rewards.shape[0]


def policy_evaluation_broadcast_j(mdp, policy):
    p, r = _p_r(mdp, policy)
    v = jnp.linalg.solve(jnp.eye(r.shape[0]) - mdp.gamma * p, r)
    return jnp.full_like(v, mdp.initial @ v)


def occupancy_p1_rhs(mdp, policy):
    p, _ = _p_r(mdp, policy)
    return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p.T, p.T @ mdp.initial)


def occupancy_stationary(mdp, policy):
    p, _ = _p_r(mdp, policy)
    values, vectors = jnp.linalg.eig(p.T)
    s = jnp.real(vectors[:, jnp.argmin(jnp.abs(values - 1.0))])
    return s / s.sum() / (1 - mdp.gamma)


def _reinforce(logits, trajectories, critic, gamma, kind):
    from metagrad.tabular import log_policy

    x, a, r = trajectories.observations, trajectories.actions, trajectories.rewards
    horizon = r.shape[1]

    def rtg(rewards, boot):
        return jax.lax.scan(lambda g, rr: (rr + gamma * g, rr + gamma * g), boot, rewards, reverse=True)[1]

    g = jax.vmap(rtg)(r, critic[x[:, -1]])
    weights = gamma ** jnp.arange(horizon)
    if kind == "full_return_no_discount":
        adv, weights = jnp.broadcast_to(g[:, :1], g.shape), jnp.ones(horizon)
    elif kind == "reward_for_return":
        adv = r - critic[x[:, :-1]]
    else:
        adv = g - critic[x[:, :-1]]
    scale = 1.0 / horizon if kind == "divided_by_T" else 1.0
    return jax.grad(lambda t: scale * jnp.mean(jnp.sum(weights * adv * log_policy(t, x[:, :-1], a), axis=1)))(logits)


def reinforce_full_return_no_discount(*args):
    return _reinforce(*args, "full_return_no_discount")


def reinforce_divided_by_t(*args):
    return _reinforce(*args, "divided_by_T")


def reinforce_reward_for_return(*args):
    return _reinforce(*args, "reward_for_return")


def occupancy_gradient_jacobian_diagonal(mdp, logits, occupancy):
    from metagrad import mdp as mdp_lib

    pi = jax.nn.softmax(logits, axis=-1)
    _, q = mdp_lib.policy_evaluation(mdp, pi)
    return occupancy[:, None] * pi * (1 - pi) * q


def inner_step_normalised(mdp, logits, step_size):
    from metagrad import exact

    g = jax.grad(lambda l: exact.value(mdp, l))(logits)
    return logits + step_size * g / jnp.linalg.norm(g)


def missing_terms_future_scores(scores, advantages, gamma):
    future = jnp.cumsum(scores[::-1], axis=0)[::-1] - scores
    w = gamma ** jnp.arange(scores.shape[0]) * advantages
    return jnp.einsum("t,ti,tj->ij", w, scores, scores) + jnp.einsum("t,ti,tj->ij", w, scores, future) + jnp.einsum(
        "t,ti,tj->ij", w, future, scores)


def _surrogate(mdp, logits_fn, params, kind):
    from metagrad import mdp as mdp_lib

    log_pi = lambda p: jax.nn.log_softmax(logits_fn(p), axis=-1)  # noqa: E731
    pi = jnp.exp(log_pi(params))
    v, q = mdp_lib.policy_evaluation(mdp, pi)
    d = mdp_lib.discounted_occupancy(mdp, pi) if kind != "no_occupancy" else jnp.ones(mdp.num_states)
    return jnp.einsum("sa,sapq->pq", d[:, None] * pi * (q - v[:, None]), jax.hessian(log_pi)(params))


def expected_hessian_no_occupancy(mdp, logits_fn, params):
    return _surrogate(mdp, logits_fn, params, "no_occupancy")


def expected_hessian_zero(mdp, logits_fn, params):
    return jnp.zeros((params.shape[0], params.shape[0]))


def expected_hessian_exact(mdp, logits_fn, params):
    from metagrad import exact

    return jax.hessian(lambda p: exact.value(mdp, logits_fn(p)))(params)


def _dr(log_ratios, rewards, values, gamma, outside, inside):
    def step(nxt, inp):
        k, r, v = inp
        est = outside * v + jnp.exp(k) * (r + gamma * nxt - inside * v)
        return est, None

    return jax.lax.scan(step, values[-1], (log_ratios, rewards, values[:-1]), reverse=True)[0]


def dr_without_outside_value(log_ratios, rewards, values, gamma):
    return _dr(log_ratios, rewards, values, gamma, 0.0, 1.0)


def dr_discounted_control_variate(log_ratios, rewards, values, gamma):
    return _dr(log_ratios, rewards, values, gamma, gamma, gamma)


def dr_gradient_forward_cumsum(rewards, values, gamma):
    return jnp.cumsum(gamma ** jnp.arange(rewards.shape[0]) * (rewards + gamma * values[1:] - values[:-1]))


def dr_gradient_discounted_rewards(rewards, values, gamma):
    return gamma ** jnp.arange(rewards.shape[0]) * rewards


NAMED = [
    ("truncated_occupancy", truncated_occupancy_normalised, "(1 − γ) times the truncated sum"),
    ("step_importance_sampling", step_is_bootstrap_one_power_short, "γ^(T−1), one factor short"),
    ("hvp", hvp_directional_times_v, "directional derivative of f times v"),
    ("hvp", hvp_swapped, "x and v swapped"),
    ("score_function_gradient", score_gradient_batch_baseline, "batch-mean reward"),
    ("score_function_hessian", score_hessian_unweighted_outer, "not weighted by the rewards"),
    ("policy_evaluation", policy_evaluation_broadcast_j, "copied into every state"),
    ("discounted_occupancy", occupancy_p1_rhs, "p_1 = (P^π)ᵀ p_0 on the right-hand side"),
    ("discounted_occupancy", occupancy_stationary, "stationary distribution"),
    ("reinforce_gradient", reinforce_full_return_no_discount, "whole return G_0 with no γ^t"),
    ("reinforce_gradient", reinforce_divided_by_t, "divided by the horizon"),
    ("reinforce_gradient", reinforce_reward_for_return, "immediate reward r_t instead of the return G_t"),
    ("occupancy_policy_gradient", occupancy_gradient_jacobian_diagonal, "only the diagonal of the softmax Jacobian"),
    ("inner_step", inner_step_normalised, "normalises the gradient"),
    ("missing_hessian_terms", missing_terms_future_scores, "later scores S_{>t}"),
    ("expected_surrogate_hessian", expected_hessian_no_occupancy, "equal weight"),
    ("expected_surrogate_hessian", expected_hessian_zero, "It is zero"),
    ("expected_surrogate_hessian", expected_hessian_exact, "exact Hessian ∇²J"),
    ("doubly_robust", dr_without_outside_value, "not the + V(x_t) outside it"),
    ("doubly_robust", dr_discounted_control_variate, "control variate is γ V(x_t)"),
    ("dr_log_ratio_gradient", dr_gradient_forward_cumsum, "forward cumulative sum"),
    ("dr_log_ratio_gradient", dr_gradient_discounted_rewards, "γ^t r_t"),
]


@pytest.mark.parametrize("name,wrong,explanation", NAMED, ids=[w.__name__ for _, w, _ in NAMED])
def test_trial_a2_wrong_answers_are_named(name, wrong, explanation):
    """Named on every wrong input (not "On … it matches", a coincidence of some inputs)."""
    with pytest.raises(checks.ExerciseCheckFailed) as info:
        getattr(checks, f"check_{name}")(wrong)
    message = str(info.value)
    assert explanation in message and "matches a known mistake" not in message, message
    assert len(message) < 400 and checks.results()[name] is False


# --- forbidden shortcuts (FORBIDDEN) -------------------------------------------------------------------------


def score_hessian_magic_box(logits, actions, rewards):
    def surrogate(t):
        lp = jax.nn.log_softmax(t)[actions]
        return jnp.mean(rewards * jnp.exp(lp - jax.lax.stop_gradient(lp)))

    return jax.hessian(surrogate)(logits)


def magic_box_library(x):
    from metagrad import prior

    return prior.magic_box(x)


def policy_evaluation_library(mdp, policy):
    from metagrad import mdp as mdp_lib

    return mdp_lib.policy_evaluation(mdp, policy)[0]


def occupancy_library(mdp, policy):
    from metagrad import mdp as mdp_lib

    return mdp_lib.discounted_occupancy(mdp, policy)


def reward_to_go_library(rewards, gamma, bootstrap=0.0):
    from metagrad import ope

    values = jnp.zeros(rewards.shape[0] + 1, rewards.dtype).at[-1].set(bootstrap)
    return ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))


def occupancy_gradient_library(mdp, logits, occupancy):
    from metagrad import exact

    return exact.gradient(mdp, logits)


def inner_step_library(mdp, logits, step_size):
    from metagrad import exact

    return exact.adapted_logits(mdp, logits, step_size, 1)


def missing_terms_autodiff(scores, advantages, gamma):
    # Hessian of a magic-box objective on linear log-probs ℓ_t(θ) = g_t·θ, minus its ∇²ℓ part (zero here).
    def objective(theta):
        cum = jnp.cumsum(scores @ theta)
        return jnp.sum(gamma ** jnp.arange(scores.shape[0]) * advantages * jnp.exp(cum - jax.lax.stop_gradient(cum)))

    return jax.hessian(objective)(jnp.zeros(scores.shape[1], scores.dtype))


def step_is_library(log_ratios, rewards, values, gamma):
    from metagrad import ope

    return ope.step_importance_sampling(log_ratios, rewards, values, gamma)


def dr_library(log_ratios, rewards, values, gamma):
    from metagrad import ope

    return ope.doubly_robust(log_ratios, rewards, values, gamma)


def dr_gradient_autodiff(rewards, values, gamma):
    return jax.grad(dr_without_outside_value.__globals__["_dr"], argnums=0)(
        jnp.zeros(rewards.shape[0], rewards.dtype), rewards, values, gamma, 1.0, 1.0)


SHORTCUTS = [
    ("score_function_hessian", score_hessian_magic_box, "stop_gradient"),
    ("magic_box", magic_box_library, "`metagrad.prior.magic_box`"),
    ("policy_evaluation", policy_evaluation_library, "`metagrad.mdp.policy_evaluation`"),
    ("discounted_occupancy", occupancy_library, "`metagrad.mdp.discounted_occupancy`"),
    ("reward_to_go", reward_to_go_library, "`metagrad.ope.returns`"),
    ("occupancy_policy_gradient", occupancy_gradient_library, "`metagrad.exact.gradient`"),
    ("inner_step", inner_step_library, "`metagrad.exact.adapted_logits`"),
    ("missing_hessian_terms", missing_terms_autodiff, "automatic differentiation (`jax.hessian`)"),
    ("step_importance_sampling", step_is_library, "`metagrad.ope.step_importance_sampling`"),
    ("doubly_robust", dr_library, "`metagrad.ope.doubly_robust`"),
    ("dr_log_ratio_gradient", dr_gradient_autodiff, "automatic differentiation (`jax.grad`)"),
]


@pytest.mark.parametrize("name,wrong,explanation", SHORTCUTS, ids=[w.__name__ for _, w, _ in SHORTCUTS])
def test_forbidden_shortcuts_are_refused_by_name(name, wrong, explanation):
    assert_check_explains(checks, name, wrong, explanation)


def test_the_shortcuts_are_restored_after_the_check():
    from metagrad import exact, ope, prior
    from metagrad import mdp as mdp_lib

    originals = (prior.magic_box, mdp_lib.policy_evaluation, ope.doubly_robust, exact.gradient, jax.grad, jax.lax.stop_gradient)
    with pytest.raises(checks.ExerciseCheckFailed):
        checks.check_doubly_robust(dr_library)
    with pytest.raises(checks.ExerciseCheckFailed):
        checks.check_dr_log_ratio_gradient(dr_gradient_autodiff)
    assert (prior.magic_box, mdp_lib.policy_evaluation, ope.doubly_robust, exact.gradient, jax.grad, jax.lax.stop_gradient) == originals
