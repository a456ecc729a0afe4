"""JAX's persistent compilation cache, on by default for the ``metagrad`` command and ``import metagrad``.

XLA compilation dominates a first run of ``metagrad reproduce`` or of a notebook on a small machine; with
the cache a second run loads the compiled executables from disk instead. JAX keys every entry by the
program, the JAX/jaxlib versions, the backend, the devices and the XLA flags, so a stale or foreign entry is
never used (it is recompiled instead).

Where (first match wins):

* ``METAGRAD_NO_CACHE=1`` (any value but ``""``/``0``), or ``METAGRAD_CACHE_DIR=off`` (or ``none``, ``0``,
  ``false``): no cache;
* ``METAGRAD_CACHE_DIR=/some/path``: that directory;
* a cache directory already configured for JAX (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.jax_compilation_cache_dir``): left as it is;
* otherwise ``$XDG_CACHE_HOME/metagrad/jax`` (default ``~/.cache/metagrad/jax``).

Every program is cached, however small or quick to compile (``jax_persistent_cache_min_compile_time_secs``
= 0 and ``jax_persistent_cache_min_entry_size_bytes`` = -1): the course and ``reproduce`` compile many
programs of well under a second each, which JAX's default threshold of 1 s would skip. The directory is not
size-limited; delete it to reclaim the space.

While the cache is on, XLA's C++ log is limited to fatal messages unless ``TF_CPP_MIN_LOG_LEVEL`` is set:
jaxlib 0.9 logs a spurious error ("Target machine feature +prefer-no-gather is not supported on the host
machine") on every CPU cache hit, because it takes LLVM tuning preferences for CPU features
(jax-ml/jax#38445, openxla/xla#44565); the cached programs load and run correctly (the tests compare
numbers with and without the cache).
"""

from __future__ import annotations

import os
import sys

_OFF = ("off", "none", "0", "false", "no", "")


def cache_dir(environ=None) -> str | None:
    """The directory the cache should use under ``environ`` (default ``os.environ``), or ``None`` for no cache.

    ``None`` is also returned when JAX already has a cache directory configured by the user (it is kept).
    """
    environ = os.environ if environ is None else environ
    if environ.get("METAGRAD_NO_CACHE", "").strip() not in ("", "0"):
        return None
    chosen = environ.get("METAGRAD_CACHE_DIR")
    if chosen is not None:
        return None if chosen.strip().lower() in _OFF else os.path.abspath(os.path.expanduser(chosen))
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "metagrad", "jax")


def install(environ=None) -> str | None:
    """Point JAX's persistent compilation cache at :func:`cache_dir`; returns the directory (``None``: off).

    Cheap and idempotent. Before ``jax`` is imported it only sets JAX's environment variables (read at
    import), so ``import metagrad`` stays free of a JAX import; afterwards it updates ``jax.config``.
    Never raises: a cache is an optimisation, and an unusable directory only means recompiling.
    """
    path = cache_dir(environ)
    if path is None:
        return None
    settings = {
        "jax_compilation_cache_dir": path,
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": -1,
    }
    try:
        os.makedirs(path, exist_ok=True)
        # The user's own C++ log level is kept ("1" is what `import jax` sets when there is none).
        level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
        quiet = level is None or (level == "1" and "jax" in sys.modules)
        if "jax" in sys.modules:
            import jax

            if jax.config.jax_compilation_cache_dir and jax.config.jax_compilation_cache_dir != path:
                return jax.config.jax_compilation_cache_dir  # configured by the user in this process: kept
            for name, value in settings.items():
                jax.config.update(name, value)
            if quiet:
                _quiet_xla_log()
        else:
            if quiet:
                os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # read when jaxlib loads
            os.environ["JAX_COMPILATION_CACHE_DIR"] = path
            for name, value in list(settings.items())[1:]:
                os.environ.setdefault(name.upper(), str(value))  # a user's own threshold is kept
    except (OSError, AttributeError, ValueError, ImportError):
        return None
    return path


_LISTENING = False


def _quiet_xla_log() -> None:
    """XLA's C++ log at fatal messages only, now and before every cached compilation (after jax is imported).

    jaxlib resets the C++ log level when its backend starts, so setting it once here would not survive a
    backend that starts later; a ``jax.monitoring`` listener re-applies it before each cache lookup.
    """
    global _LISTENING
    import jax.monitoring
    from jax._src.lib import utils as jaxlib_utils  # what jax.config's ``jax_logging_level`` calls

    jaxlib_utils.absl_set_min_log_level(3)
    if not _LISTENING:

        def listener(event, **_):
            if event == "/jax/compilation_cache/compile_requests_use_cache":
                jaxlib_utils.absl_set_min_log_level(3)

        jax.monitoring.register_event_listener(listener)
        _LISTENING = True


#: The cache directory in use since ``import metagrad`` (``None``: off); see :func:`install`.
DIRECTORY = install()
