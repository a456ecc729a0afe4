"""Wrong answers from trials C2 and C3 (notebooks 06–09) that passed, hung, or were misnamed or unnamed; each is now named.

09's `off_policy_inner_step` read log μ from `batch.log_probs` and ignored `behaviour_logits` (it passed: the batch came
from μ); the check now has a batch that does not record log μ. 06's `taypo_k` written as a Python loop ran for minutes
in the 300-step case; it is now refused in a second by the size of its traced program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exercises import assert_check_explains

from metagrad import estimators, ope
from metagrad.course import checks
from metagrad.tabular import log_policy


def off_policy_inner_step_recorded_log_probs(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    def inner(theta):
        return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], gamma,
                                    behaviour_log_probs=batch.log_probs)

    return logits + step_size * jax.grad(inner)(logits)


def taypo_k_python_loop(log_ratios, rewards, values, gamma, order):
    d = jnp.expm1(log_ratios)
    advantages = ope.returns(rewards, values, gamma) - values[:-1]
    e = [1.0] + [0.0] * (order - 1)
    total = ope.returns(rewards, values, gamma)[0]
    for t in range(rewards.shape[0]):
        total = total + gamma**t * d[t] * advantages[t] * sum(e)
        e = [e[0]] + [e[j] + d[t] * e[j - 1] for j in range(1, order)]
    return total


def _taypo2(log_ratios, rewards, values, gamma, *, stop_prefix=False, discount_shift=0):
    d = jnp.expm1(log_ratios)
    returns = ope.returns(rewards, values, gamma)
    prefix = jnp.cumsum(d) - d
    prefix = jax.lax.stop_gradient(prefix) if stop_prefix else prefix
    weights = gamma ** (jnp.arange(rewards.shape[0]) + discount_shift) * (returns - values[:-1])
    return returns[0] + jnp.sum(weights * d * (1 + prefix))


def taypo2_stopped_prefix(log_ratios, rewards, values, gamma):
    return _taypo2(log_ratios, rewards, values, gamma, stop_prefix=True)


def taypo2_discount_one_ahead(log_ratios, rewards, values, gamma):
    return _taypo2(log_ratios, rewards, values, gamma, discount_shift=1)


def taypo_k_log_ratio_as_d(log_ratios, rewards, values, gamma, order):
    advantages = ope.returns(rewards, values, gamma) - values[:-1]

    def step(e, d_t):
        return e + d_t * jnp.concatenate([jnp.zeros(1), e[:-1]]), jnp.sum(e)

    _, factors = jax.lax.scan(step, jnp.zeros(order).at[0].set(1.0), log_ratios)
    return ope.returns(rewards, values, gamma)[0] + jnp.sum(
        gamma ** jnp.arange(rewards.shape[0]) * log_ratios * advantages * factors)


def taypo1_dropped_terms_discount_one_ahead(scores, advantages, gamma):
    past = jnp.cumsum(scores, axis=0) - scores
    weights = gamma ** (jnp.arange(scores.shape[0]) + 1) * advantages
    cross = jnp.einsum("t,ti,tj->ij", weights, scores, past)
    return cross + cross.T


def taypo1_dropped_terms_past_outer(scores, advantages, gamma):
    past = jnp.cumsum(scores, axis=0) - scores
    return jnp.einsum("t,ti,tj->ij", gamma ** jnp.arange(scores.shape[0]) * advantages, past, past)


def hessian_spread_around_the_mean(log_prob, params, obs, actions):
    hessians = jax.vmap(lambda a: jax.hessian(log_prob)(params, obs, a))(actions)
    return jnp.max(jnp.abs(hessians - hessians.mean(0)))


def sampled_inner_step_gamma_hard_coded(logits, batch, critic, gamma, step_size, estimator):
    def inner(theta):
        return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], 0.99)

    return logits + step_size * jax.grad(inner)(logits)


def log_linear_hessian_uniform_mean(theta, features, action):
    pi = jax.nn.softmax(features @ theta)
    mean = features.mean(0)
    return -(features.T @ (pi[:, None] * features) - jnp.outer(mean, mean))


def maml_objective_hessian_jacobians_on_one_side(at_theta, at_adapted, step_size):
    (_, hess, third), (grad_adapted, hess_adapted, _) = at_theta, at_adapted
    jacobian = jnp.eye(hess.shape[0]) + step_size * hess
    return jacobian @ jacobian @ hess_adapted + step_size * jnp.einsum("ijk,k->ij", third, grad_adapted)


def hessian_spread_difference_of_sizes(log_prob, params, obs, actions):  # trial C3
    sizes = jax.vmap(lambda a: jnp.max(jnp.abs(jax.hessian(log_prob)(params, obs, a))))(actions)
    return jnp.max(sizes - sizes[0])


def taypo2_last_return(log_ratios, rewards, values, gamma):  # trial C3: G[-1] in place of G[0]
    d = jnp.expm1(log_ratios)
    returns = ope.returns(rewards, values, gamma)
    weights = gamma ** jnp.arange(rewards.shape[0]) * (returns - values[:-1])
    return returns[-1] + jnp.sum(weights * d * (1 + jnp.cumsum(d) - d))


WRONG_ANSWERS = [
    ("nb09", "off_policy_inner_step", off_policy_inner_step_recorded_log_probs, "It reads log μ from batch.log_probs"),
    ("nb06", "taypo_k", taypo_k_python_loop, "a Python loop over the steps"),
    ("nb06", "taypo2", taypo2_stopped_prefix, "under stop_gradient"),
    ("nb06", "taypo2", taypo2_discount_one_ahead, "γ^(t+1)"),
    ("nb06", "taypo_k", taypo_k_log_ratio_as_d, "Its d_t is the log-ratio"),
    ("nb06", "taypo1_dropped_terms", taypo1_dropped_terms_discount_one_ahead, "γ^(t+1)"),
    ("nb06", "taypo1_dropped_terms", taypo1_dropped_terms_past_outer, "S_{<t} S_{<t}ᵀ"),
    ("nb08", "hessian_spread_over_actions", hessian_spread_around_the_mean, "spread around the mean Hessian"),
    ("nb08", "sampled_inner_step", sampled_inner_step_gamma_hard_coded, "It ignores `gamma`"),
    ("nb08", "log_linear_hessian", log_linear_hessian_uniform_mean, "plain average over actions"),
    ("nb09", "maml_objective_hessian", maml_objective_hessian_jacobians_on_one_side, "on the same side"),
    ("nb08", "hessian_spread_over_actions", hessian_spread_difference_of_sizes, "It subtracts the sizes of the Hessians"),
    ("nb06", "taypo2", taypo2_last_return, "Its zeroth-order term is G_{T−1}"),
]


@pytest.mark.parametrize(("module", "exercise", "wrong", "explanation"), WRONG_ANSWERS,
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_trial_c2_wrong_answer_is_named(module, exercise, wrong, explanation):
    assert_check_explains(getattr(checks, module), exercise, wrong, explanation)


def test_hessian_spread_finite_differences_still_named():
    """A finite-difference Hessian (loops, h = 1e-4) is named as such, not as a known mistake that its value happens to
    match where the largest change sits on the diagonal."""
    def finite_differences(log_prob, params, obs, actions, h=1e-4):
        size = params.shape[0]
        eye = h * np.eye(size)

        def hessian(a):
            f = lambda d: log_prob(params + d, obs, a)  # noqa: E731
            return jnp.stack([jnp.stack([(f(eye[i] + eye[j]) - f(eye[i] - eye[j]) - f(eye[j] - eye[i])
                                          + f(-eye[i] - eye[j])) / (4 * h * h) for j in range(size)])
                              for i in range(size)])

        first = hessian(actions[0])
        return jnp.max(jnp.stack([jnp.max(jnp.abs(hessian(actions[k]) - first)) for k in range(actions.shape[0])]))

    assert_check_explains(checks.nb08, "hessian_spread_over_actions", finite_differences, "finite differences?")
