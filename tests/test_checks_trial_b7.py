"""Wrong answers from trial B7 (notebooks 05–08) that passed, were misnamed or got only "differs"; each is now named.

Passed: DiCE written as a product of per-step boxes (`jnp.cumprod`, `jnp.prod` over a triangular mask, a Python loop),
where the exercise asks for boxes of sums without ratios (a product carried through `lax.scan` is not recognised: a scan
of running sums is a right answer, and telling the two apart is left undone). Misnamed: Loaded DiCE with
w_t = w_{t−1} + λ ℓ_t (named as λ (w_{t−1} + ℓ_t) on λ = 0 only), TayPO-2's dropped terms returned as the same-step
terms γ^t Â_t g_t g_tᵀ (named on T = 1 only), and a meta-gradient that is the inner surrogate's gradient at θ (named as
the batch surrogate at θ' on η = 0 only). Generic: Loaded DiCE with weights λ^s instead of λ^(t−s), a squared bias from
the mean of ‖ĝ_i − g‖², the Hessians' spread as the largest standard deviation or one Frobenius norm, and the log-linear
Hessian with the chosen action's φ_aφ_aᵀ in place of E_π[φφᵀ]. Each row is (check module, exercise, wrong function,
phrase the message must contain).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from _exercises import assert_check_explains

from metagrad import estimators, ope, prior
from metagrad.course import checks
from metagrad.course.checks import nb05, nb06, nb07, nb08
from metagrad.tabular import log_policy

sg = jax.lax.stop_gradient


def _box(w):
    return jnp.exp(w - sg(w))


def dice_cumprod_of_boxes(log_pi, rewards, values, gamma):
    horizon = rewards.shape[0]
    c = jnp.cumprod(_box(log_pi))
    return jnp.sum(gamma ** jnp.arange(horizon) * c * rewards) + gamma**horizon * c[-1] * values[-1]


def dice_triangular_product(log_pi, rewards, values, gamma):
    horizon = rewards.shape[0]
    mask = jnp.tril(jnp.ones((horizon, horizon), dtype=bool))
    c = jnp.prod(jnp.where(mask, _box(log_pi)[None, :], 1.0), axis=1)  # Π_{s≤t} ρ_s for every t
    return jnp.sum(gamma ** jnp.arange(horizon) * c * rewards) + gamma**horizon * c[-1] * values[-1]


def dice_python_loop_product(log_pi, rewards, values, gamma):
    product, total = 1.0, 0.0
    for t in range(rewards.shape[0]):
        product = product * _box(log_pi[t])  # Π_{s≤t} ρ_s, one ratio at a time
        total = total + gamma**t * product * rewards[t]
    return total + gamma ** rewards.shape[0] * product * values[-1]


def _loaded_dice_with(update, second):
    """Loaded DiCE with the exponent's update `update(w_prev, x, t, lam)` and second box `second(w, x, t, lam)`."""

    def loaded_dice(log_pi, states, rewards, critic, gamma, lam):
        values = critic[states]
        discounts = jnp.full(rewards.shape, gamma, rewards.dtype)
        advantages = sg(ope.returns(rewards, values, discounts) - values[:-1])
        weights = gamma ** jnp.arange(rewards.shape[0]) * advantages
        x = log_pi - sg(log_pi)
        t = jnp.arange(rewards.shape[0])
        w = jax.lax.scan(lambda c, xt: (update(c, xt[0], xt[1], lam),) * 2, jnp.zeros((), log_pi.dtype), (x, t))[1]
        return jnp.sum(weights * (jnp.exp(w) - jnp.exp(second(w, x, t, lam))))

    return loaded_dice


loaded_dice_lambda_on_the_new_term = _loaded_dice_with(lambda w, x, t, lam: w + lam * x, lambda w, x, t, lam: w - x)
loaded_dice_lambda_on_the_new_term_previous = _loaded_dice_with(lambda w, x, t, lam: w + lam * x,
                                                                lambda w, x, t, lam: w - lam * x)
loaded_dice_lambda_to_the_s = _loaded_dice_with(lambda w, x, t, lam: w + lam**t * x, lambda w, x, t, lam: w - x)
loaded_dice_lambda_to_the_s_previous = _loaded_dice_with(lambda w, x, t, lam: w + lam**t * x,
                                                         lambda w, x, t, lam: w - lam**t * x)


def taypo1_same_step_terms(scores, advantages, gamma):
    weights = gamma ** jnp.arange(scores.shape[0]) * advantages
    return jnp.einsum("t,ti,tj->ij", weights, scores, scores)


def squared_bias_from_single_errors(estimates, truth):
    noise = jnp.sum(jnp.var(estimates, axis=0, ddof=1)) / estimates.shape[0]
    return jnp.mean(jnp.sum((estimates - truth) ** 2, axis=1)) - noise


def _hessians(log_prob, params, obs, actions):
    return jax.vmap(lambda a: jax.hessian(log_prob)(params, obs, a))(actions)


def spread_as_largest_std(log_prob, params, obs, actions):
    return jnp.max(jnp.std(_hessians(log_prob, params, obs, actions), axis=0))


def spread_as_one_frobenius_norm(log_prob, params, obs, actions):
    h = _hessians(log_prob, params, obs, actions)
    return jnp.linalg.norm(h - h[0])


def log_linear_chosen_action_outer(theta, features, action):
    mean = jax.nn.softmax(features @ theta) @ features
    return -(jnp.outer(features[action], features[action]) - jnp.outer(mean, mean))


def meta_gradient_of_the_inner_surrogate(theta, mdp, batch, critic, gamma, step_size, estimator):
    values = critic[batch.observations]
    return jax.grad(lambda th: estimators.surrogate(estimator, log_policy, th, batch, values, gamma))(theta)


TRIAL_B7_WRONG_ANSWERS = [
    (nb05, "dice_objective", dice_cumprod_of_boxes, "it multiplies per-step ratios"),
    (nb05, "dice_objective", dice_triangular_product, "it multiplies per-step ratios"),
    (nb05, "dice_objective", dice_python_loop_product, "it multiplies ratios exp(ℓ_s − sg(ℓ_s)) one by one"),
    (nb05, "loaded_dice", loaded_dice_lambda_on_the_new_term, "λ multiplies the newest ℓ_t"),
    (nb05, "loaded_dice", loaded_dice_lambda_on_the_new_term_previous, "λ multiplies the newest ℓ_t"),
    (nb05, "loaded_dice", loaded_dice_lambda_to_the_s, "weight λ^s"),
    (nb05, "loaded_dice", loaded_dice_lambda_to_the_s_previous, "weight λ^s"),
    (nb06, "taypo1_dropped_terms", taypo1_same_step_terms, "only the same-step terms"),
    (nb07, "squared_bias", squared_bias_from_single_errors, "averages the squared errors ‖ĝ_i − g‖²"),
    (nb08, "hessian_spread_over_actions", spread_as_largest_std, "standard deviation"),
    (nb08, "hessian_spread_over_actions", spread_as_one_frobenius_norm, "one Frobenius norm"),
    (nb08, "log_linear_hessian", log_linear_chosen_action_outer, "φ(x, a)φ(x, a)ᵀ of the given action"),
    (nb08, "task_meta_gradient", meta_gradient_of_the_inner_surrogate, "gradient of the inner surrogate at θ"),
]


@pytest.mark.parametrize(
    ("module", "name", "wrong", "explanation"),
    TRIAL_B7_WRONG_ANSWERS,
    ids=[f"{row[1]}-{i}" for i, row in enumerate(TRIAL_B7_WRONG_ANSWERS)],
)
def test_trial_b7_wrong_answer_is_named(module, name, wrong, explanation):
    assert_check_explains(module, name, wrong, explanation, on_every_input=True)


# Right answers the method refusals of `dice_objective` must let through: the library's own (its Γ_t is a cumulative
# product of the discounts), the discounts as a cumulative product, a Python loop over boxes of running sums, and
# the running sums by lax.scan.
def dice_discounts_by_cumprod(log_pi, rewards, values, gamma):
    horizon = rewards.shape[0]
    discounts = jnp.cumprod(jnp.full(horizon + 1, gamma)) / gamma  # γ^0 … γ^T
    through_t = jnp.cumsum(log_pi)
    return jnp.sum(discounts[:-1] * _box(through_t) * rewards) + discounts[-1] * _box(through_t[-1]) * values[-1]


def dice_scan_of_running_sums(log_pi, rewards, values, gamma):
    def step(through_before, ell):
        return through_before + ell, through_before + ell

    _, through_t = jax.lax.scan(step, jnp.zeros((), log_pi.dtype), log_pi)
    discounts = gamma ** jnp.arange(rewards.shape[0])
    return jnp.sum(discounts * _box(through_t) * rewards) + gamma ** rewards.shape[0] * _box(through_t[-1]) * values[-1]


def dice_loop_over_boxes_of_sums(log_pi, rewards, values, gamma):
    total, through_t = 0.0, 0.0
    for t in range(rewards.shape[0]):
        through_t = through_t + log_pi[t]
        total = total + gamma**t * _box(through_t) * rewards[t]
    return total + gamma ** rewards.shape[0] * _box(through_t) * values[-1]


@pytest.mark.parametrize(
    "right",
    [functools.partial(prior.dice_objective), dice_discounts_by_cumprod, dice_loop_over_boxes_of_sums,
     dice_scan_of_running_sums],
    ids=["library", "discounts-by-cumprod", "loop-over-boxes-of-sums", "scan-of-running-sums"],
)
def test_dice_objective_refusals_let_boxes_of_sums_through(right, capsys):
    nb05.check_dice_objective(right)
    assert capsys.readouterr().out.startswith("✓ Exercise `dice_objective` passed")
    assert checks.results()["dice_objective"] is True
