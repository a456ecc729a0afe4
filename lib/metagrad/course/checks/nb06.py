"""Checks for notebook 06 — Taylor expansions: LVC and the second-order estimator."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks._diagnose import (
    ExerciseCheckFailed,
    _fail,
    _compare,
    _float,
    _refuse_float32,
    _refuse_float32_precision,
    _refuse_python_loop,
    _register,
    _with_derivatives,
    _trajectory,
    _returns,
)

__all__ = ['check_taypo2', 'check_taypo_k', 'check_taypo1_dropped_terms']


def _taylor_cases():
    keys = jax.random.split(jax.random.PRNGKey(60), 3)
    log_ratios, rewards, values = _trajectory(keys[0], 6)
    big = _trajectory(keys[1], 4, scale=1.0)
    return [
        ("a random trajectory of length 6 (γ = 0.9)", (log_ratios, rewards, values, 0.9)),
        ("on-policy (all log-ratios 0)", (jnp.zeros_like(log_ratios), rewards, values, 0.9)),
        ("a single step (T = 1)", (_float([0.4]), _float([1.0]), _float([0.5, 3.0]), 0.9)),
        ("large log-ratios and γ = 0.5", (*big, 0.5)),
    ]


def _taylor_reference(order):
    from metagrad import ope

    return lambda lr, r, v, g: ope.taylor_expansion(lr, r, v, g, order=order)


def _inclusive_taypo2(lr, r, v, g):
    d = jnp.expm1(lr)
    adv = _returns(r, v, g) - v[:-1]
    g0 = _returns(r, v, g)[0]
    return g0 + jnp.sum(g ** jnp.arange(r.shape[0]) * d * adv * (1.0 + jnp.cumsum(d)))


@_register("06", "taypo2")
def check_taypo2(taypo2: Callable) -> str:
    """`taypo2(log_ratios [T], rewards [T], values [T+1], gamma)`: value, gradient, Hessian in the log-ratios."""

    def no_g0(lr, r, v, g):
        return _taylor_reference(2)(lr, r, v, g) - _returns(r, v, g)[0]

    def undiscounted(lr, r, v, g):
        d = jnp.expm1(lr)
        adv = _returns(r, v, g) - v[:-1]
        return _returns(r, v, g)[0] + jnp.sum(d * adv * (1.0 + jnp.cumsum(d) - d))

    def log_ratio_as_d(lr, r, v, g):
        adv = _returns(r, v, g) - v[:-1]
        return _returns(r, v, g)[0] + jnp.sum(g ** jnp.arange(r.shape[0]) * lr * adv * (1.0 + jnp.cumsum(lr) - lr))

    def no_bootstrap(lr, r, v, g):
        return _taylor_reference(2)(lr, r, v.at[-1].set(0.0), g)  # G_T = 0; the baselines V(x_t), t < T, unchanged

    def ratio_prefix(lr, r, v, g):
        d = jnp.expm1(lr)
        adv = _returns(r, v, g) - v[:-1]
        prefix = jnp.cumsum(jnp.exp(lr)) - jnp.exp(lr)
        return _returns(r, v, g)[0] + jnp.sum(g ** jnp.arange(r.shape[0]) * d * adv * (1.0 + prefix))

    def second_order(prefix_of, scale=1.0):
        def estimate(lr, r, v, g):
            d = jnp.expm1(lr)
            adv = _returns(r, v, g) - v[:-1]
            return _returns(r, v, g)[0] + jnp.sum(g ** jnp.arange(r.shape[0]) * d * adv * (1.0 + scale * prefix_of(d)))

        return estimate

    def ratio_as_d(lr, r, v, g):  # d_t = exp(log ρ_t) = ρ_t, not ρ_t − 1
        adv = _returns(r, v, g) - v[:-1]
        d = jnp.exp(lr)
        return _returns(r, v, g)[0] + jnp.sum(g ** jnp.arange(r.shape[0]) * d * adv * (1.0 + jnp.cumsum(d) - d))

    def only_second_order(lr, r, v, g):  # G_0 + Û_2
        return _taylor_reference(2)(lr, r, v, g) - _taylor_reference(1)(lr, r, v, g) + _returns(r, v, g)[0]

    def returns_not_advantages(lr, r, v, g):
        d = jnp.expm1(lr)
        returns = _returns(r, v, g)
        return returns[0] + jnp.sum(g ** jnp.arange(r.shape[0]) * d * returns * (1.0 + jnp.cumsum(d) - d))

    def value_as_zeroth(lr, r, v, g):  # V(x_0) in place of G_0
        return _taylor_reference(2)(lr, r, v, g) - _returns(r, v, g)[0] + v[0]

    def last_return_as_zeroth(lr, r, v, g):  # G_{T−1} (returns[-1]) in place of G_0
        return _taylor_reference(2)(lr, r, v, g) - _returns(r, v, g)[0] + _returns(r, v, g)[-1]

    def discount_one_ahead(lr, r, v, g):  # γ^(t+1) on the correction terms
        return g * (_taylor_reference(2)(lr, r, v, g) - _returns(r, v, g)[0]) + _returns(r, v, g)[0]

    mistakes = [
        (second_order(lambda d: jax.lax.stop_gradient(jnp.cumsum(d) - d)),
         "Its prefix sum Σ_{s<t} d_s is under stop_gradient: the value is right, but the earlier d_s are part of the "
         "estimate, so its derivatives must flow through them too."),
        (discount_one_ahead, "Its correction terms carry γ^(t+1): step t's term is γ^t d_t Â_t (…), so the first step has "
                             "no discount."),
        (last_return_as_zeroth, "Its zeroth-order term is G_{T−1}, the return of the last step (returns[-1]): Û_0 = G_0, "
                                "the return of the whole trajectory from x_0."),
        (value_as_zeroth, "Its zeroth-order term is the critic's V(x_0): Û_0 = G_0, the bootstrapped return of the "
                          "trajectory (the on-policy estimate, d_t = 0)."),
        (second_order(lambda d: jnp.cumsum(d[::-1])[::-1] - d),
         "Its second factor sums the later d_s, Σ_{s>t} d_s (a reversed cumulative sum): step t pairs d_t with the "
         "earlier steps s < t, as in the product Π_{s≤t} ρ_s it expands."),
        (ratio_as_d, "Its d_t is the ratio ρ_t = exp(log ρ_t): the expansion is in d_t = ρ_t − 1 (jnp.expm1), the "
                     "deviation of the ratio from 1."),
        (only_second_order, "It keeps only the second-order term Û_2 (plus G_0): TayPO-2 is G_0 + Û_1 + Û_2, so the "
                            "first-order term Σ_t γ^t d_t Â_t stays."),
        (returns_not_advantages, "It weights the terms with the return G_t instead of the advantage Â_t = G_t − V(x_t)."),
        (
            second_order(lambda d: jnp.cumsum(d) - d, 0.5),
            "Its second-order term has a factor ½ (as in a Taylor series): each pair d_t d_s (s < t) appears once in "
            "the product form, with coefficient 1.",
        ),
        (
            second_order(lambda d: jnp.sum(d) - d),
            "Its second factor d_s runs over every s ≠ t: the product in step t runs over the earlier steps s < t only.",
        ),
        (_taylor_reference(1), "It equals TayPO-1 (the estimate behind LVC): the second-order factor (1 + Σ_{s<t} d_s) is missing."),
        (second_order(lambda d: d), "Its second-order term pairs d_t with itself (d_t²): the product Π_{s≤t} ρ_s it "
                                    "expands pairs d_t with the earlier d_s, s < t, and never with d_t."),
        (_inclusive_taypo2, "Its prefix sum includes d_t itself (off by one): the second-order term pairs d_t with d_s for s < t only."),
        (ratio_prefix, "Its prefix sums the ratios ρ_s; the expansion is in d_s = ρ_s − 1."),
        (no_g0, "It misses the zeroth-order term Û_0 = G_0 (harmless for derivatives, but the estimate of V is off)."),
        (undiscounted, "It drops the discount γ^t of the correction terms: Û_k sums γ^t d_t Â_t (…), like the policy gradient."),
        (log_ratio_as_d, "Its d_t is the log-ratio: the expansion is in d_t = ρ_t − 1 = exp(log ρ_t) − 1 (jnp.expm1)."),
        (no_bootstrap, "Its returns G_t stop at the last reward: they are bootstrapped, G_T = V(x_T), as in the advantages "
                       "Â_t = G_t − V(x_t)."),
    ]
    _refuse_float32("taypo2", taypo2, _taylor_cases()[0][1], _taylor_cases()[0][0])
    _refuse_float32_precision("taypo2", _with_derivatives(taypo2), _with_derivatives(_taylor_reference(2)), _taylor_cases())
    _compare(
        "taypo2",
        _with_derivatives(taypo2),
        _with_derivatives(_taylor_reference(2)),
        _taylor_cases(),
        expected_form="(value, gradient and Hessian in log_ratios, flattened)",
        mistakes=[(_with_derivatives(m), hint) for m, hint in mistakes],
    )
    _refuse_python_loop("taypo2", lambda lr, r, v: taypo2(lr, r, v, 0.9), lambda t: _trajectory(jax.random.PRNGKey(61), t),
                        "The exercise asks for it vectorised: Hint 2 names the array operation that gives the sum "
                        "over s < t for every t at once.")
    return ("matches metagrad.ope.taylor_expansion(order=2) in value, gradient and Hessian on 4 trajectories (incl. "
            "on-policy, T = 1): V̂_2 = G_0 + Σ_t γ^t d_t Â_t (1 + Σ_{s<t} d_s).")


@_register("06", "taypo_k")
def check_taypo_k(taypo_k: Callable) -> str:
    """`taypo_k(log_ratios [T], rewards [T], values [T+1], gamma, order)`: TayPO-K by the e_j recursion."""
    from metagrad import ope

    base = _taylor_cases()
    lr, r, v, g = base[0][1]
    cases = [
        ("K = 1 on a random trajectory of length 6", (lr, r, v, g, 1)),
        ("K = 3", (lr, r, v, g, 3)),
        ("K = T = 6 (must equal doubly robust)", (lr, r, v, g, 6)),
        ("K = 9 > T", (lr, r, v, g, 9)),
        ("K = 3 with large log-ratios and γ = 0.5", (*base[3][1], 3)),
        ("K = 3, a single step (T = 1)", (*base[2][1], 3)),
    ]
    long_case = ("K = 4 on a long trajectory (T = 300, small log-ratios)", (*_long_trajectory(), 0.99, 4))

    def reference(lr, r, v, g, k):
        return ope.taylor_expansion(lr, r, v, g, order=k)

    inclusive = functools.partial(_recursion, update_first=True)  # the prefix includes d_t
    # e_j carried through stop_gradient: only the d_t of step t is differentiated
    stopped_carry = functools.partial(_recursion, update=lambda e, d_t: jax.lax.stop_gradient(_shift_update(e, d_t)))

    def top_only(lr, r, v, g, k):
        if k == 1:
            return reference(lr, r, v, g, 1)
        return reference(lr, r, v, g, k) - reference(lr, r, v, g, k - 1) + _returns(r, v, g)[0]

    def one_lower(lr, r, v, g, k):
        return _returns(r, v, g)[0] if k == 1 else reference(lr, r, v, g, k - 1)

    def with_d(fn):  # value and gradient (the Hessian is checked in `taypo2`; fewer compilations)
        return _with_derivatives(fn, static=(4,), hessian=False)

    def no_g0(lr, r, v, g, k):
        return reference(lr, r, v, g, k) - _returns(r, v, g)[0]

    def one_higher(lr, r, v, g, k):
        return reference(lr, r, v, g, k + 1)

    def always_dr(lr, r, v, g, k):
        return ope.doubly_robust(lr, r, v, jnp.full(r.shape, g, r.dtype))

    def undiscounted(lr, r, v, g, k):
        return _recursion(lr, r, v, g, k, discounted=False)

    def sequential_update(e, d_t):  # e_j += d_t e_{j−1} for j = 1 … K−1, e_{j−1} already updated at step t
        for j in range(1, e.shape[0]):
            e = e.at[j].add(d_t * e[j - 1])
        return e

    in_place = functools.partial(_recursion, update=sequential_update)

    def fixed_order(order):
        return lambda lr, r, v, g, k: reference(lr, r, v, g, order)

    ignores_order = ("It ignores `order`: it returns the same TayPO-k whatever K is asked (here TayPO-{}); keep the "
                     "orders k ≤ K, with K = `order`.")
    mistakes = [
        (functools.partial(_recursion, deviation=lambda lr: lr),
         "Its d_t is the log-ratio: the expansion is in d_t = ρ_t − 1 = exp(log ρ_t) − 1 (jnp.expm1)."),
        (functools.partial(_recursion, deviation=jnp.exp),
         "Its d_t is the ratio ρ_t = exp(log ρ_t): the expansion is in d_t = ρ_t − 1 (jnp.expm1)."),
        *[(fixed_order(order), ignores_order.format(order)) for order in (1, 2, 3, 4)],
        (always_dr, "It returns doubly robust (every order) whatever `order` is: TayPO-K keeps the orders k ≤ K only. If "
                    "you shift e with jnp.roll, e_{K−1} wraps around into e_0 and no order is dropped: shift in a 0."),
        (one_higher, "It equals TayPO-(K+1): the factor at step t is Σ_{j<K} e_j, K terms e_0 … e_{K−1}, not K + 1."),
        (undiscounted, "It drops the discount γ^t of step t: each term is γ^t d_t Â_t Σ_{j<K} e_j."),
        (no_g0, "It misses the zeroth-order term Û_0 = G_0: TayPO-K is the sum Û_0 + Û_1 + … + Û_K."),
        (inclusive, "It updates e_j with d_t before using it (off by one): step t needs e_{k−1}(d_0 … d_{t−1}), the prefix before t."),
        (stopped_carry, "It stops the gradient through the carried e_j: e_j(d_0 … d_{t−1}) depends on the earlier "
                        "log-ratios, so carry e without stop_gradient."),
        (top_only, "It keeps only the top term Û_K: TayPO-K is the sum Û_0 + Û_1 + … + Û_K."),
        (in_place, "It updates e in place in increasing j: e_j ← e_j + d_t e_{j−1} must use the old e_{j−1} (before "
                   "step t's update), so update from j = K−1 down to 1, or shift the whole old e at once."),
        (one_lower, "It equals TayPO-(K−1): with e_0 … e_{K−1} the factor Σ_{k=1}^{K} e_{k−1} has K terms."),
    ]
    _refuse_float32("taypo_k", taypo_k, cases[1][1], cases[1][0])
    _compare(
        "taypo_k",
        with_d(taypo_k),
        with_d(reference),
        cases,
        expected_form="(value and gradient in log_ratios)",
        mistakes=[(with_d(m), hint) for m, hint in mistakes],
    )
    # Before the 300-step case: a Python loop over t unrolls into 300 copies under jit (minutes and gigabytes).
    _refuse_python_loop("taypo_k", lambda lr, r, v: taypo_k(lr, r, v, 0.9, 3),
                        lambda t: _trajectory(jax.random.PRNGKey(62), t),
                        "The 300-step case would unroll it into 300 copies under jax.jit (minutes and gigabytes): carry "
                        "e = (e_0 … e_{K−1}) along the trajectory with jax.lax.scan.")
    _long_case_with_hint("taypo_k", lambda: _compare("taypo_k", with_d(taypo_k), with_d(reference), [long_case],
                                                     expected_form="(value and gradient in log_ratios)"))
    return ("matches metagrad.ope.taylor_expansion for K = 1, 3, T and K > T (= doubly robust) in value and gradient "
            "(incl. T = 1 and T = 300).")


def _long_trajectory():
    """A trajectory of 300 steps with log-ratios of scale 0.05: long enough that a fixed-size buffer or a horizon
    written into the code shows, with ratio products that stay finite."""
    log_ratios, rewards, values = _trajectory(jax.random.PRNGKey(61), 300, scale=0.05)
    return log_ratios, rewards, values


def reference_taypo1_dropped_terms(scores, advantages, gamma) -> np.ndarray:
    """∇²V̂_2 − ∇²V̂_1 at π = μ: Σ_t γ^t Â_t [g_t S_{<t}ᵀ + S_{<t} g_tᵀ], S_{<t} = Σ_{s<t} g_s, as a plain loop."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros((scores.shape[1], scores.shape[1]))
    past = np.zeros(scores.shape[1])
    for t, g in enumerate(scores):
        out += gamma**t * float(advantages[t]) * (np.outer(g, past) + np.outer(past, g))
        past = past + g
    return out


@_register("06", "taypo1_dropped_terms")
def check_taypo1_dropped_terms(taypo1_dropped_terms: Callable) -> str:
    """`taypo1_dropped_terms(scores [T, P], advantages [T], gamma)` -> [P, P], the Hessian terms TayPO-1 lacks."""
    rng = np.random.default_rng(61)
    cases = [
        ("T = 5 random scores with P = 4 (γ = 0.9)", (_float(rng.normal(size=(5, 4))), _float(rng.normal(size=5)), 0.9)),
        ("a single step (T = 1, nothing to drop)", (_float(rng.normal(size=(1, 3))), _float([2.0]), 0.9)),
        ("γ = 0.5, T = 3, P = 2", (_float(rng.normal(size=(3, 2))), _float([1.0, -1.0, 0.5]), 0.5)),
        ("T = 8 with P = 1 (scalar parameter)", (_float(rng.normal(size=(8, 1))), _float(rng.normal(size=8)), 0.8)),
    ]

    def loop(fn):
        def terms(scores, adv, gamma):
            scores = np.asarray(scores)
            out, past = np.zeros((scores.shape[1],) * 2), np.zeros(scores.shape[1])
            for t, g in enumerate(scores):
                out = out + fn(t, g, past, gamma, float(adv[t]))
                past = past + g
            return out

        return terms

    with_outer = loop(lambda t, g, past, gm, a: gm**t * a * (np.outer(g, g) + np.outer(g, past) + np.outer(past, g)))
    inclusive = loop(lambda t, g, past, gm, a: gm**t * a * (np.outer(g, past + g) + np.outer(past + g, g)))
    one_sided = loop(lambda t, g, past, gm, a: gm**t * a * np.outer(g, past))
    one_sided_t = loop(lambda t, g, past, gm, a: gm**t * a * np.outer(past, g))
    undiscounted = loop(lambda t, g, past, gm, a: a * (np.outer(g, past) + np.outer(past, g)))
    def future_scores(scores, adv, gamma):  # S_{>t} instead of S_{<t}
        scores = np.asarray(scores)
        out = np.zeros((scores.shape[1],) * 2)
        for t, g in enumerate(scores):
            later = scores[t + 1:].sum(0)
            out += gamma**t * float(adv[t]) * (np.outer(g, later) + np.outer(later, g))
        return out

    def halved(scores, adv, gamma):
        return 0.5 * reference_taypo1_dropped_terms(scores, adv, gamma)

    def discount_one_ahead(scores, adv, gamma):  # γ^(t+1) on step t
        return gamma * reference_taypo1_dropped_terms(scores, adv, gamma)

    past_outer = loop(lambda t, g, past, gm, a: gm**t * a * np.outer(past, past))

    def all_other_steps(scores, adv, gamma):  # S_{≠t} = S_{<t} + S_{>t}
        scores = np.asarray(scores)
        out = np.zeros((scores.shape[1],) * 2)
        for t, g in enumerate(scores):
            others = scores.sum(0) - g
            out += gamma**t * float(adv[t]) * (np.outer(g, others) + np.outer(others, g))
        return out

    mistakes = [
        (discount_one_ahead, "Its step t carries γ^(t+1): step t's terms have the γ^t of its term in TayPO-2, so the "
                             "first step has no discount."),
        (past_outer, "It pairs the earlier scores with each other (S_{<t} S_{<t}ᵀ): which factor of step t's "
                     "second-order term d_t Σ_{s<t} d_s carries step t's own score?"),
        (halved, "It is half the dropped terms (e.g. ½(M + Mᵀ)): differentiate d_t d_s twice by the product rule at "
                 "π = μ and count how often each product of two scores appears."),
        (all_other_steps, "It pairs step t with every s ≠ t: TayPO-2's term d_t Σ_{s<t} d_s pairs it with earlier steps "
                          "s < t only."),
        (loop(lambda t, g, past, gm, a: gm**t * a * np.outer(g, g)),
         "It returns only the same-step terms γ^t Â_t g_t g_tᵀ, which TayPO-1 keeps: the dropped terms are those of "
         "TayPO-2's products d_t d_s, which pair two different time steps."),
        (with_outer, "It includes ∇ℓ_t∇ℓ_tᵀ, which TayPO-1 keeps: only the terms with two different time steps are dropped."),
        (inclusive, "Its sum S includes s = t (off by one): TayPO-2's extra term pairs d_t with d_s for s < t only."),
        (one_sided, "It has g_t S_{<t}ᵀ without its transpose S_{<t} g_tᵀ: ∇²(d_t d_s) has two cross terms (a Hessian is symmetric)."),
        (one_sided_t, "It has S_{<t} g_tᵀ without its transpose g_t S_{<t}ᵀ: ∇²(d_t d_s) has two cross terms (a Hessian is symmetric)."),
        (undiscounted, "It drops the discount γ^t."),
        (future_scores, "It pairs step t with later steps s > t; TayPO-2's term d_t Σ_{s<t} d_s pairs it with earlier ones."),
        (lambda s_, a, g: -reference_taypo1_dropped_terms(s_, a, g), "It has the wrong sign."),
    ]
    _compare(
        "taypo1_dropped_terms",
        taypo1_dropped_terms,
        reference_taypo1_dropped_terms,
        cases,
        expected_form="[P, P] (one entry per pair of parameters)",
        mistakes=mistakes,
    )
    return ("matches ∇²V̂_2 − ∇²V̂_1 at π = μ on 4 cases (incl. T = 1 and a scalar parameter): the dropped terms are "
            "Σ_t γ^t Â_t (g_t S_{<t}ᵀ + S_{<t} g_tᵀ) with S_{<t} = Σ_{s<t} g_s.")


def _long_case_with_hint(exercise, compare):
    """Run `compare()` on the T = 300 case; a failure there, after the short cases passed, names the horizon."""
    try:
        compare()
    except ExerciseCheckFailed as err:
        _fail(exercise, err.message + " It is right on the short trajectories: nothing may depend on a fixed length "
                                      "(a buffer, a loop bound); use the trajectory's own T.")


def _shift_update(e, d_t):
    """One step of the e_j recursion, all j at once from the old e: e_j ← e_j + d_t e_{j−1}."""
    return e + d_t * jnp.concatenate([jnp.zeros(1, e.dtype), e[:-1]])


def _recursion(lr, r, v, g, k, discounted=True, update=_shift_update, update_first=False, deviation=jnp.expm1):
    """TayPO-K by the e_j recursion (a Python loop: the variants of the mistakes only run on short cases).

    `update(e, d_t)` advances e = (e_0 … e_{K−1}) past step t, after step t's term is added (before it, with
    `update_first`: the prefix then includes d_t); the mistakes pass variants of `_shift_update`, and of
    `deviation` (d_t = ρ_t − 1 = expm1(log ρ_t)).
    """
    d = deviation(lr)
    adv = _returns(r, v, g) - v[:-1]
    e = jnp.zeros(k, lr.dtype).at[0].set(1.0)
    total = _returns(r, v, g)[0]
    for t in range(r.shape[0]):
        if update_first:
            e = update(e, d[t])
        total = total + (g**t if discounted else 1.0) * d[t] * adv[t] * jnp.sum(e)
        if not update_first:
            e = update(e, d[t])
    return total


