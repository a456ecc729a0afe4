"""The install paths: supported Pythons, CI's matrix, the pins, and Binder (repo2docker) without Docker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CANDIDATE_PYTHONS = [f"3.{minor}" for minor in range(6, 20)]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements/constraints file, by normalised name."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not an exact pin"
            pins[_norm(name)] = version.strip()
    return pins


CONSTRAINTS = _pins(ROOT / "constraints.txt")
BINDER_PINS = _pins(BINDER / "requirements.txt")


def _lowest(specifier: str) -> str:
    """The lowest Python `3.x` a `Requires-Python` specifier admits."""
    spec = SpecifierSet(specifier or "")
    return next(v for v in CANDIDATE_PYTHONS if Version(v) in spec)


def _runtime_closure(marker_env: dict[str, str] | None = None) -> dict[str, Requirement]:
    """metagrad's runtime dependencies (no extras) and theirs, as installed here: name -> requirement."""
    env = {"extra": "", **(marker_env or {})}
    closure: dict[str, Requirement] = {}
    stack = [Requirement(r) for r in PYPROJECT["dependencies"]]
    while stack:
        req = stack.pop()
        if _norm(req.name) in closure or (req.marker and not req.marker.evaluate(env)):
            continue
        closure[_norm(req.name)] = req
        stack.extend(Requirement(r) for r in metadata.requires(req.name) or [])
    return closure


# ---------------------------------------------------------------------------------------------------
# Supported Pythons


def test_requires_python_is_the_floor_of_the_pinned_dependencies():
    # Every package metagrad needs at run time, at its pinned version, states the Pythons it supports;
    # `requires-python` must be exactly their intersection's floor (">=3.10" failed: jax needs 3.11).
    floors = {}
    for name in _runtime_closure():
        assert metadata.version(name) == CONSTRAINTS[name], f"{name} is not installed at its pinned version"
        floors[name] = _lowest(metadata.metadata(name).get("Requires-Python"))
    needed = max(floors.values(), key=Version)
    assert _lowest(PYPROJECT["requires-python"]) == needed, (
        f"requires-python is {PYPROJECT['requires-python']!r}, but the pins need >= {needed}: "
        f"{sorted(n for n, f in floors.items() if f == needed)}"
    )


def _classified_pythons() -> list[str]:
    prefix = "Programming Language :: Python :: "
    return sorted((c[len(prefix):] for c in PYPROJECT["classifiers"] if re.fullmatch(r"3\.\d+", c[len(prefix):])),
                  key=Version)


def test_classifiers_span_requires_python():
    pythons = _classified_pythons()
    assert pythons[0] == _lowest(PYPROJECT["requires-python"])
    assert all(Version(v) in SpecifierSet(PYPROJECT["requires-python"]) for v in pythons)


def test_readme_states_the_supported_pythons():
    readme = (ROOT / "README.md").read_text()
    lowest, highest = _classified_pythons()[0], _classified_pythons()[-1]
    assert f"needs Python ≥ {lowest}; CI tests {lowest} and {highest}" in readme


# ---------------------------------------------------------------------------------------------------
# CI (.ci/run)


def _readme_test_command() -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    return lines[lines.index("<!-- test-command -->") + 2]


def test_ci_runs_the_readme_command_on_the_lowest_and_highest_supported_python():
    # CI_DRY_RUN=1 makes .ci/run find each interpreter and print what it would run, without running it.
    assert "CI_DRY_RUN" in (ROOT / ".ci" / "run").read_text(), ".ci/run has no dry run (running it would run CI)"
    out = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env={**os.environ, "CI_DRY_RUN": "1"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pythons = _classified_pythons()
    runs = re.findall(r"^CI: Python (3\.\d+) \((.+?)\): running the README's test command: (.+)$", out.stdout, re.M)
    assert [v for v, _, _ in runs] == [pythons[0], pythons[-1]], out.stdout
    versions = re.findall(r"^Python (3\.\d+)\.\d+$", out.stdout, re.M)
    assert versions == [pythons[0], pythons[-1]], "python3 is not the interpreter of the version CI names"
    for v, _, command in runs:
        assert command == _readme_test_command().replace(".venv", f".venv-ci-{v}")
    assert "-c constraints.txt" in _readme_test_command()


def test_readme_commands_use_the_constraints_file():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv .*pip install .*$", readme, re.M)
    assert len(commands) >= 3
    assert all(" -c constraints.txt " in c for c in commands), commands


def test_constraints_pin_every_dependency_of_every_extra():
    # Installed here from constraints.txt: every runtime, test, course and docs requirement is pinned.
    for extra in PYPROJECT["optional-dependencies"].values():
        for req in map(Requirement, extra):
            if _norm(req.name) == "metagrad":  # an extra that includes another one
                continue
            assert _norm(req.name) in CONSTRAINTS, f"constraints.txt must pin {req.name}"
            assert CONSTRAINTS[_norm(req.name)] in req.specifier, f"the pin of {req.name} violates {req}"
    for name, req in _runtime_closure().items():
        assert name in CONSTRAINTS and CONSTRAINTS[name] in req.specifier, f"constraints.txt must pin {req}"


# ---------------------------------------------------------------------------------------------------
# Binder: repo2docker's own buildpack detection and Dockerfile, and its base environment's lock file.
# Without Docker nothing is built: this checks which buildpack repo2docker picks for this repository,
# the Dockerfile it would build (which files it installs, into which environment, with which Python), and
# that our pins, added to the exact environment of repo2docker's base image (its conda lock file), leave
# every requirement satisfied, as `pip check` would in the built image.

@pytest.fixture(scope="module")
def buildpack():
    repo2docker = pytest.importorskip("repo2docker.app", reason="the test extra installs jupyter-repo2docker")
    app = repo2docker.Repo2Docker()
    cwd = os.getcwd()
    os.chdir(ROOT)  # repo2docker detects from the working directory, as its build does
    try:
        picked = next(bp for bp in (BP(base_image=app.base_image) for BP in app.buildpacks) if bp.detect())
        picked.platform = "linux/amd64"
        dockerfile = picked.render({"NB_USER": "jovyan", "NB_UID": "1000"})
        # Build-script sources are relative to repo2docker's buildpacks folder.
        folder = Path(sys.modules["repo2docker.buildpacks"].__file__).parent
        files = {str(folder / src): dest for src, dest in picked.get_build_script_files().items()}
        python = picked.python_version
    finally:
        os.chdir(cwd)
    return picked, dockerfile, files, python


def _base_environment(files: dict[str, str]) -> dict[str, str]:
    """Python packages of repo2docker's base environment (its conda lock file): normalised name -> version."""
    lock = Path(next(src for src, dest in files.items() if dest == "/tmp/env/environment.lock"))
    packages = {}
    for url in lock.read_text().split():
        if not url.startswith("https://"):
            continue
        stem = re.sub(r"\.(conda|tar\.bz2)$", "", url.split("#")[0].rsplit("/", 1)[1])
        name, version, build = stem.rsplit("-", 2)
        if not build.startswith("py"):  # a C library or a metapackage, not a Python distribution
            continue
        for alias in {name, re.sub(r"-(core|base|python)$", "", name), re.sub(r"^python-", "", name)}:
            packages[_norm(alias)] = version
    return packages


def test_repo2docker_picks_the_python_buildpack_on_the_lowest_supported_python(buildpack):
    picked, dockerfile, _, python = buildpack
    assert type(picked).__name__ == "PythonBuildPack"
    assert python == _lowest(PYPROJECT["requires-python"]) == (BINDER / "runtime.txt").read_text().strip()[len("python-"):]
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in dockerfile
    assert "RUN ./binder/postBuild" in dockerfile
    assert 'ENV R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in dockerfile


def test_binder_pins_leave_the_base_images_server_packages_alone(buildpack):
    _, dockerfile, files, _ = buildpack
    # Python >= 3.7: repo2docker installs binder/requirements.txt into the notebook server's own environment.
    assert "ENV KERNEL_PYTHON_PREFIX=${NB_PYTHON_PREFIX}" in dockerfile
    base = _base_environment(files)
    assert {"notebook", "jupyterlab", "jupyter-server", "ipykernel"} <= set(base)
    clashes = {name: (version, base[name]) for name, version in BINDER_PINS.items() if name in base}
    assert not clashes, f"binder/requirements.txt would replace base-image packages (ours, theirs): {clashes}"


def test_binder_environment_satisfies_every_requirement(buildpack):
    # `pip check` of the built image, offline: each pinned package's requirements (its metadata, installed
    # here at the pinned version; markers for Binder's Python on Linux) hold in pins + base environment.
    _, _, files, python = buildpack
    environment = {**_base_environment(files), **BINDER_PINS}
    marker_env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
    unmet = []
    requirements = [Requirement(r) for r in PYPROJECT["dependencies"]]  # postBuild: pip install --no-deps -e .
    for name, version in BINDER_PINS.items():
        assert metadata.version(name) == version, f"{name} is not installed at its pinned version"
        requirements += [Requirement(r) for r in metadata.requires(name) or []]
    for req in requirements:
        if req.marker and not req.marker.evaluate(marker_env):
            continue
        have = environment.get(_norm(req.name))
        try:
            ok = have is not None and req.specifier.contains(Version(have), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            unmet.append(f"{req} (have {have})")
    assert not unmet, f"unmet in Binder's environment: {unmet}"


def test_binder_pins_are_the_kernels_pins_at_ci_versions():
    # The kernel's packages only (metagrad's run-time closure), at the versions CI tests; no test-only
    # packages (pytest, nbval, coverage...) and no server packages.
    kernel = set(_runtime_closure())
    assert set(BINDER_PINS) <= kernel, f"not needed by the kernel: {sorted(set(BINDER_PINS) - kernel)}"
    for name in ("jax", "jaxlib", "numpy", "optax", "gymnasium", "matplotlib"):
        assert name in BINDER_PINS
    for name, version in BINDER_PINS.items():
        assert CONSTRAINTS.get(name) == version, f"{name}: binder {version}, constraints.txt {CONSTRAINTS.get(name)}"
    for test_only in ("pytest", "pytest-xdist", "nbval", "coverage", "hypothesis", "jupyterlab", "notebook"):
        assert test_only not in BINDER_PINS


def test_post_build_installs_the_package_without_dependencies():
    text = (BINDER / "postBuild").read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -e" in text
    assert "pip install --no-deps -e ." in text
    assert os.access(BINDER / "postBuild", os.X_OK)
    subprocess.run(["bash", "-n", str(BINDER / "postBuild")], check=True)


def test_start_sets_cpu_defaults_and_execs_its_arguments():
    assert os.access(BINDER / "start", os.X_OK)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    out = subprocess.run(
        [str(BINDER / "start"), "bash", "-c", 'echo "$JAX_PLATFORMS|$XLA_PYTHON_CLIENT_PREALLOCATE|$$"'],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out.split("|")[:2] == ["cpu", "false"]
    # An explicit choice by the user wins over the default.
    env["JAX_PLATFORMS"] = "cuda"
    out = subprocess.run([str(BINDER / "start"), "printenv", "JAX_PLATFORMS"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cuda"
