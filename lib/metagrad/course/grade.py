"""Grade student notebooks against the course's own notebooks, with results decided by the grader.

What is graded comes from the **course** (``course/NN_name.ipynb``, written by ``metagrad course build``),
never from the submission:

1. **Match.** A submission is matched to a course notebook by its notebook metadata
   (``metadata.metagrad.notebook``, written by the build) or else by the ``NN_`` in its file name.
2. **Assemble** (nbgrader-style). The graded notebook is the course notebook with each *exercise cell*
   replaced by the student's version of that cell (found by the cell's ``metadata.metagrad.exercise``, its
   cell id, or else the ``def`` of the exercise's function). Every other cell — set-up, demonstrations
   and the *check cells* — is the course's, so deleting or editing a check cell changes nothing, code a
   student wrote outside the exercise cells is not run, and ``possible`` is the course's number of checks.
3. **Run** in a separate worker process that starts a fresh kernel through a launcher setting an
   address-space limit (``RLIMIT_AS``, ``memory_mb``) and a death signal tied to the worker. Each cell has
   ``cell_timeout`` seconds and the whole notebook ``notebook_timeout``; past either, the kernel is
   killed (SIGKILL, not an interrupt a bare ``except:`` could swallow) and the remaining checks fail. The
   parent kills the worker's process group if the worker itself overruns.
4. **Decide** pass/fail on the grader's side. Before a check cell runs, the grader prefixes it with a
   fresh import of ``metagrad.course``'s check modules (so ``checks.check_x = no-op``,
   ``checks._RESULTS.update(...)`` and other patches of the check module made by earlier cells are
   discarded) and appends a ``print`` of a per-run secret marker. An exercise passes when its check cell
   completes without error and its last output is that marker. The secret is generated per submission
   and first sent to the kernel inside the check cell, so code that ran before cannot print it.
   ``checks.results()`` in the kernel is not read.

What it cannot prevent, because the student's function and the check share one Python process: code in
an exercise cell that patches numpy/JAX/the library itself (e.g. replaces ``np.allclose`` or the
reference ``metagrad.exact.policy_evaluation`` used by a check), or that inspects the running check
cell's frame or installs IPython hooks to read the secret. Such code needs constructs that ordinary
solutions do not use; :func:`review_flags` lists them per submission (``notes`` column) for a human to
read. A student can always call the library instead of writing the function.

The CSV has one row per submission, in the order given, rewritten atomically after each finished row:
``file``, ``notebook``, ``status`` (``ok``, ``not found``, ``not a notebook``, ``unknown notebook``,
``timeout …``, ``kernel died …``, ``memory …``, ``grader error …``), one column per check of the whole
course (1 passed, 0 failed or not reached, empty when that notebook has no such check), ``total``,
``possible`` and ``notes`` (errors by cell, review flags).
"""

from __future__ import annotations

import ast
import copy
import csv
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
_FILE_ID = re.compile(r"(?<![0-9])([0-9]{2})_")
_DEF = re.compile(r"^def\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(", re.MULTILINE)
LAUNCHER = Path(__file__).with_name("_kernel_launcher.py")
OUTPUT_LIMIT = 1_000_000  # characters of output kept per cell; the rest is dropped (output floods)
STARTUP_ALLOWANCE = 120  # seconds the parent grants a worker on top of notebook_timeout (kernel start)


class GradeError(ValueError):
    """Bad grading options (course folder, output file); raised before anything is graded."""


# ----------------------------------------------------------------------------------------------------
# The course


class Course:
    """The released course notebooks: ``notebooks[id]`` and the check names in course order."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        paths = sorted(folder.glob(NOTEBOOK_GLOB)) if folder.is_dir() else []
        if not paths:
            raise GradeError(f"--course {folder}: no course notebooks ({NOTEBOOK_GLOB}) there.")
        self.folder = folder.resolve()
        self.notebooks: dict[str, nbformat.NotebookNode] = {}
        self.checks: dict[str, list[str]] = {}
        for path in paths:
            try:
                nb = nbformat.read(path, as_version=4)
            except Exception as err:  # noqa: BLE001
                raise GradeError(f"--course {folder}: {path.name} is not a readable notebook ({_first_line(err)}).") from None
            notebook_id = nb.metadata.get("metagrad", {}).get("notebook")
            if notebook_id is None:
                raise GradeError(
                    f"--course {folder}: {path.name} has no grading metadata; rebuild it with `metagrad course build`."
                )
            self.notebooks[notebook_id] = nb
            self.checks[notebook_id] = [
                c.metadata["metagrad"]["check"] for c in nb.cells if "check" in c.metadata.get("metagrad", {})
            ]
        self.columns = [name for checks in self.checks.values() for name in checks]


def course_checks(nb: nbformat.NotebookNode) -> list[str]:
    """The check names of a course notebook, in order (from the build's cell metadata)."""
    return [c.metadata["metagrad"]["check"] for c in nb.cells if "check" in c.metadata.get("metagrad", {})]


def match_notebook(path: Path, nb: nbformat.NotebookNode | None, course: Course) -> str | None:
    """The course notebook id of a submission: its metadata, else ``NN_`` in its file name."""
    if nb is not None:
        notebook_id = nb.metadata.get("metagrad", {}).get("notebook") if isinstance(nb.metadata, dict) else None
        if notebook_id in course.notebooks:
            return notebook_id
    match = _FILE_ID.search(Path(path).name)
    if match and match.group(1) in course.notebooks:
        return match.group(1)
    return None


# ----------------------------------------------------------------------------------------------------
# Assembling the graded notebook


def _student_cell(course_cell, student_cells) -> nbformat.NotebookNode | None:
    names = course_cell.metadata["metagrad"]["exercise"]
    found = [c for c in student_cells if c.metadata.get("metagrad", {}).get("exercise") == names]
    if not found and course_cell.get("id"):
        found = [c for c in student_cells if c.get("id") == course_cell.id]
    if not found and names and names[0] != "cell":
        found = [c for c in student_cells if names[0] in _DEF.findall(c.source)]
    return found[-1] if found else None


def assemble(course_nb: nbformat.NotebookNode, submission: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The course notebook with its exercise cells replaced by the submission's; returns ``(nb, notes)``."""
    nb = copy.deepcopy(course_nb)
    student_cells = [c for c in submission.cells if c.get("cell_type") == "code" and isinstance(c.get("source"), str)]
    notes = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if "exercise" not in cell.metadata.get("metagrad", {}):
            continue
        names = ", ".join(cell.metadata["metagrad"]["exercise"])
        student = _student_cell(cell, student_cells)
        if student is None:
            notes.append(f"cell {index} ({names}): no such exercise cell in the submission, the course stub ran")
            continue
        cell.source = student.source
        flags = review_flags(student.source)
        if flags:
            notes.append(f"cell {index} ({names}) review: {', '.join(flags)}")
    return nb, notes


_SUSPICIOUS_MODULES = {"builtins", "ctypes", "gc", "importlib", "inspect", "IPython", "multiprocessing",
                       "os", "signal", "subprocess", "sys", "threading", "types"}
_SUSPICIOUS_CALLS = {"setattr", "delattr", "globals", "vars", "locals", "__import__", "exec", "eval", "compile",
                     "get_ipython", "open", "breakpoint"}
_SUSPICIOUS_NAMES = {"checks", "_RESULTS", "__builtins__", "sys", "os", "In", "Out"}


def review_flags(source: str) -> list[str]:
    """Constructs in a student's exercise cell that ordinary solutions do not need but tampering does.

    Not a proof of anything: a list for a human to read (imports of ``os``/``sys``/``inspect``/…, attribute
    assignments to objects the cell did not create such as ``np.allclose = …``, calls of ``setattr``,
    ``exec``, ``get_ipython``, …, use of ``checks``, IPython magics or shell escapes).
    """
    flags: list[str] = []

    def flag(text):
        if text not in flags:
            flags.append(text)

    lines = source.split("\n")
    if any(line.lstrip().startswith(("%", "!")) for line in lines):
        flag("IPython magic or shell command")
        lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in lines]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return flags  # the cell fails to run; nothing to review
    created = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    created |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in _SUSPICIOUS_MODULES:
                    flag(f"imports {module}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, (ast.Attribute, ast.Subscript)):
                        base = sub.value
                        while isinstance(base, (ast.Attribute, ast.Subscript)):
                            base = base.value
                        if isinstance(base, ast.Name) and base.id not in created:
                            flag(f"modifies {ast.unparse(sub)}")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            flag(f"declares {'global' if isinstance(node, ast.Global) else 'nonlocal'} {', '.join(node.names)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SUSPICIOUS_CALLS:
            flag(f"calls {node.func.id}()")
        elif isinstance(node, ast.Name) and node.id in _SUSPICIOUS_NAMES and node.id not in created:
            flag(f"uses {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr not in ("__init__", "__name__"):
            flag(f"uses .{node.attr}")
    return flags


def _checks_prefix() -> str:
    """Source put before every check cell: a fresh import of metagrad.course's modules, bound to ``checks``."""
    return (
        "import importlib as _mg_importlib, sys as _mg_sys\n"
        "_mg_saved = {_k: _mg_sys.modules.pop(_k) for _k in list(_mg_sys.modules) if _k.startswith('metagrad.course.')}\n"
        "try:\n"
        "    checks = _mg_importlib.import_module(_mg_checks_module)\n"
        "finally:\n"
        "    _mg_sys.modules.update(_mg_saved)\n"
    )


def _checks_module(course_nb: nbformat.NotebookNode) -> str:
    """The module the course notebook binds to ``checks``: ``from metagrad.course import X [as checks]`` or
    ``import metagrad.course.X as checks``; ``metagrad.course.checks`` when it says neither."""
    patterns = (
        re.compile(r"^from\s+metagrad\.course\s+import\s+(checks)\s*$", re.M),
        re.compile(r"^from\s+metagrad\.course\s+import\s+([A-Za-z_][A-Za-z0-9_]*)\s+as\s+checks\s*$", re.M),
        re.compile(r"^import\s+metagrad\.course\.([A-Za-z_][A-Za-z0-9_.]*)\s+as\s+checks\s*$", re.M),
    )
    for cell in course_nb.cells:
        if cell.cell_type == "code":
            for pattern in patterns:
                match = pattern.search(cell.source)
                if match:
                    return f"metagrad.course.{match.group(1)}"
    return "metagrad.course.checks"


def instrument(nb: nbformat.NotebookNode, secret: str, checks_module: str) -> dict[int, tuple[str, str]]:
    """Rewrite the check cells of an assembled notebook in place; returns ``{cell index: (check, marker)}``."""
    markers = {}
    for index, cell in enumerate(nb.cells):
        name = cell.metadata.get("metagrad", {}).get("check")
        if name is None:
            continue
        marker = f"metagrad-grade {secret} {index} {name} passed"
        cell.source = (
            f"_mg_checks_module = {checks_module!r}\n" + _checks_prefix() + cell.source.rstrip() + f"\nprint({marker!r})"
        )
        markers[index] = (name, marker)
    return markers


# ----------------------------------------------------------------------------------------------------
# Worker: runs one assembled notebook in a limited kernel (a separate process, see _run_worker)


def _kernel_manager_class(memory_bytes: int):
    from jupyter_client.manager import AsyncKernelManager

    class LimitedKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            cmd = super().format_kernel_cmd(extra_arguments)
            return [sys.executable, str(LAUNCHER), str(memory_bytes), str(os.getpid()), "--", *cmd]

    return LimitedKernelManager


def _kill_group(pid: int | None) -> None:
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def execute(nb, *, cwd: Path, kernel_name: str, cell_timeout: float, notebook_timeout: float, memory_mb: int) -> dict:
    """Run ``nb`` in place; returns ``{"status", "replies": {index: reply status}}``. Used by the worker."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    class Client(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):
            size = sum(len(str(v)) for v in msg.get("content", {}).values())
            self._mg_sizes[cell_index] = self._mg_sizes.get(cell_index, 0) + size
            if self._mg_sizes[cell_index] > OUTPUT_LIMIT:
                return None
            return super().output(outs, msg, display_id, cell_index)

    replies: dict[int, str] = {}
    state = {"timeout": cell_timeout}

    def on_executed(cell, cell_index, execute_reply):
        replies[cell_index] = execute_reply.get("content", {}).get("status", "unknown")

    client = Client(
        nb,
        kernel_name=kernel_name,
        timeout_func=lambda cell: state["timeout"],
        allow_errors=True,
        interrupt_on_timeout=False,
        record_timing=False,
        shutdown_kernel="immediate",
        startup_timeout=STARTUP_ALLOWANCE // 2,
        kernel_manager_class=_kernel_manager_class(memory_mb * 2**20),
        on_cell_executed=on_executed,
        resources={"metadata": {"path": str(cwd)}},
    )
    client._mg_sizes = {}
    status = "ok"
    start = time.monotonic()
    try:
        client.km = client.create_kernel_manager()
        client.start_new_kernel()
        client.start_new_kernel_client()
    except Exception as err:  # noqa: BLE001 — e.g. a memory limit too small for Python and the kernel
        if client.km is not None:
            try:
                client._cleanup_kernel()
            except Exception:  # noqa: BLE001, S110 — already gone
                pass
        return {"status": f"kernel died (at start, memory limit {memory_mb} MB: {_first_line(err)[:120]})",
                "replies": replies}
    with client.setup_kernel():
        process = getattr(getattr(client.km, "provisioner", None), "process", None)
        try:
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                remaining = notebook_timeout - (time.monotonic() - start)
                if remaining <= 0:
                    status = f"timeout (notebook over {notebook_timeout:g} s, before cell {index})"
                    break
                notebook_limited = remaining < cell_timeout
                state["timeout"] = max(min(cell_timeout, remaining), 0.01)
                try:
                    client.execute_cell(cell, index)
                except CellTimeoutError:
                    status = (f"timeout (notebook over {notebook_timeout:g} s, in cell {index})" if notebook_limited
                              else f"timeout (cell {index} over {cell_timeout:g} s)")
                    break
                except DeadKernelError:
                    code = getattr(process, "returncode", None)
                    how = f", signal {-code}" if isinstance(code, int) and code < 0 else (
                        f", exit code {code}" if code is not None else "")
                    status = f"kernel died (cell {index}{how})"
                    break
        finally:
            # SIGKILL the kernel and whatever it started (it leads its own session and process group) while
            # it is still an unreaped child of this process, so the group id cannot belong to anyone else.
            if process is not None and process.poll() is None:
                _kill_group(process.pid)
    return {"status": status, "replies": replies}


def _run_worker() -> None:
    """Entry of ``python -m metagrad.course.grade``: request JSON on stdin, result line on stdout."""
    request = json.loads(sys.stdin.read())
    nb = nbformat.reads(request["notebook"], as_version=4)
    try:
        result = execute(
            nb,
            cwd=Path(request["cwd"]),
            kernel_name=request["kernel_name"],
            cell_timeout=request["cell_timeout"],
            notebook_timeout=request["notebook_timeout"],
            memory_mb=request["memory_mb"],
        )
    except Exception as err:  # noqa: BLE001 — reported to the parent as a row status
        result = {"status": f"grader error: {type(err).__name__}: {_first_line(err)}", "replies": {}}
    result["notebook"] = nbformat.writes(nb)
    sys.stdout.write(request["result_secret"] + json.dumps(result) + "\n")
    sys.stdout.flush()


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


# ----------------------------------------------------------------------------------------------------
# Grading one submission (in the parent: read, match, assemble; run the worker; decide)


def _row(path, notebook_id, status, course: Course, passed=None, notes=()) -> dict:
    expected = course.checks.get(notebook_id, []) if notebook_id else []
    passed = passed if passed is not None else {name: False for name in expected}
    return {
        "file": str(path),
        "notebook": notebook_id or "",
        "status": status,
        "expected": expected,
        "passed": passed,
        "notes": list(notes),
    }


def _error_notes(nb, markers) -> list[str]:
    notes = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                name = output.get("ename")
                if name == "MemoryError" or (name != "ExerciseCheckFailed" or index not in markers):
                    notes.append(f"cell {index}: {name}")
                break
    return notes


def grade_submission(
    path: Path,
    course: Course,
    *,
    kernel_name: str = "python3",
    cell_timeout: float = 120,
    notebook_timeout: float = 900,
    memory_mb: int = 8192,
) -> dict:
    """Grade one submission; returns ``{"file", "notebook", "status", "expected", "passed", "notes"}``."""
    path = Path(path)
    if not path.is_file():
        return _row(path, match_notebook(path, None, course), "not found", course)
    try:
        submission = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        if not isinstance(submission.get("cells"), list):
            raise ValueError("no cells")
    except Exception as err:  # noqa: BLE001 — any unreadable file is a row
        return _row(path, match_notebook(path, None, course), "not a notebook", course, notes=[_first_line(err)[:200]])
    notebook_id = match_notebook(path, submission, course)
    if notebook_id is None:
        return _row(path, None, "unknown notebook", course,
                    notes=["no metadata.metagrad.notebook and no NN_ in the file name matching a course notebook"])
    course_nb = course.notebooks[notebook_id]
    try:
        nb, notes = assemble(course_nb, submission)
    except Exception as err:  # noqa: BLE001 — cells that are not cells
        return _row(path, notebook_id, "not a notebook", course, notes=[f"{type(err).__name__}: {_first_line(err)[:200]}"])
    secret = secrets.token_hex(16)
    markers = instrument(nb, secret, _checks_module(course_nb))
    result_secret = secrets.token_hex(16)
    request = {
        "notebook": nbformat.writes(nb),
        "cwd": str(course.folder),
        "kernel_name": kernel_name,
        "cell_timeout": cell_timeout,
        "notebook_timeout": notebook_timeout,
        "memory_mb": memory_mb,
        "result_secret": result_secret,
    }
    result = _spawn_worker(request, limit=notebook_timeout + STARTUP_ALLOWANCE)
    if "notebook" not in result:
        return _row(path, notebook_id, result["status"], course, notes=notes)
    executed = nbformat.reads(result["notebook"], as_version=4)
    replies = {int(k): v for k, v in result["replies"].items()}
    passed = {}
    for index, (name, marker) in markers.items():
        outputs = executed.cells[index].get("outputs", [])
        last = outputs[-1] if outputs else {}
        passed[name] = (
            replies.get(index) == "ok"
            and not any(o.get("output_type") == "error" for o in outputs)
            and last.get("output_type") == "stream"
            and last.get("name") == "stdout"
            and last.get("text", "").rstrip("\n").split("\n")[-1] == marker
        )
    status = result["status"]
    errors = _error_notes(executed, markers)
    memory = next((n for n in errors if n.endswith("MemoryError")), None)
    if status == "ok" and memory:
        status = f"memory ({memory.split(':')[0]}, limit {memory_mb} MB)"
    return _row(path, notebook_id, status, course, passed, notes + errors)


def _spawn_worker(request: dict, *, limit: float) -> dict:
    process = subprocess.Popen(
        [sys.executable, "-m", "metagrad.course.grade"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(json.dumps(request), timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)  # not yet reaped: the group is the worker's (and the kernel dies with it)
        process.communicate()
        return {"status": f"timeout (grader killed the run after {limit:g} s)"}
    for line in stdout.splitlines():
        if line.startswith(request["result_secret"]):
            return json.loads(line[len(request["result_secret"]):])
    last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {process.returncode}"
    return {"status": f"grader error: {last[:200]}"}


# ----------------------------------------------------------------------------------------------------
# The batch


def _columns(course: Course) -> list[str]:
    return ["file", "notebook", "status", *course.columns, "total", "possible", "notes"]


def _record(row: dict, course: Course) -> dict:
    record = {"file": row["file"], "notebook": row["notebook"], "status": row["status"]}
    for name in course.columns:
        record[name] = int(row["passed"][name]) if name in row["passed"] else ""
    record["total"] = sum(row["passed"].values())
    record["possible"] = len(row["expected"]) if row["notebook"] else ""
    record["notes"] = "; ".join(row["notes"])
    return record


def write_csv(out: Path, rows, course: Course) -> None:
    """Write ``rows`` (``None`` entries skipped) atomically: a temporary file in the same folder, then rename."""
    out = Path(out)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(course))
    writer.writeheader()
    for row in rows:
        if row is not None:
            writer.writerow(_record(row, course))
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def validate_out(out: Path, course: Course) -> None:
    """Fail before grading when ``out`` cannot be written (a folder, an unwritable or missing parent)."""
    out = Path(out)
    if out.is_dir():
        raise GradeError(f"--out {out} is a folder; give a file name such as {out / 'grades.csv'}.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(out, [], course)
    except OSError as err:
        raise GradeError(f"--out {out} cannot be written: {err.strerror or err}.") from None


def grade(
    paths,
    out: Path,
    *,
    course: Path = Path("course"),
    jobs: int = 1,
    cell_timeout: float = 120,
    notebook_timeout: float = 900,
    memory_mb: int = 8192,
    kernel_name: str = "python3",
    on_row=None,
) -> list[dict]:
    """Grade every submission in ``paths`` with ``jobs`` in parallel; the CSV ``out`` is rewritten after each.

    Raises :class:`GradeError` before grading for a bad ``course`` folder, ``out`` or limit.
    """
    for name, value in (("jobs", jobs), ("cell_timeout", cell_timeout), ("notebook_timeout", notebook_timeout),
                        ("memory_mb", memory_mb)):
        if not value > 0:
            raise GradeError(f"{name} must be positive, got {value!r}.")
    course = course if isinstance(course, Course) else Course(Path(course))
    validate_out(out, course)
    paths = [Path(p) for p in paths]
    rows: list[dict | None] = [None] * len(paths)
    lock = threading.Lock()

    def one(index):
        try:
            row = grade_submission(paths[index], course, kernel_name=kernel_name, cell_timeout=cell_timeout,
                                   notebook_timeout=notebook_timeout, memory_mb=memory_mb)
        except Exception as err:  # noqa: BLE001 — one broken submission never loses the batch
            row = _row(paths[index], None, f"grader error: {type(err).__name__}: {_first_line(err)[:200]}", course)
        with lock:
            rows[index] = row
            try:
                write_csv(out, rows, course)
            except OSError as err:  # e.g. the disk filled up: keep grading, report at the end
                row["notes"].append(f"CSV not written after this row: {err}")
            if on_row is not None:
                on_row(row)
        return row

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, range(len(paths))))
    return rows


if __name__ == "__main__":
    _run_worker()
