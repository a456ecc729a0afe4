"""Checks for notebook 03 — MAML and the Hessian problem."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks._diagnose import (
    FLOAT32_REMEDY,
    _call,
    _close,
    _compare,
    _fail,
    _float,
    _register,
    _random_mdp,
)
from metagrad.course.checks.nb00 import _SHIFT, _refuse_inexact
from metagrad.course.checks.nb01 import _stationary_over_one_minus_gamma

__all__ = ['check_inner_step', 'check_missing_hessian_terms', 'check_expected_surrogate_hessian']


@_register("03", "inner_step")
def check_inner_step(inner_step: Callable) -> str:
    """`inner_step(mdp, logits, step_size)` -> θ' = θ + η ∇J(θ), differentiable in θ."""
    from metagrad import exact

    rng = np.random.default_rng(5)
    mdp_a = _random_mdp(rng, 4, 3, 0.8)
    mdp_b = _random_mdp(rng, 4, 3, 0.5, 0.01)
    theta_a = _float(rng.normal(size=(4, 3)))
    theta_b = _float(rng.normal(size=(4, 3)))
    cases = [
        ("a random 4-state MDP with η = 0.5", (mdp_a, theta_a, 0.5)),
        # η = 3, not 2: with γ = 0.5 a factor (1 − γ) on the step would make η(1 − γ) = 1, like an ignored η.
        ("a near-deterministic MDP with γ = 0.5 and η = 3.0", (mdp_b, theta_b, 3.0)),
        ("η = 0 (θ' = θ)", (mdp_a, theta_a, 0.0)),
    ]
    mistakes = [
        (
            lambda m, th, eta: th - eta * exact.gradient(m, th),
            "It steps downhill: MAML's inner step is gradient ascent on the value, θ + η ∇J.",
        ),
        (
            lambda m, th, eta: th + exact.gradient(m, th),
            "It ignores `step_size`: the step is η ∇J(θ) (with η = 0, θ' = θ).",
        ),
        (
            lambda m, th, eta: eta * exact.gradient(m, th),
            "It returns only the step η ∇J(θ): θ' starts from θ.",
        ),
        (
            lambda m, th, eta: th + eta * (1 - m.gamma) * exact.gradient(m, th),
            "Its step is η (1 − γ) ∇J(θ), an extra factor (1 − γ): ∇J is the gradient of exact.value as it is (the "
            "unnormalised discounted value); take the plain step θ + η ∇J(θ).",
        ),
        (
            lambda m, th, eta: th + eta * exact.gradient(m, th) / jnp.linalg.norm(exact.gradient(m, th)),
            "It normalises the gradient (η ∇J/‖∇J‖): MAML's inner step is the plain gradient step θ + η ∇J(θ), whose "
            "length scales with ‖∇J‖.",
        ),
        *[
            (
                lambda m, th, eta, _k=k: exact.adapted_logits(m, th, eta, _k),
                f"It takes {words} gradient steps (each from the previous θ'): the inner step is a single step from θ, "
                "with the gradient at θ.",
            )
            for k, words in ((2, "two"), (3, "three"))
        ],
        (
            lambda m, th, eta: th + eta * jax.grad(lambda p: jnp.mean(_state_values(m, p)))(th),
            "It ascends the mean of V^π over states, which ignores the start distribution: J is the value from the start, "
            "p_0ᵀV^π = exact.value(mdp, θ), with p_0 = mdp.initial.",
        ),
    ]
    _compare(
        "inner_step",
        inner_step,
        jax.jit(lambda m, th, eta: exact.adapted_logits(m, th, eta, 1)),
        cases,
        expected_form="(same as logits, [S, A])",
        mistakes=mistakes,
        jit=True,
        vmap_in_axes=(0, None, None),  # cell 6 vmaps it over a batch of tasks
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
        adapted = exact.adapted_logits(mdp_a, theta_a, 0.5, 1)
        first_order = exact.gradient(mdp_a, adapted)
        hessian = exact.hessian(mdp_a, theta_a).reshape(theta_a.size, theta_a.size)
        hessian_only = 0.5 * (hessian @ first_order.reshape(-1)).reshape(theta_a.shape)  # (I + η∇²J)∇J(θ') without I
        if _close(meta, first_order):
            hint = (" It equals the first-order MAML gradient ∇J(θ'): the inner gradient must stay differentiable "
                    "(no stop_gradient, no NumPy conversion).")
        elif _close(meta, hessian_only):
            hint = (" It equals η ∇²J(θ) ∇J(θ'), the meta-gradient without its identity term: θ' depends on θ through "
                    "θ itself too (no stop_gradient on the θ of θ + η ∇J(θ)).")
        else:
            hint = ""
        _fail("inner_step", f"θ' is right, but differentiating J(θ'(θ)) does not give the exact meta-gradient.{hint}")
    _refuse_approximate_step(inner_step)
    return (
        "matches metagrad.exact.adapted_logits on 3 inputs (also under jax.jit and jax.vmap over tasks); its step "
        f"matches η ∇J to {_STEP_RTOL:.0e} relative in float64 (finite differences miss by 4e-9 or more there), and "
        "jax.grad through it matches metagrad.exact.maml_gradient on one task."
    )


_STEP_RTOL = 1e-11  # jax.grad of exact.value meets it (~1e-15); central differences on `_step_exactness_case` miss (≥ 4e-9)


def _step_exactness_case():
    """`(mdp, logits, label)` on which central finite differences of J are visibly inexact in float64."""
    rng = np.random.default_rng(31)
    mdp = _random_mdp(rng, 4, 3, 0.999)
    return mdp, _float(2.0 * rng.normal(size=(4, 3))), "a 4-state MDP with γ = 0.999 and large logits (step size 1)"


def _refuse_approximate_step(inner_step: Callable) -> None:
    """Refuse θ' whose step is only approximately η ∇J(θ), such as central finite differences of `exact.value`.

    On `_step_exactness_case` (γ = 0.999: J ~ 10³ makes rounding in J(θ ± h e) cost ~ε·10³/h; peaked logits make the
    third derivative large) the best central difference over h is off by ≥ 4e-9 relative (tests scan h), while
    autodiff agrees with `exact.gradient` to ~1e-15. Float64 only (the notebook's precision).
    """
    from metagrad import exact

    if jnp.result_type(float) != jnp.float64:
        return
    mdp, theta, label = _step_exactness_case()
    got = np.asarray(_call("inner_step", inner_step, (mdp, theta, 1.0), label), dtype=np.float64)
    expected = np.asarray(jax.jit(exact.gradient)(mdp, theta), dtype=np.float64)
    if got.shape != expected.shape:
        _fail("inner_step", f"on {label} it returned shape {got.shape}; expected {expected.shape} (same as logits).")
    step = got - np.asarray(theta)
    relative = float(np.max(np.abs(step - expected)) / np.max(np.abs(expected)))
    rounded = expected.astype(np.float32).astype(np.float64)  # ∇J rounded to float32, then added to float64 θ
    if relative > _STEP_RTOL and float(np.max(np.abs(step - rounded)) / np.max(np.abs(expected))) < 1e-12:
        _fail(
            "inner_step",
            f"on {label} its step θ' − θ is ∇J(θ) rounded to float32 (off by ~{relative:.0e} relative): " + FLOAT32_REMEDY,
        )
    if relative > _STEP_RTOL:
        _fail(
            "inner_step",
            f"on {label} its step θ' − θ matches ∇J(θ) only to ~{relative:.0e} (relative): finite differences of J "
            "are approximate, and so is a float32 step; differentiate exact.value with jax.grad in float64, exact "
            f"to better than {_STEP_RTOL:.0e} here.",
        )


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
    """`missing_hessian_terms(scores [T, P], advantages [T], gamma)` -> [P, P]."""
    keys = jax.random.split(jax.random.PRNGKey(6), 4)
    cases = [
        ("T = 5 random scores with P = 4", (_float(jax.random.normal(keys[0], (5, 4))), _float(jax.random.normal(keys[1], (5,))), 0.9)),
        ("a single step (T = 1)", (_float(jax.random.normal(keys[2], (1, 3))), _float([2.0]), 0.9)),
        ("γ = 0.6 and T = 3", (_float(jax.random.normal(keys[3], (3, 2))), _float([1.0, -1.0, 0.5]), 0.6)),
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

    def undiscounted(scores, adv, gamma):
        return reference_missing_hessian_terms(scores, adv, 1.0)

    def with_past(cross_factor, past_outer):
        def wrong(scores, adv, gamma):
            scores = np.asarray(scores)
            out, past = 0.0, np.zeros(scores.shape[1])
            for t, g in enumerate(scores):
                cross = np.outer(g, past) + np.outer(past, g)
                out = out + gamma**t * float(adv[t]) * (np.outer(g, g) + cross_factor * cross + past_outer * np.outer(past, past))
                past = past + g
            return out

        return wrong

    def with_past_one_sided(cross_factor):
        def wrong(scores, adv, gamma):
            scores = np.asarray(scores)
            out, past = 0.0, np.zeros(scores.shape[1])
            for t, g in enumerate(scores):
                out = out + gamma**t * float(adv[t]) * (np.outer(g, g) + cross_factor * np.outer(g, past))
                past = past + g
            return out

        return wrong

    def total_outer(scores, adv, gamma):  # every score of the trajectory against every other, one weight for all
        scores = np.asarray(scores)
        total = scores.sum(0)
        return float(np.sum(gamma ** np.arange(len(scores)) * np.asarray(adv))) * np.outer(total, total)

    def with_future(scores, adv, gamma):  # g_t paired with the later scores S_{>t}
        scores = np.asarray(scores)
        out = 0.0
        for t, g in enumerate(scores):
            future = scores[t + 1 :].sum(0)
            out = out + gamma**t * float(adv[t]) * (np.outer(g, g) + np.outer(g, future) + np.outer(future, g))
        return out

    def non_causal(scores, adv, gamma):  # g_t paired with S_{≠t}, the scores of every other step
        scores = np.asarray(scores)
        total = scores.sum(0)
        out = 0.0
        for t, g in enumerate(scores):
            other = total - g
            out = out + gamma**t * float(adv[t]) * (np.outer(g, g) + np.outer(g, other) + np.outer(other, g))
        return out

    mistakes = [
        (
            with_future,
            "It pairs g_t with the later scores S_{>t}: step t's reward depends only on actions up to t, so its weight "
            "multiplies products of g_t with the earlier scores S_{<t}.",
        ),
        (
            with_past(1.0, 1.0),
            "It is Σ_t γ^t Â_t (S_{<t} + g_t)(S_{<t} + g_t)ᵀ: the S_{<t} S_{<t}ᵀ part belongs to earlier steps' terms, "
            "not to step t; attach each product of two scores to the later of its two steps.",
        ),
        (with_past(2.0, 0.0), "Its cross terms are doubled: each product of two different steps' scores is counted twice."),
        (
            with_past(0.5, 0.0),
            "Its cross terms are halved: each product of two different steps' scores appears once in each order, "
            "g_t S_{<t}ᵀ + S_{<t} g_tᵀ, each with full weight.",
        ),
        (
            lambda s, a, g: 2.0 * reference_missing_hessian_terms(s, a, g),
            "It is twice the missing terms (every product, g_t g_tᵀ included, counted twice): each product of scores "
            "enters once, with weight γ^t Â_t.",
        ),
        (
            non_causal,
            "It pairs g_t with every other step's score, earlier and later: step t's reward depends only on actions "
            "up to t, so g_t pairs only with the earlier scores S_{<t}.",
        ),
        (undiscounted, "It ignores γ: each step's terms carry the same factor γ^t as its ∇²ℓ_t term in the surrogate."),
        (
            lambda s, a, g: g * reference_missing_hessian_terms(s, a, g),
            "It weights step t by γ^(t+1) (one discount too many): step t's terms carry the same γ^t as its ∇²ℓ_t "
            "term, so the first step's terms have no discount.",
        ),
        (
            lambda s, a, g: -reference_missing_hessian_terms(s, a, g),
            "It has the wrong sign (it is minus the missing terms): they are added to the surrogate's Hessian; check the "
            "sign of each product of scores in ∇²p = p (∇²log p + ∇log p ∇log pᵀ).",
        ),
        (outer_only, "It has only the g_t g_tᵀ terms (what LVC keeps): the cross terms, products of two different steps' scores, are missing."),
        (
            lambda s, a, g: reference_missing_hessian_terms(s, a, g) - outer_only(s, a, g),
            "It has only the cross terms between different steps: each step's own square g_t g_tᵀ is missing "
            "(compare M_0 of the two-step example).",
        ),
        (
            total_outer,
            "It multiplies the outer product of the total score Σ_s g_s by one common weight: step t's weight may only "
            "multiply products of the scores up to step t (later actions cannot change r_t).",
        ),
        (inclusive_past, "Its past sum includes step t itself (off by one): S_{<t} runs over s < t only."),
        (one_sided, "It is not symmetric: every product of two different steps' scores appears in both orders."),
        (
            with_past_one_sided(2.0),
            "It is not symmetric: it counts g_t S_{<t}ᵀ twice and S_{<t} g_tᵀ never; the result must be a symmetric "
            "matrix, with each product of two different steps' scores once in each order.",
        ),
        (
            with_past(0.0, 1.0),
            "It has S_{<t} S_{<t}ᵀ (two earlier scores) in step t's term: products of two earlier scores belong to the "
            "earlier steps' terms; step t's weight multiplies only the products that involve g_t.",
        ),
    ]
    _compare(
        "missing_hessian_terms",
        missing_hessian_terms,
        reference_missing_hessian_terms,
        cases,
        expected_form="(P × P, P = number of parameters)",
        mistakes=mistakes,
        jit=True,
        vmap_in_axes=(0, 0, None),  # section 3 vmaps it over trajectories
    )
    return "matches Σ_t γ^t Â_t [g_t g_tᵀ + g_t S_{<t}ᵀ + S_{<t} g_tᵀ] on 3 inputs (incl. T = 1), also under jax.jit and jax.vmap."


def reference_expected_surrogate_hessian(mdp, logits_fn: Callable, params) -> jax.Array:
    """E[Σ_t γ^t Â_t ∇²ℓ_t] (exact critic, on-policy) = Σ_{x,a} d^π(x) π(a|x) A^π(x, a) ∇²_θ log π(a|x)."""
    from metagrad import mdp as mdp_lib

    def log_pi(p):
        return jax.nn.log_softmax(logits_fn(p), axis=-1)

    pi = jnp.exp(log_pi(params))
    v, q = mdp_lib.policy_evaluation(mdp, pi)
    weights = mdp_lib.discounted_occupancy(mdp, pi)[:, None] * pi * (q - v[:, None])
    return jnp.einsum("sa,sapq->pq", weights, jax.hessian(log_pi)(params))


def _state_values(mdp, logits):
    """V^π for every state [S] (π = softmax(logits))."""
    from metagrad import mdp as mdp_lib

    return mdp_lib.policy_evaluation(mdp, jax.nn.softmax(logits, axis=-1))[0]


def _exact_value(mdp, logits):
    from metagrad import exact

    return exact.value(mdp, logits)


def _policy_classes(num_states: int, num_actions: int, seed: int):
    """(name, logits_fn, params) for a tabular softmax, a log-linear policy and a small tanh network."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    features = _float(jax.random.normal(keys[0], (num_states, num_actions, 3)))
    hidden = 2

    def tabular(p):
        return p.reshape(num_states, num_actions)

    def log_linear(p):
        return features @ p

    def network(p):
        u = p[: hidden * num_states].reshape(hidden, num_states)
        w = p[hidden * num_states :].reshape(num_actions, hidden)
        return (w @ jnp.tanh(u)).T

    return [
        ("tabular softmax logits", tabular, _float(jax.random.normal(keys[1], (num_states * num_actions,)))),
        ("a log-linear policy", log_linear, _float(jax.random.normal(keys[2], (3,)))),
        ("a tanh-network policy", network, _float(jax.random.normal(keys[3], (hidden * (num_states + num_actions),)))),
    ]


@_register("03", "expected_surrogate_hessian")
def check_expected_surrogate_hessian(expected_surrogate_hessian: Callable) -> str:
    """`expected_surrogate_hessian(mdp, logits_fn, params [P])` -> [P, P]."""
    from metagrad import mdp as mdp_lib

    rng = np.random.default_rng(11)
    mdp_a = _random_mdp(rng, 4, 2, 0.7)
    mdp_b = _random_mdp(rng, 3, 3, 0.9)
    start = rng.dirichlet(np.ones(3))
    mdp_b = type(mdp_b)(mdp_b.transitions, mdp_b.rewards, _float(start), mdp_b.gamma)
    mdp_a = type(mdp_a)(mdp_a.transitions, mdp_a.rewards, _float(rng.dirichlet(np.ones(4))), mdp_a.gamma)
    cases = []
    for mdp, seed, extra in ((mdp_a, 0, "(γ = 0.7)"), (mdp_b, 1, "(γ = 0.9)")):
        for name, fn, params in _policy_classes(mdp.num_states, mdp.num_actions, seed):
            cases.append((f"{name} on a {mdp.num_states}-state MDP {extra} with a random start distribution", (mdp, fn, params)))
    # Each policy class once, the degenerate ones (zero expectation) on one MDP each, and the tanh network (the
    # only class whose expectation is not zero) on both, so an ignored start distribution, occupancy or
    # discount fails on two inputs.
    cases = [cases[0], cases[2], cases[4], cases[5]]
    # The tanh network once more with γ = 0.999 (an effective horizon of 1000 steps): an occupancy cut off after a
    # few hundred steps misses most of d^π here, where at γ = 0.9 it misses only ~0.9^T.
    mdp_c = type(mdp_b)(mdp_b.transitions, mdp_b.rewards, mdp_b.initial, 0.999)
    cases.append(("the tanh network on the 3-state MDP with γ = 0.999", (mdp_c, *cases[-1][1][1:])))

    def pieces(mdp, fn, params):
        log_pi = lambda p: jax.nn.log_softmax(fn(p), axis=-1)  # noqa: E731
        pi = jnp.exp(log_pi(params))
        v, q = mdp_lib.policy_evaluation(mdp, pi)
        d = mdp_lib.discounted_occupancy(mdp, pi)
        return log_pi, pi, v, q, d

    def variant(kind):
        def wrong(mdp, fn, params):
            log_pi, pi, v, q, d = pieces(mdp, fn, params)
            h = jax.hessian(log_pi)(params)
            g = jax.jacobian(log_pi)(params)
            adv = q - v[:, None]
            w = {
                "q": d[:, None] * pi * q,
                "no_occupancy": mdp.initial[:, None] * pi * adv,
                "start_0": mdp_lib.discounted_occupancy(mdp._replace(initial=jnp.eye(mdp.num_states)[0]), pi)[:, None] * pi * adv,
                "no_pi": d[:, None] * adv,
                "no_states": pi * adv,
                "lvc": d[:, None] * pi * adv,
                "normalised": (1 - mdp.gamma) * d[:, None] * pi * adv,
                "sign": -d[:, None] * pi * adv,
                "r_minus_v": d[:, None] * pi * (mdp.rewards - v[:, None]),
                "r": d[:, None] * pi * mdp.rewards,
                "stationary": _stationary_over_one_minus_gamma(mdp, pi)[:, None] * pi * adv,
                "no_advantage": d[:, None] * pi,
                "uniform_occupancy": mdp_lib.discounted_occupancy(mdp, jnp.full_like(pi, 1.0 / pi.shape[-1]))[:, None]
                * pi * adv,
            }[kind] if not isinstance(kind, int) else _truncated_occupancy(mdp, pi, kind)[:, None] * pi * adv
            out = jnp.einsum("sa,sapq->pq", w, h)
            if kind == "lvc":
                out = out + jnp.einsum("sa,sap,saq->pq", w, g, g)
            return out

        return wrong

    mistakes = [
        (variant("q"), "It weights ∇²ℓ by Q^π(x, a): the surrogate's weight is the advantage estimate Â_t, with the critic "
                       "subtracted; what is its mean given x_t = x and a_t = a?"),
        (variant("no_occupancy"), "It weights states by the start distribution only: every visit to x, at every step t, counts "
                                  "(discounted by γ^t), an occupancy of the kind notebook 01 computed."),
        (variant("no_states"), "It sums over states with equal weight: each state counts as often as it is visited, "
                               "discounted, i.e. weighted by the occupancy d^π(x) of notebook 01."),
        (
            lambda mdp, fn, params: jnp.zeros((params.shape[0], params.shape[0])),
            "It is zero: true only for logits linear in θ (tabular, log-linear); for the tanh network ∇²log π depends "
            "on the action and the expectation is not zero.",
        ),
        (
            lambda mdp, fn, params: jax.hessian(lambda p: _exact_value(mdp, fn(p)))(params),
            "It is the exact Hessian ∇²J: the surrogate's expected Hessian keeps only the Σ_t γ^t Â_t ∇²ℓ_t part, "
            "without the products of scores (the missing terms of section 2).",
        ),
        (variant("no_advantage"), "It has no advantage weight (Σ d π ∇²ℓ): each term of the surrogate is weighted by "
                                  "Â_t, whose mean given (x_t, a_t) is A^π(x_t, a_t)."),
        (variant("uniform_occupancy"), "Its occupancy is the uniform policy's: the states are visited under π, so use "
                                       "d^π of the policy being differentiated."),
        (variant("no_pi"), "The action probabilities are missing: the expectation over a_t given x_t weights each action by π(a|x)."),
        (variant("lvc"), "It also has the score outer product ∇ℓ∇ℓᵀ (what LVC keeps): the surrogate's Hessian is Σ_t γ^t Â_t ∇²ℓ_t only."),
        (variant("start_0"), "It starts every trajectory in state 0: use the MDP's start distribution mdp.initial (discounted_occupancy does)."),
        (variant("sign"), "It has the wrong sign (it is minus the expectation): the surrogate is Σ_t γ^t Â_t ℓ_t, "
                          "added, not subtracted; check the sign of the advantage Q^π − V^π."),
        *[
            (variant(kind), "It weights ∇²ℓ by the immediate reward r(x, a) (or r − V^π): Â_t's mean is the advantage "
                            "A^π = Q^π − V^π, which counts later rewards too.")
            for kind in ("r_minus_v", "r")
        ],
        (
            variant("stationary"),
            "It uses the stationary distribution / (1 − γ): trajectories start from mdp.initial and early steps weigh "
            "most, as in the discounted occupancy d^π.",
        ),
        *[(variant(horizon), f"Its occupancy stops after {horizon} steps, Σ_{{t<{horizon}}} γ^t Pr(x_t = x): the expectation "
                             "is over the infinite horizon, d^π = Σ_t γ^t Pr(x_t = x), the linear solve of notebook 01.")
          for horizon in _HORIZON_CAPS],
        (variant("normalised"), "It is (1 − γ) times too small: d^π(x) is the unnormalised occupancy Σ_t γ^t Pr(x_t = x), as in metagrad.mdp.discounted_occupancy."),
    ]
    mdp, network, params = cases[-1][1]
    shifted = (mdp, _ShiftedParameters(network), params + _SHIFT)  # the same policy, parameters stored as 10⁴ + θ
    _refuse_inexact(
        "expected_surrogate_hessian", jax.jit(expected_surrogate_hessian, static_argnums=1),
        jax.jit(reference_expected_surrogate_hessian, static_argnums=1), shifted,
        "the tanh network with parameters stored as 10⁴ + θ", "the exact expectation",
        cause="the error of an approximation (finite differences, or an occupancy cut off after finitely many steps)",
        remedy="the expectation is exact ({bound}): ∇²ℓ by autodiff, d^π from the infinite-horizon linear solve",
    )
    # Compiled calls (the exercise asks for jit-compatibility): op-by-op Hessians through a linear solve are slow.
    _compare(
        "expected_surrogate_hessian",
        jax.jit(expected_surrogate_hessian, static_argnums=1),
        jax.jit(reference_expected_surrogate_hessian, static_argnums=1),
        cases,
        expected_form="(P × P, P = number of parameters)",
        mistakes=mistakes,
    )
    return (
        "matches Σ_{x,a} d^π(x) π(a|x) A^π(x,a) ∇²ℓ(a|x) for tabular, log-linear and tanh-network policies "
        "(three MDPs, γ = 0.7, 0.9 and 0.999, random start distributions), compiled with jax.jit, and exactly (not by "
        "finite differences) with parameters offset by 10⁴."
    )


_HORIZON_CAPS = (50, 100, 200, 300, 500, 1000)  # the usual fixed horizons of a loop or buffer


def _truncated_occupancy(mdp, pi, horizon: int):
    """Σ_{t<T} γ^t p_t, p_0 = mdp.initial: d^π minus γ^T times the occupancy of the chain started from p_T."""
    from metagrad import mdp as mdp_lib

    p_pi = jnp.einsum("sa,sat->st", pi, mdp.transitions)
    p_horizon = mdp.initial @ jnp.linalg.matrix_power(p_pi, horizon)
    rest = mdp_lib.discounted_occupancy(mdp._replace(initial=p_horizon), pi)
    return mdp_lib.discounted_occupancy(mdp, pi) - mdp.gamma**horizon * rest


class _ShiftedParameters:
    """logits_fn(p) = fn(p − 10⁴): hashable (a static argument of jax.jit), equal for equal fn."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, p):
        return self.fn(p - _SHIFT)

    def __hash__(self):
        return hash((_ShiftedParameters, self.fn))

    def __eq__(self, other):
        return isinstance(other, _ShiftedParameters) and other.fn is self.fn
