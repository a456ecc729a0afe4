"""Checks for notebook 08 — MAML end to end."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks._diagnose import (
    FIXED_GAMMAS,
    FLOAT32_REMEDY,
    _call,
    _close,
    _compare,
    _fail,
    _float,
    _register,
    _random_mdp,
)
from metagrad.course.checks.nb00 import _refuse_inexact

__all__ = ['check_sampled_inner_step', 'check_task_meta_gradient', 'policy_classes',
           'check_hessian_spread_over_actions', 'check_log_linear_hessian']


def _inner_step_data(with_mdp: bool = False):
    from metagrad.rollout import sample, tabular_softmax_policy

    rng = np.random.default_rng(80)
    mdp = _random_mdp(rng, 5, 3, 0.8)
    logits = _float(rng.normal(size=(5, 3)))
    batch = sample(jax.random.PRNGKey(80), mdp, tabular_softmax_policy, logits, 12, 6)
    # A critic whose entries differ per state, so indexing it by time instead of by state is caught.
    critic = _float(np.linspace(0.5, 2.0, 5))
    return (logits, batch, critic, mdp) if with_mdp else (logits, batch, critic)


_TIME_INDEXED = "It matches a critic indexed by time, critic[t]: index it by the visited state, critic[observations]."


def _jit_estimator(fn: Callable, estimator_argnum: int) -> Callable:
    """`jax.jit(fn)` with the estimator name static: one compilation per estimator is several times faster than
    op-by-op autodiff of the surrogates, which keeps the notebooks within their time budget. Tracing errors (NumPy or
    Python `if` on arrays) still reach `_call`, which explains them."""
    return jax.jit(fn, static_argnums=(estimator_argnum,))


def _reference_inner_step(logits, batch, critic, gamma, step_size, estimator):
    from metagrad import estimators
    from metagrad.tabular import log_policy

    def inner(theta):
        return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], gamma)

    return logits + step_size * jax.grad(inner)(logits)


@_register("08", "sampled_inner_step")
def check_sampled_inner_step(sampled_inner_step: Callable) -> str:
    """`sampled_inner_step(logits, batch, critic, gamma, step_size, estimator)` -> θ' (differentiable in θ)."""
    from metagrad.tabular import log_policy

    logits, batch, critic = _inner_step_data()
    cases = [
        ("12 trajectories, η = 0.5, estimator 'dr'", (logits, batch, critic, 0.8, 0.5, "dr")),
        ("estimator 'taypo2', η = 1.0", (logits, batch, critic, 0.8, 1.0, "taypo2")),
        ("η = 0 (θ' = θ)", (logits, batch, critic, 0.8, 0.0, "dr")),
        # On-policy every estimator with a critic has the same gradient; IS (no baseline) does not, so an ignored
        # `estimator` argument shows here (and in the derivative of θ' below, where 'taypo1' differs from 'dr').
        ("estimator 'is' (step-wise IS: no baseline, a different gradient), η = 0.5", (logits, batch, critic, 0.8, 0.5, "is")),
        ("γ = 0.6, estimator 'dr', η = 0.5", (logits, batch, critic, 0.6, 0.5, "dr")),
    ]

    def descent(logits, batch, critic, gamma, step_size, estimator):
        return 2 * logits - _reference_inner_step(logits, batch, critic, gamma, step_size, estimator)

    def time_indexed(logits, batch, critic, gamma, step_size, estimator, wrap=False):
        from metagrad import estimators

        steps = jnp.arange(batch.observations.shape[1])  # T + 1 > S here: clipped (JAX's gather) or wrapped around
        steps = steps % critic.shape[0] if wrap else jnp.minimum(steps, critic.shape[0] - 1)
        values = jnp.broadcast_to(critic[steps], batch.observations.shape)

        def inner(theta):
            return estimators.surrogate(estimator, log_policy, theta, batch, values, gamma)

        return logits + step_size * jax.grad(inner)(logits)

    def always_dr(logits, batch, critic, gamma, step_size, estimator):
        return _reference_inner_step(logits, batch, critic, gamma, step_size, "dr")

    def no_step_size(logits, batch, critic, gamma, step_size, estimator):
        return _reference_inner_step(logits, batch, critic, gamma, 1.0, estimator)

    def zero_critic(logits, batch, critic, gamma, step_size, estimator):
        return _reference_inner_step(logits, batch, jnp.zeros_like(critic), gamma, step_size, estimator)

    hard_coded = [(lambda th, b, c, g, eta, est, _gamma=gamma: _reference_inner_step(th, b, c, _gamma, eta, est),
                   f"It ignores `gamma` (it matches γ = {gamma} hard-coded): pass `gamma` on to estimators.surrogate.")
                  for gamma in FIXED_GAMMAS]
    mistakes = [
        *hard_coded,
        (always_dr, "It gives DR's step whatever `estimator` says: pass `estimator` on to estimators.surrogate."),
        (no_step_size, "It takes a step of size 1 whatever `step_size` is: θ' = θ + η ∇V̂, with η = `step_size`."),
        (zero_critic, "It matches the step with a zero critic: `critic` is ignored; pass V(x_t) = critic[observations] "
                      "as the surrogate's values."),
        (descent, "It steps downhill: the inner step is gradient *ascent* on the estimated value, θ + η ∇V̂."),
        (time_indexed, _TIME_INDEXED),
        (functools.partial(time_indexed, wrap=True), _TIME_INDEXED),
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
    def meta(fn, estimator):
        def outer(theta):
            adapted = fn(theta, batch, critic, 0.8, 0.5, estimator)
            return jnp.sum(jax.nn.log_softmax(adapted)[:, 0])

        return jax.grad(outer)(logits)

    # 'dr' and 'taypo1' share θ' on-policy but not its derivative in θ (TayPO-1's Hessian lacks the cross terms).
    for estimator in ("dr", "taypo1"):
        expected = meta(_reference_inner_step, estimator)
        got = _call("sampled_inner_step", meta, (sampled_inner_step, estimator),
                    f"the derivative of θ' in θ (estimator {estimator!r})")
        if _close(got, expected):
            continue
        if estimator != "dr" and _close(got, meta(_reference_inner_step, "dr")):
            _fail("sampled_inner_step", f"θ' is right, but its derivative in θ for estimator {estimator!r} is DR's: "
                                        "the estimator's Hessian must flow through θ', so pass `estimator` on.")
        _fail(
            "sampled_inner_step",
            f"θ' is right, but its derivative in θ is not (estimator {estimator!r}): keep the inner gradient "
            "differentiable (no stop_gradient, no NumPy conversion), since the meta-gradient needs (I + η ∇²V̂) from it.",
        )
    return ("matches θ + η ∇(batch surrogate) for 'dr', 'taypo2' and 'is' (incl. η = 0), and its derivative in θ for "
            "'dr' and 'taypo1'.")


def _reference_task_meta_gradient(theta, mdp, batch, critic, gamma, step_size, estimator):
    from metagrad import exact

    def objective(th):
        return exact.value(mdp, _reference_inner_step(th, batch, critic, gamma, step_size, estimator))

    return jax.grad(objective)(theta)


@_register("08", "task_meta_gradient")
def check_task_meta_gradient(task_meta_gradient: Callable) -> str:
    """`task_meta_gradient(theta, mdp, batch, critic, gamma, step_size, estimator)` -> ∇_θ V^{π_θ'} [S, A]."""
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

    def always_dr(theta, mdp, batch, critic, gamma, step_size, estimator):
        return _reference_task_meta_gradient(theta, mdp, batch, critic, gamma, step_size, "dr")

    def exact_inner(theta, mdp, batch, critic, gamma, step_size, estimator):
        return jax.grad(lambda th: exact.value(mdp, th + step_size * exact.gradient(mdp, th)))(theta)

    def negated(theta, mdp, batch, critic, gamma, step_size, estimator):
        return -_reference_task_meta_gradient(theta, mdp, batch, critic, gamma, step_size, estimator)

    def surrogate_outer(theta, mdp, batch, critic, gamma, step_size, estimator):
        from metagrad import estimators
        from metagrad.tabular import log_policy

        def outer(th):
            adapted = _reference_inner_step(th, batch, critic, gamma, step_size, estimator)
            return estimators.surrogate(estimator, log_policy, adapted, batch, critic[batch.observations], gamma)

        return jax.grad(outer)(theta)

    def inner_gradient(theta, mdp, batch, critic, gamma, step_size, estimator):
        from metagrad import estimators
        from metagrad.tabular import log_policy

        values = critic[batch.observations]
        return jax.grad(lambda th: estimators.surrogate(estimator, log_policy, th, batch, values, gamma))(theta)

    mistakes = [
        (inner_gradient, "It is the gradient of the inner surrogate at θ, the inner step's direction: the meta-gradient "
                         "differentiates the exact outer value exact.value(mdp, θ') through the inner step θ → θ'."),
        (always_dr, "It gives DR's meta-gradient whatever `estimator` says: pass `estimator` on to your inner step, "
                    "whose Hessian is the estimator's."),
        (exact_inner, "It is the exact meta-gradient, with the exact inner step θ + η∇V(θ): the exercise's inner step is "
                      "the sampled one, θ + η∇V̂_in(θ; batch) (your sampled_inner_step), whose Hessian estimate is the point."),
        (negated, "It has the wrong sign: the meta-gradient is the gradient of the value after adaptation, which MAML "
                  "maximises; no minus sign."),
        (surrogate_outer, "Its outer value is the batch surrogate at θ': the exercise takes the exact value "
                          "exact.value(mdp, θ') after the sampled inner step, so the inner batch is the only noise."),
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


def policy_classes() -> dict:
    """Five policy classes as `(log_prob(params [P], obs, action), params, obs, actions [K, ...])`, each in float.

    Whether ∇²_θ log π(a|x) depends on the action a decides whether Finn et al.'s MAML surrogate differs from
    first-order MAML in expectation (notebook 08). Small, fixed, seeded instances.
    """
    rng = np.random.default_rng(80)
    num_actions, num_features = 4, 3
    features = _float(rng.normal(size=(num_actions, num_features)))  # φ(x, a) at one state x
    x = _float(rng.normal(size=num_features))
    tabular_logits = _float(rng.normal(size=(5 * num_actions,)))

    def tabular(theta, state, action):
        return jax.nn.log_softmax(theta.reshape(5, num_actions)[state])[action]

    def log_linear(theta, obs, action):  # π ∝ exp(θᵀφ(x, a)): linear logits, state–action features
        return jax.nn.log_softmax(features @ theta)[action]

    def nonlinear_logits(theta, obs, action):  # π ∝ exp(tanh(θᵀφ(x, a)))
        return jax.nn.log_softmax(jnp.tanh(features @ theta))[action]

    def gaussian_fixed_std(theta, obs, action):  # a ~ N(θᵀx, 0.5²)
        return -0.5 * ((action - theta @ obs) / 0.5) ** 2 - jnp.log(0.5) - 0.5 * jnp.log(2 * jnp.pi)

    def gaussian_learned_std(theta, obs, action):  # a ~ N(θ[:-1]ᵀx, exp(θ[-1])²)
        mean, log_std = theta[:-1] @ obs, theta[-1]
        return -0.5 * ((action - mean) * jnp.exp(-log_std)) ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi)

    reals = _float(jnp.array([-1.0, 0.3, 2.0]))
    return {
        "tabular softmax": (tabular, tabular_logits, 2, jnp.arange(num_actions)),
        "softmax, linear logits θᵀφ(x, a)": (log_linear, _float(rng.normal(size=num_features)), x, jnp.arange(num_actions)),
        "softmax, logits tanh(θᵀφ(x, a))": (nonlinear_logits, _float(rng.normal(size=num_features)), x, jnp.arange(num_actions)),
        "Gaussian, mean θᵀx, fixed σ": (gaussian_fixed_std, _float(rng.normal(size=num_features)), x, reals),
        "Gaussian, mean θᵀx, learned σ": (gaussian_learned_std, _float(rng.normal(size=num_features + 1)), x, reals),
    }


def _action_hessians(log_prob: Callable, params, obs, actions) -> jax.Array:
    """∇²_θ log π(a_k|x) for every action, [K, P, P]."""
    return jax.vmap(lambda a: jax.hessian(log_prob)(params, obs, a))(actions)


def reference_hessian_spread_over_actions(log_prob: Callable, params, obs, actions) -> jax.Array:
    """max_k max_ij |∇²_θ log π(a_k|x) − ∇²_θ log π(a_0|x)|_ij: 0 iff the Hessian does not depend on the action."""
    hessians = jax.vmap(lambda a: jax.hessian(log_prob)(params, obs, a))(actions)
    return jnp.max(jnp.abs(hessians - hessians[0]))


@_register("08", "hessian_spread_over_actions")
def check_hessian_spread_over_actions(hessian_spread_over_actions: Callable) -> str:
    """`hessian_spread_over_actions(log_prob, params [P], obs, actions [K, ...])` -> a scalar ≥ 0."""
    exercise = "hessian_spread_over_actions"
    mistakes = [
        (lambda lp, th, x, acts: jnp.max(jnp.abs(jax.vmap(lambda a: jax.grad(lp)(th, x, a))(acts)
                                                  - jax.grad(lp)(th, x, acts[0]))),
         "It compares the gradients ∇ℓ, which change with the action for every policy; compare the Hessians ∇²ℓ."),
        (lambda lp, th, x, acts: jnp.max(jnp.abs(jax.vmap(lambda a: lp(th, x, a))(acts) - lp(th, x, acts[0]))),
         "It compares the values log π(a|x); compare the Hessians ∇²_θ log π(a|x)."),
        (lambda lp, th, x, acts: jnp.max(jnp.abs(jax.vmap(lambda a: jax.hessian(lp)(th, x, a))(acts))),
         "It returns the size of the Hessians, not how much they change from one action to another."),
        (lambda lp, th, x, acts: jnp.max(jnp.abs(jnp.diagonal(_action_hessians(lp, th, x, acts)
                                                               - _action_hessians(lp, th, x, acts)[0], axis1=1, axis2=2))),
         "It compares only the diagonals of the Hessians: the contract takes the largest change over every entry "
         "(i, j), off-diagonal ones included."),
        (lambda lp, th, x, acts: jnp.max(jnp.abs(_action_hessians(lp, th, x, acts)[:, None]
                                                  - _action_hessians(lp, th, x, acts)[None])),
         "It takes the largest difference over every pair of actions: the contract compares each action with the "
         "first one, a_0 (max_k max_ij |∇²ℓ(a_k) − ∇²ℓ(a_0)|)."),
        (lambda lp, th, x, acts: jnp.abs(jax.hessian(lp)(th, x, acts[-1]) - jax.hessian(lp)(th, x, acts[0])).max(),
         "It compares only the first and the last action; compare every action with the first."),
        (lambda lp, th, x, acts: jnp.abs(jax.hessian(lp)(th, x, acts[1]) - jax.hessian(lp)(th, x, acts[0])).max(),
         "It compares only the first two actions; compare every action with the first."),
        (lambda lp, th, x, acts: jnp.max(jax.vmap(lambda a: jax.hessian(lp)(th, x, a))(acts)
                                         - jax.hessian(lp)(th, x, acts[0])),
         "It takes the largest signed difference: a change downwards counts as much as one upwards; take |·| first."),
        (lambda lp, th, x, acts: jnp.mean(jnp.abs(jax.vmap(lambda a: jax.hessian(lp)(th, x, a))(acts)
                                                  - jax.hessian(lp)(th, x, acts[0]))),
         "It averages the differences: the contract asks for the largest one (max over actions and entries)."),
        (lambda lp, th, x, acts: jnp.max(jnp.abs(_action_hessians(lp, th, x, acts)
                                                  - _action_hessians(lp, th, x, acts).mean(0))),
         "It measures the spread around the mean Hessian over the actions: the contract compares each ∇²ℓ(a_k) with "
         "that of the first action, ∇²ℓ(a_0)."),
        (lambda lp, th, x, acts: jnp.max(jnp.abs(jnp.diff(_action_hessians(lp, th, x, acts), axis=0))),
         "It compares consecutive actions a_k and a_{k−1} only: the contract compares every action with the first, a_0."),
        (lambda lp, th, x, acts: jnp.max(jnp.sqrt(jnp.sum((_action_hessians(lp, th, x, acts)
                                                           - _action_hessians(lp, th, x, acts)[0]) ** 2, axis=(1, 2)))),
         "It takes the Frobenius norm of each difference: the contract asks for the largest entry, max_ij |·|_ij."),
        (lambda lp, th, x, acts: jnp.max(jnp.max(jnp.abs(_action_hessians(lp, th, x, acts)), axis=(1, 2))
                                         - jnp.max(jnp.abs(_action_hessians(lp, th, x, acts)[0]))),
         "It subtracts the sizes of the Hessians (max|∇²ℓ(a_k)| − max|∇²ℓ(a_0)|): the contract takes the largest entry of "
         "their difference, |∇²ℓ(a_k) − ∇²ℓ(a_0)|_ij, which can be large when the sizes are equal."),
        (lambda lp, th, x, acts: jnp.max(jnp.std(_action_hessians(lp, th, x, acts), axis=0)),
         "It takes the largest standard deviation of an entry over the actions, a spread around their mean: the contract "
         "asks for the largest change from the first action's Hessian, entry by entry."),
        (lambda lp, th, x, acts: jnp.linalg.norm(_action_hessians(lp, th, x, acts) - _action_hessians(lp, th, x, acts)[0]),
         "It takes one Frobenius norm of all the differences together (jnp.linalg.norm of the whole stack): the contract "
         "asks for the largest single entry |·|_ij over the actions."),
        (lambda lp, th, x, acts: jnp.max(jnp.abs(_action_hessians(lp, th, x, acts) - _action_hessians(lp, th, x, acts)[0]))
         / jnp.max(jnp.abs(_action_hessians(lp, th, x, acts)[0])),
         "It is a relative spread, divided by the size of ∇²ℓ(a_0): the contract asks for the absolute difference."),
        (lambda lp, th, x, acts: jnp.max(jnp.abs(_action_hessians(lp, th, x, acts) - _action_hessians(lp, th, x, acts)[0]))
         / jnp.max(jnp.abs(_action_hessians(lp, th, x, acts))),
         "It is a relative spread, divided by the size of the Hessians: the contract asks for the absolute difference."),
    ]
    cases = [(f"the policy class '{name}'", args) for name, args in policy_classes().items()]
    # The learned-σ Gaussian again with a_0 in the middle of the actions: comparing every pair is then not the contract.
    learned = policy_classes()["Gaussian, mean θᵀx, learned σ"]
    cases.append(("the learned-σ Gaussian with the first action between the others",
                  (*learned[:3], _float(jnp.array([0.3, -1.0, 2.0])))))
    # Under jax.jit (log_prob static), as the notebook runs it: op by op, nested autodiff is slow and memory-hungry.
    student = jax.jit(hessian_spread_over_actions, static_argnums=0)
    reference = jax.jit(reference_hessian_spread_over_actions, static_argnums=0)
    float64 = jnp.result_type(float) == jnp.float64

    def matched_mistake(got, args) -> str:
        for mistake, hint in mistakes:
            try:
                if np.isclose(float(got), float(jax.jit(mistake, static_argnums=0)(*args)), rtol=1e-6, atol=1e-9):
                    return hint
            except Exception:  # noqa: BLE001 — a diagnosis that cannot run is skipped
                continue
        return ""

    def mistake_elsewhere() -> str:
        """The known mistake the student's result matches on a case whose Hessians do differ ('' if none)."""
        for label, args in cases:
            expected = float(reference(*args))
            got = _call(exercise, student, args, f"{label} (under jax.jit)")
            if expected != 0.0 and not np.isclose(float(got), expected, rtol=1e-6, atol=1e-9):
                hint = matched_mistake(got, args)
                if hint:
                    return f"on {label}: {hint}"
        return ""

    for label, args in cases:
        expected = float(reference(*args))
        got = _call(exercise, student, args, f"{label} (under jax.jit)")
        if expected == 0.0 and np.ndim(got) == 0 and 0.0 < abs(float(got)) < 1e-6:
            _fail(exercise, mistake_elsewhere() or (
                f"on {label}, whose ∇²ℓ is the same for every action, it returned {float(got):.2g} instead of exactly 0: "
                "an approximate Hessian (finite differences?) leaves a rounding residue. Autodiff gives the Hessian "
                "exactly, and the notebook needs the exact 0 to tell the classes apart."))
        dtype = getattr(got, "dtype", None)
        try:
            got = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            _fail(exercise, f"on {label} it returned {type(got).__name__}; expected a number (a 0-d array).")
        if got.shape != ():
            _fail(exercise, f"on {label} it returned shape {got.shape}; expected one number, the largest difference.")
        if float64 and dtype is not None and np.dtype(dtype) == np.float32:
            _fail(exercise, f"on {label} it returned float32 while the notebook runs in float64 (params are float64): "
                            + FLOAT32_REMEDY)
        if float64 and not np.isclose(float(got), expected, rtol=1e-10, atol=1e-12) and np.isclose(
                float(got), expected, rtol=1e-5, atol=1e-9):
            _fail(exercise, f"on {label} it returned {float(got):.10g} instead of {expected:.10g}, right to only about 7 "
                            f"digits, the precision of float32 (params are float64): {FLOAT32_REMEDY}")
        if not np.isclose(float(got), expected, rtol=1e-6, atol=1e-9):
            hint = matched_mistake(got, args)
            _fail(exercise, f"on {label} it returned {float(got):.3g}, but the Hessians differ by at most {expected:.3g} "
                            f"between actions.{' ' + hint if hint else ''}")
    return ("gives the largest change of ∇²_θ log π(a|x) from the first action's for 5 policy classes (categorical and "
            "Gaussian) and a reordering of the actions, under jax.jit.")


def reference_log_linear_hessian(theta, features, action) -> jax.Array:
    """∇²_θ log π_θ(a|x) for π_θ(b|x) ∝ exp(θᵀφ(x, b)): −Cov_{b∼π}[φ(x, b)], the same for every action a."""
    pi = jax.nn.softmax(features @ theta)
    mean = pi @ features
    return -(features.T @ (pi[:, None] * features) - jnp.outer(mean, mean))


def _log_linear_mistakes() -> list[tuple[Callable, str]]:
    def weights(theta, features):
        return jax.nn.softmax(features @ theta)

    def second_moment(theta, features, action):
        pi = weights(theta, features)
        return -features.T @ (pi[:, None] * features)

    def mean_added(theta, features, action):
        mean = weights(theta, features) @ features
        return second_moment(theta, features, action) - jnp.outer(mean, mean)

    def score_outer(theta, features, action):
        score = features[action] - weights(theta, features) @ features
        return -jnp.outer(score, score)

    def uniform(theta, features, action):
        centred = features - features.mean(0)
        return -centred.T @ centred / features.shape[0]

    def mean_only(theta, features, action):
        mean = weights(theta, features) @ features
        return jnp.outer(mean, mean)

    def action_outer_minus_mean(theta, features, action):
        mean = weights(theta, features) @ features
        return -(jnp.outer(features[action], features[action]) - jnp.outer(mean, mean))

    def action_feature(theta, features, action):
        return -jnp.outer(features[action], features[action])

    def uniform_mean(theta, features, action):  # −(E_π[φφᵀ] − φ̄ φ̄ᵀ) with φ̄ the plain average over actions
        mean = features.mean(0)
        return second_moment(theta, features, action) + jnp.outer(mean, mean)

    def covariance_plus_score_outer(theta, features, action):
        score = features[action] - weights(theta, features) @ features
        return reference_log_linear_hessian(theta, features, action) - jnp.outer(score, score)

    return [
        (lambda th, f, a: -reference_log_linear_hessian(th, f, a),
         "It has the wrong sign: log π_θ(a|x) is concave in θ for linear logits (its Hessian is negative semi-definite)."),
        (lambda th, f, a: 0.5 * reference_log_linear_hessian(th, f, a),
         "It is −½ Cov_π[φ], half the Hessian: log π_θ(a|x) = θᵀφ(x, a) − log Σ_b exp θᵀφ(x, b), and the second "
         "derivative of the log-partition is the covariance itself, with no ½ (unlike that of ½θᵀAθ)."),
        (second_moment,
         "It is −E_π[φφᵀ], a second moment: differentiating the normaliser inside E_π[φ] once more also gives "
         "+E_π[φ]E_π[φ]ᵀ, so the Hessian is a covariance."),
        (mean_added, "It subtracts E_π[φ]E_π[φ]ᵀ from −E_π[φφᵀ]: that term enters with a plus (a covariance is "
                     "E[φφᵀ] − E[φ]E[φ]ᵀ)."),
        (score_outer,
         "It is −ssᵀ with s = φ(x, a) − E_π[φ], the score of the given action: that depends on a; the Hessian is "
         "its expectation over the actions b ∼ π, the same for every a."),
        (uniform, "It weights every action equally: the expectation over b is under π_θ(b|x), not uniform."),
        (mean_only, "It is E_π[φ]E_π[φ]ᵀ alone: the E_π[φφᵀ] part (from differentiating φ's weights π_b) is missing."),
        (action_outer_minus_mean,
         "It uses φ(x, a)φ(x, a)ᵀ of the given action where the second moment E_π[φφᵀ] belongs: both terms come from "
         "the log-partition log Σ_b exp θᵀφ(x, b), so both are expectations over the actions b ∼ π, whatever a is."),
        (uniform_mean, "Its mean E[φ] is the plain average over actions: both expectations are under π_θ(b|x), the mean "
                       "subtracted too."),
        (covariance_plus_score_outer,
         "It adds −ssᵀ, the outer product of the score s = φ(x, a) − E_π[φ], to −Cov_π[φ]: a product of scores belongs "
         "to the Hessian of π itself (∇²π/π = ∇²log π + ∇log π ∇log πᵀ), not to that of log π."),
        (action_feature, "It is −φ(x, a)φ(x, a)ᵀ: the Hessian comes from the log-partition log Σ_b exp θᵀφ(x, b), "
                         "a sum over every action b."),
    ]


@_register("08", "log_linear_hessian")
def check_log_linear_hessian(log_linear_hessian: Callable) -> str:
    """`log_linear_hessian(theta [P], features [A, P], action)` -> [P, P], without automatic differentiation."""
    exercise = "log_linear_hessian"
    rng = np.random.default_rng(81)
    features = _float(rng.normal(size=(4, 3)))
    theta = _float(rng.normal(size=3))
    other_features = _float(rng.normal(size=(5, 2)))
    other_theta = _float(2.0 * rng.normal(size=2))
    cases = [
        ("4 actions, 3 features, action 0", (theta, features, 0)),
        ("the same policy, action 2", (theta, features, 2)),
        ("5 actions, 2 features, larger θ, action 4", (other_theta, other_features, 4)),
    ]
    _refuse_inexact(exercise, log_linear_hessian, reference_log_linear_hessian, cases[0][1], cases[0][0], "the Hessian",
                    remedy="the closed form is exact ({bound}): derive it instead of taking differences")
    _compare(exercise, log_linear_hessian, reference_log_linear_hessian, cases, expected_form="(P × P)",
             mistakes=_log_linear_mistakes(), jit=True, vmap_in_axes=(None, None, 0))  # the demo vmaps over actions
    # A common shift c of every φ(x, b) with θᵀc = 3000 leaves π and the covariance as they are, but exp(z) overflows.
    shift = 3000.0 * theta / float(theta @ theta)
    label = "the first policy with every φ(x, b) shifted by the same vector (logits near 3000, π unchanged)"
    got = np.asarray(_call(exercise, log_linear_hessian, (theta, features + shift, 0), label), dtype=np.float64)
    expected = np.asarray(reference_log_linear_hessian(theta, features, 0))
    if not np.all(np.isfinite(got)):
        _fail(exercise, f"on {label} it returned NaN or infinity: exp of logits near 3000 overflows (exp(710) = inf); "
                        "jax.nn.softmax subtracts the largest logit first.")
    if not np.allclose(got, expected, rtol=1e-6, atol=1e-6):  # cancellation of terms of size 1e6 costs ~1e-9 here
        error = float(np.max(np.abs(got - expected)))
        _fail(exercise, f"on {label} it is off by {error:.2g}: a common shift of the features changes neither π nor "
                        "the Hessian; compute with the centred features φ(x, b) − E_π[φ] to avoid the cancellation of "
                        "two large terms.")
    return ("matches −Cov_{b∼π}[φ(x, b)] on 3 inputs (also under jax.jit and jax.vmap over actions) and stays finite "
            "and accurate for logits near 3000.")
