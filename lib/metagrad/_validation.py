"""Input checks shared by the library.

Checks on shapes and ranks are static and always run. Checks on *values* (finite rewards, probabilities
summing to one, indices in range) can only run on concrete arrays: inside `jax.jit` or `jax.vmap` the
values are tracers, so those checks are skipped there and the caller is expected to have validated the
data where it entered the program (JAX would otherwise clamp an out-of-range index silently).
"""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(*xs) -> bool:
    """True when no argument (or pytree leaf) is a JAX tracer, so its values can be inspected."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(xs))


def check_rank(name: str, x, rank: int, form: str) -> None:
    """Raise ``ValueError`` unless ``x`` has exactly ``rank`` dimensions."""
    if np.ndim(x) != rank:
        raise ValueError(f"`{name}` must have shape {form} (rank {rank}); got shape {tuple(np.shape(x))}.")


def check_shape(name: str, x, shape: tuple, form: str) -> None:
    """Raise ``ValueError`` unless ``x`` has exactly ``shape``."""
    if tuple(np.shape(x)) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {form} = {tuple(shape)}; got {tuple(np.shape(x))}.")


def check_finite(name: str, x) -> None:
    """Raise ``ValueError`` if a concrete ``x`` holds NaN or infinite values (no-op under tracing)."""
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"`{name}` must be finite; it contains NaN or infinite values.")


def check_index_range(name: str, x, size: int, what: str) -> None:
    """Raise ``ValueError`` if a concrete integer array ``x`` has entries outside ``[0, size)``.

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
    """Raise ``ValueError`` unless a concrete discount lies in [0, 1)."""
    if is_concrete(gamma):
        g = np.asarray(gamma)
        if not np.all(np.isfinite(g)) or np.any(g < 0) or np.any(g >= 1):
            raise ValueError(f"`{name}` must be a discount in [0, 1); got {g if g.size < 6 else g.ravel()[:6]}.")
