"""The course machinery: building student notebooks, checking they are up to date, grading, and the
structure every notebook must have."""

from __future__ import annotations

import ast
import csv
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from metagrad import cli
from metagrad.course import build, checks, grade

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, COURSE = ROOT / "solutions", ROOT / "course"
NOTEBOOKS = sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))
# Part I (this file's structure rules); later parts have their own checks module and tests.
PART_ONE = [p for p in NOTEBOOKS if p.name[:2] <= "04"]


def _code(source):
    return nbformat.v4.new_code_cell(source)


def test_strip_solutions_keeps_signature_and_indentation():
    source = (
        "def f(x):\n"
        '    """Doc."""\n'
        "    ### BEGIN SOLUTION\n"
        "    y = x + 1\n"
        "    return y\n"
        "    ### END SOLUTION\n"
        "\n"
        "def g(z):\n"
        "    ### BEGIN SOLUTION\n"
        "    return z\n"
        "    ### END SOLUTION"
    )
    out, regions = build.strip_solutions(source)
    assert regions == 2
    assert "y = x + 1" not in out and "BEGIN SOLUTION" not in out
    assert '    raise NotImplementedError("Exercise: implement `f`")' in out
    assert '    raise NotImplementedError("Exercise: implement `g`")' in out
    namespace = {}
    exec(compile(out, "stub", "exec"), namespace)  # noqa: S102 — the stub must be valid Python
    with pytest.raises(NotImplementedError, match="implement `f`"):
        namespace["f"](1)


@pytest.mark.parametrize(
    "source,problem",
    [
        ("### BEGIN SOLUTION\nx = 1\n", "without a matching"),
        ("x = 1\n### END SOLUTION\n", "without a matching"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "nested"),
    ],
)
def test_unmatched_markers_are_errors(source, problem):
    with pytest.raises(build.BuildError, match=problem):
        build.strip_solutions(source, where="nb, cell 3")


def test_student_notebook_clears_outputs_from_the_first_exercise_on():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _code("print(1)"),
        nbformat.v4.new_markdown_cell("text"),
        _code("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"),
        _code("print(f())"),
    ]
    nb.cells[3].metadata["tags"] = []
    tagged = _code("print(0)")
    tagged.metadata["tags"] = ["clear-output"]
    nb.cells.insert(1, tagged)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.execution_count = i + 1
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
            cell.metadata["execution"] = {"iopub.execute_input": "2024-01-01T00:00:00Z"}
    student = build.student_notebook(nb)
    outputs = [len(c.outputs) if c.cell_type == "code" else None for c in student.cells]
    assert outputs == [1, 0, None, 0, 0]  # kept before the exercise, cleared when tagged and after it
    assert all(c.execution_count is None for c in student.cells if c.cell_type == "code")
    assert all("execution" not in c.metadata for c in student.cells)
    assert nb.cells[3].outputs, "the solution notebook itself must not be modified"


def test_build_is_deterministic_and_course_is_up_to_date(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    build.build(SOLUTIONS, first)
    build.build(SOLUTIONS, second)
    names = sorted(p.name for p in first.glob("*.ipynb"))
    assert names == [p.name for p in NOTEBOOKS]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert build.build(SOLUTIONS, first) == []  # nothing rewritten the second time
    assert build.stale(SOLUTIONS, COURSE) == [], "run `metagrad course build` and commit course/"


def test_course_check_names_stale_and_extra_files(tmp_path, capsys):
    course = tmp_path / "course"
    build.build(SOLUTIONS, course)
    assert cli.main(["course", "check", "--solutions", str(SOLUTIONS), "--course", str(course)]) == 0
    target = course / NOTEBOOKS[0].name
    target.write_bytes(target.read_bytes().replace(b"Learning objectives", b"Objectives"))
    (course / "99_extra.ipynb").write_text("{}")
    (course / NOTEBOOKS[1].name).unlink()
    capsys.readouterr()
    assert cli.main(["course", "check", "--solutions", str(SOLUTIONS), "--course", str(course)]) == 1
    err = capsys.readouterr().err
    assert f"{target} differs" in err
    assert "99_extra.ipynb has no solution notebook" in err
    assert f"{NOTEBOOKS[1].name} is missing" in err
    assert cli.main(["course", "build", "--solutions", str(SOLUTIONS), "--course", str(course)]) == 0
    assert build.stale(SOLUTIONS, course) == []
    assert not (course / "99_extra.ipynb").exists()


@pytest.mark.parametrize("path", PART_ONE, ids=[p.stem for p in PART_ONE])
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in ("Learning objectives", "Summary", "References", "Pause and think", "<details>"):
        assert heading in markdown, f"{path.name} lacks {heading!r}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert 'jax.config.update("jax_enable_x64", True)' in code[0].source
    exercises = build.exercise_names(nb)
    assert 2 <= len(exercises) <= 4
    # Each exercise cell is followed by the cell that checks it, marked for nbval and nbgrader.
    for i, cell in enumerate(code):
        if build.BEGIN in cell.source:
            name = build.exercise_names(nbformat.v4.new_notebook(cells=[cell]))[0]
            after = code[i + 1]
            assert f"checks.check_{name}({name})" in after.source
            assert "nbval-check-output" in after.metadata.get("tags", [])
            assert cell.metadata["nbgrader"]["solution"] and after.metadata["nbgrader"]["grade"]
    assert grade.expected_checks(nb) == exercises
    # Every figure has a title and axis labels; numbers that matter are compared by nbval.
    for cell in code:
        if "plt.subplots" in cell.source:
            assert "set_title" in cell.source and "set_xlabel" in cell.source and "set_ylabel" in cell.source
        if "print(" in cell.source and "assert" in cell.source:
            assert "nbval-check-output" in cell.metadata.get("tags", [])
    # Solutions are stored with outputs, no errors.
    for cell in code:
        assert cell.execution_count is not None, f"{path.name} is stored unexecuted"
        assert all(o.output_type != "error" for o in cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_course_notebook_is_valid_python_without_solutions(path):
    student = nbformat.read(COURSE / path.name, as_version=4)
    first_exercise = next(i for i, c in enumerate(student.cells) if "NotImplementedError(\"Exercise" in c.source)
    for i, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        assert "BEGIN SOLUTION" not in cell.source and "END SOLUTION" not in cell.source
        ast.parse(cell.source)
        assert cell.execution_count is None
        if i >= first_exercise:
            assert cell.outputs == []


def test_every_registered_check_is_used_in_exactly_one_notebook():
    used = [name for path in NOTEBOOKS for name in grade.expected_checks(nbformat.read(path, as_version=4))]
    assert len(used) == len(set(used))
    present = {path.name[:2] for path in NOTEBOOKS}  # checks may be registered before their notebook exists
    assert sorted(used) == sorted(n for n in grade.course_exercises() if checks.CHECKS[n] in present)


def test_grade_reports_passed_failed_and_absent_checks(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        _code("import jax\nfrom metagrad.course import checks"),
        _code("def hvp(f, x, v):\n    return jax.jvp(jax.grad(f), (x,), (v,))[1]"),
        _code("checks.check_hvp(hvp)"),
        _code("def magic_box(x):\n    raise NotImplementedError('Exercise')"),
        _code("checks.check_magic_box(magic_box)"),
        _code("print('after a failed check the notebook goes on')"),
    ]
    submission = tmp_path / "alice" / "00_jax.ipynb"
    submission.parent.mkdir()
    nbformat.write(nb, submission)
    out = tmp_path / "grades.csv"
    assert cli.main(["course", "grade", str(submission), "--out", str(out), "--cell-timeout", "120"]) == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    row = rows[0]
    assert row["hvp"] == "1" and row["magic_box"] == "0" and row["policy_evaluation"] == ""
    assert row["total"] == "1" and row["possible"] == "2" and row["status"] == "ok"
    assert list(row) == ["file", "status", *grade.course_exercises(), "total", "possible"]


def test_course_readme_explains_grading():
    text = (COURSE / "README.md").read_text()
    for needle in ("metagrad course build", "metagrad course check", "metagrad course grade", "nbgrader"):
        assert needle in text


def test_copying_solutions_elsewhere_builds_the_same_course(tmp_path):
    # The build depends only on the notebook bytes, not on paths or time.
    copy = tmp_path / "solutions"
    shutil.copytree(SOLUTIONS, copy, ignore=shutil.ignore_patterns("conftest.py", "__pycache__"))
    assert build.expected_outputs(copy) == build.expected_outputs(SOLUTIONS)


# ---------------------------------------------------------------------------------------------------
# binder/
# binder/: the files repo2docker reads. Building a real Binder image (or a fresh virtual environment
# from binder/requirements.txt) downloads ~1 GB and takes minutes, so CI does not do it here; it is
# covered by CI itself, which installs exactly `pip install -e ".[test]" -c binder/requirements.txt` into
# a fresh virtual environment and runs every solution notebook under nbval. These tests check the rest:
# the runtime, that postBuild installs the package without touching the pins, and that start sets CPU
# defaults and then runs the command it is given.

BINDER = ROOT / "binder"


def test_runtime_is_python_311():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


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


def test_binder_pins_cover_the_course():
    pins = {line.split("==")[0].lower() for line in (BINDER / "requirements.txt").read_text().splitlines() if "==" in line}
    for package in ("jax", "jaxlib", "jupyterlab", "ipykernel", "matplotlib", "nbclient", "nbformat", "nbval"):
        assert package in pins, f"binder/requirements.txt must pin {package}"
