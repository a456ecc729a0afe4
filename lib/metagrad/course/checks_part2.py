"""Automatic checks for the exercises of course part II (notebooks 05–09).

Same conventions as :mod:`metagrad.course.checks` (whose helpers this module uses): one
``check_<exercise>(student_function)`` per exercise; it compares the student's function with the library
(``metagrad.prior``, ``metagrad.ope``, ``metagrad.estimators``) on random and edge-case inputs, prints one
line starting with ``✓`` on success, and otherwise raises
:class:`~metagrad.course.checks.ExerciseCheckFailed` with one or two sentences saying what is wrong (and
which known mistake it matches: a missing ``stop_gradient``, a time-indexed critic, LVC where TayPO-2 was
asked, an off-by-one prefix sum, …). Outcomes are recorded in the same table as part I
(:func:`metagrad.course.checks.results`).

Derivative estimators are judged by their **derivatives**: the value, gradient and Hessian with respect to
the log-probabilities (or log-ratios) are compared, so a surrogate with the right value but a missing
``stop_gradient`` (or the right gradient but the wrong Hessian) is caught.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks import CHECKS, _call, _close, _compare, _fail, _float, _register

__all__ = [
    "check_dice_objective",
    "check_loaded_dice",
    "check_taypo2",
    "check_taypo_k",
    "check_choose_estimator",
    "check_sampled_inner_step",
    "check_task_meta_gradient",
    "check_taypo_terms",
    "check_off_policy_inner_step",
    "EXERCISES",
    "describe",
]


def _with_derivatives(fn: Callable, argnum: int = 0, static: tuple[int, ...] = (), hessian: bool = True) -> Callable:
    """[value, gradient, Hessian (flattened)] of ``fn`` in its argument ``argnum`` (a ``[T]`` vector), jitted.

    Jitted because differentiating a ``lax.scan`` twice op by op is slow; ``static`` lists arguments that
    must stay Python values (e.g. an order K).
    """

    @functools.partial(jax.jit, static_argnums=static)
    def all_orders(*args):
        def f(x):
            return fn(*args[:argnum], x, *args[argnum + 1 :])

        x = args[argnum]
        value = jnp.reshape(f(x), (1,))
        parts = [value, jax.grad(f)(x)]
        if hessian:
            parts.append(jax.hessian(f)(x).ravel())
        return jnp.concatenate(parts)

    return all_orders


def _trajectory(key, horizon, scale=0.5):
    k1, k2, k3 = jax.random.split(key, 3)
    return (
        _float(scale * jax.random.normal(k1, (horizon,))),
        _float(jax.random.uniform(k2, (horizon,))),
        _float(2.0 * jax.random.uniform(k3, (horizon + 1,))),
    )


def _returns(rewards, values, gamma):
    from metagrad import ope

    return ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))


# --------------------------------------------------------------------------------------------------
# 05 — Differentiating OPE: DiCE and Loaded DiCE


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


@_register("05", "dice_objective")
def check_dice_objective(dice_objective: Callable) -> str:
    """``dice_objective(log_pi [T], rewards [T], values [T+1], gamma)``: value, gradient and Hessian in ℓ."""
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

    def no_bootstrap(lp, r, v, g):
        return prior.dice_objective(lp, r, jnp.zeros_like(v), g)

    mistakes = [
        (no_stop_gradient, "It matches exp(Σ ℓ_s) without stop_gradient: the magic box is exp(w − stop_gradient(w)), 1 in value."),
        (constant_box, "Its derivatives are all zero: without stop_gradient, w − w is the constant 0 for autodiff too."),
        (per_step_box, "It boxes ℓ_t alone: r_t depends on every action up to t, so the box holds Σ_{s≤t} ℓ_s."),
        (exclusive_box, "Its box holds Σ_{s<t} ℓ_s (off by one): the action a_t that earned r_t belongs in the box."),
        (no_bootstrap, "It ignores the bootstrap term γ^T □(Σ_{s<T} ℓ_s) V(x_T)."),
    ]
    _compare(
        "dice_objective",
        _with_derivatives(dice_objective),
        _with_derivatives(prior.dice_objective),
        _dice_cases(),
        expected_form="(value, gradient and Hessian in log_pi, flattened)",
        mistakes=[(_with_derivatives(m), hint) for m, hint in mistakes],
    )
    return "matches metagrad.prior.dice_objective in value, gradient and Hessian on 4 trajectories (incl. T = 1, zero critic)."


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
    """``loaded_dice(log_pi [T], states [T+1], rewards [T], critic [S], gamma, lam)``: derivatives in ℓ."""
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

    mistakes = [
        (time_indexed, "It matches a critic indexed by time, critic[t]: the critic must be indexed by the visited state, critic[states]."),
        (no_stop_gradient, "Its value is not 0: the box is exp(w − stop_gradient(w)); without stop_gradient it is a plain exp."),
        (_undiscounted, "It weights Â_t without γ^t: Loaded DiCE's A_t = γ^t Â_t, like the policy-gradient theorem."),
        (ignores_lambda, "It ignores λ: the exponent is w_t = λ w_{t−1} + ℓ_t."),
    ]
    _compare(
        "loaded_dice",
        _with_derivatives(loaded_dice),
        _with_derivatives(reference),
        _loaded_dice_cases(),
        expected_form="(value, gradient and Hessian in log_pi, flattened)",
        mistakes=[(_with_derivatives(m), hint) for m, hint in mistakes],
    )
    return "matches metagrad.prior.loaded_dice_objective in value, gradient and Hessian for λ = 1, 0.5, 0 (incl. T = 1)."


def _undiscounted(lp, states, r, critic, g, lam):
    values = critic[states]
    adv = jax.lax.stop_gradient(_returns(r, values, g) - values[:-1])
    exponents = lp - jax.lax.stop_gradient(lp)
    w = jax.lax.scan(lambda c, x: (lam * c + x, lam * c + x), jnp.zeros((), lp.dtype), exponents)[1]
    return jnp.sum(adv * (jnp.exp(w) - jnp.exp(w - exponents)))


# --------------------------------------------------------------------------------------------------
# 06 — Taylor expansions: LVC and the second-order estimator


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
    """``taypo2(log_ratios [T], rewards [T], values [T+1], gamma)``: value, gradient, Hessian in the log-ratios."""

    def no_g0(lr, r, v, g):
        return _taylor_reference(2)(lr, r, v, g) - _returns(r, v, g)[0]

    def ratio_prefix(lr, r, v, g):
        d = jnp.expm1(lr)
        adv = _returns(r, v, g) - v[:-1]
        prefix = jnp.cumsum(jnp.exp(lr)) - jnp.exp(lr)
        return _returns(r, v, g)[0] + jnp.sum(g ** jnp.arange(r.shape[0]) * d * adv * (1.0 + prefix))

    mistakes = [
        (_taylor_reference(1), "It equals TayPO-1 (the estimate behind LVC): the second-order factor (1 + Σ_{s<t} d_s) is missing."),
        (_inclusive_taypo2, "Its prefix sum includes d_t itself (off by one): the second-order term pairs d_t with d_s for s < t only."),
        (ratio_prefix, "Its prefix sums the ratios ρ_s; the expansion is in d_s = ρ_s − 1."),
        (no_g0, "It misses the zeroth-order term Û_0 = G_0 (harmless for derivatives, but the estimate of V is off)."),
    ]
    _compare(
        "taypo2",
        _with_derivatives(taypo2),
        _with_derivatives(_taylor_reference(2)),
        _taylor_cases(),
        expected_form="(value, gradient and Hessian in log_ratios, flattened)",
        mistakes=[(_with_derivatives(m), hint) for m, hint in mistakes],
    )
    return "matches metagrad.ope.taylor_expansion(order=2) in value, gradient and Hessian on 4 trajectories (incl. on-policy, T = 1)."


@_register("06", "taypo_k")
def check_taypo_k(taypo_k: Callable) -> str:
    """``taypo_k(log_ratios [T], rewards [T], values [T+1], gamma, order)``: TayPO-K by the e_j recursion."""
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

    def reference(lr, r, v, g, k):
        return ope.taylor_expansion(lr, r, v, g, order=k)

    def inclusive(lr, r, v, g, k):
        d = jnp.expm1(lr)
        adv = _returns(r, v, g) - v[:-1]
        e = jnp.zeros(k, lr.dtype).at[0].set(1.0)
        total = _returns(r, v, g)[0]
        for t in range(r.shape[0]):
            e = e + d[t] * jnp.concatenate([jnp.zeros(1, lr.dtype), e[:-1]])
            total = total + g**t * d[t] * adv[t] * jnp.sum(e)
        return total

    def top_only(lr, r, v, g, k):
        if k == 1:
            return reference(lr, r, v, g, 1)
        return reference(lr, r, v, g, k) - reference(lr, r, v, g, k - 1) + _returns(r, v, g)[0]

    def one_lower(lr, r, v, g, k):
        return _returns(r, v, g)[0] if k == 1 else reference(lr, r, v, g, k - 1)

    def with_d(fn):  # value and gradient (the Hessian is checked in `taypo2`; fewer compilations)
        return _with_derivatives(fn, static=(4,), hessian=False)

    mistakes = [
        (inclusive, "It updates e_j with d_t before using it (off by one): step t needs e_{k−1}(d_0 … d_{t−1}), the prefix before t."),
        (top_only, "It keeps only the top term Û_K: TayPO-K is the sum Û_0 + Û_1 + … + Û_K."),
        (one_lower, "It equals TayPO-(K−1): with e_0 … e_{K−1} the factor Σ_{k=1}^{K} e_{k−1} has K terms."),
    ]
    _compare(
        "taypo_k",
        with_d(taypo_k),
        with_d(reference),
        cases,
        expected_form="(value and gradient in log_ratios)",
        mistakes=[(with_d(m), hint) for m, hint in mistakes],
    )
    return "matches metagrad.ope.taylor_expansion for K = 1, 3, T and K > T (= doubly robust) in value and gradient (incl. T = 1)."


# --------------------------------------------------------------------------------------------------
# 07 — The bias–variance picture


def reference_choose_estimator(bias: dict, variance: dict, num_trajectories: int) -> str:
    """argmin_name  bias[name]² + variance[name] / N: the estimator with the smallest mean squared error."""
    return min(bias, key=lambda name: bias[name] ** 2 + variance[name] / num_trajectories)


@_register("07", "choose_estimator")
def check_choose_estimator(choose_estimator: Callable) -> str:
    """``choose_estimator(bias {name: ‖b‖}, variance {name: per-trajectory variance}, N)`` -> the best name."""
    exercise = "choose_estimator"
    measured = (
        {"is": 0.02, "dr": 0.01, "taypo1": 0.9, "taypo2": 0.05, "vtrace": 2.0},
        {"is": 900.0, "dr": 60.0, "taypo1": 4.0, "taypo2": 20.0, "vtrace": 1.0},
    )
    cases = [
        ("the measurements above with N = 10", (*measured, 10)),
        ("the same measurements with N = 1000", (*measured, 1000)),
        ("the same measurements with N = 100 000", (*measured, 100_000)),
        ("biases below 1 (squaring makes them smaller), N = 100", ({"a": 0.3, "b": 0.5}, {"a": 30.0, "b": 12.0}, 100)),
        ("a single estimator", ({"dr": 0.1}, {"dr": 5.0}, 50)),
    ]
    wrong_rules = [
        (lambda b, v, n: min(b, key=lambda k: v[k]), "It picks the smallest variance and ignores the bias."),
        (lambda b, v, n: min(b, key=lambda k: abs(b[k])), "It picks the smallest bias and ignores the variance."),
        (lambda b, v, n: min(b, key=lambda k: b[k] ** 2 + v[k]), "It ignores N: the variance of a mean of N trajectories is variance / N."),
        (lambda b, v, n: min(b, key=lambda k: abs(b[k]) + v[k] / n), "It adds the bias, not its square: mean squared error = bias² + variance / N."),
    ]
    for label, (bias, variance, n) in cases:
        expected = reference_choose_estimator(bias, variance, n)
        got = _call(exercise, choose_estimator, (dict(bias), dict(variance), n), label)
        if not isinstance(got, str):
            _fail(exercise, f"on {label} it returned {got!r}; return the estimator's name (a key of the dicts).")
        if got != expected:
            message = f"on {label} it chose {got!r}, but {expected!r} has the smallest mean squared error bias² + variance / N."
            for rule, hint in wrong_rules:
                if rule(bias, variance, n) == got:
                    message += " " + hint
                    break
            _fail(exercise, message)
    return "picks the smallest bias² + variance / N on 5 inputs (N = 10, 1000, 100 000, biases < 1, one estimator)."


# --------------------------------------------------------------------------------------------------
# 08 — MAML end to end


def _inner_step_data(with_mdp: bool = False):
    from metagrad.course.checks import _random_mdp
    from metagrad.rollout import sample, tabular_softmax_policy

    rng = np.random.default_rng(80)
    mdp = _random_mdp(rng, 5, 3, 0.8)
    logits = _float(rng.normal(size=(5, 3)))
    batch = sample(jax.random.PRNGKey(80), mdp, tabular_softmax_policy, logits, 12, 6)
    # A critic whose entries differ per state, so indexing it by time instead of by state is caught.
    critic = _float(np.linspace(0.5, 2.0, 5))
    return (logits, batch, critic, mdp) if with_mdp else (logits, batch, critic)


def _jit_estimator(fn: Callable, estimator_argnum: int) -> Callable:
    """``jax.jit(fn)`` with the estimator name static: one compilation per estimator is several times faster than
    op-by-op autodiff of the surrogates, which keeps the notebooks within their time budget. Tracing errors (NumPy or
    Python ``if`` on arrays) still reach :func:`_call`, which explains them."""
    return jax.jit(fn, static_argnums=(estimator_argnum,))


def _reference_inner_step(logits, batch, critic, gamma, step_size, estimator):
    from metagrad import estimators
    from metagrad.tabular import log_policy

    def inner(theta):
        return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], gamma)

    return logits + step_size * jax.grad(inner)(logits)


@_register("08", "sampled_inner_step")
def check_sampled_inner_step(sampled_inner_step: Callable) -> str:
    """``sampled_inner_step(logits, batch, critic, gamma, step_size, estimator)`` -> θ' (differentiable in θ)."""
    from metagrad.tabular import log_policy

    logits, batch, critic = _inner_step_data()
    cases = [
        ("12 trajectories, η = 0.5, estimator 'dr'", (logits, batch, critic, 0.8, 0.5, "dr")),
        ("estimator 'taypo2', η = 1.0", (logits, batch, critic, 0.8, 1.0, "taypo2")),
        ("η = 0 (θ' = θ)", (logits, batch, critic, 0.8, 0.0, "dr")),
    ]

    def descent(logits, batch, critic, gamma, step_size, estimator):
        return 2 * logits - _reference_inner_step(logits, batch, critic, gamma, step_size, estimator)

    def time_indexed(logits, batch, critic, gamma, step_size, estimator):
        from metagrad import estimators

        steps = jnp.minimum(jnp.arange(batch.observations.shape[1]), critic.shape[0] - 1)
        values = jnp.broadcast_to(critic[steps], batch.observations.shape)

        def inner(theta):
            return estimators.surrogate(estimator, log_policy, theta, batch, values, gamma)

        return logits + step_size * jax.grad(inner)(logits)

    mistakes = [
        (descent, "It steps downhill: the inner step is gradient *ascent* on the estimated value, θ + η ∇V̂."),
        (time_indexed, "It matches a critic indexed by time, critic[t]: index it by the visited state, critic[observations]."),
    ]
    _compare(
        "sampled_inner_step",
        _jit_estimator(sampled_inner_step, 5),
        _jit_estimator(_reference_inner_step, 5),
        cases,
        expected_form="(same as logits, [S, A])",
        mistakes=mistakes,
    )

    # θ' must stay differentiable in θ: the meta-gradient direction through it carries the Hessian.
    def meta(fn):
        def outer(theta):
            adapted = fn(theta, batch, critic, 0.8, 0.5, "dr")
            return jnp.sum(jax.nn.log_softmax(adapted)[:, 0])

        return jax.grad(outer)(logits)

    expected = meta(_reference_inner_step)
    got = _call("sampled_inner_step", meta, (sampled_inner_step,), "the derivative of θ' in θ")
    if not _close(got, expected):
        _fail(
            "sampled_inner_step",
            "θ' is right, but its derivative in θ is not: keep the inner gradient differentiable (no stop_gradient, "
            "no NumPy conversion), since the meta-gradient needs (I + η ∇²V̂) from it.",
        )
    return "matches θ + η ∇(batch surrogate) for 'dr' and 'taypo2' (incl. η = 0), and is differentiable in θ."


def _reference_task_meta_gradient(theta, mdp, batch, critic, gamma, step_size, estimator):
    from metagrad import exact

    def objective(th):
        return exact.value(mdp, _reference_inner_step(th, batch, critic, gamma, step_size, estimator))

    return jax.grad(objective)(theta)


@_register("08", "task_meta_gradient")
def check_task_meta_gradient(task_meta_gradient: Callable) -> str:
    """``task_meta_gradient(theta, mdp, batch, critic, gamma, step_size, estimator)`` -> ∇_θ V^{π_θ'} [S, A]."""
    from metagrad import exact

    logits, batch, critic, mdp = _inner_step_data(with_mdp=True)
    cases = [
        ("one task, 12 trajectories, η = 0.5, estimator 'dr'", (logits, batch, critic, 0.8, 0.5, "dr")),
        ("estimator 'maml' (Finn et al.'s surrogate), η = 1.0", (logits, batch, critic, 0.8, 1.0, "maml")),
        ("η = 0 (no adaptation: the plain gradient ∇V(θ))", (logits, batch, critic, 0.8, 0.0, "taypo2")),
    ]
    cases = [(label, (theta, mdp, *rest)) for label, (theta, *rest) in cases]

    def first_order(theta, mdp, batch, critic, gamma, step_size, estimator):
        adapted = _reference_inner_step(theta, batch, critic, gamma, step_size, estimator)
        return exact.gradient(mdp, adapted)

    def unadapted(theta, mdp, batch, critic, gamma, step_size, estimator):
        return exact.gradient(mdp, theta)

    def descent(theta, mdp, batch, critic, gamma, step_size, estimator):
        return _reference_task_meta_gradient(theta, mdp, batch, critic, gamma, -step_size, estimator)

    mistakes = [
        (first_order, "It equals ∇V(θ') alone (first-order MAML): differentiate V(θ'(θ)) through the inner step, "
                      "which multiplies ∇V(θ') by (I + η ∇²V̂_in); do not stop_gradient the inner gradient."),
        (unadapted, "It equals ∇V(θ), the gradient before adaptation: evaluate V at θ' = θ + η ∇V̂_in(θ)."),
        (descent, "It matches an inner step downhill, θ − η ∇V̂: the inner step is ascent, θ + η ∇V̂."),
    ]
    _compare(
        "task_meta_gradient",
        task_meta_gradient,  # op by op: here compiling per estimator costs more than it saves
        _reference_task_meta_gradient,
        cases,
        expected_form="(same as theta, [S, A])",
        mistakes=mistakes,
    )
    return "matches ∇_θ V(θ + η ∇V̂_in(θ)) (exact V, sampled inner step) for 'dr', 'maml' and 'taypo2' (incl. η = 0)."


# --------------------------------------------------------------------------------------------------
# 09 — Beyond


def _reference_taypo_terms(log_ratios, rewards, values, gamma, order):
    """[Û_1, …, Û_K] = differences of consecutive TayPO-k estimates (Û_0 = G_0)."""
    from metagrad import ope

    estimates = [_returns(rewards, values, gamma)[0]]
    estimates += [ope.taylor_expansion(log_ratios, rewards, values, gamma, order=k) for k in range(1, order + 1)]
    estimates = jnp.stack(estimates)
    return estimates[1:] - estimates[:-1]


@_register("09", "taypo_terms")
def check_taypo_terms(taypo_terms: Callable) -> str:
    """``taypo_terms(log_ratios [T], rewards [T], values [T+1], gamma, order)`` -> [Û_1 … Û_K] and their Jacobian."""
    base = _taylor_cases()
    lr, r, v, g = base[0][1]
    cases = [
        ("K = 1 on a random trajectory of length 6", (lr, r, v, g, 1)),
        ("K = 4", (lr, r, v, g, 4)),
        ("K = 8 > T = 6 (the terms above T are 0)", (lr, r, v, g, 8)),
        ("K = 3 with large log-ratios and γ = 0.5", (*base[3][1], 3)),
        ("K = 2, a single step (T = 1)", (*base[2][1], 2)),
    ]

    def with_jacobian(fn):
        @functools.partial(jax.jit, static_argnums=(4,))
        def both(lr, r, v, g, k):
            out = fn(lr, r, v, g, k)
            return jnp.concatenate([jnp.ravel(out), jax.jacobian(lambda x: fn(x, r, v, g, k))(lr).ravel()])

        return both

    def cumulative(lr, r, v, g, k):
        return jnp.cumsum(_reference_taypo_terms(lr, r, v, g, k)) + _returns(r, v, g)[0]

    def from_zero(lr, r, v, g, k):
        terms = _reference_taypo_terms(lr, r, v, g, k)
        return jnp.concatenate([_returns(r, v, g)[:1], terms[:-1]])

    def inclusive(lr, r, v, g, k):
        d = jnp.expm1(lr)
        weights = g ** jnp.arange(r.shape[0]) * (_returns(r, v, g) - v[:-1])
        e = jnp.zeros(k, lr.dtype).at[0].set(1.0)
        terms = jnp.zeros(k, lr.dtype)
        for t in range(r.shape[0]):
            e = e + d[t] * jnp.concatenate([jnp.zeros(1, lr.dtype), e[:-1]])
            terms = terms + weights[t] * d[t] * e
        return terms

    mistakes = [
        (cumulative, "It returns the cumulative estimates V̂_k = G_0 + Û_1 + … + Û_k; return each order's term Û_k alone."),
        (from_zero, "It is shifted by one order: [Û_0, …, Û_{K−1}] with Û_0 = G_0; return Û_1 … Û_K."),
        (inclusive, "It updates e_j with d_t before using it (off by one): Û_k at step t needs e_{k−1}(d_0 … d_{t−1})."),
    ]
    _compare(
        "taypo_terms",
        with_jacobian(taypo_terms),
        with_jacobian(_reference_taypo_terms),
        cases,
        expected_form="([K] terms, then their Jacobian in log_ratios)",
        mistakes=[(with_jacobian(m), hint) for m, hint in mistakes],
    )
    return "matches the differences of metagrad.ope.taylor_expansion for K = 1, 2, 3, 4 and K > T, in value and Jacobian."


def _reference_off_policy_inner_step(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    from metagrad import estimators
    from metagrad.tabular import log_policy

    log_mu = log_policy(behaviour_logits, batch.observations[:, :-1], batch.actions)

    def inner(theta):
        return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], gamma,
                                    behaviour_log_probs=log_mu)

    return logits + step_size * jax.grad(inner)(logits)


@_register("09", "off_policy_inner_step")
def check_off_policy_inner_step(off_policy_inner_step: Callable) -> str:
    """``off_policy_inner_step(logits, batch, critic, behaviour_logits, gamma, step_size, estimator)`` -> θ'."""
    behaviour, batch, critic = _inner_step_data()  # the batch was sampled with these logits: they are μ
    theta = behaviour + _float(0.4 * np.random.default_rng(90).normal(size=behaviour.shape))
    cases = [
        ("θ ≠ μ, estimator 'taypo2', η = 0.5", (theta, batch, critic, behaviour, 0.8, 0.5, "taypo2")),
        ("θ ≠ μ, estimator 'dr', η = 1.0", (theta, batch, critic, behaviour, 0.8, 1.0, "dr")),
        ("θ = μ (on-policy: the ordinary inner step)", (behaviour, batch, critic, behaviour, 0.8, 0.5, "taypo2")),
    ]

    def on_policy(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        return _reference_inner_step(logits, batch, critic, gamma, step_size, estimator)

    def trainable_behaviour(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        return logits  # log μ = log π_θ without stop_gradient: every ratio is the constant 1

    def swapped(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        moved = _reference_off_policy_inner_step(behaviour_logits, batch, critic, logits, gamma, step_size, estimator)
        return moved - behaviour_logits + logits

    mistakes = [
        (on_policy, "It treats the data as on-policy (μ = stop_gradient(π_θ)): the data came from the behaviour policy, "
                    "so log μ must be log_policy(behaviour_logits, …)."),
        (trainable_behaviour, "It returns θ unchanged: if log μ is computed from θ itself every ratio π_θ/μ is the "
                              "constant 1 and all derivatives vanish; μ comes from behaviour_logits."),
        (swapped, "It swaps the roles of π and μ: the ratios are π_θ(a|x)/μ(a|x) with θ the argument being adapted."),
    ]
    _compare(
        "off_policy_inner_step",
        _jit_estimator(off_policy_inner_step, 6),
        _jit_estimator(_reference_off_policy_inner_step, 6),
        cases,
        expected_form="(same as logits, [S, A])",
        mistakes=mistakes,
    )
    return "matches θ + η ∇V̂(θ; μ) with the behaviour log-probabilities for 'taypo2' and 'dr', and the on-policy step at θ = μ."


def _exercises_in_order() -> list[str]:
    names = [name for name, notebook in CHECKS.items() if notebook >= "05"]
    return sorted(names, key=lambda name: (CHECKS[name], list(CHECKS).index(name)))


#: Names of the part II exercises, in course order.
EXERCISES: list[str] = _exercises_in_order()


def describe() -> dict[str, Any]:
    """Exercise name -> notebook number for part II (for tools)."""
    return {name: CHECKS[name] for name in EXERCISES}
