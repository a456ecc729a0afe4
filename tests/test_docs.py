"""The API reference site (mkdocs.yml, docs/api/) and the docstring examples, run as doctests."""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"


def _public_modules() -> list[str]:
    """Every module of the package whose dotted name has no ``_``-prefixed part (``__main__`` aside)."""
    names = ["metagrad"]
    for info in pkgutil.walk_packages([str(LIB / "metagrad")], prefix="metagrad."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def _config() -> dict:
    # mkdocs.yml has no custom YAML tags, so a safe load reads it.
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def _documented() -> dict[str, str]:
    """``::: metagrad.x`` directives of the pages in the nav: module -> page."""
    pages = {}

    def walk(nav):
        for item in nav:
            for value in (item.values() if isinstance(item, dict) else [item]):
                if isinstance(value, list):
                    walk(value)
                elif value.endswith(".md"):  # the course notebooks (solutions/*.ipynb) hold no directive
                    pages[value] = (ROOT / "docs" / value).read_text()

    walk(_config()["nav"])
    return {m: page for page, text in pages.items() for m in re.findall(r"^::: ([\w.]+)\s*$", text, re.M)}


def test_every_public_module_is_on_a_page():
    documented = _documented()
    plugins = {name: conf for p in _config()["plugins"] if isinstance(p, dict) for name, conf in p.items()}
    options = plugins["mkdocstrings"]["handlers"]["python"]["options"]
    assert options["show_submodules"] is True  # a documented package shows all its modules
    missing = [m for m in _public_modules()
               if not any(m == d or m.startswith(d + ".") for d in documented if d != "metagrad")]
    assert missing == ["metagrad"], f"modules on no page of docs/api: {missing[1:]}"  # the package: index.md


def test_readme_has_the_one_command_that_builds_the_site():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[docs]" -c constraints.txt && mkdocs build --strict' in readme


def test_docstring_examples_run_as_doctests_in_default_precision():
    # A fresh process in JAX's default float32 (the tests' conftest switches float64 on), as a reader runs them.
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--doctest-modules", "lib/metagrad", "--ignore=lib/metagrad/__main__.py",
         "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts=", "--rootdir", str(ROOT)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:]
    passed = int(re.search(r"(\d+) passed", out.stdout).group(1))
    with_examples = {p for p in (LIB / "metagrad").rglob("*.py") if ">>> " in p.read_text()}
    assert passed >= len(with_examples), out.stdout[-2000:]


@pytest.mark.skipif(not __import__("importlib").util.find_spec("mkdocs"), reason="the docs extra is not installed")
def test_site_builds_strict(tmp_path):
    # --strict: any warning (a module that does not load, a broken docstring section) fails the build.
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    page = (tmp_path / "site" / "api" / "estimators.html").read_text()  # use_directory_urls: false
    assert 'id="metagrad.estimators.trajectory_objective"' in page
    assert "1.9, 0.9" in page  # the example as corrected (it printed 1.9, 1.0)
    envs = (tmp_path / "site" / "api" / "envs.html").read_text()
    assert 'id="metagrad.envs.vector.TaskVectorEnv"' in envs  # a submodule, through show_submodules
    notebook = (tmp_path / "site" / "solutions" / "04_off_policy_evaluation.html").read_text()
    assert "jp-MarkdownOutput" in notebook and "jp-OutputArea" in notebook  # rendered with its outputs


def test_every_course_notebook_is_in_the_nav():
    nav = yaml.safe_dump(_config()["nav"])
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")):
        assert f"solutions/{path.name}" in nav, f"{path.name} is not a page of the site"
