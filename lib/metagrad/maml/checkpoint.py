"""Checkpoints of [`metagrad.maml.train`][metagrad.maml.loop.train]: one atomic `.npz` per run folder (state, history and the config as
JSON metadata), its loader (which refuses anything it did not write), and the folder lock that keeps two runs
from writing the same `checkpoint_dir`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.maml.config import MAMLConfig

try:
    import fcntl
except ImportError:  # Windows: checkpoint folders are not locked
    fcntl = None

CHECKPOINT = "checkpoint.npz"


def write_checkpoint(directory: str, config: MAMLConfig, state, history: dict, iteration: int) -> None:
    """state + history as one `.npz` (metadata JSON inside), written to a temp file then `os.replace`-d."""
    os.makedirs(directory, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"state_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays.update({f"history_{k}": np.asarray(v) for k, v in history.items()})
    metadata = {"config": config.to_json(), "iteration": iteration, "num_leaves": len(leaves)}
    arrays["metadata"] = np.asarray(json.dumps(metadata, allow_nan=False))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, CHECKPOINT))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(metadata, f, indent=1, allow_nan=False)
    os.replace(tmp, os.path.join(directory, "checkpoint.json"))


def load_checkpoint(directory: str, template_state) -> tuple[Any, dict, int, dict]:
    """`(state, history, iteration, metadata)` of `directory/checkpoint.npz` (leaves into `template_state`).

    A file that is not a checkpoint written by [`train`][metagrad.maml.loop.train] (truncated, corrupt, another program's) raises a
    `ValueError` of one sentence naming the file.
    """
    path = os.path.join(directory, CHECKPOINT)
    treedef = jax.tree_util.tree_structure(template_state)
    template = jax.tree_util.tree_leaves(template_state)
    try:
        with np.load(path, allow_pickle=False) as data:
            metadata = json.loads(str(data["metadata"]))
            iteration, num_leaves = int(metadata["iteration"]), int(metadata["num_leaves"])
            if not isinstance(metadata["config"], dict):
                raise TypeError("config is not a mapping")
            if num_leaves == len(template):
                leaves = [jnp.asarray(data[f"state_{i}"], dtype=t.dtype) for i, t in enumerate(template)]
            history = {k[len("history_"):]: np.asarray(data[k]) for k in data.files if k.startswith("history_")}
    except FileNotFoundError:
        raise
    except Exception as err:  # zipfile.BadZipFile, EOFError, KeyError, JSON errors, ...: all mean "not ours"
        raise ValueError(
            f"{path} is not a readable metagrad MAML checkpoint (corrupt, truncated or written by another "
            f"program: {type(err).__name__}: {err})."
        ) from None
    if num_leaves != len(template):
        raise ValueError(f"The checkpoint in {directory} does not match this config's parameter structure.")
    return jax.tree_util.tree_unflatten(treedef, leaves), history, iteration, metadata


_LOCK = "checkpoint.lock"


@contextlib.contextmanager
def checkpoint_lock(directory: str):
    """Hold an exclusive lock on `directory` for one run, so two runs never write one `checkpoint_dir`.

    `fcntl.flock` on `directory/checkpoint.lock`: the operating system releases it when the process ends,
    also on a crash or `kill -9`, so a stale lock never blocks a later run; the file is removed on a normal
    exit. A second run raises `RuntimeError` at once. (Where `fcntl` is missing, i.e. on Windows, no lock
    is taken.)
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"`checkpoint_dir` must be a folder; {directory!r} is a file.")
    os.makedirs(directory, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = os.path.join(directory, _LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"Another run is writing checkpoints to {directory} (it holds {path}); give each run its own "
                "checkpoint_dir."
            ) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:  # else the previous holder removed the file between our open and flock: lock the new one
            break
        os.close(fd)
    try:
        yield
    finally:
        os.unlink(path)
        os.close(fd)


def key_data(key) -> np.ndarray:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key)
