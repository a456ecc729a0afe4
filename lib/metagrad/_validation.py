"""Input checks shared by the library.

Checks on shapes and ranks are static and always run. Checks on *values* (finite rewards, probabilities
summing to one, indices in range) can only run on concrete arrays: inside `jax.jit` or `jax.vmap` the
values are tracers, so those checks are skipped there and the caller is expected to have validated the
data where it entered the program (JAX would otherwise clamp an out-of-range index silently).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np


def is_concrete(*xs) -> bool:
    """True when no argument (or pytree leaf) is a JAX tracer, so its values can be inspected."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(xs))


def check_rank(name: str, x, rank: int, form: str) -> None:
    """Raise `ValueError` unless `x` has exactly `rank` dimensions."""
    if np.ndim(x) != rank:
        raise ValueError(f"`{name}` must have shape {form} (rank {rank}); got shape {tuple(np.shape(x))}.")


def check_shape(name: str, x, shape: tuple, form: str) -> None:
    """Raise `ValueError` unless `x` has exactly `shape`."""
    if tuple(np.shape(x)) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {form} = {tuple(shape)}; got {tuple(np.shape(x))}.")


def check_finite(name: str, x) -> None:
    """Raise `ValueError` if a concrete `x` holds NaN or infinite values (no-op under tracing)."""
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"`{name}` must be finite; it contains NaN or infinite values.")


def check_index_range(name: str, x, size: int, what: str) -> None:
    """Raise `ValueError` if a concrete integer array `x` has entries outside `[0, size)`.

    JAX clamps out-of-range gather indices without an error, so indices that come from users are
    checked here, where they enter the library.
    """
    if not np.issubdtype(np.asarray(x).dtype if is_concrete(x) else x.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer {what} indices; got dtype {x.dtype}.")
    if is_concrete(x):
        arr = np.asarray(x)
        if arr.size and (arr.min() < 0 or arr.max() >= size):
            raise ValueError(
                f"`{name}` must hold {what} indices in [0, {size}); got values in [{arr.min()}, {arr.max()}]."
            )


def check_discount(name: str, gamma) -> None:
    """Raise `ValueError` unless a concrete discount lies in [0, 1)."""
    if is_concrete(gamma):
        g = np.asarray(gamma)
        if not np.all(np.isfinite(g)) or np.any(g < 0) or np.any(g >= 1):
            raise ValueError(f"`{name}` must be a discount in [0, 1); got {g if g.size < 6 else g.ravel()[:6]}.")


# ------------------------------------------------------------------------------------------ command line
class OptionError(ValueError):
    """A bad command-line option. `metagrad.cli.main` prints `metagrad COMMAND: error: MESSAGE` on one
    line and exits with status 2 (argparse's convention), before any computation or file is made."""


def check_out_dir(option: str, path: str) -> None:
    """Raise `OptionError` unless `path` is a writable folder or can be created as one.

    Writability is probed by creating (and at once removing) a temporary file in `path` or in its nearest
    existing parent, which also catches read-only file systems and root-owned places. Nothing is left behind.
    """
    import tempfile

    if not path:
        raise OptionError(f"{option} must name a folder; got an empty string.")
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OptionError(f"{option} must be a folder; {path} is a file.")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OptionError(f"{option} {path} cannot be created: {existing} is a file.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        if existing == path:
            raise OptionError(f"{option} folder {path} is not writable ({reason}).") from None
        raise OptionError(f"{option} {path} cannot be created: {existing} is not writable ({reason}).") from None


def check_seed(option: str, seed, largest: int, why: str) -> None:
    """Raise `OptionError` unless `seed` is an integer in [0, `largest`] (`why`: what breaks above)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= largest:
        raise OptionError(f"{option} must be an integer in [0, {largest}] ({why}); got {seed!r}.")


def check_choices(option: str, values, valid, *, what: str = "value") -> None:
    """Raise `OptionError` for an empty list, an unknown entry or a repeated entry."""
    values = list(values)
    if not values:
        raise OptionError(f"{option} needs at least one {what}; valid: {', '.join(valid)}.")
    for value in values:
        if value not in valid:
            raise OptionError(f"unknown {what} {value!r} in {option}; valid: {', '.join(valid)}.")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise OptionError(f"{option} lists {', '.join(map(repr, repeated))} more than once.")


def physical_memory_bytes() -> int | None:
    """The machine's physical memory, or `None` where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(options: str, estimate_bytes: float, available: int | None = None) -> None:
    """Raise `OptionError` when a run needs at least `estimate_bytes` and the machine has less.

    `estimate_bytes` is a lower bound (the largest arrays the run must hold at once), so a refused run
    could not have fitted; an accepted one may still need more.
    """
    available = physical_memory_bytes() if available is None else available
    if available is not None and estimate_bytes > available:
        raise OptionError(
            f"{options} need at least {_gib(estimate_bytes)} of memory (estimate of the largest arrays held at "
            f"once); this machine has {_gib(available)}: use smaller sizes."
        )


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_device(option: str, device: str) -> None:
    """Select the JAX platform for `--device` (`cpu`, `gpu` or `auto`); `OptionError` if absent.

    Run it before JAX starts its backends. If JAX already runs on another platform (backends start once per
    process), that is an error too, and the setting is restored.
    """
    if device == "auto":
        return
    wanted = "gpu" if device == "gpu" else "cpu"
    previous = jax.config.jax_platforms
    try:
        jax.config.update("jax_platforms", "cuda" if wanted == "gpu" else "cpu")
        found = jax.devices()[0].platform
    except RuntimeError as err:
        jax.config.update("jax_platforms", previous)
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OptionError(f"{option} {device} is not available here ({first_line}).") from None
    if found != wanted:
        jax.config.update("jax_platforms", previous)
        raise OptionError(f"{option} {device} is not available here (JAX runs on {found}).")


def write_json_atomic(path: str, data) -> None:
    """Write `data` as JSON to `path` via a temporary file and `os.replace`: a complete file or none.

    `allow_nan=False`: a NaN or infinity raises `ValueError` before anything is written (JSON has no NaN,
    and a NaN in a results file is a wrong number). The file gets the permissions of any new file of the user
    (0666 less the umask), not the 0600 of the temporary file it is renamed from.
    """
    import tempfile

    text = json.dumps(data, indent=1, allow_nan=False)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's file-mode creation mask (read from `/proc` where it can be, else set and restored)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask
