"""The grading kernel's side of a remote check call, and the plain-data format of the answers.

`metagrad course grade` decides every check in its own process ([`metagrad.course.grade`][metagrad.course.grade]): when a
check calls the student's function, the grader sends the kernel `(function, arguments)` pickled with
cloudpickle (the function is the student's, by name, or a wrapper the check built around it: `jax.jit`,
`jax.grad`, a closure), and `call` returns the output as **plain data** (JSON with arrays in NumPy's
`.npy` format), which the grader reads with `decode` — never with pickle, so nothing the kernel
sends can run code in the grader. Pickles travel only from the grader to the kernel.

Nothing here is secret: a student who patches this module in their kernel only changes the outputs
reported for their own function.
"""

from __future__ import annotations

import base64
import io
import json
import pickle

import numpy as np

MAX_DEPTH = 16
MAX_BYTES = 64 * 2**20  # an answer larger than this is reported as too large, not decoded


def student(name: str):
    """The object the notebook bound to `name` (unpickled in the kernel in place of the grader's proxy)."""
    from IPython import get_ipython

    return get_ipython().user_ns[name]


def probe(name: str) -> str:
    """'callable', 'missing' or 'not callable: <type>' for the student's `name`."""
    from IPython import get_ipython

    namespace = get_ipython().user_ns
    if name not in namespace:
        return "missing"
    return "callable" if callable(namespace[name]) else f"not callable: {type(namespace[name]).__name__}"


def call(payload: str) -> str:
    """Run a pickled `(fn, args)` from the grader; the JSON answer `{"ok": tree}` or `{"error": {...}}`."""
    try:
        fn, args = pickle.loads(base64.b64decode(payload))  # noqa: S301 — sent by the grader, run in the sandbox
        return json.dumps({"ok": encode(fn(*args))})
    except BaseException as err:  # noqa: BLE001 — every failure of student code is an answer
        kind = type(err)
        return json.dumps({"error": {"type": kind.__name__, "builtin": kind.__module__ == "builtins",
                                     "message": str(err)[:2000]}})


def encode(obj, depth: int = 0):
    """A JSON tree for `obj`: numbers, strings, arrays (.npy, base64), tuples, lists, dicts with str keys."""
    if depth > MAX_DEPTH:
        return {"t": "object", "type": type(obj).__name__, "repr": "(nested too deeply)"}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"t": "py", "v": obj if not isinstance(obj, int) or abs(obj) < 2**63 else float(obj)}
    if isinstance(obj, tuple):
        return {"t": "tuple", "v": [encode(x, depth + 1) for x in obj]}
    if isinstance(obj, list):
        return {"t": "list", "v": [encode(x, depth + 1) for x in obj]}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"t": "dict", "v": [[k, encode(v, depth + 1)] for k, v in obj.items()]}
    if hasattr(obj, "__array__") or isinstance(obj, np.generic):
        try:
            array = np.asarray(obj)
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            return {"t": "array", "v": base64.b64encode(buffer.getvalue()).decode("ascii")}
        except Exception:  # noqa: BLE001 — object arrays, exotic dtypes: described, not sent
            pass
    try:
        text = repr(obj)[:200]
    except Exception:  # noqa: BLE001
        text = "?"
    return {"t": "object", "type": type(obj).__name__, "repr": text}


class Opaque:
    """Stands in the grader for an object the kernel could only describe (its type name and repr)."""

    def __init__(self, text: str):
        self._text = text

    def __repr__(self) -> str:
        return self._text


def decode(tree):
    """The value of an `encode` tree, built from plain data only (`np.load(allow_pickle=False)`)."""
    kind = tree["t"]
    if kind == "py":
        value = tree["v"]
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ValueError("bad value")
        return value
    if kind in ("tuple", "list"):
        items = [decode(x) for x in tree["v"]]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {str(k): decode(v) for k, v in tree["v"]}
    if kind == "array":
        return np.load(io.BytesIO(base64.b64decode(tree["v"])), allow_pickle=False)
    if kind == "object":
        name = str(tree.get("type", "object"))
        name = name if name.isidentifier() else "object"
        return type(name, (Opaque,), {})(str(tree.get("repr", ""))[:200])
    raise ValueError(f"unknown kind {kind!r}")
