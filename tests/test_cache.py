"""The persistent compilation cache of ``metagrad/_cache.py``: where it goes, how to turn it off, that it works."""

import os
import subprocess
import sys

import pytest

from metagrad import _cache

HOME = os.path.expanduser("~")


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, os.path.join(HOME, ".cache", "metagrad", "jax")),
        ({"XDG_CACHE_HOME": "/x/cache"}, "/x/cache/metagrad/jax"),
        ({"METAGRAD_CACHE_DIR": "/y/jax", "XDG_CACHE_HOME": "/x"}, "/y/jax"),
        ({"METAGRAD_CACHE_DIR": "off"}, None),
        ({"METAGRAD_CACHE_DIR": "OFF"}, None),
        ({"METAGRAD_CACHE_DIR": "0"}, None),
        ({"METAGRAD_NO_CACHE": "1", "METAGRAD_CACHE_DIR": "/y"}, None),
        ({"METAGRAD_NO_CACHE": "0"}, os.path.join(HOME, ".cache", "metagrad", "jax")),
        ({"JAX_COMPILATION_CACHE_DIR": "/z"}, None),  # the user's own JAX setting is kept
        ({"JAX_COMPILATION_CACHE_DIR": "/z", "METAGRAD_CACHE_DIR": "/y"}, "/y"),
    ],
)
def test_cache_dir_from_environment(environ, expected):
    assert _cache.cache_dir(environ) == expected


_SCRIPT = """
import jax, metagrad, jax.numpy as jnp
jax.config.update("jax_log_compiles", True)  # logs "Persistent compilation cache hit" on stderr
print(metagrad._cache_directory)
print(float(jax.jit(lambda x: jnp.sin(x) * 2)(1.0)))
"""


def _run(environ, script=_SCRIPT, jax_first=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAGRAD_", "JAX_COMPILATION", "TF_CPP"))}
    env.update(environ)
    if not jax_first:
        script = script.replace("import jax, metagrad,", "import metagrad, jax,")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert "Target machine feature" not in out.stderr  # jaxlib's spurious error on CPU cache hits is silenced
    return out.stdout.split(), "Persistent compilation cache hit" in out.stderr


@pytest.mark.parametrize("jax_first", [True, False])
def test_import_metagrad_turns_the_cache_on(tmp_path, jax_first):
    """A fresh process that imports metagrad (after jax, as the notebooks do, or before) uses METAGRAD_CACHE_DIR."""
    directory = tmp_path / "jax"
    first, hit = _run({"METAGRAD_CACHE_DIR": str(directory)}, jax_first=jax_first)
    assert first[0] == str(directory) and not hit
    assert any(directory.iterdir()), "nothing was cached"
    again, hit = _run({"METAGRAD_CACHE_DIR": str(directory)}, jax_first=jax_first)
    assert again == first and hit  # a second process loads the compiled program instead of compiling it


def test_cache_can_be_turned_off(tmp_path):
    out, hit = _run({"METAGRAD_NO_CACHE": "1", "XDG_CACHE_HOME": str(tmp_path)})
    assert out[0] == "None" and not hit
    assert not (tmp_path / "metagrad").exists()


def test_reproduce_gives_the_same_numbers_from_the_cache(tmp_path):
    """`metagrad reproduce` compiled afresh (writing both caches), loaded from its executable cache, from a
    corrupt entry (rebuilt) and with the caches off gives identical numbers."""
    import json

    args = ["-m", "metagrad", "reproduce", "--trials", "2", "--epsilons", "0,0.5", "--num-trajectories", "20",
            "--sweep", "10,20", "--estimators", "is,dr", "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAGRAD_", "JAX_COMPILATION", "TF_CPP"))}
    env["METAGRAD_CACHE_DIR"] = str(tmp_path / "jax")
    executables = tmp_path / "jax" / "executables"
    panels, stamps = [], []
    for run in ("cold", "warm", "corrupt", "off"):
        if run == "corrupt":
            entry = sorted(executables.iterdir())[0]
            entry.write_bytes(entry.read_bytes()[:1000])  # truncated: must be rebuilt, not trusted
        if run == "off":
            env["METAGRAD_NO_CACHE"] = "1"
        out = subprocess.run([sys.executable, *args, "--out", str(tmp_path / run)], env=env, capture_output=True,
                             text=True, check=True)
        assert "Target machine feature" not in out.stderr
        panels.append(json.loads((tmp_path / run / "figure1.json").read_text())["panels"])
        stamps.append({path.name: path.stat().st_mtime_ns for path in executables.iterdir()})
    assert panels[0] == panels[1] == panels[2] == panels[3]
    assert len(stamps[0]) == 2, "the two programs (trial data, panels) are stored by the cold run"
    assert stamps[1] == stamps[0], "the warm run loads them: nothing is recompiled or rewritten"
    # JAX's cache served the rebuilt program (jaxlib cannot re-serialise it): the corrupt entry is removed.
    assert len(stamps[2]) == 1 and set(stamps[2]) < set(stamps[0])
    assert stamps[3] == stamps[2], "the cache is off"


def test_reproduce_programs_are_named_after_the_sources():
    """JAX's compilation cache keys on the program's name: a change to the sources misses both caches alike."""
    from metagrad.experiments import reproduce

    programs = reproduce._programs(reproduce.ReproduceConfig(trials=2, num_trajectories=10, sweep=(10,)))
    version = _cache.source_fingerprint()[:12]
    assert programs.prepare.__name__ == f"reproduce_prepare_{version}"
    assert programs.panels.__name__ == f"reproduce_panels_{version}"


@pytest.fixture
def executable_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(_cache, "DIRECTORY", str(tmp_path))
    return tmp_path / "executables"


def test_executable_cache_stores_loads_and_rebuilds(executable_cache):
    """A stored program is loaded without building; another tag, or a corrupt or foreign entry, is built."""
    import jax
    import jax.numpy as jnp

    x = jnp.arange(6.0)
    builds = []

    def build():
        builds.append(1)
        return jax.jit(lambda v: jnp.cumsum(jnp.sin(v)) * 2).lower(x).compile()

    devices = jax.devices()[:1]
    expected = build()(x)
    first = _cache.executable("test program", devices, build)
    second = _cache.executable("test program", devices, build)
    assert len(builds) == 2, "the second call loads the stored program"
    assert (first(x) == expected).all() and (second(x) == expected).all()
    (entry,) = executable_cache.iterdir()
    assert _cache.has_executable("test program", devices) and not _cache.has_executable("other", devices)
    for corrupt in (b"not a pickle", entry.read_bytes()[:100]):
        entry.write_bytes(corrupt)
        assert (_cache.executable("test program", devices, build)(x) == expected).all()
    assert len(builds) == 4
    _cache.executable("other", devices, build)
    assert len(builds) == 5 and len(list(executable_cache.iterdir())) == 2


def test_executable_cache_skips_what_jax_loaded_from_its_own_cache(executable_cache):
    """jaxlib cannot re-serialise an executable it loaded from its compilation cache: such a build is not stored."""
    import jax
    import jax.monitoring

    def build():
        jax.monitoring.record_event("/jax/compilation_cache/cache_hits")  # what a JAX cache hit records
        return jax.jit(lambda v: v + 1).lower(1.0).compile()

    _, path = _cache._executable_entry("served by jax", jax.devices()[:1])
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as file:
        file.write(b"corrupt")
    assert float(_cache.executable("served by jax", jax.devices()[:1], build)(1.0)) == 2.0
    assert not any(executable_cache.iterdir()), "not stored, and the unusable entry is removed"


def test_executable_cache_is_off_with_the_cache(monkeypatch):
    import jax

    monkeypatch.setattr(_cache, "DIRECTORY", None)
    builds = []
    for _ in range(2):
        _cache.executable("off", jax.devices()[:1], lambda: builds.append(1) or jax.jit(abs).lower(1.0).compile())
    assert len(builds) == 2 and not _cache.has_executable("off", jax.devices()[:1])


def test_executable_cache_is_cpu_only(executable_cache):
    """Programs on other devices go through JAX's compilation cache alone (loading them is untested here)."""
    import types

    import jax

    gpu = types.SimpleNamespace(platform="gpu", device_kind="fake", id=0)
    builds = []
    for _ in range(2):
        _cache.executable("gpu program", [gpu], lambda: builds.append(1) or jax.jit(abs).lower(1.0).compile())
    assert len(builds) == 2 and not executable_cache.exists()
