"""What every exercise check shares: the failure type, the outcome table, calling and comparing student code.

The checks themselves live in one module per notebook (``nb00`` … ``nb09``); this is the shared diagnosis.
Conventions of every check:

Each check calls the student's function on random and edge-case inputs and compares the result with a
reference: the library function where the library has one (``metagrad.mdp``, ``metagrad.exact``,
``metagrad.ope``), otherwise a short reference written here. On success it prints one line starting
with ``✓``. On failure it raises :class:`ExerciseCheckFailed`, whose message says in one or two sentences
what is wrong (not implemented yet, wrong shape, which input, how large the error is) and, when the
wrong answer matches a known mistake (a forgotten discount, an off-by-one, a time-indexed critic, a
missing ``stop_gradient``), which mistake. In Jupyter the exception is shown as that message only,
without a traceback (:meth:`ExerciseCheckFailed._render_traceback_`).

Every outcome is recorded in :func:`results` (exercise name -> passed), which
``metagrad course grade`` reads from the kernel after running a submission.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

class ExerciseCheckFailed(AssertionError):
    """A check found a wrong answer. ``str(err)`` is the friendly message; ``err.exercise`` its name."""

    def __init__(self, exercise: str, message: str):
        super().__init__(f"Exercise `{exercise}`: {message}")
        self.exercise = exercise
        self.message = message

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a traceback: the student needs the message, not our stack.
        return [f"✗ {self}"]


_RESULTS: dict[str, bool] = {}

#: Exercise name -> notebook number, in course order (the columns of ``metagrad course grade``).
CHECKS: dict[str, str] = {}


def results() -> dict[str, bool]:
    """The outcome of the last run of each check in this process (exercise name -> passed)."""
    return dict(_RESULTS)


def reset_results() -> None:
    """Forget all recorded outcomes."""
    _RESULTS.clear()


def _register(notebook: str, exercise: str) -> Callable:
    def wrap(fn):
        CHECKS[exercise] = notebook

        def check(student_fn):
            if not callable(student_fn):
                _fail(exercise, f"pass the function itself, e.g. `check_{exercise}({exercise})`; got {student_fn!r}.")
            try:
                summary = fn(student_fn)
            except ExerciseCheckFailed:
                _RESULTS[exercise] = False
                raise
            _RESULTS[exercise] = True
            print(f"✓ Exercise `{exercise}` passed: {summary}")

        check.__name__ = fn.__name__
        check.__qualname__ = fn.__qualname__
        check.__doc__ = fn.__doc__
        return check

    return wrap


def _fail(exercise: str, message: str):
    _RESULTS[exercise] = False
    raise ExerciseCheckFailed(exercise, message)


def _tolerance() -> tuple[float, float]:
    """(rtol, atol): tight in float64, looser when the student runs in float32."""
    if jnp.result_type(float) == jnp.float64:
        return 1e-7, 1e-9
    return 1e-4, 1e-5


def _close(a, b) -> bool:
    rtol, atol = _tolerance()
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _call(exercise: str, fn: Callable, args: Sequence, label: str):
    """Call the student's function; turn any exception into one friendly sentence."""
    try:
        return fn(*args)
    except NotImplementedError:
        _fail(
            exercise,
            "not implemented yet: replace the `raise NotImplementedError(...)` line with your code, "
            "run that cell, then run this check again.",
        )
    except ExerciseCheckFailed:
        raise
    except Exception as err:  # noqa: BLE001 — any error in student code becomes a message
        if "Tracer" in type(err).__name__ or "Concretization" in type(err).__name__:
            _fail(
                exercise,
                f"calling it on {label} failed because JAX cannot trace it ({type(err).__name__}): use jax.numpy "
                "(jnp) instead of NumPy, float() or Python `if` on array values inside the function.",
            )
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if len(detail) > 160:
            detail = detail[:157] + "..."
        _fail(exercise, f"calling it on {label} raised {type(err).__name__}{': ' + detail if detail else ''}.")


def _compare(
    exercise: str,
    student_fn: Callable,
    reference_fn: Callable,
    cases: Sequence[tuple[str, tuple]],
    *,
    expected_form: str,
    mistakes: Sequence[tuple[Callable, str]] = (),
) -> None:
    """Compare ``student_fn(*args)`` with ``reference_fn(*args)`` for each ``(label, args)`` case."""
    for label, args in cases:
        expected = np.asarray(reference_fn(*args), dtype=np.float64)
        got = _call(exercise, student_fn, args, label)
        try:
            got = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            _fail(exercise, f"on {label} it returned {type(got).__name__}; expected an array {expected_form}.")
        if got.shape != expected.shape:
            _fail(
                exercise,
                f"on {label} it returned shape {got.shape}; expected shape {expected.shape} {expected_form}.",
            )
        if not np.all(np.isfinite(got)):
            _fail(exercise, f"on {label} it returned NaN or infinite values.")
        if not _close(got, expected):
            error = float(np.max(np.abs(got - expected)))
            message = f"on {label} the result differs from the reference (largest absolute error {error:.3g})."
            for mistake, hint in mistakes:
                try:
                    if _close(got, mistake(*args)):
                        message += " " + hint
                        break
                except Exception:  # noqa: BLE001 — a diagnosis that cannot run is simply skipped
                    continue
            _fail(exercise, message)


def _float(x) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.result_type(float))




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




def _random_mdp(rng: np.random.Generator, num_states: int, num_actions: int, gamma: float, concentration: float = 1.0):
    """A random TabularMDP built with NumPy (no JAX compilation: checks must be quick)."""
    from metagrad.mdp import TabularMDP

    transitions = rng.dirichlet(np.full(num_states, concentration), size=(num_states, num_actions))
    transitions = np.maximum(transitions, 0.0)
    transitions /= transitions.sum(-1, keepdims=True)
    initial = np.zeros(num_states)
    initial[0] = 1.0
    return TabularMDP(_float(transitions), _float(rng.uniform(size=(num_states, num_actions))), _float(initial), gamma)


def _random_policy(rng: np.random.Generator, num_states: int, num_actions: int):
    logits = rng.normal(size=(num_states, num_actions))
    return _float(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))


def all_exercises() -> list[str]:
    """Every registered exercise, in course order (notebook, then order of definition)."""
    return sorted(CHECKS, key=lambda name: (CHECKS[name], list(CHECKS).index(name)))
