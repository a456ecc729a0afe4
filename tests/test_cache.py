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
    """`metagrad reproduce` compiled afresh (writing the cache) and loaded from it gives identical numbers."""
    import json

    args = ["-m", "metagrad", "reproduce", "--trials", "2", "--epsilons", "0,0.5", "--num-trajectories", "20",
            "--sweep", "10,20", "--estimators", "is,dr", "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAGRAD_", "JAX_COMPILATION", "TF_CPP"))}
    env["METAGRAD_CACHE_DIR"] = str(tmp_path / "jax")
    panels = []
    for run in ("cold", "warm"):
        out = subprocess.run([sys.executable, *args, "--out", str(tmp_path / run)], env=env, capture_output=True,
                             text=True, check=True)
        assert "Target machine feature" not in out.stderr
        panels.append(json.loads((tmp_path / run / "figure1.json").read_text())["panels"])
    assert panels[0] == panels[1]
