"""What every exercise check shares: the failure type, the outcome table, calling and comparing student code.

The checks themselves live in one module per notebook (`nb00` … `nb09`); this is the shared diagnosis.
Conventions of every check:

Each check calls the student's function on random and edge-case inputs and compares the result with a
reference: the library function where the library has one (`metagrad.mdp`, `metagrad.exact`,
`metagrad.ope`), otherwise a short reference written here. On success it prints one line starting
with `✓`. On failure it raises `ExerciseCheckFailed`, whose message says in one or two sentences
what is wrong (not implemented yet, wrong shape, which input, how large the error is) and, when the
wrong answer matches a known mistake (a forgotten discount, an off-by-one, a time-indexed critic, a
missing `stop_gradient`), which mistake. In Jupyter the exception is shown as that message only,
without a traceback (`ExerciseCheckFailed._render_traceback_`).

Building blocks for a check (see `_compare`): `_compare(..., parts=value_gradient_hessian_parts)`
names the wrong part (value, gradient, Hessian) of a `_with_derivatives` output; `mistakes` are diagnosed
over all wrong cases, not only the first; `jit=True` / `vmap_in_axes=(0, None, ...)` also run the
student's function under `jax.jit` and `jax.vmap` (`_check_transforms`); `_as_result` turns
type, shape, dtype and NaN problems into one sentence.

Some exercises forbid a shortcut (`FORBIDDEN`): the library's own version of the function the student writes, or
automatic differentiation where the exercise asks for a derived closed form. `_call` and `_call_transformed` run
the student's code through `Forbidding`, which makes those functions raise `ForbiddenCall` with a message
naming the shortcut for the duration of the call (in the grading kernel too: it is pickled with the call).

Every outcome is recorded in `results` (exercise name -> passed) for the notebook's own use.

Grading (`metagrad course grade`) runs a check in the grader's process, not in the student's kernel: the
student's function is a `RemoteFunction`, and every call of student code goes through `_call`
or `_call_transformed`, which hand `(function, arguments)` to the grader's executor (the kernel runs
them and returns the outputs as plain data, see `metagrad.course._serve`). So a check must call the
student's function — or anything built around it, such as `jax.jit(student)` or a closure calling it —
only through those two helpers (or by calling the proxy directly on concrete arguments), and must never pass
a reference solution into them: whatever they receive runs in the student's kernel.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

class ExerciseCheckFailed(AssertionError):
    """A check found a wrong answer. `str(err)` is the friendly message; `err.exercise` its name."""

    def __init__(self, exercise: str, message: str):
        super().__init__(f"Exercise `{exercise}`: {message}")
        self.exercise = exercise
        self.message = message

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a traceback: the student needs the message, not our stack.
        return [f"✗ {self}"]


_RESULTS: dict[str, bool] = {}

#: Set by the grader while it runs a check: ``executor(fn, args)`` runs ``fn(*args)`` in the student's kernel.
_EXECUTOR: Callable | None = None


class RemoteFunction:
    """The student's function `name` in a grading kernel; it only exists in the grader's process.

    Called on concrete arguments it runs in the kernel (through `_EXECUTOR`); pickled (as part of a wrapper
    the check built) it becomes the kernel's own `name` (`metagrad.course._serve.student`).
    """

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args)):
            raise RemoteTracedError(f"a check traced the student's `{self.name}` in the grader; use _call")
        return _EXECUTOR(self, args)

    def __reduce__(self):
        from metagrad.course import _serve

        return (_serve.student, (self.name,))

    def __repr__(self) -> str:
        return f"<student function {self.name}>"


class RemoteTracedError(BaseException):
    """A check applied a JAX transformation to the student's proxy in the grader (a bug of the check)."""


_AUTODIFF = ("grad", "value_and_grad", "vjp", "jvp", "jacfwd", "jacrev", "hessian", "linearize", "linear_transpose")


def _library(name: str, what: str = "") -> dict[str, str]:
    """`{target: message}` forbidding the library function `module:attr` an exercise asks the student to write."""
    module, attr = name.split(":")
    return {name: f"It calls `{module}.{attr}`, the library's own version of {what or 'this function'}: the exercise "
                  "is to write it yourself (the check compares your function with it)."}


def _no_autodiff(why: str) -> dict[str, str]:
    return {f"jax:{attr}": f"It uses automatic differentiation (`jax.{attr}`); {why}" for attr in _AUTODIFF}


#: Exercise -> {"module:attr": message}: calls that raise `ForbiddenCall` while the student's function runs.
#: `@student:name` is the student's own function `name` (an earlier exercise), looked up in the student's namespace.
FORBIDDEN: dict[str, dict[str, str]] = {
    "score_function_hessian": {"jax.lax:stop_gradient": "It uses stop_gradient, i.e. the magic box of the next exercise; this "
                               "one asks for the score-function form itself, written with the derivatives of log p "
                               "(differentiate the score-function gradient's expectation once more)."},
    "magic_box": _library("metagrad.prior:magic_box"),
    "policy_evaluation": _library("metagrad.mdp:policy_evaluation"),
    "discounted_occupancy": _library("metagrad.mdp:discounted_occupancy"),
    "reward_to_go": {**_library("metagrad.ope:returns", "the reward-to-go"), **_library("metagrad.prior:returns", "the reward-to-go")},
    "occupancy_policy_gradient": _library("metagrad.exact:gradient", "the policy gradient"),
    "inner_step": _library("metagrad.exact:adapted_logits"),
    "missing_hessian_terms": _no_autodiff("this exercise asks for the terms you derive, written with jax.numpy only."),
    "step_importance_sampling": _library("metagrad.ope:step_importance_sampling"),
    "doubly_robust": _library("metagrad.ope:doubly_robust"),
    "dr_log_ratio_gradient": {
        **_no_autodiff("this exercise asks for the closed form you derive, written with jax.numpy only."),
        **dict.fromkeys(
            ("metagrad.ope:doubly_robust", "@student:doubly_robust"),
            "It calls doubly_robust: differences of DR values (finite differences, or DR at ρ_t = 2 minus DR at ρ = 1) "
            "measure the derivative instead of deriving it; this exercise asks for the closed form, written with "
            "jax.numpy only.",
        ),
    },
    "dice_objective": {
        **_library("metagrad.prior:dice_objective"),
        **dict.fromkeys(
            ("metagrad.ope:step_importance_sampling", "metagrad.ope:doubly_robust", "@student:on_policy_importance_sampling",
             "@student:step_importance_sampling", "@student:doubly_robust"),
            "It multiplies ratios (it calls step-wise IS or DR): this exercise asks for DiCE's form "
            "without ratios, one magic box per reward applied to a sum of log-probabilities.",
        ),
    },
    "dice_hessian": {
        **_no_autodiff("this exercise asks for the Hessian you derive, written with jax.numpy only."),
        **dict.fromkeys(
            ("metagrad.prior:dice_objective", "@student:dice_objective", "@student:on_policy_importance_sampling"),
            "It evaluates a DiCE or IS objective (finite differences of it measure the Hessian instead of deriving it): "
            "this exercise asks for the closed form, written with jax.numpy only.",
        ),
    },
    "loaded_dice": _library("metagrad.prior:loaded_dice_objective"),
    "log_linear_hessian": _no_autodiff("this exercise asks for the Hessian you derive, written with jax.numpy only."),
    "taypo2": _library("metagrad.ope:taylor_expansion", "TayPO-K"),
    "taypo_k": _library("metagrad.ope:taylor_expansion", "TayPO-K"),
    "taypo_terms": _library("metagrad.ope:taylor_expansion", "TayPO-K"),
    "squared_bias": {**_library("metagrad.experiments.maml_experiments:squared_bias"),
                     **_library("metagrad.experiments.maml_experiments:squared_bias_report", "the squared bias")},
    "choose_estimator": _library("metagrad.experiments.maml_experiments:choose_by_mse", "this rule"),
}


class ForbiddenCall(Exception):
    """Raised by a forbidden function while a check runs the student's code (`FORBIDDEN`)."""


@contextlib.contextmanager
def _forbidden(forbidden: dict[str, str], namespaces: list[dict]):
    """Replace each `module:attr` of `forbidden` by a function raising `ForbiddenCall(message)`, in its module and
    wherever a namespace of the student's code holds it under another name; restore everything afterwards."""
    undo = []
    try:
        for target, message in forbidden.items():
            module_name, attr = target.split(":")

            def refuse(*args, _message=message, **kwargs):
                raise ForbiddenCall(_message)

            if module_name == "@student":  # the student's own function: in each namespace that defines it
                for namespace in namespaces:
                    original = namespace.get(attr)
                    for name, value in list(namespace.items()) if callable(original) else ():
                        if value is original:
                            undo.append((namespace, name, original))
                            namespace[name] = refuse
                continue
            try:
                module = importlib.import_module(module_name)
                original = getattr(module, attr)
            except (ImportError, AttributeError):
                continue
            undo.append((module, attr, original))
            setattr(module, attr, refuse)
            for namespace in namespaces:
                for name, value in list(namespace.items()):
                    if value is original:
                        undo.append((namespace, name, original))
                        namespace[name] = refuse
        yield
    finally:
        for holder, name, original in reversed(undo):
            if isinstance(holder, dict):
                holder[name] = original
            else:
                setattr(holder, name, original)


def _namespaces(objects) -> list[dict]:
    """The global namespaces of the functions among `objects` (through `jax.jit` and `functools.partial`)."""
    found = []
    for obj in objects:
        for _ in range(4):
            if obj is None or hasattr(obj, "__globals__"):
                break
            obj = getattr(obj, "__wrapped__", None) or getattr(obj, "func", None)
        namespace = getattr(obj, "__globals__", None)
        if isinstance(namespace, dict) and all(namespace is not other for other in found):
            found.append(namespace)
    return found


class Forbidding:
    """`fn` run with the shortcuts of `FORBIDDEN[exercise]` refused (see `_forbidden`); picklable, so the grader
    sends it to the student's kernel, where the refusal applies to the student's own namespace."""

    def __init__(self, fn: Callable, exercise: str):
        self.fn, self.exercise = fn, exercise

    def __call__(self, *args):
        forbidden = FORBIDDEN.get(self.exercise, {})
        if not forbidden:
            return self.fn(*args)
        with _forbidden(forbidden, _namespaces([self.fn, *[a for a in args if callable(a)]])):
            return self.fn(*args)


def _forbidding(exercise: str, fn: Callable) -> Callable:
    return Forbidding(fn, exercise) if exercise in FORBIDDEN else fn


def _refused(exercise: str, err: Exception) -> None:
    """Fail with the shortcut's own message when `err` is a `ForbiddenCall` (here, or re-raised from the kernel)."""
    if type(err).__name__ == "ForbiddenCall":
        _fail(exercise, str(err))


def _run(fn: Callable, args: Sequence):
    """`fn(*args)`: in the student's kernel when grading (`_EXECUTOR` set), here otherwise."""
    return _EXECUTOR(fn, tuple(args)) if _EXECUTOR is not None else fn(*args)

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
        return _run(_forbidding(exercise, fn), args)
    except NotImplementedError:
        _fail(
            exercise,
            "not implemented yet: replace the `raise NotImplementedError(...)` line with your code, "
            "run that cell, then run this check again.",
        )
    except ExerciseCheckFailed:
        raise
    except Exception as err:  # noqa: BLE001 — any error in student code becomes a message
        _refused(exercise, err)
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


def _equations(jaxpr):
    """Every equation of `jaxpr`, those of its sub-jaxprs (scan and cond bodies, jitted calls) included."""
    stack = [jaxpr]
    while stack:
        for eqn in stack.pop().eqns:
            yield eqn
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else (param,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        stack.append(inner)


def _refuse_python_loop(exercise: str, fn: Callable, make_args: Callable, hint: str, lengths=(8, 64)) -> None:
    """Refuse `fn` when its traced program grows with the trajectory length T: a Python loop over the steps.

    A vectorised function (or `lax.scan`) traces to the same equations at any length; a Python loop unrolls into
    equations per step. `make_args(T)` gives `fn`'s arguments at length T. The probe is a closure, so when grading it
    runs in the student's kernel and returns only the two counts.
    """
    short, long = make_args(lengths[0]), make_args(lengths[1])

    def count_equations(*arrays):
        return np.array([float(sum(1 for _ in _equations(jax.make_jaxpr(fn)(*a).jaxpr)))
                         for a in (arrays[: len(short)], arrays[len(short) :])])

    label = f"trajectories of length T = {lengths[0]} and {lengths[1]} (traced, not run)"
    few, many = np.asarray(_call(exercise, count_equations, (*short, *long), label))
    if many > few + 8:
        _fail(exercise, f"its values are right, but its traced program grows with the length of the trajectory "
                        f"({int(few)} operations at T = {lengths[0]}, {int(many)} at T = {lengths[1]}): a Python loop "
                        f"over the steps. {hint}")


def _refuse_primitives(exercise: str, fn: Callable, args: Sequence, label: str, primitives: tuple[str, ...],
                       message: str) -> None:
    """Refuse `fn` when its traced program uses any of `primitives` (sub-programs included), with `message`.

    For exercises that rule out a method whose values are right: a loop (`while`, `scan`) where one linear solve is
    asked, a cumulative product of ratios where boxes of sums are asked. Runs after the values passed; the probe runs
    in the student's kernel when grading and returns only a count.
    """

    def count(*arrays):
        jaxpr = jax.make_jaxpr(fn)(*arrays).jaxpr
        return np.array(float(sum(eqn.primitive.name in primitives for eqn in _equations(jaxpr))))

    if float(np.asarray(_call(exercise, count, args, f"{label} (traced, not run)"))) > 0:
        _fail(exercise, message)


def _refuse_loop(exercise: str, fn: Callable, args: Sequence, label: str, hint: str) -> None:
    """Refuse a loop (`lax.fori_loop`, `while_loop`, `scan`) where the exercise asks for a direct computation."""
    _refuse_primitives(exercise, fn, args, label, ("while", "scan"),
                       f"its values are right, but its program loops (lax.fori_loop, while_loop or scan): {hint}")


#: The remedy every float32 refusal ends with (one wording across the checks).
#: Discounts a student might hard-code in place of the `gamma` argument (named as "it ignores gamma").
FIXED_GAMMAS = (0.9, 0.99, 0.95, 0.5, 0.8, 0.999)

FLOAT32_REMEDY = ("a float32 step (dtype=jnp.float32, .astype(jnp.float32), np.float32) loses half the digits: drop it "
                  "and let JAX use the default float type.")


def _has_float32(args) -> bool:
    """Whether any array among `args` (pytrees such as a TabularMDP included) is float32."""
    return any(getattr(leaf, "dtype", None) == np.float32 for leaf in jax.tree_util.tree_leaves(args))


def _as_result(
    exercise: str, got, expected: np.ndarray, label: str, expected_form: str, args=None, non_finite_hint: str = ""
) -> np.ndarray:
    """The student's result as a float64 array, or a one-sentence failure about its type, shape or dtype.

    With `args` (the case's inputs) given: a float32 result while the notebook runs in float64 and no input is
    float32 is refused, however close (precision is part of every exercise's contract; a float32 result from
    float32 inputs is judged by its values). `non_finite_hint` is appended when the result is NaN or infinite.
    """
    if isinstance(got, (tuple, list)) and expected.ndim == 0:
        _fail(exercise, f"on {label} it returned a {type(got).__name__}; expected a single number {expected_form}.")
    dtype = getattr(got, "dtype", None)
    if dtype is not None and np.dtype(dtype).kind in "biu" and np.asarray(expected).dtype.kind == "f":
        _fail(
            exercise,
            f"on {label} it returned integers (dtype {np.dtype(dtype)}); expected floating-point values "
            f"{expected_form}: check for integer division or an int array created with jnp.array([0, ...]).",
        )
    if dtype is not None and np.dtype(dtype).kind == "c":
        _fail(exercise, f"on {label} it returned complex numbers (dtype {np.dtype(dtype)}); expected real values.")
    try:
        out = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        _fail(exercise, f"on {label} it returned {type(got).__name__}; expected an array {expected_form}.")
    if out.shape != expected.shape:
        hint = ""
        if out.size == expected.size:
            hint = " Same number of entries: check a reshape, a transpose or an extra axis."
        elif out.ndim == expected.ndim + 1 or out.ndim + 1 == expected.ndim:
            hint = " One axis too many or too few: did you sum/average over the right axis?"
        _fail(exercise, f"on {label} it returned shape {out.shape}; expected shape {expected.shape} {expected_form}.{hint}")
    if (
        dtype is not None
        and np.dtype(dtype) == np.float32
        and jnp.result_type(float) == jnp.float64
        and (not _close(out, expected) or (args is not None and not _has_float32(args)))
    ):
        _fail(
            exercise,
            f"on {label} it returned float32 values while the notebook runs in float64 (its inputs are float64): "
            + FLOAT32_REMEDY,
        )
    if not np.all(np.isfinite(out)):
        _fail(exercise, f"on {label} it returned NaN or infinite values.{' ' + non_finite_hint if non_finite_hint else ''}")
    return out


def value_gradient_hessian_parts(size: int) -> list[tuple[str, slice]]:
    """Names and slices of a flat `[value, gradient (n), Hessian (n·n)]` vector, as made by `_with_derivatives`."""
    n = int(round((-1 + np.sqrt(1 + 4 * (size - 1))) / 2))
    if 1 + n + n * n != size:
        return [("value and derivatives", slice(0, size))]
    return [("value", slice(0, 1)), ("gradient", slice(1, 1 + n)), ("Hessian", slice(1 + n, size))]


def value_gradient_parts(size: int) -> list[tuple[str, slice]]:
    """Names and slices of a flat `[value, gradient]` vector."""
    return [("value", slice(0, 1)), ("gradient", slice(1, size))]


def _wrong_parts(got: np.ndarray, expected: np.ndarray, parts) -> str:
    """' its value matches, but its gradient differs' style phrase naming the wrong part(s), or ''."""
    if parts is None:
        return ""
    named = parts(expected.size)
    flat_got, flat_exp = got.ravel(), expected.ravel()
    right = [name for name, sl in named if _close(flat_got[sl], flat_exp[sl])]
    wrong = [name for name, sl in named if not _close(flat_got[sl], flat_exp[sl])]
    if not wrong or len(named) == 1:
        return ""
    if right:
        return f"its {' and '.join(right)} {'is' if len(right) == 1 else 'are'} right but its {' and '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} wrong"
    return f"its {' and '.join(wrong)} are all wrong"


def _diagnose(results: Sequence[tuple[str, tuple, np.ndarray]], mistakes: Sequence[tuple[Callable, str]]) -> str:
    """The hint of the known mistake that explains the wrong results best ('' when none does).

    `results` holds `(label, args, student_output)` of every case where the student's output is wrong.
    A mistake explains a case when it reproduces the student's output there; the hint chosen is the one that
    explains every wrong case, else the one that explains most of them (so a mistake that only shows on a
    later case is still recognised).
    """
    best, best_labels = "", []
    for mistake, hint in mistakes:
        labels = []
        for label, args, got in results:
            try:
                if _close(got, np.asarray(mistake(*args), dtype=np.float64)):
                    labels.append(label)
            except Exception:  # noqa: BLE001 — a diagnosis that cannot run is simply skipped
                continue
        if len(labels) == len(results):
            return hint
        if len(labels) > len(best_labels):
            best, best_labels = hint, labels
    if not best:
        return ""
    # Explains only some wrong inputs: say which, so the hint is not read as a diagnosis of the input printed
    # first (e.g. (1 − γ)·V equals r^π on a one-state MDP only).
    where = (
        " and ".join(best_labels)
        if len(best_labels) <= 2
        else f"{len(best_labels)} of the {len(results)} wrong inputs (first: {best_labels[0]})"
    )
    return f"On {where} it matches a known mistake: {best}"


def _proportional(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    """The last resort before "differs": name a result that is the reference times a factor on every wrong input.

    `pairs` are (student output, reference) of the wrong inputs. '' unless every output is c × its reference
    (c ≠ 1, the reference not zero); the message says whether c is one constant or changes with the input.
    """
    factors = []
    for got, expected in pairs:
        scale = float(np.vdot(expected, expected))
        if scale == 0.0:
            return ""
        factor = float(np.vdot(got, expected)) / scale
        if abs(factor) < 1e-9 or abs(factor - 1.0) < 1e-3 or not _close(got, factor * expected):
            return ""  # a zero result, or not a multiple: other diagnoses, or "differs"
        factors.append(factor)
    if np.allclose(factors, factors[0], rtol=1e-6):
        return (f"It is {factors[0]:.4g} times the right answer on every wrong input: one constant factor is off (a ½ "
                "or 2, a sign, a γ, a 1/N); the rest is right.")
    shown = ", ".join(f"{c:.3g}" for c in factors[:3])
    return (f"It is the right answer times a factor that changes with the input ({shown}): a factor that depends on "
            "the input (γ, T, N, a normalisation) is off; the rest is right.")


def _asymmetric(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    """A last resort before "differs": name a square result that is not symmetric where every reference is (a Hessian,
    or a sum of products that must appear in both orders). '' otherwise."""
    for got, expected in pairs:
        square = got.ndim == 2 and got.shape[0] == got.shape[1] and got.shape[0] > 1
        if square and _close(expected, expected.T) and np.all(np.isfinite(got)) and not _close(got, got.T):
            return (f"It is not symmetric (largest |M − Mᵀ| {float(np.max(np.abs(got - got.T))):.3g}) where the right "
                    "answer is: a Hessian is symmetric, so a product of two different factors (two steps' scores, two "
                    "derivatives) appears in both orders.")
    return ""


def _static_indices(args: Sequence) -> tuple[int, ...]:
    """Arguments jit must keep static: functions, strings, Python ints and bools."""
    return tuple(
        i for i, a in enumerate(args) if callable(a) or isinstance(a, (str, bool, int)) and not isinstance(a, float)
    )


def _stack(trees: Sequence, in_axes: Sequence) -> tuple:
    out = []
    for i, axis in enumerate(in_axes):
        if axis is None:
            out.append(trees[0][i])
        else:
            out.append(jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[t[i] for t in trees]))
    return tuple(out)


def _shape_signature(args: Sequence, in_axes: Sequence):
    sig = []
    for a, axis in zip(args, in_axes):
        if axis is None:
            sig.append(("static", id(a) if callable(a) else repr(np.asarray(a).tolist()) if np.ndim(a) == 0 else id(a)))
        else:
            leaves, tree = jax.tree_util.tree_flatten(a)
            sig.append((tree, tuple(np.shape(x) for x in leaves)))
    return tuple(sig)


def _check_transforms(
    exercise: str,
    student_fn: Callable,
    reference_fn: Callable,
    cases: Sequence[tuple[str, tuple]],
    *,
    jit: bool = True,
    vmap_in_axes: Sequence | None = None,
    expected_form: str = "",
) -> None:
    """Run the student's function under `jax.jit` (first case) and `jax.vmap` (a batch of cases).

    Code that is right eagerly can still break under a transformation that a later cell applies (NumPy
    conversions, `float()`, Python `if` on array values, in-place style updates): the failure says
    which transformation and on which input. `vmap_in_axes` gives, per argument, 0 (batched) or None
    (shared); the batch stacks every case whose batched arguments have the shapes of the first case
    (the first case twice if no other fits).
    """
    if jit:
        label, args = cases[0]
        static = _static_indices(args)
        expected = np.asarray(reference_fn(*args), dtype=np.float64)
        got = _call_transformed(exercise, jax.jit(student_fn, static_argnums=static), args, f"{label} under jax.jit")
        got = _as_result(exercise, got, expected, f"{label} under jax.jit", expected_form, args)
        if not _close(got, expected):
            _fail(exercise, f"it is right when called directly but wrong under jax.jit on {label}: avoid Python side effects and NumPy inside.")
    if vmap_in_axes is not None:
        first = _shape_signature(cases[0][1], vmap_in_axes)
        batch = [c for c in cases if _shape_signature(c[1], vmap_in_axes) == first]
        if len(batch) < 2:
            batch = [cases[0], cases[0]]
        stacked = _stack([args for _, args in batch], vmap_in_axes)
        label = f"a batch of {len(batch)} inputs under jax.vmap"
        static = _static_indices(stacked)
        in_axes = tuple(axis for i, axis in enumerate(vmap_in_axes) if i not in static)

        def dynamic_only(*dyn):
            it = iter(dyn)
            full = [stacked[i] if i in static else next(it) for i in range(len(stacked))]
            return student_fn(*full)

        dyn_args = tuple(a for i, a in enumerate(stacked) if i not in static)
        # Compiled, as later cells use it (jit of vmap); op-by-op vmap of linear solves would also be slow.
        got = _call_transformed(exercise, jax.jit(jax.vmap(dynamic_only, in_axes=in_axes)), dyn_args, label)
        expected = np.stack([np.asarray(reference_fn(*args), dtype=np.float64) for _, args in batch])
        got = _as_result(
            exercise, got, expected, label, f"(the batch axis first, then {expected_form or 'the usual result'})", dyn_args
        )
        if not _close(got, expected):
            _fail(
                exercise,
                f"it is right on single inputs but wrong on {label}: do not use .shape[0] for the batch, "
                "NumPy conversions or Python control flow on array values.",
            )


def _call_transformed(exercise: str, fn: Callable, args: Sequence, label: str):
    try:
        return _run(_forbidding(exercise, fn), args)
    except NotImplementedError:
        _fail(exercise, "not implemented yet: replace the `raise NotImplementedError(...)` line with your code, run that cell, then run this check again.")
    except ExerciseCheckFailed:
        raise
    except Exception as err:  # noqa: BLE001
        _refused(exercise, err)
        kind = type(err).__name__
        if "Tracer" in kind or "Concretization" in kind:
            _fail(
                exercise,
                f"it fails on {label} because JAX cannot trace it ({kind}): use jnp instead of NumPy, and "
                "jnp.where / lax.cond instead of Python `if`, float() or int() on array values.",
            )
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if len(detail) > 140:
            detail = detail[:137] + "..."
        _fail(exercise, f"it fails on {label} with {kind}{': ' + detail if detail else ''}.")


def _compare(
    exercise: str,
    student_fn: Callable,
    reference_fn: Callable,
    cases: Sequence[tuple[str, tuple]],
    *,
    expected_form: str,
    mistakes: Sequence[tuple[Callable, str]] = (),
    parts: Callable[[int], list[tuple[str, slice]]] | None = None,
    jit: bool = False,
    vmap_in_axes: Sequence | None = None,
    non_finite_hints: dict[str, str] | None = None,
) -> None:
    """Compare `student_fn(*args)` with `reference_fn(*args)` on every `(label, args)` case.

    Type, shape, dtype and NaN problems fail at once, naming the input. Wrong values are collected over
    ALL cases; the message names the first wrong input, how many inputs are wrong, the wrong part when
    `parts` names the parts of the output (e.g. `value_gradient_hessian_parts`: "its value is right
    but its Hessian is wrong"), and the known mistake (`mistakes`: `(function, hint)` pairs) that
    reproduces the wrong outputs on most cases. Then, when asked, the function is run under `jax.jit`
    and `jax.vmap` (`_check_transforms`). `non_finite_hints` maps a case's label to the likely cause of a NaN or
    infinite result there (e.g. a singular matrix on a one-state MDP).
    """
    wrong, pairs = [], []
    first = ""
    for label, args in cases:
        expected = np.asarray(reference_fn(*args), dtype=np.float64)
        got = _as_result(
            exercise, _call(exercise, student_fn, args, label), expected, label, expected_form, args,
            (non_finite_hints or {}).get(label, ""),
        )
        if not _close(got, expected):
            wrong.append((label, args, got))
            pairs.append((got, expected))
            if not first:
                error = float(np.max(np.abs(got - expected)))
                part = _wrong_parts(got, expected, parts) or "the result differs from the reference"
                first = f"on {label}: {part} (largest absolute error {error:.3g})"
    if wrong:
        message = f"wrong on {len(wrong)} of {len(cases)} inputs; first {first}." if len(cases) > 1 else f"{first}."
        hint = _diagnose(wrong, mistakes) or _proportional(pairs) or _asymmetric(pairs)
        _fail(exercise, message + (" " + hint if hint else ""))
    if jit or vmap_in_axes is not None:
        _check_transforms(
            exercise, student_fn, reference_fn, cases, jit=jit, vmap_in_axes=vmap_in_axes, expected_form=expected_form
        )


def _float(x) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.result_type(float))




def _with_derivatives(fn: Callable, argnum: int = 0, static: tuple[int, ...] = (), hessian: bool = True) -> Callable:
    """[value, gradient, Hessian (flattened)] of `fn` in its argument `argnum` (a `[T]` vector), jitted.

    Jitted because differentiating a `lax.scan` twice op by op is slow; `static` lists arguments that
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


def _with_third_derivative(fn: Callable, argnum: int = 0) -> Callable:
    """[value, gradient, Hessian, third derivative (each flattened)] of `fn` in its `[T]` argument `argnum`.

    For exercises whose contract is *every* order of derivative (DiCE, step-wise IS at μ = sg(π)): a form that is
    right up to the Hessian but not beyond (a magic box expanded to second order) fails here. Jitted.
    """

    @jax.jit
    def all_orders(*args):
        def f(x):
            return fn(*args[:argnum], x, *args[argnum + 1 :])

        x = args[argnum]
        third = jax.jacfwd(jax.hessian(f))(x)
        return jnp.concatenate([jnp.reshape(f(x), (1,)), jax.grad(f)(x), jax.hessian(f)(x).ravel(), third.ravel()])

    return all_orders


def value_to_third_parts(size: int) -> list[tuple[str, slice]]:
    """Names and slices of a flat `[value, gradient (n), Hessian (n²), third derivative (n³)]` vector."""
    n = next((k for k in range(1, 64) if 1 + k + k**2 + k**3 == size), None)
    if n is None:
        return [("value and derivatives", slice(0, size))]
    return [("value", slice(0, 1)), ("gradient", slice(1, 1 + n)), ("Hessian", slice(1 + n, 1 + n + n * n)),
            ("third derivative", slice(1 + n + n * n, size))]


def _refuse_float32(exercise: str, student_fn: Callable, args: Sequence, label: str) -> None:
    """Fail, naming the dtype, when the student's raw output is float32 while the notebook runs in float64.

    Derivative wrappers (`_with_derivatives`) concatenate with float64 inputs and would hide a float32 result whose
    error happens to sit inside the tolerance; precision is part of these exercises' contract.
    """
    if jnp.result_type(float) != jnp.float64:
        return
    got = _call(exercise, student_fn, args, label)
    leaves = jax.tree_util.tree_leaves(got)
    if any(getattr(leaf, "dtype", None) == np.float32 for leaf in leaves):
        _fail(
            exercise,
            f"on {label} it returned float32 values while the notebook runs in float64: " + FLOAT32_REMEDY,
        )


def _refuse_float32_precision(exercise, student, reference, cases, rtol: float = 1e-7):
    """Fail naming float32 when the student's result is off by float32 rounding only (a step cast to float32 inside a
    float64 result: `_refuse_float32` sees only the output's dtype). Within `rtol` of the reference it passes."""
    if jnp.result_type(float) != jnp.float64:
        return
    label, args = cases[0]
    got = np.asarray(_call(exercise, student, args, label), dtype=np.float64)
    expected = np.asarray(reference(*args), dtype=np.float64)
    if got.shape != expected.shape or np.allclose(got, expected, rtol=rtol, atol=rtol * 1e-2):
        return
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    if np.all(np.isfinite(got)) and float(np.max(np.abs(got - expected))) < 1e-5 * scale:
        _fail(exercise, f"on {label} it is right only to about 7 digits, the precision of float32: {FLOAT32_REMEDY}")


def _refuse_non_finite(exercise: str, student_fn: Callable, args: Sequence, label: str, hint: str) -> None:
    """Fail with `hint` when the student's output on a valid but extreme input (`args`) is NaN or infinite."""
    got = _call(exercise, student_fn, args, label)
    try:
        finite = bool(np.all(np.isfinite(np.asarray(got, dtype=np.float64))))
    except (TypeError, ValueError):
        return  # not numeric: _compare names the type problem
    if not finite:
        _fail(exercise, f"on {label} it returns NaN or infinite values. {hint}")
