"""06's `taypo2` asks for a vectorised function: a Python loop over t is refused, `lax.scan` is not.

The probe traces the student's function at T = 8 and T = 64 and compares the number of operations: a loop over the
steps unrolls into operations per step, a vectorised function or a scan traces to the same program at any length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from _exercises import assert_check_explains

from metagrad import ope
from metagrad.course import checks
from metagrad.course.checks import nb06


def _advantages(rewards, values, gamma):
    g = ope.returns(rewards, values, jnp.full(rewards.shape, gamma, rewards.dtype))
    return g, jax.lax.stop_gradient(g - values[:-1])


def taypo2_python_loop(log_ratios, rewards, values, gamma):
    d = jnp.expm1(log_ratios)
    g, advantages = _advantages(rewards, values, gamma)
    total, before_t = g[0], 0.0
    for t in range(rewards.shape[0]):
        total = total + gamma**t * d[t] * advantages[t] * (1.0 + before_t)
        before_t = before_t + d[t]
    return total


def taypo2_scan(log_ratios, rewards, values, gamma):
    d = jnp.expm1(log_ratios)
    g, advantages = _advantages(rewards, values, gamma)

    def step(carry, x):
        before_t, discount = carry
        d_t, a_t = x
        return (before_t + d_t, discount * gamma), discount * d_t * a_t * (1.0 + before_t)

    _, terms = jax.lax.scan(step, (jnp.zeros((), d.dtype), jnp.ones((), d.dtype)), (d, advantages))
    return g[0] + jnp.sum(terms)


def test_python_loop_over_t_is_refused_with_its_operation_counts():
    assert_check_explains(nb06, "taypo2", taypo2_python_loop, "grows with the length of the trajectory")
    assert_check_explains(nb06, "taypo2", taypo2_python_loop, "a Python loop over the steps")


def test_scan_over_t_passes():
    checks.check_taypo2(taypo2_scan)  # raises ExerciseCheckFailed on a refusal
    assert checks.results()["taypo2"] is True
