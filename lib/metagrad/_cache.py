"""JAX's persistent compilation cache, on by default for the `metagrad` command and `import metagrad`.

XLA compilation dominates a first run of `metagrad reproduce` or of a notebook on a small machine; with
the cache a second run loads the compiled executables from disk instead. JAX keys every entry by the
program, the JAX/jaxlib versions, the backend, the devices and the XLA flags, so a stale or foreign entry is
never used (it is recompiled instead). For the large programs of a command, `executable` goes one step
further and stores the whole executable under `<cache directory>/executables`, so that a second run skips
tracing and lowering too (JAX needs both to compute its own key).

Where (first match wins):

* `METAGRAD_NO_CACHE=1` (any value but `""`/`0`), or `METAGRAD_CACHE_DIR=off` (or `none`, `0`,
  `false`): no cache;
* `METAGRAD_CACHE_DIR=/some/path`: that directory;
* a cache directory already configured for JAX (`JAX_COMPILATION_CACHE_DIR` or
  `jax.config.jax_compilation_cache_dir`): left as it is;
* otherwise `$XDG_CACHE_HOME/metagrad/jax` (default `~/.cache/metagrad/jax`).

Every program is cached, however small or quick to compile (`jax_persistent_cache_min_compile_time_secs`
= 0 and `jax_persistent_cache_min_entry_size_bytes` = -1): the course and `reproduce` compile many
programs of well under a second each, which JAX's default threshold of 1 s would skip. The directory is not
size-limited; delete it to reclaim the space.

While the cache is on, XLA's C++ log is limited to fatal messages unless `TF_CPP_MIN_LOG_LEVEL` is set:
jaxlib 0.9 logs a spurious error ("Target machine feature +prefer-no-gather is not supported on the host
machine") on every CPU cache hit, because it takes LLVM tuning preferences for CPU features
(jax-ml/jax#38445, openxla/xla#44565); the cached programs load and run correctly (the tests compare
numbers with and without the cache).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import sys
import threading

_OFF = ("off", "none", "0", "false", "no", "")


def cache_dir(environ=None) -> str | None:
    """The directory the cache should use under `environ` (default `os.environ`), or `None` for no cache.

    `None` is also returned when JAX already has a cache directory configured by the user (it is kept).
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
    """Point JAX's persistent compilation cache at `cache_dir`; returns the directory (`None`: off).

    Cheap and idempotent. Before `jax` is imported it only sets JAX's environment variables (read at
    import), so `import metagrad` stays free of a JAX import; afterwards it updates `jax.config`.
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
    backend that starts later; a `jax.monitoring` listener re-applies it before each cache lookup.
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


_LOCAL = threading.local()  # hits: JAX compilation-cache hits in this thread since `executable` began a build
_COUNTING = False


def _count_cache_hits() -> None:
    """Count JAX's compilation-cache hits per thread (a `jax.monitoring` listener, registered once)."""
    global _COUNTING
    import jax.monitoring

    if not _COUNTING:

        def listener(event, **_):
            if event == "/jax/compilation_cache/cache_hits":
                _LOCAL.hits = getattr(_LOCAL, "hits", 0) + 1

        jax.monitoring.register_event_listener(listener)
        _COUNTING = True


@functools.lru_cache(maxsize=None)
def source_fingerprint() -> str:
    """sha256 of the metagrad package's Python sources: the code every traced program is made of."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as file:
                    digest.update(hashlib.sha256(file.read()).digest())
    return digest.hexdigest()


def _executable_entry(tag: str, devices) -> tuple[str, str]:
    """`(key, path)` of `tag`'s entry in the executable cache (see `executable`)."""
    import jax
    import jaxlib

    key = repr((tag, source_fingerprint(), jax.__version__, jaxlib.__version__, sorted(jax.config.values.items()),
                os.environ.get("XLA_FLAGS", ""), [(d.platform, d.device_kind, d.id) for d in devices]))
    return key, os.path.join(DIRECTORY, "executables", hashlib.sha256(key.encode()).hexdigest() + ".pkl")


def has_executable(tag: str, devices) -> bool:
    """Whether the executable cache has an entry for `tag` on `devices` (see `executable`)."""
    return DIRECTORY is not None and os.path.exists(_executable_entry(tag, devices)[1])


def executable(tag: str, devices, build):
    """A compiled program (`jax.stages.Compiled`), from the executable cache when it holds `tag`'s.

    JAX's compilation cache skips XLA compilation on a second run, but not tracing the Python function and
    lowering it to StableHLO, which JAX needs to compute its key: for `metagrad reproduce` those take
    longer than the warm run's execution. This cache stores the whole executable
    (`jax.experimental.serialize_executable`) under `<cache directory>/executables`, keyed by `tag`,
    a fingerprint of metagrad's sources, the JAX and jaxlib versions, every `jax.config` value, `XLA_FLAGS`
    and `devices`; on a hit nothing is traced or compiled. `tag` must name the program and every option it
    is traced with (e.g. the command and its whole configuration). `build()` traces and compiles it on a miss;
    `devices` are the devices it runs on, in its mesh order. Off when the cache is off (`cache_dir`)
    and for programs on other devices than CPUs; an unreadable entry is never trusted: it is rebuilt. Entries
    are pickles of native code, like JAX's own cache entries: the directory must be as trusted as the code.

    Only an executable that XLA compiled in this process is stored: jaxlib cannot re-serialise one it loaded
    from JAX's compilation cache (the copy lacks the program's functions), so a build that JAX's cache served
    is used for this run only. Name the jitted function after `source_fingerprint` (JAX's key includes
    the name), so that JAX's cache misses whenever this one does after a change to the sources.
    """
    import jax

    if DIRECTORY is None or any(d.platform != "cpu" for d in devices):
        return build()  # CPU only: loading executables on an accelerator is untested here (JAX's cache serves it)
    _count_cache_hits()
    key, path = _executable_entry(tag, devices)
    from jax.experimental import serialize_executable

    try:
        with open(path, "rb") as file:
            stored_key, payload, in_tree, out_tree = pickle.load(file)
        if stored_key == key:
            if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3":
                _quiet_xla_log()  # the spurious CPU-feature message of a cache hit (see the module docstring)
            # jaxlib registers its LAPACK kernels (the exact oracles' linear solves) when it first lowers a
            # linear-algebra operation; a loaded executable that calls them before that crashes the process.
            jax.jit(jax.numpy.linalg.solve).lower(jax.ShapeDtypeStruct((2, 2), "float32"),
                                                  jax.ShapeDtypeStruct((2,), "float32"))
            return serialize_executable.deserialize_and_load(payload, in_tree, out_tree,
                                                             execution_devices=list(devices))
    except Exception:  # noqa: BLE001 - missing, truncated, foreign or stale: rebuilt below
        pass
    _LOCAL.hits = 0
    compiled = build()
    if _LOCAL.hits:  # jaxlib cannot re-serialise an executable it loaded from its own cache (the copy lacks
        try:  # the program's functions): only a fresh compilation is stored; an unusable entry is removed
            os.remove(path)
        except OSError:
            pass
        return compiled
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "wb") as file:
            pickle.dump((key, *serialize_executable.serialize(compiled)), file)
        os.replace(temporary, path)  # atomic: a concurrent run reads the old entry or the new one
    except Exception:  # noqa: BLE001 - a cache is an optimisation: not storing only means compiling next time
        try:
            os.remove(temporary)
        except (OSError, NameError):
            pass
    return compiled


#: The cache directory in use since ``import metagrad`` (``None``: off); see :func:`install`.
DIRECTORY = install()
