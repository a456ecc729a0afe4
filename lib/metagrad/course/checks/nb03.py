"""Checks for notebook 03 — MAML and the Hessian problem."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from metagrad.course.checks._diagnose import (
    _call,
    _close,
    _compare,
    _fail,
    _float,
    _register,
    _random_mdp,
)

__all__ = ['check_inner_step', 'reference_missing_hessian_terms', 'check_missing_hessian_terms']


@_register("03", "inner_step")
def check_inner_step(inner_step: Callable) -> str:
    """``inner_step(mdp, logits, step_size)`` -> θ' = θ + η ∇J(θ), differentiable in θ."""
    from metagrad import exact

    rng = np.random.default_rng(5)
    mdp_a = _random_mdp(rng, 4, 3, 0.8)
    mdp_b = _random_mdp(rng, 4, 3, 0.5, 0.01)
    theta_a = _float(rng.normal(size=(4, 3)))
    theta_b = _float(rng.normal(size=(4, 3)))
    cases = [
        ("a random 4-state MDP with η = 0.5", (mdp_a, theta_a, 0.5)),
        ("a near-deterministic MDP with γ = 0.5 and η = 2.0", (mdp_b, theta_b, 2.0)),
        ("η = 0 (θ' = θ)", (mdp_a, theta_a, 0.0)),
    ]
    mistakes = [
        (
            lambda m, th, eta: th - eta * exact.gradient(m, th),
            "It steps downhill: MAML's inner step is gradient ascent on the value, θ + η ∇J.",
        ),
    ]
    _compare(
        "inner_step",
        inner_step,
        jax.jit(lambda m, th, eta: exact.adapted_logits(m, th, eta, 1)),
        cases,
        expected_form="(same as logits, [S, A])",
        mistakes=mistakes,
    )
    # The meta-gradient flows through the inner step: (I + η ∇²J) ∇J(θ').
    meta = _call(
        "inner_step",
        jax.jit(jax.grad(lambda th: exact.value(mdp_a, inner_step(mdp_a, th, 0.5)))),
        (theta_a,),
        "the meta-gradient",
    )
    expected = jax.jit(exact.maml_gradient, static_argnums=3)(mdp_a, theta_a, 0.5, 1)
    if not _close(meta, expected):
        first_order = exact.gradient(mdp_a, exact.adapted_logits(mdp_a, theta_a, 0.5, 1))
        hint = (
            " It equals the first-order MAML gradient ∇J(θ'): the inner gradient must stay differentiable "
            "(no stop_gradient, no NumPy conversion)."
            if _close(meta, first_order)
            else ""
        )
        _fail("inner_step", f"θ' is right, but differentiating J(θ'(θ)) does not give the exact meta-gradient.{hint}")
    return "matches metagrad.exact.adapted_logits on 3 inputs, and the meta-gradient through it is exact."


def reference_missing_hessian_terms(scores, advantages, gamma) -> np.ndarray:
    """Σ_t γ^t Â_t [g_t g_tᵀ + g_t S_{<t}ᵀ + S_{<t} g_tᵀ] with S_{<t} = Σ_{s<t} g_s, as a plain loop."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros((scores.shape[1], scores.shape[1]))
    past = np.zeros(scores.shape[1])
    for t, g in enumerate(scores):
        out += gamma**t * float(advantages[t]) * (np.outer(g, g) + np.outer(g, past) + np.outer(past, g))
        past = past + g
    return out


@_register("03", "missing_hessian_terms")
def check_missing_hessian_terms(missing_hessian_terms: Callable) -> str:
    """``missing_hessian_terms(scores [T, P], advantages [T], gamma)`` -> [P, P]."""
    keys = jax.random.split(jax.random.PRNGKey(6), 4)
    cases = [
        ("T = 5 random scores with P = 4", (_float(jax.random.normal(keys[0], (5, 4))), _float(jax.random.normal(keys[1], (5,))), 0.9)),
        ("a single step (T = 1)", (_float(jax.random.normal(keys[2], (1, 3))), _float([2.0]), 0.9)),
        ("γ = 0.5 and T = 3", (_float(jax.random.normal(keys[3], (3, 2))), _float([1.0, -1.0, 0.5]), 0.5)),
    ]

    def outer_only(scores, adv, gamma):
        scores = np.asarray(scores)
        return sum(gamma**t * float(adv[t]) * np.outer(g, g) for t, g in enumerate(scores))

    def inclusive_past(scores, adv, gamma):
        scores = np.asarray(scores)
        out, past = 0.0, np.zeros(scores.shape[1])
        for t, g in enumerate(scores):
            past = past + g
            out = out + gamma**t * float(adv[t]) * (np.outer(g, g) + np.outer(g, past) + np.outer(past, g))
        return out

    def one_sided(scores, adv, gamma):
        scores = np.asarray(scores)
        out, past = 0.0, np.zeros(scores.shape[1])
        for t, g in enumerate(scores):
            out = out + gamma**t * float(adv[t]) * (np.outer(g, g) + np.outer(g, past))
            past = past + g
        return out

    mistakes = [
        (outer_only, "It has only the g_t g_tᵀ terms (what LVC keeps): the cross terms with S_{<t} = Σ_{s<t} g_s are missing."),
        (inclusive_past, "Its past sum includes step t itself (off by one): S_{<t} runs over s < t only."),
        (one_sided, "It is not symmetric: add both g_t S_{<t}ᵀ and its transpose S_{<t} g_tᵀ."),
    ]
    _compare(
        "missing_hessian_terms",
        missing_hessian_terms,
        reference_missing_hessian_terms,
        cases,
        expected_form="(P × P, P = number of parameters)",
        mistakes=mistakes,
    )
    return "matches Σ_t γ^t Â_t [g_t g_tᵀ + g_t S_{<t}ᵀ + S_{<t} g_tᵀ] on 3 inputs (incl. T = 1)."
