"""Checks for notebook 07 — The bias–variance picture."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks._diagnose import (
    _call,
    _close,
    _fail,
    _float,
    _refuse_float32,
    _register,
)
from metagrad.experiments import maml_experiments

__all__ = ['check_squared_bias', 'check_choose_estimator']


def reference_squared_bias(estimates, truth):
    """‖ḡ − g‖² − tr Σ̂ / M: an unbiased estimate of ‖E ĝ − g‖² from M independent estimates `[M, D]` (the library's)."""
    return maml_experiments.squared_bias(estimates, truth)


def _squared_bias_mistakes():
    def uncorrected(est, truth):
        return jnp.sum((jnp.mean(est, 0) - truth) ** 2)

    def population_variance(est, truth):
        return jnp.sum((jnp.mean(est, 0) - truth) ** 2) - jnp.sum(jnp.var(est, 0)) / est.shape[0]

    def whole_variance(est, truth):
        return jnp.sum((jnp.mean(est, 0) - truth) ** 2) - jnp.sum(jnp.var(est, 0, ddof=1))

    def clipped(est, truth):
        return jnp.maximum(reference_squared_bias(est, truth), 0.0)

    def mean_of_squares(est, truth):
        return jnp.mean(jnp.sum((est - truth) ** 2, axis=1))

    def root_noise(est, truth):
        return jnp.sum((jnp.mean(est, 0) - truth) ** 2) - jnp.sqrt(jnp.sum(jnp.var(est, 0, ddof=1)) / est.shape[0])

    def over_m_minus_one(est, truth):
        return jnp.sum((jnp.mean(est, 0) - truth) ** 2) - jnp.sum(jnp.var(est, 0, ddof=1)) / (est.shape[0] - 1)

    def flattened_variance(est, truth):
        return jnp.sum((jnp.mean(est, 0) - truth) ** 2) - jnp.var(est, ddof=1) / est.shape[0]

    def norm_minus_root_noise(est, truth):
        return jnp.linalg.norm(jnp.mean(est, 0) - truth) - jnp.sqrt(jnp.sum(jnp.var(est, 0, ddof=1)) / est.shape[0])

    def single_errors_minus_noise(est, truth):
        return jnp.mean(jnp.sum((est - truth) ** 2, axis=1)) - jnp.sum(jnp.var(est, 0, ddof=1)) / est.shape[0]

    def pooled_variance(est, truth):  # D × the variance of all M·D entries
        return jnp.sum((jnp.mean(est, 0) - truth) ** 2) - est.shape[1] * jnp.var(est, ddof=1) / est.shape[0]

    def adds_noise(est, truth):
        return jnp.sum((jnp.mean(est, 0) - truth) ** 2) + jnp.sum(jnp.var(est, 0, ddof=1)) / est.shape[0]

    return [
        (over_m_minus_one, "It divides tr Σ̂ by M − 1: the sample variance (ddof=1) already corrects for the mean, and the "
                           "mean of M estimates has variance tr Σ / M."),
        (flattened_variance, "It takes one variance over all M·D entries (jnp.var of the whole array): tr Σ is the sum over "
                             "the D coordinates of each coordinate's variance across the M estimates (axis 0)."),
        (pooled_variance, "It pools one variance over all M·D entries and multiplies it by D: that variance also holds "
                          "the spread between the coordinates' means; tr Σ is the sum of each coordinate's own variance "
                          "across the M estimates (axis 0)."),
        (norm_minus_root_noise, "It subtracts the noise level √(tr Σ̂ / M) from the norm ‖ḡ − g‖: subtract the squared "
                                "noise from the squared norm, ‖ḡ − g‖² − tr Σ̂ / M."),
        (adds_noise, "It adds tr Σ̂ / M: ‖ḡ − g‖² already contains the noise of the mean, so subtract it."),
        (reference_squared_bias, "(never matched here: listed so that its square root is recognised)"),
        (uncorrected, "It is ‖ḡ − g‖², which also contains the noise of the mean, tr Σ / M: subtract an unbiased estimate of it."),
        (population_variance, "It divides the sample variance by M instead of M − 1, which leaves a bias of tr Σ / M²."),
        (whole_variance, "It subtracts tr Σ̂, the variance of ONE estimate; the mean of M estimates has variance tr Σ / M."),
        (clipped, "It clips negative values at 0, which makes the estimate biased upwards; return it unclipped."),
        (single_errors_minus_noise, "It averages the squared errors ‖ĝ_i − g‖² of the single estimates, each of which "
                                    "holds the noise of ONE estimate (tr Σ), and then subtracts only the noise of their "
                                    "mean, tr Σ̂ / M: take the error of the mean ḡ before squaring."),
        (mean_of_squares, "It is the mean of ‖ĝ_i − g‖², the mean squared error of ONE estimate (bias² + tr Σ), not the squared bias."),
        (root_noise, "It subtracts the noise level √(tr Σ̂ / M), a norm, from a squared norm: subtract the squared noise, "
                     "tr Σ̂ / M, itself."),
    ]


def _squared_bias_data(rng, replications, m, bias, scales):
    """`[R, M, D]` Gaussian estimates of `truth` with mean truth + bias and independent noise of the given scales."""
    d = len(bias)
    truth = rng.normal(size=d)
    noise = rng.normal(size=(replications, m, d)) * np.asarray(scales)
    return _float(truth + np.asarray(bias) + noise), _float(truth), float(np.sum(np.square(bias)))


@_register("07", "squared_bias")
def check_squared_bias(squared_bias: Callable) -> str:
    """`squared_bias(estimates [M, D], truth [D])` -> a scalar whose expectation is ‖E ĝ − g‖².

    Any unbiased estimate passes (the pairwise form and independent halves too): the check averages the
    student's function, under `jax.vmap` and `jax.jit`, over many seeded replications with a known bias.
    """
    exercise = "squared_bias"
    rng = np.random.default_rng(7)
    replications = 3000
    cases = [
        ("no bias and noise of variance 9 per coordinate (M = 5, D = 3)", (5, [0.0, 0.0, 0.0], [3.0, 3.0, 3.0])),
        ("bias (1, −2) and unequal noise (M = 8, D = 2)", (8, [1.0, -2.0], [0.5, 2.0])),
        ("M = 2 estimates, a small bias next to the noise (D = 4)", (2, [0.3, 0.0, 0.0, 0.1], [1.0, 1.0, 1.0, 1.0])),
        ("one coordinate (D = 1), bias 0.5, M = 20", (20, [0.5], [1.0])),
    ]
    mistakes = _squared_bias_mistakes()
    for label, (m, bias, scales) in cases:
        estimates, truth, true_value = _squared_bias_data(rng, replications, m, bias, scales)
        _refuse_float32(exercise, squared_bias, (estimates[0], truth), label)
        single = _call(exercise, squared_bias, (estimates[0], truth), label)
        try:
            single = np.asarray(single, dtype=np.float64)
        except (TypeError, ValueError):
            _fail(exercise, f"on {label} it returned {type(single).__name__}; expected a scalar (a 0-d array).")
        if single.shape != ():
            _fail(exercise, f"on {label} it returned shape {single.shape}; expected a scalar: sum over the D coordinates.")
        batched = _call(exercise, jax.jit(jax.vmap(squared_bias, in_axes=(0, None))), (estimates, truth),
                        f"{label}, under jax.jit(jax.vmap(...)) over replications")
        batched = np.asarray(batched, dtype=np.float64)
        if batched.shape != (replications,) or not _close(batched[0], single):
            _fail(exercise, f"on {label} it gives a different result under jax.jit(jax.vmap(...)) than called directly: "
                            "something in it depends on how it is called (a Python branch or a NumPy conversion of a "
                            "value, or a global); use jnp functions only.")
        if not np.all(np.isfinite(batched)):
            _fail(exercise, f"on {label} it returned NaN or infinite values.")
        reference = np.asarray(jax.vmap(reference_squared_bias, in_axes=(0, None))(estimates, truth))
        if not _close(batched, reference):
            # Another unbiased form (e.g. independent halves) is fine; a known mistake is named on every case.
            for mistake, hint in mistakes:
                wrong = np.asarray(jax.vmap(mistake, in_axes=(0, None))(estimates, truth))
                if _close(batched, wrong):
                    _fail(exercise, f"on {label}: {hint}")
                positive = wrong > 0
                if np.all(batched >= 0) and _close(batched[positive] ** 2, wrong[positive]):
                    _fail(exercise, f"on {label} it returns a norm (a square root); return the squared bias itself, "
                                    "which may be negative.")
        mean = float(np.mean(batched))
        standard_error = float(np.std(batched, ddof=1) / np.sqrt(replications))
        if abs(mean - true_value) > 5 * standard_error + 1e-9:
            _fail(exercise, f"on {label} its mean over {replications} replications is {mean:.3f} ± {standard_error:.3f}, "
                            f"but the squared bias is {true_value:.3f}: it is not an unbiased estimate of ‖E ĝ − g‖².")
    return (f"its mean over {replications} seeded replications matches ‖E ĝ − g‖² within 5 standard errors on 4 cases "
            "(no bias, M = 2, D = 1), under jax.jit and jax.vmap.")


def reference_choose_estimator(squared_bias: dict, variance: dict, num_trajectories: int) -> str:
    """argmin_name max(squared_bias[name], 0) + variance[name] / N (the library's `choose_by_mse`)."""
    return maml_experiments.choose_by_mse(squared_bias, variance, num_trajectories)


@_register("07", "choose_estimator")
def check_choose_estimator(choose_estimator: Callable) -> str:
    """`choose_estimator(squared_bias {name: ‖b‖² estimate}, variance {name: per-trajectory variance}, N)` -> name."""
    exercise = "choose_estimator"
    measured = (
        {"is": 0.0004, "dr": 0.0001, "taypo1": 0.81, "taypo2": 0.0025, "vtrace": 4.0},
        {"is": 900.0, "dr": 60.0, "taypo1": 4.0, "taypo2": 20.0, "vtrace": 1.0},
    )
    cases = [
        ("the measurements above with N = 10", (*measured, 10)),
        ("the same measurements with N = 1000", (*measured, 1000)),
        ("the same measurements with N = 100 000", (*measured, 100_000)),
        ("squared biases below 1, N = 100", ({"a": 0.09, "b": 0.25}, {"a": 30.0, "b": 12.0}, 100)),
        ("an unresolved (negative) squared-bias estimate, N = 100", ({"a": -0.01, "b": 0.0}, {"a": 1.0, "b": 0.5}, 100)),
        # A clearly negative estimate next to a close competitor: max(b², 0) picks "a" (0.005 < 0.02), |b²| picks "b"
        # (0.045 > 0.02).
        ("a clearly negative squared-bias estimate and a close competitor, N = 100",
         ({"a": -0.04, "b": 0.01}, {"a": 0.5, "b": 1.0}, 100)),
        ("a single estimator", ({"dr": 0.01}, {"dr": 5.0}, 50)),
        # N = 1: the smallest variance ("a") is not the choice; variance · N and variance / N agree ("b").
        ("a large bias next to a small variance, N = 1", ({"a": 5.0, "b": 0.0}, {"a": 1.0, "b": 2.0}, 1)),
        # max(b², 0) + v/N, b⁴ + v/N and b² + v/√N choose three different estimators here.
        ("three estimators on which the candidate rules disagree, N = 100",
         ({"x": 0.6, "y": 0.2, "z": 0.0}, {"x": 0.5, "y": 30.0, "z": 45.0}, 100)),
        # variance / N picks "b" (1.2 < 2), variance / (N + 1) picks "a" (1 < 1.2).
        ("a bias against a variance, N = 1", ({"a": 0.0, "b": 1.2}, {"a": 2.0, "b": 0.0}, 1)),
        # variance / N picks "a" (1 < 1.5), variance / (N − 1) picks "b" (2 > 1.5).
        ("a bias against a variance, N = 2", ({"a": 0.0, "b": 1.5}, {"a": 2.0, "b": 0.0}, 2)),
        # Dropping the estimators with a negative estimate leaves only "b"; max(b², 0) keeps "a" (0 + 0.1 < 0.5).
        ("an unresolved bias with a small variance next to a resolved one, N = 10",
         ({"a": -0.02, "b": 0.5}, {"a": 1.0, "b": 0.0}, 10)),
    ]
    wrong_rules = [
        (lambda b, v, n: min(b, key=lambda k: b[k] + v[k] / n),
         "It uses a negative squared-bias estimate as it is: a squared bias is at least 0, so use max(‖b‖², 0)."),
        (lambda b, v, n: min(b, key=lambda k: np.sqrt(max(b[k], 0.0)) + v[k] / n),
         "It adds the bias, not its square: mean squared error = ‖b‖² + variance / N."),
        (lambda b, v, n: max(b, key=lambda k: max(b[k], 0.0) + v[k] / n),
         "It picks the largest max(‖b‖², 0) + variance / N: the best estimator has the smallest mean squared error (min, "
         "not max)."),
        (lambda b, v, n: min(b, key=lambda k: max(b[k], 0.0) + v[k] * n),
         "It multiplies the variance by N: the variance of a mean of N trajectories is variance / N."),
        (lambda b, v, n: min(b, key=lambda k: v[k]), "It picks the smallest variance and ignores the bias."),
        (lambda b, v, n: min(b, key=lambda k: b[k]), "It picks the smallest bias and ignores the variance."),
        (lambda b, v, n: min(b, key=lambda k: max(b[k], 0.0) + v[k]),
         "It ignores N: the variance of a mean of N trajectories is variance / N."),
        (lambda b, v, n: min(b, key=lambda k: max(b[k], 0.0) + v[k] / np.sqrt(n)),
         "It divides the variance by √N: that is the standard deviation's scaling; the variance of a mean of N "
         "trajectories is variance / N."),
        (lambda b, v, n: min(b, key=lambda k: abs(b[k]) + v[k] / n),
         "It uses |‖b‖²|, the absolute value, for a negative squared-bias estimate: a negative estimate means the bias is "
         "unresolved (indistinguishable from 0), so it contributes max(‖b‖², 0) = 0, not its size."),
        (lambda b, v, n: min(b, key=lambda k: max(b[k], 0.0) + v[k] / n**2),
         "It divides the variance by N²: the variance of a mean of N independent trajectories is variance / N "
         "(N copies of variance / N² each)."),
        (lambda b, v, n: min(b, key=lambda k: max(b[k], 0.0) + v[k] / (n + 1)),
         "It divides the variance by N + 1: the variance of a mean of N independent trajectories is variance / N."),
        (lambda b, v, n: min(b, key=lambda k: max(b[k], 0.0) + v[k] / max(n - 1, 1)),
         "It divides the variance by N − 1 (a sample-variance correction): the variance of a mean of N independent "
         "trajectories is variance / N; the per-trajectory variance given is already an estimate."),
        (lambda b, v, n: min([k for k in b if b[k] >= 0] or list(b), key=lambda k: b[k] + v[k] / n),
         "It drops the estimators whose squared-bias estimate is negative: a negative estimate means the bias is "
         "unresolved, so it counts as max(‖b‖², 0) = 0; the estimator stays a candidate."),
        (lambda b, v, n: min(b, key=lambda k: b[k] ** 2 + v[k] / n),
         "It squares the squared bias: the dict already holds ‖b‖², so the mean squared error is ‖b‖² + variance / N."),
    ]
    choices = []
    for label, (bias, variance, n) in cases:
        got = _call(exercise, choose_estimator, (dict(bias), dict(variance), n), label)
        if not isinstance(got, str):
            _fail(exercise, f"on {label} it returned {got!r}; return the estimator's name (a key of the dicts).")
        choices.append(got)
    for (label, (bias, variance, n)), got in zip(cases, choices):
        expected = reference_choose_estimator(bias, variance, n)
        if got != expected:
            message = f"on {label} it chose {got!r}, but {expected!r} has the smallest predicted mean squared error."
            # The rule that makes the same choices on every input names the mistake; failing that, the first rule
            # that makes this choice here (several rules can agree on one input).
            agree = [hint for rule, hint in wrong_rules if all(rule(*args) == c for (_, args), c in zip(cases, choices))]
            agree += [hint for rule, hint in wrong_rules if rule(bias, variance, n) == got]
            _fail(exercise, message + (" " + agree[0] if agree else ""))
    return (f"picks the smallest max(‖b‖², 0) + variance / N on {len(cases)} inputs (N = 1 … 100 000, negative ‖b‖² "
            "estimates, one estimator, candidate rules that disagree).")
