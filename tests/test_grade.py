"""`metagrad course grade` as an attacker, a careless student and an instructor would use it.

A tiny course (two exercises checked by the library's real `check_magic_box` and `check_hvp`, one notebook
checked by `check_reward_to_go`, whose reference is importable from the checks package, and one notebook
without JAX for the time limits) is built with `metagrad course build` in a temporary folder; each
submission below is one of the ways the previous grader was fooled, harmed others or lost grades (the
attacks are in tests/grading_attacks.py). One batch runs them all with `--jobs 2` (a kernel start costs
seconds, so they share one call).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import grading_attacks as attacks
from metagrad import cli
from metagrad.course import build, grade, sandbox

C = nbformat.v4.new_code_cell
GOOD_MAGIC_BOX = "def magic_box(x):\n    return jnp.exp(x - jax.lax.stop_gradient(x))"
GOOD_HVP = "def hvp(f, x, v):\n    return jax.jvp(jax.grad(f), (x,), (v,))[1]"


def _solutions(folder: Path) -> Path:
    folder.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Tiny course"),
        C("import jax\n\njax.config.update('jax_enable_x64', True)\nimport jax.numpy as jnp\n\nfrom metagrad.course import checks"),
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
    ref = nbformat.v4.new_notebook()
    ref.metadata["kernelspec"] = nb.metadata["kernelspec"]
    ref.cells = [
        C("import jax\n\njax.config.update('jax_enable_x64', True)\nimport jax.numpy as jnp\n\nfrom metagrad.course import checks"),
        C("def reward_to_go(rewards, gamma, bootstrap=0.0):\n    ### BEGIN SOLUTION\n"
          "    def step(g, r):\n        g = r + gamma * g\n        return g, g\n\n"
          "    return jax.lax.scan(step, jnp.asarray(bootstrap, rewards.dtype), rewards, reverse=True)[1]\n"
          "    ### END SOLUTION"),
        C("checks.check_reward_to_go(reward_to_go)"),
    ]
    for i, cell in enumerate(ref.cells):
        cell.id = f"ref-{i}"
    nbformat.write(ref, folder / "02_ref.ipynb")
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


def _read(out: Path, key="file") -> dict[str, dict]:
    with out.open(newline="", encoding="utf-8") as handle:
        return {Path(row[key]).parent.name: row for row in csv.DictReader(handle)}


def _digest(folder: Path) -> str:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


PACKAGE = Path(grade.__file__).resolve().parent.parent  # lib/metagrad
SANDBOX = sandbox.isolation() == "bwrap"
NEEDS_SANDBOX = pytest.mark.skipif(not SANDBOX, reason=f"needs the bubblewrap sandbox (docs/grading.md): {sandbox.probe()[2]}")
WRONG_HVP = "def hvp(f, x, v):\n    return jax.grad(f)(x) * v"  # a known mistake, named by the check


@pytest.fixture(scope="module")
def batch(course, tmp_path_factory):
    """Grade every submission below in one call; returns (rows by student, CSV snapshots, root, facts)."""
    root = tmp_path_factory.mktemp("submissions")
    name = "00_tiny.ipynb"
    good = {"magic_box": GOOD_MAGIC_BOX, "hvp": GOOD_HVP}
    out = root / "grades.csv"
    token = secrets.token_hex(8)
    facts = {"course": _digest(course), "package": _digest(PACKAGE), "token": token, "out": out}
    paths = [
        _submission(course, root / "honest", name, replace=good),
        _submission(course, root / "wrong", name, replace={"hvp": WRONG_HVP}),
        _submission(course, root / "old_cheats", name, replace={"magic_box": attacks.OLD_CHEATS}),
        _submission(course, root / "input_transformer", name, replace={"hvp": attacks.INPUT_TRANSFORMER}),
        _submission(course, root / "meta_path", name, replace={"hvp": attacks.META_PATH}),
        _submission(course, root / "frame", name, replace={"hvp": attacks.FRAME}),
        _submission(course, root / "proc_memory", name, replace={"hvp": attacks.PROC_MEMORY}),
        _submission(course, root / "alias", name, replace={"hvp": attacks.ALIAS}),
        # The library's own magic box handed in: refused in the kernel, with the check's message.
        _submission(course, root / "library", name, replace={
            "magic_box": "from metagrad.prior import magic_box as box\n\ndef magic_box(x):\n    return box(x)",
            "hvp": GOOD_HVP}),
        _submission(course, root / "reference", "02_ref.ipynb", notebook="02_ref.ipynb",
                    replace={"reward_to_go": attacks.REFERENCE_IMPORT}),
        # Delete the check cells: the old grader then scored only what was left.
        _submission(course, root / "deleted_checks", name, replace={"magic_box": GOOD_MAGIC_BOX}, drop=("check",)),
        # The exercise cells deleted and both functions written in one new cell: found by their `def`.
        _submission(course, root / "moved", name, drop=("check", "exercise"), extra=[GOOD_MAGIC_BOX + "\n\n" + GOOD_HVP]),
        # A helper defined in a cell of the student's own: only exercise cells are graded, so it is missing.
        _submission(course, root / "outside", name, replace={"magic_box": "def magic_box(x):\n    return helper(x)"},
                    extra=["def helper(x):\n    return jnp.exp(x - jax.lax.stop_gradient(x))"]),
        # The kernel exits in the middle: the check before counts, the one after does not.
        _submission(course, root / "exit", name, replace={"magic_box": GOOD_MAGIC_BOX, "hvp": "import os\nos._exit(3)"}),
        # Past the memory limit.
        _submission(course, root / "memory", name, replace={"magic_box": GOOD_MAGIC_BOX,
                                                           "hvp": GOOD_HVP + "\nhog = bytearray(64 * 2**30)"}),
        # Files that are no notebook to grade: an empty notebook, not JSON, missing, no course notebook,
        # nbformat 3, malformed metadata.
        root / "empty" / name,
        root / "garbage" / name,
        root / "missing" / name,
        root / "unknown" / "notes.ipynb",
        root / "v3" / name,
        root / "bad_metadata" / name,
    ]
    if SANDBOX:  # without it the vandal would harm this test run (docs/grading.md: what holds without a sandbox)
        paths.insert(1, _submission(course, root / "vandal", name, replace={"magic_box": attacks.vandal(
            str(course), str(out), token, str(PACKAGE.parent), kill_grader=True)}))
    (root / "empty").mkdir()
    nbformat.write(nbformat.v4.new_notebook(), root / "empty" / name)
    (root / "garbage").mkdir()
    (root / "garbage" / name).write_text("this is not JSON")
    (root / "unknown").mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[C(GOOD_HVP)]), root / "unknown" / "notes.ipynb")
    (root / "v3").mkdir()
    (root / "v3" / name).write_text(json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {"metagrad": {"notebook": "00"}},
                                                "worksheets": [{"cells": [{"cell_type": "code", "input": GOOD_HVP}]}]}))
    bad = json.loads((root / "honest" / name).read_text())
    bad["metadata"] = ["not", "a", "dict"]
    (root / "bad_metadata").mkdir()
    (root / "bad_metadata" / name).write_text(json.dumps(bad))
    snapshots = []

    def on_row(row):
        snapshots.append(out.read_text(encoding="utf-8"))

    rows = grade.grade(paths, out, course=course, jobs=2, cell_timeout=120, notebook_timeout=600,
                       memory_mb=3072, tmpfs_mb=64, on_row=on_row)
    assert [row["file"] for row in rows] == [str(p) for p in paths]
    time.sleep(6)  # the vandal's background process would rewrite the grade book after 4 s
    return _read(out), snapshots, root, facts


def _scores(row):
    return row["magic_box"], row["hvp"], row["total"], row["max"]


NOTHING = ("0", "0", "0", "2")


def test_honest_wrong_and_the_message_the_student_saw(batch):
    from metagrad.course import checks

    rows, _, _, _ = batch
    assert _scores(rows["honest"]) == ("1", "1", "2", "2") and rows["honest"]["status"] == "graded"
    assert rows["honest"]["student"] == "honest"  # the folder: each file has the course notebook's name
    assert _scores(rows["wrong"]) == NOTHING and rows["wrong"]["status"] == "graded"
    # The diagnosis is the one the check gives in the student's own notebook.
    import jax

    def wrong(f, x, v):
        return jax.grad(f)(x) * v

    def stub(x):
        raise NotImplementedError

    seen = []
    for check, fn in ((checks.check_magic_box, stub), (checks.check_hvp, wrong)):
        with pytest.raises(checks.ExerciseCheckFailed) as failure:
            check(fn)
        seen.append(str(failure.value))
    assert "a first derivative: the product needs second derivatives of f" in seen[1]
    assert rows["wrong"]["messages"].split(" | ")[:2] == seen


@pytest.mark.parametrize("student", ["old_cheats", "input_transformer", "meta_path", "frame", "alias",
                                     pytest.param("proc_memory", marks=NEEDS_SANDBOX)])
def test_a_submission_cannot_write_its_own_score(batch, student):
    rows, _, _, _ = batch
    assert _scores(rows[student]) == NOTHING, rows[student]
    assert rows[student]["status"] == "graded"


@NEEDS_SANDBOX
def test_reference_solutions_are_not_importable_from_the_kernel(batch):
    rows, _, _, _ = batch
    row = rows["reference"]
    assert (row["notebook"], row["reward_to_go"], row["total"], row["max"]) == ("02", "0", "0", "1"), row
    assert "`reward_to_go` is not defined" in row["messages"] and "exercise cell 3 (reward_to_go): ImportError" in row["messages"]


def test_the_alias_attack_has_no_review_flag_and_still_gets_nothing(batch):
    rows, _, _, _ = batch
    assert "review" not in rows["alias"]["messages"] and _scores(rows["alias"]) == NOTHING


@NEEDS_SANDBOX
def test_a_student_cannot_harm_the_course_the_package_the_grade_book_or_other_students(batch, course):
    rows, _, root, facts = batch
    # Killing the grader, sibling workers and kernels: every other row is graded as usual.
    assert rows["vandal"]["status"] == "graded" and _scores(rows["vandal"]) == NOTHING
    assert _scores(rows["honest"]) == ("1", "1", "2", "2")
    # The course (check cells, no jax.py) and the package are unchanged.
    assert _digest(course) == facts["course"] and not (course / "jax.py").exists()
    assert _digest(PACKAGE) == facts["package"] and not (PACKAGE / "jax.py").exists()
    # /dev/shm of the machine got nothing; the background process died with the kernel.
    assert not Path(f"/dev/shm/metagrad-attack-{facts['token']}").exists()
    assert not Path(f"/tmp/metagrad-attack-{facts['token']}-alive").exists()
    assert "hacked" not in facts["out"].read_text()
    # The next student is graded as usual (and the grade book merges: earlier rows are kept).
    nxt = _submission(course, root / "next", "00_tiny.ipynb", replace={"magic_box": GOOD_MAGIC_BOX, "hvp": GOOD_HVP})
    grade.grade([nxt], facts["out"], course=course, tmpfs_mb=64)
    merged = _read(facts["out"])
    assert _scores(merged["next"]) == ("1", "1", "2", "2")
    assert len(merged) == len(rows) + 1 and merged["vandal"] == rows["vandal"]


def test_deleted_or_moved_check_and_exercise_cells_change_nothing(batch):
    rows, _, _, _ = batch
    assert _scores(rows["deleted_checks"]) == ("1", "0", "1", "2")
    assert _scores(rows["moved"]) == ("1", "1", "2", "2")
    # Code outside the exercise cells is not run.
    assert _scores(rows["outside"]) == NOTHING
    assert _scores(rows["empty"]) == NOTHING and rows["empty"]["status"] == "graded"
    assert "cell 4 (magic_box): no such exercise cell in the submission" in rows["empty"]["messages"]


def test_a_dead_kernel_or_the_memory_limit_costs_only_what_comes_after(batch):
    rows, _, _, _ = batch
    assert _scores(rows["exit"]) == ("1", "0", "1", "2")
    assert rows["exit"]["status"].startswith("crashed (kernel died in cell 6"), rows["exit"]
    assert "not checked: crashed" in rows["exit"]["messages"]
    assert _scores(rows["memory"]) == ("1", "1", "2", "2")  # MemoryError is raised; the kernel lives on
    assert "exercise cell 6 (hvp): MemoryError" in rows["memory"]["messages"]


def test_bad_files_get_a_row_and_never_lose_the_others(batch):
    rows, _, _, _ = batch
    assert rows["garbage"]["status"] == "not a notebook" and _scores(rows["garbage"]) == NOTHING
    assert rows["missing"]["status"] == "not found"
    assert rows["unknown"]["status"] == "unknown notebook" and rows["unknown"]["max"] == ""
    assert rows["v3"]["status"] == "unsupported format" and _scores(rows["v3"]) == NOTHING
    assert "nbformat 3" in rows["v3"]["messages"]
    assert rows["bad_metadata"]["status"] == "not a notebook" and _scores(rows["bad_metadata"]) == NOTHING
    assert len(rows) == 21 + SANDBOX


def test_the_csv_is_rewritten_atomically_after_every_row(batch):
    _, snapshots, root, _ = batch
    assert [len(s.strip().splitlines()) - 1 for s in snapshots] == list(range(1, 22 + SANDBOX))
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_feedback_lists_each_exercise_and_points_at_the_exercise_cell(batch):
    rows, _, root, _ = batch
    text = (root / "feedback" / "wrong-00.md").read_text()
    html = (root / "feedback" / "wrong-00.html").read_text()
    message = rows["wrong"]["messages"].split(" | ")[1]
    # Each exercise with its points, result and the check's message; the link goes to the exercise cell.
    assert f"| `hvp` | 0 / 1 | failed | {message} | [exercise cell 6 (id tiny-4)](../wrong/00_tiny.ipynb#tiny-4) |" in text
    assert "| `magic_box` | 0 / 1 | failed |" in text and "Points: **0 / 2**" in text
    assert "<code>hvp</code>" in html and "href='../wrong/00_tiny.ipynb#tiny-4'" in html
    assert "Points: **2 / 2**" in (root / "feedback" / "honest-00.md").read_text()
    assert "demo cell" not in text


def _course_of(root):
    return grade.Course(next(Path(root).parent.glob("grading*/course")))


def test_config_points_columns_and_student_ids(batch, tmp_path):
    rows, _, root, _ = batch
    course = _course_of(root)
    config_file = tmp_path / "grading.toml"
    config_file.write_text('[points]\nhvp = 2.5\n[columns]\nstudent = "Username"\ntotal = "Points"\nhvp = "HVP (2.5)"\n'
                           '[student]\npattern = "([^/]+)/00_tiny"\n')
    config = grade.Config.load(config_file, course)
    row = grade._row(root / "alice" / "00_tiny.ipynb", "00", "graded", course,
                     {"magic_box": (True, "ok"), "hvp": (True, "ok")})
    out = tmp_path / "lms.csv"
    grade.write_csv(out, [row], course, config)
    record = next(csv.DictReader(out.open()))
    assert record["Username"] == "alice" and record["HVP (2.5)"] == "2.5" and record["Points"] == "3.5"
    assert record["max"] == "3.5" and record["magic_box"] == "1"
    for bad, words in (('[points]\nnope = 1\n', "'nope' is not an exercise"), ('[points]\nhvp = -1\n', "hvp must be"),
                       ('[student]\npattern = "(["\n', "not a regular expression"), ('[extra]\n', "unknown section")):
        config_file.write_text(bad)
        with pytest.raises(grade.GradeError, match=words):
            grade.Config.load(config_file, course)


def test_without_a_sandbox_the_grader_still_decides(course, tmp_path):
    # The fallback (no bubblewrap): the kernel runs as this user, but the checks still run in the grader.
    frame = _submission(course, tmp_path / "frame", "00_tiny.ipynb", replace={"magic_box": GOOD_MAGIC_BOX, "hvp": attacks.FRAME})
    row = grade.grade_submission(frame, grade.Course(course), isolation="none", cell_timeout=120, notebook_timeout=600)
    assert row["status"] == "graded" and row["passed"] == {"magic_box": True, "hvp": False}, row
    assert "NONE" in sandbox.describe("none") and "reference solutions" in sandbox.describe("none")


def _descendants(pid: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def test_killing_the_grader_leaves_no_worker_kernel_or_background_process(course, tmp_path):
    loop = _submission(course, tmp_path / "loop", "01_plain.ipynb", notebook="01_plain.ipynb", replace={
        "wait": "import subprocess\nsubprocess.Popen(['setsid', 'sleep', '300'])\n"
                "def wait(seconds):\n    while True:\n        pass"})
    grader = subprocess.Popen([sys.executable, "-m", "metagrad", "course", "grade", str(loop), "--course", str(course),
                               "--out", str(tmp_path / "g.csv")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    tree: set[int] = set()
    while time.monotonic() < deadline and not any(b"sleep" in Path(f"/proc/{p}/cmdline").read_bytes()
                                                  for p in tree if _alive(p)):
        time.sleep(0.5)
        tree |= _descendants(grader.pid)
    assert len(tree) >= 3, "the worker, the kernel and the student's background process were not seen"
    grader.kill()
    grader.wait()
    # Without the sandbox a process that left the kernel's session (`setsid`) can survive, as docs/grading.md
    # says; the worker and the kernel die either way.
    escaped = set() if SANDBOX else {p for p in tree if _alive(p) and b"sleep" in Path(f"/proc/{p}/cmdline").read_bytes()}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in tree - escaped):
        time.sleep(0.2)
    for pid in escaped:
        os.kill(pid, signal.SIGKILL)
    assert not [p for p in tree - escaped if _alive(p)]


def test_an_uninterruptible_loop_is_killed_at_the_cell_and_the_notebook_timeout(course, tmp_path):
    # A loop that swallows the interrupt: the old grader hung forever.
    loop = _submission(course, tmp_path / "loop", "01_plain.ipynb", notebook="01_plain.ipynb", replace={
        "wait": "def wait(seconds):\n    while True:\n        try:\n            time.sleep(0.05)\n"
                "        except:  # noqa: E722\n            pass"})
    out = tmp_path / "grades.csv"
    row = grade.grade([loop], out, course=course, cell_timeout=3, notebook_timeout=100)[0]
    assert row["notebook"] == "01" and row["status"] == "timed out (cell 4 over 3 s)", row
    assert _read(out)["loop"]["max"] == "0" and _read(out)["loop"]["magic_box"] == ""
    row = grade.grade([loop], out, course=course, cell_timeout=100, notebook_timeout=4)[0]
    assert row["status"] == "timed out (notebook over 4 s, in cell 4)", row
    assert len(_read(out)) == 1  # the same student and notebook: replaced, not added


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
    assert row["status"].startswith("crashed (the kernel did not start, memory limit 100 MB"), row
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
    assert json.loads(json.dumps(loaded.columns)) == ["magic_box", "hvp", "reward_to_go"]


def test_the_kernel_sees_no_reference_solution():
    from metagrad.course.checks import nb02, nb07

    public = sandbox.public_source(Path(nb02.__file__).read_text())
    assert "reference" not in public.split("\n", 1)[1] and "def check_reward_to_go" in public
    compile(public, "nb02", "exec")
    assert "reference_choose_estimator" not in sandbox.public_source(Path(nb07.__file__).read_text())


def test_answers_from_the_kernel_are_plain_data():
    import numpy as np

    from metagrad.course import _serve

    value = {"a": (np.float32(1.5), [np.arange(3), "s", None]), "b": object()}
    back = _serve.decode(json.loads(json.dumps(_serve.encode(value))))
    assert back["a"][0].dtype == np.float32 and back["a"][1][0].tolist() == [0, 1, 2] and back["a"][1][1:] == ["s", None]
    assert type(back["b"]).__name__ == "object"
    with pytest.raises(ValueError):  # an object array would need pickle
        _serve.decode({"t": "array", "v": __import__("base64").b64encode(_pickled_array()).decode()})


def _pickled_array() -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def test_the_sandbox_shows_no_folder_above_the_course_or_the_solutions(course):
    # What the worker binds read-only into the sandbox (it runs in "/", as grade._spawn_worker starts it).
    shown = subprocess.run([sys.executable, "-c", "from metagrad.course import sandbox; print(*sandbox._ro_paths(), sep='\\n')"],
                           cwd="/", capture_output=True, text=True, check=True).stdout.split()
    root = PACKAGE.parent.parent
    for hidden in (course, root / "course", root / "solutions", root / "README.md"):
        assert not [p for p in shown if Path(hidden).resolve().is_relative_to(p)], (hidden, shown)


def test_the_sandbox_probe_runs_the_grader_s_own_command_and_says_why_not():
    # The probe runs the command the grader runs (so a container that forbids part of it is found before any
    # kernel dies); without /proc the command lacks only the /proc mount; the fallback names its cause.
    path, mount_proc, why = sandbox.probe()
    assert (path is None) == bool(why)
    folders = {"workdir": Path("/w"), "sockets": Path("/s"), "public_checks": Path("/c"), "tmpfs_mb": 8, "env": {}}
    with_proc = sandbox._args("bwrap", ["true"], **folders, mount_proc=True)
    without = sandbox._args("bwrap", ["true"], **folders, mount_proc=False)
    assert with_proc[with_proc.index("--proc"):with_proc.index("--proc") + 2] == ["--proc", "/proc"]
    assert [a for a in with_proc if a not in ("--proc", "/proc")] == without
    if path is None:
        assert why in sandbox.describe("none")
        with pytest.raises(RuntimeError, match="no sandbox"):
            sandbox.command(["true"], **folders)
    else:
        assert sandbox.command(["true"], **folders) == sandbox._args(path, ["true"], **folders, mount_proc=mount_proc)
        assert ("no /proc" in sandbox.describe("bwrap")) == (not mount_proc)


def test_the_interpreter_s_links_outside_the_bound_folders_are_recreated_in_the_sandbox(tmp_path, monkeypatch):
    # CI makes its virtual environments with `python3` reached through a link in a `mktemp -d` folder, so the
    # venv's bin/python points into /tmp, which the sandbox replaces by an empty tmpfs: the link must be made again.
    real = Path(sys.executable).resolve()
    (tmp_path / "bin").mkdir()
    (tmp_path / "python3").symlink_to(real)
    (tmp_path / "bin" / "python").symlink_to(tmp_path / "python3")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    assert sandbox._interpreter_links([]) == [(str(tmp_path / "python3"), str(tmp_path / "bin" / "python")),
                                              (str(real), str(tmp_path / "python3"))]
    # a link inside a bound folder is there already
    assert sandbox._interpreter_links([str(tmp_path / "bin")]) == [(str(real), str(tmp_path / "python3"))]
    args = sandbox._args("bwrap", ["true"], workdir=Path("/w"), sockets=Path("/s"), public_checks=Path("/c"),
                         tmpfs_mb=8, env={}, mount_proc=True)
    link = ["--symlink", str(real), str(tmp_path / "python3")]
    at = [i for i in range(len(args)) if args[i:i + 3] == link]
    assert len(at) == 1 and at[0] > args.index("/tmp")  # made after the empty /tmp is mounted


def test_a_library_shortcut_is_refused_in_the_kernel_with_the_check_s_message(batch):
    rows, _, _, _ = batch
    row = rows["library"]
    assert row["status"] == "graded" and row["magic_box"] == "0" and row["hvp"] != "0", row
    assert "It calls `metagrad.prior.magic_box`, the library's own version" in row["messages"], row["messages"]
