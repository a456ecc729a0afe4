"""Checks for notebook 07 — The bias–variance picture."""

from __future__ import annotations

from typing import Callable


from metagrad.course.checks._diagnose import (
    _call,
    _fail,
    _register,
)

__all__ = ['reference_choose_estimator', 'check_choose_estimator']


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
