"""`metagrad course grade` as an attacker, a careless student and an instructor would use it.

A tiny course (two exercises checked by the library's real `check_magic_box` and `check_hvp`, plus one
notebook without JAX for the time limits) is built with `metagrad course build` in a temporary folder;
each submission below is one of the ways the previous grader was fooled or lost grades. One batch runs
them all with `--jobs 2` (a kernel start costs seconds, so they share one call).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from metagrad import cli
from metagrad.course import build, grade

C = nbformat.v4.new_code_cell
GOOD_MAGIC_BOX = "def magic_box(x):\n    return jnp.exp(x - jax.lax.stop_gradient(x))"
GOOD_HVP = "def hvp(f, x, v):\n    return jax.jvp(jax.grad(f), (x,), (v,))[1]"


def _solutions(folder: Path) -> Path:
    folder.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Tiny course"),
        C("import jax\nimport jax.numpy as jnp\n\nfrom metagrad.course import checks"),
        C("def magic_box(x):\n    ### BEGIN SOLUTION\n    return jnp.exp(x - jax.lax.stop_gradient(x))\n    ### END SOLUTION"),
        C("checks.check_magic_box(magic_box)"),
        C("def hvp(f, x, v):\n    ### BEGIN SOLUTION\n    return jax.jvp(jax.grad(f), (x,), (v,))[1]\n    ### END SOLUTION"),
        C("checks.check_hvp(hvp)"),
    ]
    for i, cell in enumerate(nb.cells):
        cell.id = f"tiny-{i}"
    nbformat.write(nb, folder / "00_tiny.ipynb")
    plain = nbformat.v4.new_notebook()
    plain.metadata["kernelspec"] = nb.metadata["kernelspec"]
    plain.cells = [
        C("import time"),
        C("def wait(seconds):\n    ### BEGIN SOLUTION\n    time.sleep(seconds)\n    ### END SOLUTION"),
        C("wait(0.1)"),
    ]
    for i, cell in enumerate(plain.cells):
        cell.id = f"plain-{i}"
    nbformat.write(plain, folder / "01_plain.ipynb")
    return folder


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    build.build(_solutions(root / "solutions"), root / "course", repository="https://github.com/someone/fork")
    return root / "course"


def _submission(course: Path, folder: Path, name: str, *, replace=None, drop=(), extra=(), notebook="00_tiny.ipynb"):
    """The course notebook with exercise cells replaced (by function name), cells dropped, cells appended."""
    nb = nbformat.read(course / notebook, as_version=4)
    for cell in nb.cells:
        names = cell.metadata.get("metagrad", {}).get("exercise", [])
        if replace and names and names[0] in replace:
            cell.source = replace[names[0]]
    nb.cells = [c for c in nb.cells if not any(key in c.get("metadata", {}).get("metagrad", {}) for key in drop)]
    nb.cells.extend(C(source) for source in extra)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _read(out: Path) -> dict[str, dict]:
    with out.open(newline="", encoding="utf-8") as handle:
        return {Path(row["file"]).parent.name: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def batch(course, tmp_path_factory):
    """Grade every submission below in one call; returns (rows by student, CSV snapshots after each row)."""
    root = tmp_path_factory.mktemp("submissions")
    name = "00_tiny.ipynb"
    good = {"magic_box": GOOD_MAGIC_BOX, "hvp": GOOD_HVP}
    paths = [
        _submission(course, root / "honest", name, replace=good),
        _submission(course, root / "stub", name),
        # The old grader read checks.results() from the student's kernel: full marks for a stub.
        _submission(course, root / "results_update", name, replace={
            "magic_box": "checks._RESULTS.update({'magic_box': True, 'hvp': True})\n"
                         "checks._RESULTS.__setitem__ = lambda *a: None"}),
        # Replace the checks by no-ops (and print what a passing check prints) before they run.
        _submission(course, root / "noop_checks", name, replace={
            "magic_box": "import metagrad.course.checks as c\n"
                         "c.check_magic_box = c.check_hvp = lambda f: print('✓ Exercise passed')\n"
                         "checks.check_magic_box = checks.check_hvp = c.check_hvp"}),
        # Print what the grader looks for, as well as one can guess it.
        _submission(course, root / "fake_marker", name, replace={
            "magic_box": "print('metagrad-grade passed magic_box')\nprint('✓ Exercise `magic_box` passed')",
            "hvp": "def hvp(f, x, v):\n    print('metagrad-grade 0 5 hvp passed')\n    raise SystemExit"}),
        # Delete the check cells: the old grader then scored only what was left.
        _submission(course, root / "deleted_checks", name, replace={"magic_box": GOOD_MAGIC_BOX}, drop=("check",)),
        # The exercise cells deleted and both functions written in one new cell: found by their `def`.
        _submission(course, root / "moved", name, drop=("check", "exercise"), extra=[GOOD_MAGIC_BOX + "\n\n" + GOOD_HVP]),
        # A helper defined in a cell of the student's own: only exercise cells are graded, so it is missing.
        _submission(course, root / "outside", name, replace={"magic_box": "def magic_box(x):\n    return helper(x)"},
                    extra=["def helper(x):\n    return jnp.exp(x - jax.lax.stop_gradient(x))"]),
        # An empty notebook: the old grader reported 0/0 "ok".
        root / "empty" / name,
        # The kernel exits in the middle: the check before counts, the one after does not.
        _submission(course, root / "exit", name, replace={"magic_box": GOOD_MAGIC_BOX, "hvp": "import os\nos._exit(3)"}),
        # Past the memory limit.
        _submission(course, root / "memory", name, replace={"magic_box": GOOD_MAGIC_BOX,
                                                           "hvp": GOOD_HVP + "\nhog = bytearray(64 * 2**30)"}),
        # Not a notebook, a missing file, a notebook of no course notebook.
        root / "garbage" / name,
        root / "missing" / name,
        root / "unknown" / "notes.ipynb",
    ]
    (root / "empty").mkdir()
    nbformat.write(nbformat.v4.new_notebook(), root / "empty" / name)
    (root / "garbage").mkdir()
    (root / "garbage" / name).write_text("this is not JSON")
    (root / "unknown").mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[C(GOOD_HVP)]), root / "unknown" / "notes.ipynb")
    out = root / "grades.csv"
    snapshots = []

    def on_row(row):
        snapshots.append(out.read_text(encoding="utf-8"))

    rows = grade.grade(paths, out, course=course, jobs=2, cell_timeout=120, notebook_timeout=600,
                       memory_mb=3072, on_row=on_row)
    assert [row["file"] for row in rows] == [str(p) for p in paths]
    return _read(out), snapshots, root


def _scores(row):
    return row["magic_box"], row["hvp"], row["total"], row["possible"]


def test_honest_and_stub(batch):
    rows, _, _ = batch
    assert _scores(rows["honest"]) == ("1", "1", "2", "2") and rows["honest"]["status"] == "ok"
    assert _scores(rows["stub"]) == ("0", "0", "0", "2") and rows["stub"]["status"] == "ok"


@pytest.mark.parametrize("student", ["results_update", "noop_checks", "fake_marker"])
def test_a_submission_cannot_write_its_own_score(batch, student):
    rows, _, _ = batch
    assert _scores(rows[student]) == ("0", "0", "0", "2")


def test_tampering_is_flagged_for_review(batch):
    rows, _, _ = batch
    assert "cell 4 (magic_box) review: " in rows["results_update"]["notes"]
    for flag in ("uses checks", "modifies checks._RESULTS.__setitem__"):
        assert flag in rows["results_update"]["notes"]
    assert "modifies c.check_magic_box" in rows["noop_checks"]["notes"]
    assert "review" not in rows["honest"]["notes"]


def test_deleted_or_moved_check_and_exercise_cells_change_nothing(batch):
    rows, _, _ = batch
    assert _scores(rows["deleted_checks"]) == ("1", "0", "1", "2")
    assert _scores(rows["moved"]) == ("1", "1", "2", "2")
    # Code outside the exercise cells is not run.
    assert _scores(rows["outside"]) == ("0", "0", "0", "2")
    assert _scores(rows["empty"]) == ("0", "0", "0", "2") and rows["empty"]["status"] == "ok"
    assert "cell 4 (magic_box): no such exercise cell in the submission" in rows["empty"]["notes"]


def test_a_dead_kernel_or_the_memory_limit_costs_only_what_comes_after(batch):
    rows, _, _ = batch
    assert _scores(rows["exit"]) == ("1", "0", "1", "2")
    assert rows["exit"]["status"] == "kernel died (cell 6, exit code 3)"
    assert _scores(rows["memory"]) == ("1", "1", "2", "2")  # MemoryError is raised; the kernel lives on
    assert rows["memory"]["status"] == "memory (cell 6, limit 3072 MB)"


def test_bad_files_get_a_row_and_never_lose_the_others(batch):
    rows, snapshots, _ = batch
    assert rows["garbage"]["status"] == "not a notebook" and _scores(rows["garbage"]) == ("0", "0", "0", "2")
    assert rows["missing"]["status"] == "not found"
    assert rows["unknown"]["status"] == "unknown notebook" and rows["unknown"]["possible"] == ""
    assert len(rows) == 14


def test_the_csv_is_rewritten_atomically_after_every_row(batch):
    _, snapshots, root = batch
    assert [len(s.strip().splitlines()) - 1 for s in snapshots] == list(range(1, 15))
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_an_uninterruptible_loop_is_killed_at_the_cell_and_the_notebook_timeout(course, tmp_path):
    # A loop that swallows the interrupt: the old grader hung forever.
    loop = _submission(course, tmp_path / "loop", "01_plain.ipynb", notebook="01_plain.ipynb", replace={
        "wait": "def wait(seconds):\n    while True:\n        try:\n            time.sleep(0.05)\n"
                "        except:  # noqa: E722\n            pass"})
    out = tmp_path / "grades.csv"
    row = grade.grade([loop], out, course=course, cell_timeout=3, notebook_timeout=100)[0]
    assert row["notebook"] == "01" and row["status"] == "timeout (cell 4 over 3 s)", row
    assert _read(out)["loop"]["possible"] == "0" and _read(out)["loop"]["magic_box"] == ""
    row = grade.grade([loop], out, course=course, cell_timeout=100, notebook_timeout=4)[0]
    assert row["status"] == "timeout (notebook over 4 s, in cell 4)"


# ---------------------------------------------------------------------------------------------------
# Options, checked before anything is graded (no kernel needed)


@pytest.mark.parametrize("option,value", [
    ("--cell-timeout", "0"), ("--cell-timeout", "-5"), ("--notebook-timeout", "nan"), ("--notebook-timeout", "inf"),
    ("--jobs", "0"), ("--jobs", "1.5"), ("--memory-mb", "-1"),
])
def test_limits_must_be_positive(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["course", "grade", "x.ipynb", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


def test_out_is_validated_before_grading(course, tmp_path, capsys):
    submission = tmp_path / "00_tiny.ipynb"
    submission.write_text("{}")
    (tmp_path / "file").write_text("x")
    for out in (tmp_path, tmp_path / "file" / "grades.csv"):
        assert cli.main(["course", "grade", str(submission), "--course", str(course), "--out", str(out)]) == 2
        err = capsys.readouterr()
        assert f"--out {out}" in err.err and err.out == ""  # nothing graded
    out = tmp_path / "g.csv"
    assert cli.main(["course", "grade", str(submission), "--course", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "--course" in capsys.readouterr().err and not out.exists()


def test_a_kernel_that_cannot_start_is_a_row(course, tmp_path):
    submission = _submission(course, tmp_path / "s", "00_tiny.ipynb")
    row = grade.grade([submission], tmp_path / "g.csv", course=course, memory_mb=100)[0]
    assert row["status"].startswith("kernel died (at start, memory limit 100 MB"), row
    assert row["passed"] == {"magic_box": False, "hvp": False}


def test_kernel_launcher_sets_the_memory_limit_and_dies_with_its_parent(tmp_path):
    # The launcher is what makes the limits hold from outside the kernel: RLIMIT_AS, and SIGKILL when the
    # grading worker dies (so a killed worker never leaves a looping kernel behind).
    marker = tmp_path / "limit"
    child = (f"import resource, time; open({str(marker)!r}, 'w').write(str(resource.getrlimit(resource.RLIMIT_AS)[0]));"
             " time.sleep(120)")
    parent = (
        "import os, subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, {str(grade.LAUNCHER)!r}, str(2**31), str(os.getpid()), '--',"
        f" sys.executable, '-c', {child!r}])\n"
        "print(p.pid, flush=True)\n"
        f"while not os.path.exists({str(marker)!r}):\n    time.sleep(0.05)\n"
    )
    result = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120, check=True)
    pid = int(result.stdout)
    time.sleep(0.2)
    assert int(marker.read_text()) == 2**31

    def dead():
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, IndexError):
            return True

    deadline = time.monotonic() + 10
    while not dead() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dead(), "the kernel outlived its worker"


def test_review_flags():
    assert grade.review_flags(GOOD_HVP) == []
    assert grade.review_flags("def f(x):\n    y = {}\n    y['a'] = x\n    return y") == []
    flags = grade.review_flags("import numpy as np\nnp.allclose = lambda *a, **k: True")
    assert flags == ["modifies np.allclose"]
    assert "calls setattr()" in grade.review_flags("setattr(checks, 'check_hvp', print)")
    assert "imports inspect" in grade.review_flags("import inspect\nf = inspect.currentframe")
    assert "IPython magic or shell command" in grade.review_flags("%load_ext autoreload\nx = 1")


@pytest.mark.parametrize("source,module", [
    ("from metagrad.course import checks", "metagrad.course.checks"),
    ("import jax\nfrom metagrad.course import checks_part2 as checks", "metagrad.course.checks_part2"),
    ("import metagrad.course.checks.nb05 as checks", "metagrad.course.checks.nb05"),
    ("import jax", "metagrad.course.checks"),
])
def test_the_fresh_check_module_is_the_one_the_course_binds_to_checks(source, module):
    assert grade._checks_module(nbformat.v4.new_notebook(cells=[C(source)])) == module


def test_match_by_metadata_then_file_name(course):
    loaded = grade.Course(course)
    nb = nbformat.read(course / "00_tiny.ipynb", as_version=4)
    assert grade.match_notebook(Path("whatever.ipynb"), nb, loaded) == "00"
    assert grade.match_notebook(Path("alice_01_plain (1).ipynb"), None, loaded) == "01"
    assert grade.match_notebook(Path("notes.ipynb"), nbformat.v4.new_notebook(), loaded) is None
    assert json.loads(json.dumps(loaded.columns)) == ["magic_box", "hvp"]
