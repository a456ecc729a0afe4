"""The course machinery: building student notebooks, checking they are up to date, grading, and the
structure every notebook must have."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import tomllib
import re
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


def _nbval_checked(cell) -> bool:
    """nbval compares this cell's output: it carries the cell tag (not a comment students would see)."""
    return "nbval-check-output" in cell.metadata.get("tags", []) and "NBVAL_CHECK_OUTPUT" not in cell.source


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


@pytest.mark.parametrize(
    "line",
    [
        "### BEGIN SOLUTION:",
        "# BEGIN SOLUTION",
        "### begin solution",
        "###BEGIN SOLUTION",
        "### BEGIN_SOLUTION",
        "x = 1  ### END SOLUTION",
        "## END SOLUTION ##",
    ],
)
def test_near_miss_markers_are_errors(line):
    # The old build kept such lines and everything after them: the solution went to course/.
    source = f"def f():\n    ### BEGIN SOLUTION\n    return 42\n    {line}\n"
    with pytest.raises(build.BuildError, match="line 4: .* is not a solution marker"):
        build.strip_solutions(source, where="nb, cell 3")


@pytest.mark.parametrize("cell_type", ["markdown", "raw"])
def test_markers_outside_code_cells_are_errors(cell_type):
    nb = nbformat.v4.new_notebook()
    make = nbformat.v4.new_markdown_cell if cell_type == "markdown" else nbformat.v4.new_raw_cell
    nb.cells = [make("Answer:\n### BEGIN SOLUTION\nThe Hessian is biased.\n### END SOLUTION")]
    with pytest.raises(build.BuildError, match=f"nb, cell 0, line 2: solution marker in a {cell_type} cell"):
        build.student_notebook(nb, name="nb")


def test_build_refuses_its_own_source_folder(tmp_path, capsys):
    solutions = tmp_path / "solutions"
    shutil.copytree(SOLUTIONS, solutions, ignore=shutil.ignore_patterns("conftest.py", "__pycache__"))
    before = {p.name: p.read_bytes() for p in solutions.rglob("*") if p.is_file()}
    for course in (solutions, solutions / "course", tmp_path):
        with pytest.raises(build.BuildError, match="overlap"):
            build.build(solutions, course)
        assert cli.main(["course", "build", "--solutions", str(solutions), "--course", str(course)]) == 1
        assert "overlap" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in solutions.rglob("*") if p.is_file()} == before
    assert not (solutions / "course").exists()


_TRIVIAL = {"else:", "try:", "finally:", "pass", "continue", "break", "return"}


def _leaks(solution_nb, course_text):
    lines = [line for line in build.solution_lines(solution_nb) if re.search("[A-Za-z]", line) and line not in _TRIVIAL]
    return [line for line in lines if line in course_text]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_solution_line_in_any_generated_notebook(path):
    solution = nbformat.read(path, as_version=4)
    assert build.solution_lines(solution), f"{path.name} has no solution regions"
    generated = nbformat.reads(build.expected_outputs(SOLUTIONS)[path.name].decode(), as_version=4)
    committed = nbformat.read(COURSE / path.name, as_version=4)
    for nb in (generated, committed):
        # Sources, outputs and metadata of every cell, and the notebook metadata, as text.
        text = "\n".join(
            [json.dumps(nb.metadata)]
            + [c.source for c in nb.cells]
            + [json.dumps(c.get("outputs", []), ensure_ascii=False) for c in nb.cells]
            + [json.dumps(c.metadata) for c in nb.cells]
        )
        assert _leaks(solution, text) == []


def test_the_leak_test_can_fail():
    nb = nbformat.v4.new_notebook()
    nb.cells = [_code("def f(x):\n    ### BEGIN SOLUTION\n    return jnp.exp(x - sg(x))\n    ### END SOLUTION")]
    assert _leaks(nb, "print('a hint: return jnp.exp(x - sg(x))')") == ["return jnp.exp(x - sg(x))"]


def _pyproject_repository() -> str:
    match = re.search(r'^\[project\.urls\][^\[]*?^Repository\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    assert match, "pyproject.toml must set Repository in [project.urls]"
    return match.group(1)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_course_notebooks_open_in_colab_and_binder_and_install_on_colab(path):
    url = _pyproject_repository()
    owner_repo = url.removeprefix("https://github.com/")
    nb = nbformat.read(COURSE / path.name, as_version=4)
    badges = nb.cells[0]
    assert badges.cell_type == "markdown"
    assert f"https://colab.research.google.com/github/{owner_repo}/blob/main/course/{path.name}" in badges.source
    assert f"https://mybinder.org/v2/gh/{owner_repo}/main?urlpath=lab/tree/course/{path.name}" in badges.source
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert first_code.source == build.install_source(url, version)
    assert f'"install --quiet metagrad@git+{url}@v{version}"' in first_code.source  # the release, not a branch


def test_a_fork_changes_one_setting(tmp_path):
    fork = "https://github.com/alice/metagrad-fork"
    outputs = build.expected_outputs(SOLUTIONS, repository=fork)
    original = _pyproject_repository().removeprefix("https://github.com/")
    for name, data in outputs.items():
        text = data.decode()
        assert "alice/metagrad-fork" in text and original not in text, name
    project = tmp_path / "project"
    shutil.copytree(SOLUTIONS, project / "solutions", ignore=shutil.ignore_patterns("conftest.py", "__pycache__"))
    pyproject = (ROOT / "pyproject.toml").read_text().replace(_pyproject_repository(), fork)
    (project / "pyproject.toml").write_text(pyproject)
    (project / "README.md").write_text(f"# x\n\n{build.README_START}\nold\n{build.README_END}\n\ntext\n")
    assert cli.main(["course", "build", "--solutions", str(project / "solutions"), "--course", str(project / "course")]) == 0
    assert (project / "course" / NOTEBOOKS[0].name).read_bytes() == outputs[NOTEBOOKS[0].name]
    readme = (project / "README.md").read_text()
    assert "mybinder.org/v2/gh/alice/metagrad-fork/main" in readme and "\nold\n" not in readme
    assert readme.endswith(f"{build.README_END}\n\ntext\n")
    with pytest.raises(build.BuildError, match="must look like https://github.com/OWNER/REPO"):
        build.expected_outputs(SOLUTIONS, repository="https://gitlab.com/alice/x")


def test_readme_badges_follow_pyproject():
    text = (ROOT / "README.md").read_text()
    assert build.updated_readme(text, _pyproject_repository(), NOTEBOOKS[0].name) == text, "run `metagrad course build`"
    assert text.index(build.README_START) < text.index("## Quick start")


def test_install_cell_installs_only_where_metagrad_is_missing(monkeypatch):
    url = _pyproject_repository()
    calls = []

    class Shell:
        def run_line_magic(self, name, line):
            calls.append((name, line))

    source = build.install_source(url, "0.1.0")
    exec(compile(source, "install", "exec"), {"get_ipython": Shell})  # noqa: S102 — metagrad is importable here
    assert calls == []
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "metagrad" else real(name, *a))
    exec(compile(source, "install", "exec"), {"get_ipython": Shell})  # noqa: S102 — as on Colab
    assert calls == [("pip", f"install --quiet metagrad@git+{url}@v0.1.0")]
    with pytest.raises(build.BuildError, match="not a release number"):
        build.install_source(url, "main")


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
            assert _nbval_checked(after)
            assert cell.metadata["nbgrader"]["solution"] and after.metadata["nbgrader"]["grade"]
    course = nbformat.read(COURSE / path.name, as_version=4)
    assert grade.course_checks(course) == exercises
    # Every figure has a title and axis labels; numbers that matter are compared by nbval.
    for cell in code:
        if "plt.subplots" in cell.source:
            assert "set_title" in cell.source and "set_xlabel" in cell.source and "set_ylabel" in cell.source
        if "print(" in cell.source and "assert" in cell.source:
            assert _nbval_checked(cell)
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


def _registered_checks() -> dict[str, str]:
    """Exercise -> notebook id of every check the library registers (``checks.CHECKS``)."""
    return {name: checks.CHECKS[name] for name in checks.all_exercises()}


def test_every_registered_check_is_used_in_exactly_one_notebook():
    course = grade.Course(COURSE)
    used = course.columns
    assert len(used) == len(set(used))
    registered = _registered_checks()
    for notebook_id, names in course.checks.items():
        for name in names:
            assert registered.get(name) == notebook_id, f"course/{notebook_id}_* checks {name}, registered for {registered.get(name)}"
    present = set(course.checks)  # checks may be registered before their notebook exists
    assert sorted(used) == sorted(n for n, nb in registered.items() if nb in present)


def test_grade_the_real_course(tmp_path):
    # The released notebook 00 graded with the solutions' exercise cells: every check passes; the course's
    # own notebook (the stubs): none does; `possible` is the course's count either way.
    out = tmp_path / "grades.csv"
    solution = SOLUTIONS / NOTEBOOKS[0].name
    stub = tmp_path / "stub" / NOTEBOOKS[0].name
    stub.parent.mkdir()
    shutil.copy(COURSE / NOTEBOOKS[0].name, stub)
    rows = grade.grade([solution, stub], out, course=COURSE, jobs=2)
    names = grade.course_checks(nbformat.read(COURSE / NOTEBOOKS[0].name, as_version=4))
    assert len(names) >= 2
    assert rows[0]["status"] == "graded" and rows[0]["passed"] == dict.fromkeys(names, True), rows[0]
    assert rows[1]["status"] == "graded" and rows[1]["passed"] == dict.fromkeys(names, False), rows[1]


def test_course_readme_explains_grading():
    text = (COURSE / "README.md").read_text()
    for needle in ("metagrad course build", "metagrad course check", "metagrad course grade", "nbgrader"):
        assert needle in text


def test_copying_solutions_elsewhere_builds_the_same_course(tmp_path):
    # The build depends only on the notebook bytes, not on paths or time.
    copy = tmp_path / "solutions"
    shutil.copytree(SOLUTIONS, copy, ignore=shutil.ignore_patterns("conftest.py", "__pycache__"))
    assert build.expected_outputs(copy) == build.expected_outputs(SOLUTIONS)
