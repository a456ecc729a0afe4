"""Checks for notebook 05 — Differentiating OPE: DiCE and Loaded DiCE."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks._diagnose import (
    FIXED_GAMMAS,
    _call,
    _compare,
    _fail,
    _float,
    _refuse_float32,
    _refuse_float32_precision,
    _refuse_non_finite,
    _refuse_primitives,
    _register,
    _with_third_derivative,
    _trajectory,
    _returns,
    value_to_third_parts,
)

#: Where an exponential appears, log-probabilities far below 0 separate exp(ℓ − sg(ℓ)) from exp(ℓ) / exp(sg(ℓ)).
_UNDERFLOW_HINT = ("exp(ℓ) underflows to 0 here and a ratio of exponentials is 0/0: form the ratio from the log-ratio, "
                   "exp(ℓ − stop_gradient(ℓ)).")


def _underflow_case(cases):
    """The first case with its log-probabilities shifted by −1000 (valid: π ≈ e^−1000 is a legal probability)."""
    _, (log_pi, *rest) = cases[0]
    return "the same trajectory with log-probabilities near −1000 (π ≈ e^−1000)", (log_pi - 1000.0, *rest)


_OFF_BY_ONE_IS = ("It weights r_t with Π_{s<t} ρ_s (off by one): a_t earned r_t, so r_t gets Π_{s≤t} ρ_s, "
                  "as in V̂_t = ρ_t (r_t + γ V̂_{t+1}).")
_OFF_BY_ONE_DICE = "Its box holds Σ_{s<t} ℓ_s (off by one): the action a_t that earned r_t belongs in the box."


def _second_order_box(x):
    """exp(x − sg(x)) expanded to second order: right in value, gradient and Hessian, wrong at order three."""
    u = x - jax.lax.stop_gradient(x)
    return 1.0 + u + 0.5 * u**2

__all__ = ['check_on_policy_importance_sampling', 'check_dice_objective', 'check_dice_hessian', 'check_loaded_dice']


def _dice_cases():
    keys = jax.random.split(jax.random.PRNGKey(50), 3)
    log_pi, rewards, values = _trajectory(keys[0], 6)
    log_pi = jnp.log(jax.nn.sigmoid(log_pi))  # log-probabilities are negative
    return [
        ("a random trajectory of length 6 (γ = 0.9)", (log_pi, rewards, values, 0.9)),
        ("a zero critic", (log_pi, rewards, jnp.zeros_like(values), 0.8)),
        ("a single step (T = 1)", (_float([-0.7]), _float([1.0]), _float([0.5, 3.0]), 0.9)),
        ("γ = 0.5 and T = 4", (log_pi[:4], _float([1.0, -2.0, 0.5, 3.0]), values[:5], 0.5)),
    ]


def _step_is(log_ratios, r, v, g):
    from metagrad import ope

    return ope.step_importance_sampling(log_ratios, r, v, jnp.full(r.shape, g, r.dtype))


@_register("05", "on_policy_importance_sampling")
def check_on_policy_importance_sampling(on_policy_importance_sampling: Callable) -> str:
    """`on_policy_importance_sampling(log_pi [T], rewards [T], values [T+1], gamma)`: step-wise IS at μ = sg(π)."""

    def reference(lp, r, v, g):
        return _step_is(lp - jax.lax.stop_gradient(lp), r, v, g)

    def no_stop_gradient(lp, r, v, g):
        return _step_is(lp, r, v, g)

    def constant_ratios(lp, r, v, g):
        return _step_is(jnp.zeros_like(lp), r, v, g)

    def reversed_ratio(lp, r, v, g):
        return _step_is(jax.lax.stop_gradient(lp) - lp, r, v, g)

    def no_bootstrap(lp, r, v, g):
        return reference(lp, r, jnp.zeros_like(v), g)

    def trajectory_weight(lp, r, v, g):
        lr = lp - jax.lax.stop_gradient(lp)
        t = jnp.arange(r.shape[0])
        return jnp.exp(jnp.sum(lr)) * (jnp.sum(g**t * r) + g ** r.shape[0] * v[-1])

    def undiscounted(lp, r, v, g):
        return _step_is(lp - jax.lax.stop_gradient(lp), r, v, 1.0)

    def exclusive_prefix(lp, r, v, g):  # r_t weighted by Π_{s<t} ρ_s, e.g. V̂_t = r_t + γ ρ_t V̂_{t+1}
        lr = lp - jax.lax.stop_gradient(lp)
        t = jnp.arange(r.shape[0])
        return jnp.sum(g**t * jnp.exp(jnp.cumsum(lr) - lr) * r) + g ** r.shape[0] * jnp.exp(jnp.sum(lr)) * v[-1]

    def exclusive_prefix_and_bootstrap(lp, r, v, g):  # the same shift for the bootstrap: Π_{s<T−1} ρ_s
        lr = lp - jax.lax.stop_gradient(lp)
        t = jnp.arange(r.shape[0])
        w = jnp.cumsum(lr) - lr
        return jnp.sum(g**t * jnp.exp(w) * r) + g ** r.shape[0] * jnp.exp(w[-1]) * v[-1]

    def second_order_ratio(lp, r, v, g):
        ratios = _second_order_box(lp)
        weights = jnp.cumprod(ratios)
        t = jnp.arange(r.shape[0])
        return jnp.sum(g**t * weights * r) + g ** r.shape[0] * weights[-1] * v[-1]

    def doubly_robust_at_sg(lp, r, v, g):
        from metagrad import ope

        return ope.doubly_robust(lp - jax.lax.stop_gradient(lp), r, v, jnp.full(r.shape, g, r.dtype))

    def discount_one_ahead(lp, r, v, g):  # γ^(t+1) on r_t (and γ^(T+1) on the bootstrap)
        return g * reference(lp, r, v, g)

    hard_coded = [(lambda lp, r, v, g, c=c: reference(lp, r, v, c),
                   f"It ignores `gamma` (it matches γ = {c} hard-coded): discount with the argument.") for c in FIXED_GAMMAS]
    mistakes = [
        *hard_coded,
        (discount_one_ahead, "Its discounts are one step ahead (γ^(t+1) on r_t): r_0 is not discounted, r_t carries "
                             "γ^t."),
        (doubly_robust_at_sg, "It is doubly robust at μ = sg(π): the value is right (every ratio is 1) but the "
                              "derivatives are DR's, with the critic at every step; step-wise IS uses V(x_T) only."),
        (no_stop_gradient, "Its value is the IS estimate at μ = 1 (ratios π, not 1): the log-ratio is ℓ_t − stop_gradient(ℓ_t)."),
        (constant_ratios, "Its derivatives are all zero: the log-ratios must depend on θ through ℓ_t (only log μ is stopped)."),
        (reversed_ratio, "Its gradient has the wrong sign: log ρ_t = log π − log μ = ℓ_t − stop_gradient(ℓ_t), not the reverse."),
        (no_bootstrap, "It ignores the bootstrap term γ^T (Π_{s<T} ρ_s) V(x_T)."),
        (trajectory_weight, "It weights every reward with the whole trajectory's ratio: step-wise IS weights r_t with Π_{s≤t} ρ_s only."),
        (undiscounted, "It drops the discount γ^t."),
        (exclusive_prefix, _OFF_BY_ONE_IS),
        (exclusive_prefix_and_bootstrap, _OFF_BY_ONE_IS),
        (second_order_ratio, "A ratio expanded to second order is right only up to the Hessian: use the exponential "
                             "itself."),
    ]
    exercise = "on_policy_importance_sampling"
    _refuse_float32(exercise, on_policy_importance_sampling, _dice_cases()[0][1], _dice_cases()[0][0])
    student = _with_third_derivative(on_policy_importance_sampling)
    # rtol 1e-10: a float32 step inside a float64 result is off by ~1e-8 only; every exact form agrees to ~1e-14.
    _refuse_float32_precision(exercise, student, _with_third_derivative(reference), _dice_cases(), rtol=1e-10)
    _compare(exercise, student, _with_third_derivative(reference), _dice_cases(),
             expected_form="(value, gradient, Hessian and third derivative in log_pi, flattened)",
             mistakes=[(_with_third_derivative(m), hint) for m, hint in mistakes], parts=value_to_third_parts)
    extreme = _underflow_case(_dice_cases())
    _refuse_non_finite(exercise, student, extreme[1], extreme[0], _UNDERFLOW_HINT)
    _compare(exercise, student, _with_third_derivative(reference), [extreme],
             expected_form="(value, gradient, Hessian and third derivative in log_pi, flattened)",
             parts=value_to_third_parts)
    return ("matches step-wise IS at log ρ_t = ℓ_t − sg(ℓ_t) in value and derivatives of orders 1–3 on 4 trajectories "
            "(incl. T = 1, zero critic) and with log-probabilities near −1000.")


@_register("05", "dice_objective")
def check_dice_objective(dice_objective: Callable) -> str:
    """`dice_objective(log_pi [T], rewards [T], values [T+1], gamma)`: value, gradient and Hessian in ℓ."""
    from metagrad import prior

    def box(w):
        return jnp.exp(w - jax.lax.stop_gradient(w))

    def no_stop_gradient(lp, r, v, g):
        t = jnp.arange(r.shape[0])
        w = jnp.cumsum(lp)
        return jnp.sum(g**t * jnp.exp(w) * r) + g ** r.shape[0] * jnp.exp(w[-1]) * v[-1]

    def constant_box(lp, r, v, g):
        return prior.dice_objective(jax.lax.stop_gradient(lp), r, v, g)

    def per_step_box(lp, r, v, g):
        t = jnp.arange(r.shape[0])
        return jnp.sum(g**t * box(lp) * r) + g ** r.shape[0] * box(jnp.sum(lp)) * v[-1]

    def exclusive_box(lp, r, v, g):
        t = jnp.arange(r.shape[0])
        w = jnp.cumsum(lp) - lp
        return jnp.sum(g**t * box(w) * r) + g ** r.shape[0] * box(jnp.sum(lp)) * v[-1]

    def exclusive_box_and_bootstrap(lp, r, v, g):  # the same shift for the bootstrap: □(Σ_{s<T−1} ℓ_s)
        t = jnp.arange(r.shape[0])
        w = jnp.cumsum(lp) - lp
        return jnp.sum(g**t * box(w) * r) + g ** r.shape[0] * box(w[-1]) * v[-1]

    def no_bootstrap(lp, r, v, g):
        return prior.dice_objective(lp, r, jnp.zeros_like(v), g)

    def flipped_box(lp, r, v, g):  # exp(sg(w) − w)
        t = jnp.arange(r.shape[0])
        w = jnp.cumsum(lp)
        return jnp.sum(g**t * box(-w) * r) + g ** r.shape[0] * box(-w[-1]) * v[-1]

    def trajectory_box(lp, r, v, g):  # □(Σ_s ℓ_s) × the bootstrapped return
        t = jnp.arange(r.shape[0])
        return box(jnp.sum(lp)) * (jnp.sum(g**t * r) + g ** r.shape[0] * v[-1])

    def unboxed_bootstrap(lp, r, v, g):
        t = jnp.arange(r.shape[0])
        return jnp.sum(g**t * box(jnp.cumsum(lp)) * r) + g ** r.shape[0] * v[-1]

    def first_order(lp, r, v, g):
        t = jnp.arange(r.shape[0])
        w = jnp.cumsum(lp)
        u = w - jax.lax.stop_gradient(w)
        return jnp.sum(g**t * (1.0 + u) * r) + g ** r.shape[0] * (1.0 + u[-1]) * v[-1]

    def second_order(lp, r, v, g):
        t = jnp.arange(r.shape[0])
        w = jnp.cumsum(lp)
        return jnp.sum(g**t * _second_order_box(w) * r) + g ** r.shape[0] * _second_order_box(w[-1]) * v[-1]

    def undiscounted(lp, r, v, g):
        return prior.dice_objective(lp, r, v, 1.0)

    def undiscounted_rewards(lp, r, v, g):
        w = jnp.cumsum(lp)
        return jnp.sum(box(w) * r) + g ** r.shape[0] * box(w[-1]) * v[-1]

    def bootstrap_one_step_short(lp, r, v, g):  # γ^(T−1) V(x_T)
        t = jnp.arange(r.shape[0])
        w = jnp.cumsum(lp)
        return jnp.sum(g**t * box(w) * r) + g ** (r.shape[0] - 1) * box(w[-1]) * v[-1]

    def stops_only_the_last(lp, r, v, g):  # exp(Σ_{s≤t} ℓ_s − sg(ℓ_t))
        t = jnp.arange(r.shape[0])
        w = jnp.cumsum(lp)
        return (jnp.sum(g**t * jnp.exp(w - jax.lax.stop_gradient(lp)) * r)
                + g ** r.shape[0] * jnp.exp(w[-1] - jax.lax.stop_gradient(lp[-1])) * v[-1])

    def bootstrap_box_one_short(lp, r, v, g):  # □(Σ_{s<T−1} ℓ_s): the bootstrap boxed with T − 1 actions
        t = jnp.arange(r.shape[0])
        w = jnp.cumsum(lp)
        return jnp.sum(g**t * box(w) * r) + g ** r.shape[0] * box(w[-2]) * v[-1]

    def suffix_box(bootstrap_box):  # □(Σ_{s≥t} ℓ_s) on r_t
        def estimate(lp, r, v, g):
            t = jnp.arange(r.shape[0])
            w = jnp.cumsum(lp[::-1])[::-1]
            return jnp.sum(g**t * box(w) * r) + g ** r.shape[0] * box(bootstrap_box(lp, w)) * v[-1]

        return estimate

    def discount_one_ahead(bootstrap_power):  # γ^(t+1) on r_t
        def estimate(lp, r, v, g):
            t = jnp.arange(r.shape[0])
            w = jnp.cumsum(lp)
            return jnp.sum(g ** (t + 1) * box(w) * r) + g ** (r.shape[0] + bootstrap_power) * box(w[-1]) * v[-1]

        return estimate

    suffix_hint = ("Its box holds Σ_{s≥t} ℓ_s, the later log-probabilities (a reversed cumsum): r_t depends on the "
                   "actions up to and including a_t, not on later ones.")
    shifted_hint = ("Its discount of r_t is γ^(t+1): r_t is received t steps after x_0, so it is discounted by γ^t "
                    "(γ^0 = 1 for r_0); γ^T is the bootstrap's.")
    mistakes = [
        (suffix_box(lambda lp, w: jnp.sum(lp)), suffix_hint),
        (suffix_box(lambda lp, w: w[-1]), suffix_hint),
        (discount_one_ahead(0), shifted_hint),
        (discount_one_ahead(1), shifted_hint),
        (bootstrap_box_one_short, "Its bootstrap term boxes only the first T − 1 log-probabilities (w[-2]): V(x_T) "
                                  "follows all T actions, so its box holds all of them."),
        (undiscounted, "It drops the discount γ^t (and γ^T on the bootstrap): DiCE's terms are γ^t □(…) r_t, as in step-wise IS."),
        (undiscounted_rewards, "It drops the discount γ^t of the rewards: the term of r_t is γ^t □(…) r_t."),
        (bootstrap_one_step_short, "Its bootstrap term has γ^(T−1): V(x_T) is T steps away from x_0, so it is discounted "
                                   "by γ^T."),
        (stops_only_the_last, "Its box subtracts stop_gradient(ℓ_t) alone, so it is not 1 in value: a box is "
                              "exp(w − stop_gradient(w)) with the whole exponent w stopped."),
        (no_stop_gradient, "It matches exp(Σ ℓ_s) without stop_gradient: the magic box is exp(w − stop_gradient(w)), 1 in value."),
        (constant_box, "Its derivatives are all zero: without stop_gradient, w − w is the constant 0 for autodiff too."),
        (per_step_box, "It boxes ℓ_t alone: r_t depends on every action up to and including a_t; which ratios "
                       "multiply r_t in step-wise IS?"),
        (flipped_box, "Its boxes are exp(sg(w) − w), the exponent reversed: the ratio is π/μ, so the box is "
                      "exp(w − sg(w)) and its gradient has the sign of ∇w."),
        (trajectory_box, "It boxes the whole trajectory's log-probabilities for every reward (trajectory-wise IS): r_t "
                         "cannot depend on later actions, so its box holds only the actions up to and including a_t."),
        (exclusive_box, _OFF_BY_ONE_DICE),
        (exclusive_box_and_bootstrap, _OFF_BY_ONE_DICE),
        (no_bootstrap, "It ignores the bootstrap term γ^T (…) V(x_T), which step-wise IS has."),
        (unboxed_bootstrap, "Its bootstrap term γ^T V(x_T) has no box: V(x_T) depends on the actions before T, so it "
                            "needs a box too; which ratio multiplies it in step-wise IS?"),
        (first_order, "A box expanded to first order (1 + w − sg(w)) is right only up to the gradient: DiCE promises "
                      "every order, so use the exponential itself."),
        (second_order, "A box expanded to second order (1 + u + u²/2) is right only up to the Hessian: DiCE "
                       "promises every order, so use the exponential itself."),
    ]
    exercise = "dice_objective"
    _refuse_float32(exercise, dice_objective, _dice_cases()[0][1], _dice_cases()[0][0])
    student = _with_third_derivative(dice_objective)
    # rtol 1e-10: rewards rounded to float32 are off by ~1e-8 only, and every exact form agrees to ~1e-14.
    _refuse_float32_precision(exercise, student, _with_third_derivative(prior.dice_objective), _dice_cases(), rtol=1e-10)
    _compare(exercise, student, _with_third_derivative(prior.dice_objective), _dice_cases(),
             expected_form="(value, gradient, Hessian and third derivative in log_pi, flattened)",
             mistakes=[(_with_third_derivative(m), hint) for m, hint in mistakes], parts=value_to_third_parts)
    extreme = _underflow_case(_dice_cases())
    _refuse_non_finite(exercise, student, extreme[1], extreme[0], _UNDERFLOW_HINT)
    _compare(exercise, student, _with_third_derivative(prior.dice_objective), [extreme],
             expected_form="(value, gradient, Hessian and third derivative in log_pi, flattened)",
             parts=value_to_third_parts)
    # The values are right: refuse the methods the exercise rules out, traced in log_pi alone (a cumulative product of
    # the discounts, as metagrad.prior computes Γ_t, is computed, not traced, so only a product of ratios counts).
    label, case = _dice_cases()[0]
    in_log_pi, args = _traced_in_log_pi(dice_objective, case)
    _refuse_primitives(exercise, in_log_pi, args, label, ("cumprod", "reduce_prod"),
                       "its values are right, but it multiplies per-step ratios exp(ℓ_s − sg(ℓ_s)) (jnp.cumprod or "
                       "jnp.prod): the exercise asks for the product rewritten without ratios, one magic box of a sum "
                       "of ℓ_s per term.")
    if float(np.asarray(_call(exercise, _traced_product_count(in_log_pi), args, f"{label} (traced, not run)"))) > 0:
        _fail(exercise, "its values are right, but it multiplies ratios exp(ℓ_s − sg(ℓ_s)) one by one (a Python loop, "
                        "c = c · ρ_t): the exercise asks for the product rewritten without ratios, one magic box of a "
                        "sum of ℓ_s per term.")
    return ("matches metagrad.prior.dice_objective in value and derivatives of orders 1–3 on 4 trajectories "
            "(incl. T = 1, zero critic) and with log-probabilities near −1000: L_DiCE = Σ_t γ^t □(Σ_{s≤t} ℓ_s) r_t + "
            "γ^T □(Σ_{s<T} ℓ_s) V(x_T).")


def reference_dice_hessian(grad_log_pi, hess_log_pi, rewards, values, gamma):
    """∇²_θ of DiCE's objective at one trajectory, from ∇ℓ_t [T, P] and ∇²ℓ_t [T, P, P]; every box is 1 in value.

    ∇²□(w) = □(w)(∇w∇wᵀ + ∇²w) with w_t = Σ_{s≤t} ℓ_s, so the Hessian is Σ_t c_t (S_t S_tᵀ + Σ_{s≤t} ∇²ℓ_s) with
    S_t = Σ_{s≤t} ∇ℓ_s and c_t = γ^t r_t, plus γ^T V(x_T) on the last step's box (the bootstrap's box is r_{T−1}'s).
    """
    horizon = rewards.shape[0]
    weights = (gamma ** jnp.arange(horizon) * rewards).at[-1].add(gamma**horizon * values[-1])
    scores, hessians = jnp.cumsum(grad_log_pi, axis=0), jnp.cumsum(hess_log_pi, axis=0)
    return jnp.einsum("t,ti,tj->ij", weights, scores, scores) + jnp.einsum("t,tij->ij", weights, hessians)


def _dice_hessian_cases():
    def case(key, horizon, size, gamma, reward_scale=1.0):
        k = jax.random.split(key, 4)
        grads = jax.random.normal(k[0], (horizon, size))
        half = jax.random.normal(k[1], (horizon, size, size))
        hessians = -0.5 * (half + jnp.swapaxes(half, 1, 2))  # symmetric, as a Hessian is
        rewards = reward_scale * jax.random.normal(k[2], (horizon,))  # mixed signs
        values = 3.0 * jax.random.uniform(k[3], (horizon + 1,), minval=0.5)  # a bootstrap that matters
        return tuple(map(_float, (grads, hessians, rewards, values))) + (gamma,)

    keys = jax.random.split(jax.random.PRNGKey(55), 4)
    return [
        ("a random trajectory with T = 6 and P = 4 (γ = 0.9)", case(keys[0], 6, 4, 0.9)),
        ("a single step (T = 1, P = 3)", case(keys[1], 1, 3, 0.8)),
        ("γ = 0.5, T = 4 and P = 2", case(keys[2], 4, 2, 0.5)),
        ("a long trajectory (T = 300, P = 3, γ = 0.99)", case(keys[3], 300, 3, 0.99, reward_scale=0.1)),
    ]


@_register("05", "dice_hessian")
def check_dice_hessian(dice_hessian: Callable) -> str:
    """`dice_hessian(grad_log_pi [T, P], hess_log_pi [T, P, P], rewards [T], values [T+1], gamma)` -> [P, P]."""

    def weights(r, v, g, bootstrap_power=0, discount=True, bootstrap=True):
        horizon = r.shape[0]
        w = (g ** jnp.arange(horizon) if discount else jnp.ones(horizon)) * r
        return w.at[-1].add(g ** (horizon + bootstrap_power) * v[-1] if bootstrap else 0.0)

    def hessian(scores, hessians, w, outer=1.0, second=1.0):
        return outer * jnp.einsum("t,ti,tj->ij", w, scores, scores) + second * jnp.einsum("t,tij->ij", w, hessians)

    def variant(scores=lambda g: jnp.cumsum(g, axis=0), hessians=lambda h: jnp.cumsum(h, axis=0), outer=1.0,
                second=1.0, **weight_options):
        return lambda g, h, r, v, gamma: hessian(scores(g), hessians(h), weights(r, v, gamma, **weight_options),
                                                 outer, second)

    def sum_of_outer_products(g, h, r, v, gamma):  # Σ_{s≤t} ∇ℓ_s∇ℓ_sᵀ instead of S_t S_tᵀ
        w = weights(r, v, gamma)
        return (jnp.einsum("t,tij->ij", w, jnp.cumsum(jnp.einsum("ti,tj->tij", g, g), axis=0))
                + jnp.einsum("t,tij->ij", w, jnp.cumsum(h, axis=0)))

    def bootstrap_box_one_short(g, h, r, v, gamma):  # V(x_T) boxed with the first T − 1 actions only
        horizon = r.shape[0]
        rewards_only = variant(bootstrap=False)(g, h, r, v, gamma)
        if horizon == 1:
            return rewards_only
        s, hs = jnp.sum(g[:-1], axis=0), jnp.sum(h[:-1], axis=0)
        return rewards_only + gamma**horizon * v[-1] * (jnp.outer(s, s) + hs)

    def whole_trajectory(x):
        return jnp.broadcast_to(jnp.sum(x, axis=0), x.shape)

    def exclusive(x):
        return jnp.cumsum(x, axis=0) - x

    def suffix(x):
        return jnp.cumsum(x[::-1], axis=0)[::-1]

    causal = "r_t's box holds the log-probabilities of the actions up to and including a_t."
    def bootstrap_value(index):  # the bootstrap weighted by another entry of `values`
        return lambda g, h, r, v, gamma: variant()(g, h, r, v.at[-1].set(v[index]), gamma)

    def bootstrap_without_second(g, h, r, v, gamma):  # γ^T V(x_T) S Sᵀ without its Σ ∇²ℓ_s part
        return variant(bootstrap=False)(g, h, r, v, gamma) + gamma ** r.shape[0] * v[-1] * (
            jnp.outer(jnp.sum(g, 0), jnp.sum(g, 0)))

    mistakes = [
        (lambda g, h, r, v, gamma: jnp.zeros((g.shape[1], g.shape[1])),
         "It is the zero matrix: DiCE's value is the plain return, constant in θ, but its Hessian is not zero; the boxes "
         "carry the derivatives (finite differences of the value see none of them)."),
        (variant(scores=exclusive), "Its sums of scores stop before step t (off by one). " + causal),
        (variant(hessians=exclusive), "Its sums of ∇²ℓ_s stop before step t (off by one). " + causal),
        (bootstrap_value(0), "Its bootstrap term uses V(x_0) (values[0]): the bootstrap is V(x_T), values[-1]."),
        (bootstrap_value(-2), "Its bootstrap term uses V(x_{T−1}) (values[-2]): the bootstrap is V(x_T), values[-1]."),
        (bootstrap_without_second, "Its bootstrap term lacks the ∇²ℓ part: V(x_T)'s box is differentiated like any "
                                   "reward's."),
        (variant(second=0.0), "It has only products of first derivatives: the exponent of each box is a sum of ℓ_s, and "
                              "its own second derivative ∇²ℓ_s (not zero for a softmax policy) is part of the second "
                              "derivative of the box."),
        (variant(outer=0.0), "It has only the ∇²ℓ terms, the Hessian of Σ_t γ^t r_t w_t (each box replaced by its "
                             "exponent): differentiate □(w) twice with the product rule, and a product of first "
                             "derivatives appears."),
        (sum_of_outer_products, "It sums each step's own outer product ∇ℓ_s∇ℓ_sᵀ: the products of two different steps' "
                                "scores (s ≠ s′, both ≤ t) are missing. The first derivative of the box's exponent is a "
                                "sum of scores; square the whole sum."),
        (variant(outer=0.5), "It halves the products of first derivatives: a ½ belongs to a Taylor expansion, not to the "
                             "second derivative itself."),
        (variant(second=-1.0), "Its ∇²ℓ terms have the wrong sign: the second derivative of the exponent enters the box's "
                               "second derivative with a plus."),
        (variant(scores=lambda g: g, hessians=lambda h: h), "Its box of r_t holds ℓ_t alone. " + causal),
        (variant(scores=lambda g: g), "Its products of scores use step t's score alone. " + causal),
        (variant(scores=whole_trajectory, hessians=whole_trajectory),
         "It uses the whole trajectory's derivatives for every reward: later actions cannot change r_t."),
        (variant(scores=exclusive, hessians=exclusive), "Its sums stop before step t (off by one). " + causal),
        (variant(scores=suffix, hessians=suffix), "Its sums run over the later steps s ≥ t (a reversed cumsum). " + causal),
        (variant(bootstrap=False), "It ignores the bootstrap term γ^T V(x_T): its box holds all T log-probabilities, "
                                   "so it contributes to the Hessian like a last reward."),
        (bootstrap_box_one_short, "Its bootstrap term uses the first T − 1 steps only: V(x_T) follows all T actions, so "
                                  "its box is the last reward's."),
        (variant(bootstrap_power=-1), "Its bootstrap term has γ^(T−1): V(x_T) is T steps away from x_0, so it is "
                                      "discounted by γ^T."),
        (variant(discount=False), "It drops the discount γ^t of the rewards: the term of r_t is γ^t □(…) r_t."),
        (lambda g, h, r, v, gamma: reference_dice_hessian(g, h, r, v, 1.0), "It drops the discount (γ^t and γ^T): the "
                                                                            "term of r_t is γ^t □(…) r_t."),
        (lambda g, h, r, v, gamma: -reference_dice_hessian(g, h, r, v, gamma), "It has the wrong sign: every box enters "
                                                                               "DiCE's objective with a plus."),
    ]
    exercise = "dice_hessian"
    cases = _dice_hessian_cases()
    _refuse_float32(exercise, dice_hessian, cases[0][1], cases[0][0])
    _refuse_float32_precision(exercise, dice_hessian, reference_dice_hessian, cases, rtol=1e-10)
    _compare(exercise, dice_hessian, reference_dice_hessian, cases, expected_form="([P, P], the Hessian in θ)",
             mistakes=mistakes)
    return ("matches the Hessian of DiCE's objective on 4 trajectories (incl. T = 1 and T = 300, mixed-sign rewards): "
            "∇²L = Σ_t c_t (S_t S_tᵀ + Σ_{s≤t} ∇²ℓ_s) with S_t = Σ_{s≤t} ∇ℓ_s, c_t = γ^t r_t, and γ^T V(x_T) added to "
            "c_{T−1}: the bootstrap shares the last reward's box.")


def _traced_in_log_pi(fn: Callable, args: tuple) -> tuple[Callable, tuple]:
    """`fn` as a function of `log_pi` alone (the other arguments fixed), and its argument `(log_pi,)`.

    Under `jax.ensure_compile_time_eval` the operations on the fixed arguments run at once, so a trace of it holds only
    the operations that depend on `log_pi`: a product of ratios shows, a cumulative product of the discounts does not.
    """
    log_pi, *rest = args

    def in_log_pi(lp):
        with jax.ensure_compile_time_eval():
            return fn(lp, *rest)

    return in_log_pi, (log_pi,)


def _traced_products(jaxpr, traced: set) -> int:
    """How many `mul` equations of `jaxpr` multiply two values that are both in `traced` or computed from it.

    Jitted calls are followed (their inputs mapped to the inner program's); loop bodies are not (a product carried
    through `lax.scan` goes uncounted: a scan of running sums is a right answer).
    """
    count = 0
    for eqn in jaxpr.eqns:
        inputs = [type(v).__name__ != "Literal" and v in traced for v in eqn.invars]
        count += eqn.primitive.name == "mul" and all(inputs)
        if any(inputs):
            traced.update(eqn.outvars)
        inner = getattr(eqn.params.get("jaxpr"), "jaxpr", eqn.params.get("jaxpr"))
        if eqn.primitive.name in ("jit", "pjit", "closed_call") and hasattr(inner, "eqns"):
            count += _traced_products(inner, {v for v, t in zip(inner.invars, inputs) if t})
    return count


def _traced_product_count(in_log_pi: Callable) -> Callable:
    """A probe: the number of products of two log_pi-dependent values in `in_log_pi`'s program (see `_traced_in_log_pi`).

    A DiCE objective is linear in its boxes, so it multiplies a box only by constants (γ^t, r_t); a product of
    ratios taken one step at a time multiplies the running product by the next ratio, T − 1 times.
    """

    def count(log_pi):
        jaxpr = jax.make_jaxpr(in_log_pi)(log_pi).jaxpr
        return np.array(float(_traced_products(jaxpr, set(jaxpr.invars))))

    return count


def _loaded_dice_cases():
    keys = jax.random.split(jax.random.PRNGKey(51), 4)
    horizon, num_states = 6, 8
    log_pi = jnp.log(jax.nn.sigmoid(_float(jax.random.normal(keys[0], (horizon,)))))
    states = jax.random.randint(keys[1], (horizon + 1,), 0, num_states)
    rewards = _float(jax.random.uniform(keys[2], (horizon,)))
    # A critic whose entries differ per state, so indexing it by time instead of by state is caught.
    critic = _float(jnp.linspace(0.5, 2.5, num_states))
    return [
        ("a random trajectory of length 6, λ = 1 (γ = 0.9)", (log_pi, states, rewards, critic, 0.9, 1.0)),
        ("λ = 0", (log_pi, states, rewards, critic, 0.9, 0.0)),
        ("λ = 0.5 and γ = 0.5", (log_pi, states, rewards, critic, 0.5, 0.5)),
        ("a single step (T = 1), λ = 1", (_float([-0.4]), jnp.array([2, 5]), _float([1.0]), critic, 0.9, 1.0)),
    ]


@_register("05", "loaded_dice")
def check_loaded_dice(loaded_dice: Callable) -> str:
    """`loaded_dice(log_pi [T], states [T+1], rewards [T], critic [S], gamma, lam)`: derivatives in ℓ."""
    from metagrad import prior

    def reference(lp, states, r, critic, g, lam):
        return prior.loaded_dice_objective(lp, r, critic[states], g, lam=lam)

    def time_indexed(lp, states, r, critic, g, lam):
        return prior.loaded_dice_objective(lp, r, critic[jnp.arange(states.shape[0])], g, lam=lam)

    def no_stop_gradient(lp, states, r, critic, g, lam):
        adv = jnp.arange(r.shape[0])
        adv = g**adv * (_returns(r, critic[states], g) - critic[states][:-1])
        w = jax.lax.scan(lambda c, x: (lam * c + x, lam * c + x), jnp.zeros((), lp.dtype), lp)[1]
        return jnp.sum(adv * (jnp.exp(w) - jnp.exp(w - lp)))

    def ignores_lambda(lp, states, r, critic, g, lam):
        return reference(lp, states, r, critic, g, 1.0)

    def lambda_zero(lp, states, r, critic, g, lam):
        return reference(lp, states, r, critic, g, 0.0)

    def baseline_one_late(lp, states, r, critic, g, lam):  # Â_t = G_t − V(x_{t+1})
        values = critic[states]
        return boxes_with_values(lp, r, values, jnp.concatenate([values[1:], values[-1:]]), g, lam)

    def future_exponent(lp, states, r, critic, g, lam):  # w_t = λ w_{t+1} + ℓ_t: a reversed scan
        values = critic[states]
        adv = g ** jnp.arange(r.shape[0]) * (_returns(r, values, g) - values[:-1])
        return _loaded(lp, r, adv, lambda w, x, _: lam * w + x, reverse=True)

    def second_order_boxes(lp, states, r, critic, g, lam):
        values = critic[states]
        adv = g ** jnp.arange(r.shape[0]) * (_returns(r, values, g) - values[:-1])
        return _loaded(lp, r, adv, lambda w, x, _: lam * w + x, box=_second_order_box)

    def lambda_squared(lp, states, r, critic, g, lam):
        return reference(lp, states, r, critic, g, lam**2)

    def returns_not_advantages(lp, states, r, critic, g, lam):
        return _loaded(lp, r, g**jnp.arange(r.shape[0]) * _returns(r, critic[states], g), lambda w, x, _: lam * w + x)

    def flipped_sign(lp, states, r, critic, g, lam):
        return -reference(lp, states, r, critic, g, lam)

    def lambda_on_everything(lp, states, r, critic, g, lam):
        values = critic[states]
        adv = g ** jnp.arange(r.shape[0]) * (_returns(r, values, g) - values[:-1])
        return _loaded(lp, r, adv, lambda w, x, _: lam * (w + x))

    def boxes(second, plus_g0=False):
        """Σ_t γ^t Â_t (□(w_t) − second(w, w_before, x)), w_t = λ w_{t−1} + x_t, x_t = ℓ_t − sg(ℓ_t), w_before = w_{t−1}."""

        def estimate(lp, states, r, critic, g, lam):
            values = critic[states]
            returns = _returns(r, values, g)
            adv = g ** jnp.arange(r.shape[0]) * (returns - values[:-1])
            x = lp - jax.lax.stop_gradient(lp)
            w = jax.lax.scan(lambda c, y: (lam * c + y, lam * c + y), jnp.zeros((), lp.dtype), x)[1]
            w_before = jnp.concatenate([jnp.zeros((1,), w.dtype), w[:-1]])
            value = jnp.sum(adv * (jnp.exp(w) - second(w, w_before, x)))
            return value + returns[0] if plus_g0 else value

        return estimate

    def lambda_on_everything_previous(lp, states, r, critic, g, lam):  # w_t = λ (w_{t−1} + ℓ_t), second box □(λ w_{t−1})
        values = critic[states]
        adv = g ** jnp.arange(r.shape[0]) * (_returns(r, values, g) - values[:-1])
        x = lp - jax.lax.stop_gradient(lp)
        w = jax.lax.scan(lambda c, y: (lam * (c + y), lam * (c + y)), jnp.zeros((), lp.dtype), x)[1]
        w_before = jnp.concatenate([jnp.zeros((1,), w.dtype), w[:-1]])
        return jnp.sum(jax.lax.stop_gradient(adv) * (jnp.exp(w) - jnp.exp(lam * w_before)))

    def undiscounted_returns(lp, states, r, critic, g, lam):  # G_t with γ = 1; the weight γ^t kept
        values = critic[states]
        adv = g ** jnp.arange(r.shape[0]) * (_returns(r, values, 1.0) - values[:-1])
        return _loaded(lp, r, adv, lambda w, x, _: lam * w + x)

    def exponent(update, second):
        """`_loaded` with γ^t Â_t, w_t = update(w_{t−1}, ℓ_t, t, λ) and the second box □(second(w_t, ℓ_t, t, λ))."""

        def estimate(lp, states, r, critic, g, lam):
            values = critic[states]
            adv = g ** jnp.arange(r.shape[0]) * (_returns(r, values, g) - values[:-1])
            return _loaded(lp, r, adv, lambda w, x, t: update(w, x, t, lam), lambda w, x, t: second(w, x, t, lam))

        return estimate

    # λ on the newest term, w_t = w_{t−1} + λ ℓ_t; and ℓ_s weighted by λ^s, w_t = Σ_{s≤t} λ^s ℓ_s. Each with the second
    # box □(w_t − ℓ_t) or □(w_{t−1}).
    lambda_on_the_new_term = [exponent(lambda w, x, t, lam: w + lam * x, second)
                              for second in (lambda w, x, t, lam: w - x, lambda w, x, t, lam: w - lam * x)]
    lambda_to_the_s = [exponent(lambda w, x, t, lam: w + lam**t * x, second)
                       for second in (lambda w, x, t, lam: w - x, lambda w, x, t, lam: w - lam**t * x)]
    new_term_hint = ("Its exponent is w_t = w_{t−1} + λ ℓ_t: λ multiplies the newest ℓ_t, but λ discounts the past: "
                     "the newest ℓ_t enters with weight 1, and it is the earlier sum that λ shrinks.")
    lambda_to_the_s_hint = ("Its exponent gives ℓ_s the weight λ^s, counted from the start of the trajectory: in w_t the "
                            "weight of ℓ_s is counted back from the current step t (1 for ℓ_t itself), so it shrinks "
                            "as t moves on.")

    second_box_previous_w = boxes(lambda w, w_before, x: jnp.exp(w_before))
    second_box_one = boxes(lambda w, w_before, x: 1.0)
    with_g0 = boxes(lambda w, w_before, x: jnp.exp(w - x), plus_g0=True)

    def td_error_weights(lp, states, r, critic, g, lam):  # γ^t δ_t, δ_t = r_t + γ V(x_{t+1}) − V(x_t)
        values = critic[states]
        return _loaded(lp, r, g ** jnp.arange(r.shape[0]) * (r + g * values[1:] - values[:-1]), lambda w, x, _: lam * w + x)

    def without_bootstrap(lp, states, r, critic, g, lam):
        values = critic[states]
        return boxes_with_values(lp, r, values.at[-1].set(0.0), values, g, lam)

    def first_box_only(lp, states, r, critic, g, lam):
        return boxes(lambda w, w_before, x: 0.0)(lp, states, r, critic, g, lam)

    def discounted_twice(lp, states, r, critic, g, lam):  # γ^t inside Â_t's weight and again outside
        values = critic[states]
        adv = g ** (2 * jnp.arange(r.shape[0])) * (_returns(r, values, g) - values[:-1])
        return _loaded(lp, r, adv, lambda w, x, _: lam * w + x)

    def plus_first_value(lp, states, r, critic, g, lam):
        return reference(lp, states, r, critic, g, lam) + critic[states[0]]

    mistakes = [
        (discounted_twice, "It applies γ^t twice (γ^(2t)): Â_t is already the return from step t, discounted from t; "
                           "the weight γ^t is applied once."),
        (plus_first_value, "It adds V(x_0): constant in θ, it changes only the value; Loaded DiCE keeps only the terms "
                           "that carry derivatives (its value is 0)."),
        (without_bootstrap, "Its returns G_t stop at the last reward: they are bootstrapped with the critic, "
                            "G_T = V(x_T), as in notebook 04's DR."),
        (first_box_only, "It has only the first box, Σ_t A_t □(w_t): DR's weight is W_t − W_{t−1}, a difference, so each "
                         "step has a second box, for W_{t−1}."),
        (second_box_previous_w, "Its second box is □(w_{t−1}): in the term of step t, an earlier ℓ_s carries the weight "
                                "λ^(t−s) in both boxes; compare the weight of ℓ_{t−1} in your second box with that."),
        # At λ = 0 it has the derivatives of a □(w_{t−1}) second box (summation by parts); the other λ tell them apart.
        (td_error_weights, "It weights the boxes with the TD error δ_t = r_t + γV(x_{t+1}) − V(x_t): the weight is the "
                           "advantage Â_t = G_t − V(x_t) = Σ_{s≥t} γ^(s−t) δ_s, from the whole bootstrapped return G_t."),
        (second_box_one, "Its second box is 1: W_{t−1} = Π_{s<t} ρ_s depends on θ too, so at μ = sg(π) it is a box of the "
                         "earlier log-probabilities, not a constant."),
        (with_g0, "It adds G_0: constant in θ, it changes only the value, and Loaded DiCE keeps only the terms that carry "
                  "derivatives (its value is 0)."),
        (time_indexed, "It matches a critic indexed by time, critic[t]: the critic must be indexed by the visited state, critic[states]."),
        (no_stop_gradient, "Its value is not 0: the box is exp(w − stop_gradient(w)); without stop_gradient it is a plain exp."),
        (_undiscounted, "It weights Â_t without γ^t: Loaded DiCE's A_t = γ^t Â_t, like the policy-gradient theorem."),
        (ignores_lambda, "It ignores λ (it is Loaded DiCE at λ = 1 whatever `lam` is): in step t's boxes an earlier ℓ_s "
                         "has the weight λ^(t−s)."),
        (lambda_zero, "It ignores λ (it is Loaded DiCE at λ = 0 whatever `lam` is): in step t's boxes an earlier ℓ_s "
                      "has the weight λ^(t−s)."),
        (lambda_squared, "It discounts the past by λ² per step: in step t's boxes an earlier ℓ_s has the weight λ^(t−s)."),
        (baseline_one_late, "Its baseline is V(x_{t+1}), one step late: the advantage is Â_t = G_t − V(x_t), the critic "
                            "at the state where a_t was taken."),
        (future_exponent, "Its exponent carries the later log-probabilities (a scan with reverse=True): step t's boxes "
                          "hold ℓ_t and the earlier ℓ_s, the actions before r_t."),
        (second_order_boxes, "A box expanded to second order (1 + u + u²/2) is right only up to the Hessian: Loaded DiCE "
                             "is an any-order estimator, so use the exponential itself."),
        (returns_not_advantages, "It weights the boxes with the return G_t instead of the advantage Â_t = G_t − V(x_t): "
                                 "Loaded DiCE subtracts the critic as a baseline."),
        (flipped_sign, "It has the wrong sign: DR's weight is W_t − W_{t−1}, the box of W_t minus the box of W_{t−1}."),
        (lambda_on_everything, "Its exponent is w_t = λ (w_{t−1} + ℓ_t): λ discounts only the past, so the newest ℓ_t "
                               "enters with weight 1."),
        (lambda_on_everything_previous, "Its exponent is w_t = λ (w_{t−1} + ℓ_t): λ discounts only the past, so the "
                                        "newest ℓ_t enters with weight 1."),
        *((m, new_term_hint) for m in lambda_on_the_new_term),
        *((m, lambda_to_the_s_hint) for m in lambda_to_the_s),
        (undiscounted_returns, "Its returns G_t are undiscounted (γ = 1 inside G_t): G_t = r_t + γ G_{t+1}, bootstrapped "
                               "with G_T = V(x_T), so the advantage is Â_t = G_t − V(x_t) with the same γ."),
    ]
    _refuse_float32("loaded_dice", loaded_dice, _loaded_dice_cases()[0][1], _loaded_dice_cases()[0][0])
    student = _with_third_derivative(loaded_dice)
    _refuse_float32_precision("loaded_dice", student, _with_third_derivative(reference), _loaded_dice_cases(), rtol=1e-10)
    _compare(
        "loaded_dice",
        student,
        _with_third_derivative(reference),
        _loaded_dice_cases(),
        expected_form="(value, gradient, Hessian and third derivative in log_pi, flattened)",
        mistakes=[(_with_third_derivative(m), hint) for m, hint in mistakes],
        parts=value_to_third_parts,
    )
    _, (log_pi, *rest) = _loaded_dice_cases()[2]
    extreme = ("λ = 0.5 with log-probabilities near −1000 (π ≈ e^−1000)", (log_pi - 1000.0, *rest))
    _refuse_non_finite("loaded_dice", student, extreme[1], extreme[0], _UNDERFLOW_HINT)
    _compare("loaded_dice", student, _with_third_derivative(reference), [extreme],
             expected_form="(value, gradient, Hessian and third derivative in log_pi, flattened)",
             parts=value_to_third_parts)
    return ("matches metagrad.prior.loaded_dice_objective in value and derivatives of orders 1–3 for λ = 1, 0.5, 0 "
            "(incl. T = 1) and with log-probabilities near −1000: L_LD = Σ_t γ^t Â_t (□(w_t) − □(w_t − ℓ_t)), "
            "w_t = λ w_{t−1} + ℓ_t.")


def _undiscounted(lp, states, r, critic, g, lam):
    values = critic[states]
    adv = jax.lax.stop_gradient(_returns(r, values, g) - values[:-1])
    exponents = lp - jax.lax.stop_gradient(lp)
    w = jax.lax.scan(lambda c, x: (lam * c + x, lam * c + x), jnp.zeros((), lp.dtype), exponents)[1]
    return jnp.sum(adv * (jnp.exp(w) - jnp.exp(w - exponents)))


def _magic_box(w):
    return jnp.exp(w - jax.lax.stop_gradient(w))


def _loaded(lp, r, weights, recurrence, second=lambda w, lp, t: w - lp, box=_magic_box, reverse=False):
    """Σ_t weights_t (box(w_t) − box(second(w_t, ℓ_t, t))) with w_t = recurrence(w_{t−1}, ℓ_t, t) (w_{t+1} with
    `reverse`): a variant of Loaded DiCE (the right one has the magic box, a forward scan, second box □(w_t − ℓ_t))."""
    t = jnp.arange(lp.shape[0])
    w = jax.lax.scan(lambda c, y: (recurrence(c, *y),) * 2, jnp.zeros((), lp.dtype), (lp, t), reverse=reverse)[1]
    return jnp.sum(jax.lax.stop_gradient(weights) * (box(w) - box(second(w, lp, t))))


def boxes_with_values(lp, r, return_values, baseline_values, g, lam):
    """Loaded DiCE with the returns bootstrapped from `return_values` and the baseline from `baseline_values`."""
    returns = _returns(r, return_values, g)
    adv = g ** jnp.arange(r.shape[0]) * jax.lax.stop_gradient(returns - baseline_values[:-1])
    x = lp - jax.lax.stop_gradient(lp)
    w = jax.lax.scan(lambda c, y: (lam * c + y, lam * c + y), jnp.zeros((), lp.dtype), x)[1]
    return jnp.sum(adv * (jnp.exp(w) - jnp.exp(w - x)))
