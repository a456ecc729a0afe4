"""Checks for notebook 04 — Off-policy evaluation."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from metagrad.course.checks._diagnose import (
    _compare,
    _float,
    _refuse_float32,
    _register,
    _returns,
    value_gradient_parts,
)

__all__ = ['check_step_importance_sampling', 'check_doubly_robust', 'check_dr_log_ratio_gradient']


def _ope_cases():
    keys = jax.random.split(jax.random.PRNGKey(7), 6)
    horizon = 6
    log_ratios = _float(0.5 * jax.random.normal(keys[0], (horizon,)))
    rewards = _float(jax.random.uniform(keys[1], (horizon,)))
    values = _float(jax.random.uniform(keys[2], (horizon + 1,)) * 2.0)
    return [
        ("a random trajectory of length 6 (γ = 0.9)", (log_ratios, rewards, values, 0.9)),
        ("on-policy (all log-ratios 0)", (jnp.zeros(horizon, rewards.dtype), rewards, values, 0.9)),
        ("a zero critic", (log_ratios, rewards, jnp.zeros(horizon + 1, rewards.dtype), 0.8)),
        (
            "a single step (T = 1)",
            (_float([0.4]), _float([1.0]), _float([0.5, 3.0]), 0.9),
        ),
        (
            "large ratios and γ = 0.5",
            (_float(jax.random.normal(keys[3], (4,)) + 1.0), _float(jax.random.normal(keys[4], (4,))), _float(jax.random.normal(keys[5], (5,))), 0.5),
        ),
        (
            "a long trajectory (T = 300, γ = 0.99)",
            (
                _float(0.1 * jax.random.normal(jax.random.PRNGKey(70), (300,))),
                _float(jax.random.uniform(jax.random.PRNGKey(71), (300,))),
                _float(jax.random.uniform(jax.random.PRNGKey(72), (301,))),
                0.99,
            ),
        ),
    ]


def _with_gradient(fn: Callable) -> Callable:
    """(value, d value / d log-ratios): an OPE estimate must be differentiable in the log-ratios."""

    def both(log_ratios, rewards, values, gamma):
        value, grad = jax.value_and_grad(lambda lr: fn(lr, rewards, values, gamma))(log_ratios)
        return jnp.concatenate([jnp.reshape(value, (1,)), grad])

    return both


def _check_ope(exercise: str, student_fn: Callable, reference: Callable, mistakes, name: str) -> str:
    # Values first (clearer messages), then values and gradients together (catches NumPy inside); the
    # simulation cells run it under jax.jit(jax.vmap(...)) over trajectories.
    _compare(
        exercise,
        student_fn,
        reference,
        _ope_cases(),
        expected_form="(a scalar)",
        mistakes=mistakes,
        jit=True,
        vmap_in_axes=(0, 0, 0, None),
    )
    cases = _ope_cases()[:2]
    # float32 can pass the value tolerance and then fail the gradient's: name the dtype before comparing gradients.
    _refuse_float32(exercise, student_fn, cases[0][1], cases[0][0])
    def stopped(lr, r, v, gamma):  # the value, with no derivative in the log-ratios (stop_gradient on them)
        return jnp.concatenate([jnp.reshape(reference(lr, r, v, gamma), (1,)), jnp.zeros_like(lr)])

    _compare(
        exercise,
        _with_gradient(student_fn),
        _with_gradient(reference),
        [(f"{label}, differentiated in the log-ratios", args) for label, args in cases],
        expected_form="(the value followed by its gradient in the log-ratios)",
        parts=value_gradient_parts,
        mistakes=[(
            stopped,
            "The gradient is zero: a stop_gradient on the log-ratios (or ratios) cuts them out of the derivative; "
            "the estimate must stay differentiable in them.",
        )],
    )
    return (
        f"matches {name} in value on 6 trajectories and in gradient on 2 (incl. on-policy, zero critic, T = 1, T = 300), "
        "also under jax.jit and jax.vmap."
    )


@_register("04", "step_importance_sampling")
def check_step_importance_sampling(step_importance_sampling: Callable) -> str:
    """`step_importance_sampling(log_ratios [T], rewards [T], values [T+1], gamma)` -> scalar."""
    from metagrad import ope

    def trajectory_is(lr, r, v, gamma):
        t = jnp.arange(r.shape[0])
        w = jnp.exp(jnp.sum(lr))
        return w * (jnp.sum(gamma**t * r) + gamma ** r.shape[0] * v[-1])

    def shifted(lr, r, v, gamma):
        t = jnp.arange(r.shape[0])
        cum = jnp.exp(jnp.cumsum(lr) - lr)  # Π_{s<t} ρ_s
        return jnp.sum(gamma**t * cum * r) + gamma ** r.shape[0] * jnp.exp(jnp.sum(lr)) * v[-1]

    def no_bootstrap(lr, r, v, gamma):
        return ope.step_importance_sampling(lr, r, jnp.zeros_like(v), gamma)

    mistakes = [
        (trajectory_is, "It matches trajectory-wise IS (one product over all T steps): step-wise IS weights r_t by Π_{s≤t} ρ_s only."),
        (shifted, "It weights r_t by Π_{s<t} ρ_s (off by one): the action a_t that earned r_t needs its ratio too."),
        (no_bootstrap, "It ignores the bootstrap term γ^T (Π_{s<T} ρ_s) V(x_T)."),
        *[
            (
                lambda lr, r, v, gamma, _b=b: jnp.sum(gamma ** jnp.arange(r.shape[0]) * jnp.exp(lr) * r)
                + gamma ** r.shape[0] * (jnp.exp(jnp.sum(lr)) if _b else 1.0) * v[-1],
                "It weights each reward r_t by its own ratio ρ_t only: r_t depends on every action up to a_t, so it "
                "needs the product of the ratios so far, ρ_0 ⋯ ρ_t.",
            )
            for b in (False, True)
        ],
        (
            lambda lr, r, v, gamma: jnp.sum(gamma ** jnp.arange(r.shape[0]) * jnp.cumprod(lr) * r)
            + gamma ** r.shape[0] * jnp.prod(lr) * v[-1],
            "It uses the log-ratios κ_t as the ratios: ρ_t = exp(κ_t).",
        ),
        (
            lambda lr, r, v, gamma: jnp.sum(gamma ** jnp.arange(r.shape[0]) * jnp.cumsum(lr) * r)
            + gamma ** r.shape[0] * jnp.sum(lr) * v[-1],
            "It uses the log-ratios κ_t as the ratios (a sum of logs, Σ_{s≤t} κ_s, is the log of the product): "
            "Π_{s≤t} ρ_s = exp(Σ_{s≤t} κ_s).",
        ),
        (
            lambda lr, r, v, gamma: no_bootstrap(lr, r, v, gamma) + gamma ** (r.shape[0] - 1) * jnp.exp(jnp.sum(lr)) * v[-1],
            "Its bootstrap term is discounted by γ^(T−1), one factor short: V(x_T) comes T steps after x_0, so γ^T.",
        ),
        (
            lambda lr, r, v, gamma: no_bootstrap(lr, r, v, gamma) + jnp.exp(jnp.sum(lr)) * v[-1],
            "Its bootstrap term lacks the discount γ^T: V(x_T) comes T steps after x_0.",
        ),
        (
            lambda lr, r, v, gamma: no_bootstrap(lr, r, v, gamma) + gamma ** r.shape[0] * v[-1],
            "Its bootstrap term lacks the ratios: γ^T V(x_T) depends on all T actions, so it is weighted by Π_{s<T} ρ_s.",
        ),
        (
            lambda lr, r, v, gamma: ope.step_importance_sampling(lr, r, v.at[-1].set(v[0]), gamma),
            "It bootstraps with V(x_0) (values[0]): the bootstrap is the critic at the last state, values[T].",
        ),
        (
            lambda lr, r, v, gamma: ope.step_importance_sampling(lr, r, v, 1.0),
            "It ignores γ everywhere: the reward r_t comes t steps after x_0 and the bootstrap T steps after it.",
        ),
        (
            lambda lr, r, v, gamma: ope.step_importance_sampling(-lr, r, v, gamma),
            "It uses the inverse ratios μ/π, exp(−κ_t): the data come from μ and the estimate is for π, so each ratio is "
            "π/μ = exp(κ_t).",
        ),
        (
            ope.doubly_robust,
            "It matches doubly robust: step-wise IS has no control variate; it uses the critic only for the bootstrap at x_T.",
        ),
    ]
    return _check_ope("step_importance_sampling", step_importance_sampling, ope.step_importance_sampling, mistakes, "metagrad.ope.step_importance_sampling")


def _dr_variant(lr, r, v, gamma, *, outside, inside):
    """V̂_t = outside·V(x_t) + ρ_t (r_t + γ V̂_{t+1} − inside·V(x_t)) from V̂_T = V(x_T) (DR: outside = inside = 1)."""
    est = v[-1]
    for t in reversed(range(r.shape[0])):
        est = outside * v[t] + jnp.exp(lr[t]) * (r[t] + gamma * est - inside * v[t])
    return est


@_register("04", "doubly_robust")
def check_doubly_robust(doubly_robust: Callable) -> str:
    """`doubly_robust(log_ratios [T], rewards [T], values [T+1], gamma)` -> scalar."""
    from metagrad import ope

    def loop(lr, r, v, gamma, *, shift=False, rho_on_value=False, undiscounted=False, one_step=False, sign=1.0, ratio_on="",
             last_value=False):
        g = 1.0 if undiscounted else gamma
        est = v[-1]
        for t in reversed(range(r.shape[0])):
            rho = jnp.exp(lr[t])
            base = sign * (v[-1] if last_value else v[t + 1] if shift else v[t])
            after = v[t + 1] if one_step else est
            if ratio_on == "reward":  # γV̂_{t+1} added outside the ratio
                est = base + rho * (r[t] - base) + g * after
            elif ratio_on == "next":  # the ratio on the next estimate only
                est = r[t] + g * rho * after
            else:
                est = rho * (r[t] + g * after) if rho_on_value else base + rho * (r[t] + g * after - base)
        return est

    mistakes = [
        (lambda *a: loop(*a, last_value=True), "It uses the bootstrap V(x_T) = values[-1] as the control variate at every "
                                               "step: step t's is the critic at its own state, V(x_t) = values[t]."),
        (lambda *a: loop(*a, shift=True), "It uses V(x_{t+1}) as the control variate at step t (off by one): use V(x_t)."),
        (lambda *a: loop(*a, rho_on_value=True), "It matches step-wise IS: the critic terms V(x_t) − ρ_t V(x_t) are missing."),
        (lambda *a: loop(*a, undiscounted=True), "It ignores γ: the next step's estimate V̂_{t+1} is discounted inside the recursion."),
        (
            lambda *a: loop(*a, one_step=True),
            "It uses the critic V(x_{t+1}) where the recursion needs the next estimate V̂_{t+1}: only one step of "
            "corrections survives (that is a one-step, V-trace-like target with c̄ = 0).",
        ),
        (
            lambda *a: _dr_variant(*a, outside=0.0, inside=1.0),
            "It has −ρ_t V(x_t) inside the ratio's bracket but not the + V(x_t) outside it: the control variate is "
            "V(x_t) − ρ_t V(x_t), whose mean under μ is zero.",
        ),
        (
            lambda lr, r, v, gamma: _dr_variant(lr, r, v, gamma, outside=gamma, inside=gamma),
            "Its control variate is γ V(x_t): the critic's value of the state x_t is V(x_t), undiscounted (the step's "
            "own reward r_t is not discounted either).",
        ),
        (
            lambda lr, r, v, gamma: _dr_variant(lr, r, v, gamma, outside=1.0, inside=gamma),
            "Its control variate subtracts γ V(x_t) inside the ratio's bracket (γ (V̂_{t+1} − V(x_t))): the critic's "
            "value of x_t is V(x_t), undiscounted, in both places: V(x_t) + ρ_t (r_t + γ V̂_{t+1} − V(x_t)).",
        ),
        (lambda *a: loop(*a, sign=-1.0), "The control variate has the wrong sign: add V(x_t) − ρ_t V(x_t), not its negative."),
        (
            lambda *a: loop(*a, ratio_on="reward"),
            "It adds γ V̂_{t+1} outside the ratio ρ_t: the next state and everything after it follow the action a_t, so "
            "the next estimate must be reweighted by ρ_t as well.",
        ),
        (
            lambda *a: loop(*a, ratio_on="next"),
            "It applies ρ_t to the next estimate only: the reward r_t follows a_t too, and the critic term needs its "
            "ratio (with all ρ = 1 both forms agree, so the on-policy input cannot tell them apart).",
        ),
        (
            lambda lr, r, v, gamma: ope.doubly_robust(lr, r, v.at[-1].set(0.0), gamma),
            "It does not bootstrap: the recursion starts from V̂_T = V(x_T) (values[T]), not from 0.",
        ),
    ]
    return _check_ope("doubly_robust", doubly_robust, ope.doubly_robust, mistakes, "metagrad.ope.doubly_robust")


@_register("04", "dr_log_ratio_gradient")
def check_dr_log_ratio_gradient(dr_log_ratio_gradient: Callable) -> str:
    """`dr_log_ratio_gradient(rewards [T], values [T+1], gamma)` -> ∂V̂_DR/∂κ_t at κ = 0 in closed form, [T]."""
    from metagrad import ope

    def reference(r, v, gamma):
        return jax.grad(ope.doubly_robust)(jnp.zeros_like(r), r, v, gamma)

    def advantages(r, v, gamma):
        return _returns(r, v, gamma) - v[:-1]

    def discount(r, gamma):
        return gamma ** jnp.arange(r.shape[0])

    mistakes = [
        (lambda r, v, g: advantages(r, v, g), "Each entry is right but without the factor γ^t: the correction at step t enters V̂_0 through t discounts."),
        (lambda r, v, g: discount(r, g) * _returns(r, v, g), "It is γ^t G_t: the critic's control variate at step t is missing; it must be subtracted."),
        (
            lambda r, v, g: discount(r, g) * (r + g * v[1:] - v[:-1]),
            "It uses the one-step TD error r_t + γV(x_{t+1}) − V(x_t): with all ratios 1, V̂_{t+1} is not the critic's "
            "V(x_{t+1}); unroll the recursion to see what it is.",
        ),
        (
            lambda r, v, g: discount(r, g) * (jnp.append(_returns(r, v, g)[1:], v[-1]) - v[:-1]),
            "It uses the return from step t + 1, G_{t+1} (off by one): ρ_t multiplies the reward r_t too, so r_t belongs "
            "in the derivative in κ_t.",
        ),
        (
            lambda r, v, g: g * discount(r, g) * (_returns(r, v, g) - v[:-1]),
            "It carries γ^(t+1) (one discount too many): step t's correction enters V̂_0 through t discounts, step 0's "
            "through none.",
        ),
        (
            lambda r, v, g: -reference(r, v, g),
            "It has the wrong sign (it is minus the derivative): ∂ρ_t/∂κ_t = +ρ_t; check the sign of what ρ_t multiplies.",
        ),
        (
            lambda r, v, g: jnp.cumsum(discount(r, g) * (r + g * v[1:] - v[:-1])),
            "It sums the discounted TD errors of the steps up to t (a forward cumulative sum): κ_t reweights what "
            "follows a_t, so its derivative sums the TD errors from t on (a reverse cumulative sum).",
        ),
        (
            lambda r, v, g: discount(r, g) * r,
            "It is γ^t r_t, the discounted reward of step t only: ρ_t also reweights everything after a_t, and the "
            "critic's control variate V(x_t) is subtracted.",
        ),
        (
            lambda r, v, g: discount(r, g) * (_returns(r, v, g) - r - v[:-1]),
            "It leaves out the reward r_t: ρ_t reweights the reward r_t that follows a_t as well as what comes after, "
            "so r_t belongs in the derivative in κ_t.",
        ),
        (lambda r, v, g: discount(r, g) * (_returns(r, v, g) - v[1:]), "It subtracts V(x_{t+1}) (off by one): the control variate at step t is V(x_t)."),
        (lambda r, v, g: discount(r, g) * (_returns(r, jnp.zeros_like(v), g) - v[:-1]), "Its returns ignore the bootstrap γ^{T−t} V(x_T) at the end of the trajectory."),
    ]
    keys = jax.random.split(jax.random.PRNGKey(8), 4)
    cases = [
        ("a random trajectory of length 6 (γ = 0.9)", (_float(jax.random.uniform(keys[0], (6,))), _float(2 * jax.random.uniform(keys[1], (7,))), 0.9)),
        ("another trajectory of length 6 (γ = 0.9)", (_float(jax.random.normal(keys[2], (6,))), _float(jax.random.normal(keys[3], (7,))), 0.9)),
        ("γ = 0.5 and T = 3", (_float([1.0, -1.0, 2.0]), _float([0.5, 3.0, -1.0, 2.0]), 0.5)),
        ("a single step (T = 1)", (_float([1.0]), _float([0.5, 3.0]), 0.9)),
    ]
    _compare(
        "dr_log_ratio_gradient",
        dr_log_ratio_gradient,
        reference,
        cases,
        expected_form="(one entry per step, [T])",
        mistakes=mistakes,
        jit=True,
        vmap_in_axes=(0, 0, None),
    )
    return "matches jax.grad of metagrad.ope.doubly_robust at κ = 0 on 4 trajectories (incl. T = 1, γ = 0.5), also under jax.jit and jax.vmap."
