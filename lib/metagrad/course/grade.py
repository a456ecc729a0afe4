"""Grade student notebooks against the course's own notebooks, with every check decided by the grader.

What is graded comes from the **course** (`course/NN_name.ipynb`, written by `metagrad course build`),
never from the submission (docs/grading.md has the whole story, and what holds with and without a sandbox):

1. **Read.** Only valid nbformat-4 notebooks are graded ([`read_submission`][metagrad.course.grade.read_submission]): anything else is
   `not a notebook` or `unsupported format` (nbformat 3), never run with stubs in place of exercises.
2. **Match and assemble** (nbgrader-style). A submission is matched to a course notebook by its metadata
   (`metadata.metagrad.notebook`) or the `NN_` in its file name; the graded notebook is the course
   notebook with each *exercise cell* replaced by the student's version (found by the cell's
   `metadata.metagrad.exercise`, its cell id, or the `def` of the exercise's function).
3. **Run** in a worker process (`python -m metagrad.course.grade`, killed with the grader by a death
   signal) that starts a fresh kernel — in a bubblewrap sandbox when [`metagrad.course.sandbox`][metagrad.course.sandbox] finds
   one — and runs every code cell except the check cells, within `cell_timeout` / `notebook_timeout`
   (past either, or when the kernel dies, it is SIGKILLed and the remaining checks fail).
4. **Decide in the worker.** At a check cell the worker runs the check itself, with a
   `RemoteFunction` in place of the student's function: each
   call is sent to the kernel (cloudpickle, grader → kernel only) and the output comes back as plain data
   (`metagrad.course._serve`), so references, diagnoses and verdicts never enter the student's process
   and the message recorded is the check's own diagnosis.

The grade book ([`write_csv`][metagrad.course.grade.write_csv]) has one row per student and notebook, merged into an existing file:
student id, file, notebook, status (`graded`, `timed out …`, `crashed …`, `not a notebook`,
`unsupported format`, `unknown notebook`, `not found`, `grader error …`), points per exercise
(weights from [`Config`][metagrad.course.grade.Config]), total, maximum and the failure messages; [`feedback`][metagrad.course.grade.feedback] writes each
student's Markdown and HTML feedback.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import csv
import html
import io
import json
import os
import queue
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
STARTUP_ALLOWANCE = 120  # seconds the parent grants a worker on top of notebook_timeout (kernel start)


class GradeError(ValueError):
    """Bad grading options (course folder, output file); raised before anything is graded."""


# ----------------------------------------------------------------------------------------------------
# The course


class Course:
    """The released course notebooks: `notebooks[id]` and the check names in course order."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        paths = sorted(folder.glob(NOTEBOOK_GLOB)) if folder.is_dir() else []
        if not paths:
            raise GradeError(f"--course {folder}: no course notebooks ({NOTEBOOK_GLOB}) there.")
        self.folder = folder.resolve()
        self.notebooks: dict[str, nbformat.NotebookNode] = {}
        self.files = {path.name for path in paths}
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
    """The course notebook id of a submission: its metadata, else `NN_` in its file name."""
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
    """The course notebook with its exercise cells replaced by the submission's; returns `(nb, notes)`."""
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

    Not a proof of anything: a list for a human to read (imports of `os`/`sys`/`inspect`/…, attribute
    assignments to objects the cell did not create such as `np.allclose = …`, calls of `setattr`,
    `exec`, `get_ipython`, …, use of `checks`, IPython magics or shell escapes).
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


def _checks_module(course_nb: nbformat.NotebookNode) -> str:
    """The module the course notebook binds to `checks`: `from metagrad.course import X [as checks]` or
    `import metagrad.course.X as checks`; `metagrad.course.checks` when it says neither."""
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


def check_calls(nb: nbformat.NotebookNode) -> dict[int, tuple[str, list[str]]]:
    """`{cell index: (check name, [argument names])}` of the check cells, e.g. `checks.check_hvp(hvp)`."""
    calls = {}
    for index, cell in enumerate(nb.cells):
        name = cell.metadata.get("metagrad", {}).get("check")
        if name is None:
            continue
        arguments = [name]
        try:
            for node in ast.walk(ast.parse(cell.source)):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == f"check_{name}"):
                    arguments = [a.id for a in node.args if isinstance(a, ast.Name)]
                    break
        except SyntaxError:
            pass
        calls[index] = (name, arguments)
    return calls


def exercise_cells(nb: nbformat.NotebookNode) -> dict[str, int]:
    """Exercise (function) name -> index of the course cell that defines it."""
    found = {}
    for index, cell in enumerate(nb.cells):
        for name in cell.metadata.get("metagrad", {}).get("exercise", []) or []:
            found.setdefault(name, index)
    return found


# ----------------------------------------------------------------------------------------------------
# Worker: drives one sandboxed kernel and decides the checks in its own process (see _run_worker)


class _Abort(BaseException):
    """The kernel timed out or died: the rest of the notebook is not run (`status` says why)."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


class KernelRunner:
    """One grading kernel (sandboxed when [`sandbox`][metagrad.course.sandbox] finds bubblewrap) and its client."""

    def __init__(self, *, kernel_name: str, memory_mb: int, tmpfs_mb: int, root: Path, isolation: str):
        from jupyter_client.manager import KernelManager

        from metagrad.course import sandbox

        self.workdir, self.sockets = root / "work", root / "sockets"
        self.workdir.mkdir()
        self.sockets.mkdir()
        public = sandbox.write_public_checks(root / "public_checks") if isolation == "bwrap" else None
        env = {"HOME": str(self.workdir), "PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin", "/bin"]),
               "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(self.workdir / ".matplotlib"),
               "IPYTHONDIR": str(self.workdir / ".ipython"), "XDG_CACHE_HOME": str(self.workdir / ".cache"),
               "PYTHONDONTWRITEBYTECODE": "1", "JUPYTER_PLATFORM_DIRS": "1"}
        env.update({k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_", "LANG", "LC_")) or k == "TZ"})
        memory = memory_mb * 2**20
        worker = os.getpid()

        class Manager(KernelManager):
            def format_kernel_cmd(self, extra_arguments=None):
                cmd = super().format_kernel_cmd(extra_arguments)
                if isolation == "bwrap":
                    inner = [sys.executable, str(LAUNCHER), str(memory), "0", "--", *cmd]
                    return sandbox.command(inner, workdir=runner.workdir, sockets=runner.sockets,
                                           public_checks=public, tmpfs_mb=tmpfs_mb, env=env)
                return [sys.executable, str(LAUNCHER), str(memory), str(worker), "--", *cmd]

        runner = self
        self.km = Manager(kernel_name=kernel_name, transport="ipc", ip=str(self.sockets / "kernel"),
                          connection_file=str(self.sockets / "kernel.json"))
        self.km.start_kernel(cwd=str(self.workdir), env=env)
        self.process = getattr(getattr(self.km, "provisioner", None), "process", None)
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=STARTUP_ALLOWANCE // 2)
        except RuntimeError as err:
            self.kill()
            raise _Abort(f"crashed (the kernel did not start, memory limit {memory_mb} MB: {_first_line(err)[:120]})") from None

    def run(self, code: str, timeout: float, where: str, *, user_expressions=None) -> dict:
        """Execute `code`; the reply's content. Raises `_Abort` on timeout or a dead kernel.

        `where` names the cell and the limit, e.g. `("cell 4", "cell 4 over 3 s")`."""
        msg_id = self.kc.execute(code, silent=user_expressions is not None, store_history=False,
                                 user_expressions=user_expressions or {}, allow_stdin=False)
        deadline = time.monotonic() + timeout
        while True:
            while True:  # drain (and drop) the outputs: only the reply matters
                try:
                    self.kc.get_iopub_msg(timeout=0)
                except queue.Empty:
                    break
            try:
                reply = self.kc.get_shell_msg(timeout=0.1)
            except queue.Empty:
                if not self.km.is_alive():
                    code_ = getattr(self.process, "returncode", None)
                    how = f", signal {-code_}" if isinstance(code_, int) and code_ < 0 else ""
                    raise _Abort(f"crashed (kernel died in {where[0]}{how})") from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise _Abort(f"timed out ({where[1]})") from None
                continue
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return reply["content"]

    def evaluate(self, expression: str, timeout: float, where) -> str:
        """The value of `expression` in the kernel, which must be a `str` (read with `ast.literal_eval`)."""
        from metagrad.course import _serve

        content = self.run("", timeout, where, user_expressions={"r": expression})
        result = content.get("user_expressions", {}).get("r", {})
        if result.get("status") != "ok":
            raise KernelAnswerError(f"the kernel could not answer ({result.get('ename', 'no reply')})")
        text = result.get("data", {}).get("text/plain", "")
        if len(text) > _serve.MAX_BYTES:
            raise KernelAnswerError("the answer is too large")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise KernelAnswerError("the kernel's answer is not readable") from None
        if not isinstance(value, str):
            raise KernelAnswerError("the kernel's answer is not readable")
        return value

    def kill(self) -> None:
        """SIGKILL the kernel (bwrap: its whole PID namespace; otherwise its session's process group)."""
        process = self.process
        if process is not None and process.poll() is None:
            _kill_group(process.pid)
            try:
                process.kill()
            except ProcessLookupError:
                pass
            process.wait()

    def close(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            self.kill()
            try:
                self.km.cleanup_resources()
            except Exception:  # noqa: BLE001, S110 — best effort
                pass


class KernelAnswerError(Exception):
    """The kernel's answer to a check's call could not be read (counts against the submission)."""


def dumps(obj) -> bytes:
    """cloudpickle `obj` for the kernel; pytree nodes of custom classes (e.g. `TabularMDP`, whose slots
    refuse `setattr`) travel as their children and tree structure, rebuilt with `tree_unflatten`."""
    import cloudpickle
    import jax
    import numpy as np

    class Pickler(cloudpickle.Pickler):
        def reducer_override(self, obj):
            if (type(obj) not in (tuple, list, dict) and obj is not None and not isinstance(obj, (jax.Array, np.ndarray))
                    and not callable(obj) and not jax.tree_util.all_leaves([obj])):
                children, treedef = jax.tree_util.tree_flatten(obj, is_leaf=lambda x: x is not obj)
                return jax.tree_util.tree_unflatten, (treedef, children)
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    Pickler(buffer).dump(obj)
    return buffer.getvalue()


def _executor(runner: KernelRunner, deadline: float, where):
    """The `_diagnose._EXECUTOR` of one check: `fn(*args)` runs in the kernel; returns the decoded output."""
    import base64

    from metagrad.course import _serve

    def execute(fn, args):
        try:
            payload = base64.b64encode(dumps((fn, tuple(args)))).decode("ascii")
        except Exception as err:  # noqa: BLE001 — a check that passes something unpicklable
            raise _Abort(f"grader error (cannot send the call to the kernel: {type(err).__name__}: {_first_line(err)[:120]})") from None
        text = runner.evaluate(f"__import__('metagrad.course._serve', fromlist=['call']).call({payload!r})",
                               max(deadline - time.monotonic(), 0.01), where)
        try:
            answer = json.loads(text)
            if "ok" in answer:
                return _serve.decode(answer["ok"])
            error = answer["error"]
            name, message = str(error["type"]), str(error["message"])
        except (ValueError, KeyError, TypeError, RecursionError):
            raise KernelAnswerError("the kernel's answer is not readable") from None
        builtin = getattr(builtins, name, None)
        if not (error.get("builtin") and isinstance(builtin, type) and issubclass(builtin, Exception)
                and builtin.__module__ == "builtins"):
            builtin = type(name if name.isidentifier() else "Error", (Exception,), {})
        raise builtin(message)

    return execute


def _verdict(module, name: str, arguments: list[str], runner: KernelRunner, timeout: float, where):
    """`(passed, message)` of check `name` run here on the kernel's functions `arguments`."""
    from metagrad.course.checks import _diagnose

    for argument in arguments:
        state = runner.evaluate(f"__import__('metagrad.course._serve', fromlist=['probe']).probe({argument!r})",
                                timeout, where)
        if state == "missing":
            return False, f"Exercise `{name}`: `{argument}` is not defined: run its exercise cell (no errors) first."
        if state != "callable":
            return False, f"Exercise `{name}`: pass the function itself; `{argument}` is {state.split(': ')[-1]}."
    check = getattr(module, f"check_{name}", None)
    if check is None:
        raise _Abort(f"grader error (no check_{name} in {module.__name__})")
    printed = io.StringIO()
    _diagnose._EXECUTOR = _executor(runner, time.monotonic() + timeout, where)
    try:
        with contextlib.redirect_stdout(printed):
            check(*[_diagnose.RemoteFunction(a) for a in arguments])
    except _diagnose.ExerciseCheckFailed as err:
        return False, str(err)
    except _diagnose.RemoteTracedError as err:
        raise _Abort(f"grader error ({err})") from None
    except Exception as err:  # noqa: BLE001 — the output broke the check itself: a wrong answer
        return False, f"Exercise `{name}`: its output could not be checked ({type(err).__name__}: {_first_line(err)[:160]})."
    finally:
        _diagnose._EXECUTOR = None
    lines = [line for line in printed.getvalue().splitlines() if line.strip()]
    return True, lines[-1] if lines else f"Exercise `{name}` passed."


def execute(nb, *, checks_module: str, x64: bool, kernel_name: str, cell_timeout: float, notebook_timeout: float,
            memory_mb: int, tmpfs_mb: int, isolation: str) -> dict:
    """Run the assembled notebook `nb`: every code cell but the checks in the kernel, the checks here.

    Returns `{"status", "checks": {index: [passed, message]}, "errors": {index: ename}}`.
    """
    import importlib

    import jax

    jax.config.update("jax_enable_x64", x64)
    module = importlib.import_module(checks_module)
    calls = check_calls(nb)
    checks: dict[int, list] = {}
    errors: dict[int, str] = {}
    status = "graded"
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="metagrad-grade-") as root:
        runner = None
        try:
            runner = KernelRunner(kernel_name=kernel_name, memory_mb=memory_mb, tmpfs_mb=tmpfs_mb, root=Path(root),
                                  isolation=isolation)
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                remaining = notebook_timeout - (time.monotonic() - start)
                if remaining <= 0:
                    raise _Abort(f"timed out (notebook over {notebook_timeout:g} s, before cell {index})")
                limit = min(cell_timeout, remaining)
                where = (f"cell {index}", f"cell {index} over {cell_timeout:g} s" if limit == cell_timeout
                         else f"notebook over {notebook_timeout:g} s, in cell {index}")
                if index in calls:
                    name, arguments = calls[index]
                    checks[index] = list(_verdict(module, name, arguments, runner, limit, where))
                else:
                    reply = runner.run(cell.source, limit, where)
                    if reply.get("status") == "error":
                        errors[index] = str(reply.get("ename", "error"))[:80]
        except _Abort as abort:
            status = abort.status
        finally:
            if runner is not None:
                runner.close()
    for index, (name, _) in calls.items():
        checks.setdefault(index, [False, f"Exercise `{name}`: not checked: {status}."])
    return {"status": status, "checks": checks, "errors": errors}


def _run_worker() -> None:
    """Entry of `python -m metagrad.course.grade PARENT_PID`: request JSON on stdin, result line on stdout.

    The worker first asks Linux to SIGKILL it when the grader dies (and exits if that already happened), so
    killing the grader leaves no worker, and through the worker's own death signals no kernel either."""
    _arm_death_signal()
    if len(sys.argv) > 1 and os.getppid() != int(sys.argv[1]):
        sys.exit(1)
    request = json.loads(sys.stdin.read())
    nb = nbformat.reads(request.pop("notebook"), as_version=4)
    secret = request.pop("result_secret")
    try:
        result = execute(nb, **request)
    except Exception as err:  # noqa: BLE001 — reported to the parent as a row status
        result = {"status": f"grader error ({type(err).__name__}: {_first_line(err)[:200]})", "checks": {}, "errors": {}}
    sys.stdout.write(secret + json.dumps(result) + "\n")
    sys.stdout.flush()


def _kill_group(pid: int | None) -> None:
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _arm_death_signal() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _spawn_worker(request: dict, *, limit: float) -> dict:
    """Run the worker; it is SIGKILLed with the grader (death signal) and when it overruns `limit`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "metagrad.course.grade", str(os.getpid())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True,
        cwd="/",  # `-m` puts the current folder on sys.path, and the sandbox shows every import path
    )
    try:
        stdout, stderr = process.communicate(json.dumps(request), timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)  # not yet reaped: the group is the worker's (and the kernel dies with it)
        process.communicate()
        return {"status": f"timed out (grader killed the run after {limit:g} s)", "checks": {}, "errors": {}}
    for line in stdout.splitlines():
        if line.startswith(request["result_secret"]):
            return json.loads(line[len(request["result_secret"]):])
    last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {process.returncode}"
    return {"status": f"grader error ({last[:200]})", "checks": {}, "errors": {}}


# ----------------------------------------------------------------------------------------------------
# Grading one submission (in the parent: read, match, assemble; run the worker)


def read_submission(path: Path) -> tuple[nbformat.NotebookNode | None, str, str]:
    """`(notebook, status, note)`: status '' when readable; 'unsupported format' for nbformat other than 4;
    'not a notebook' for anything that is not a valid nbformat-4 notebook (malformed metadata included)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        return None, "not a notebook", _first_line(err)[:200]
    if not isinstance(raw, dict) or "cells" not in raw and "worksheets" not in raw:
        return None, "not a notebook", "no cells"
    version = raw.get("nbformat")
    if version != 4:
        return None, "unsupported format", f"nbformat {version!r}; save it with Jupyter as a version 4 notebook"
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # noqa: BLE001 — any schema violation
        return None, "not a notebook", f"invalid notebook: {_first_line(err)[:160]}"
    return nb, "", ""


def _row(path, notebook_id, status, course: Course, checks=None, notes=(), cells=None) -> dict:
    expected = course.checks.get(notebook_id, []) if notebook_id else []
    checks = checks or {}
    results = {name: checks.get(name, (False, f"not graded: {status}")) for name in expected}
    return {"file": str(path), "notebook": notebook_id or "", "status": status, "expected": expected,
            "passed": {name: bool(ok) for name, (ok, _) in results.items()},
            "messages": {name: message for name, (_, message) in results.items()},
            "cells": cells or {}, "notes": list(notes)}


def grade_submission(path: Path, course: Course, *, kernel_name: str = "python3", cell_timeout: float = 120,
                     notebook_timeout: float = 900, memory_mb: int = 8192, tmpfs_mb: int = 256,
                     isolation: str | None = None) -> dict:
    """Grade one submission; returns ``{"file", "notebook", "status", "expected", "passed", "messages", "cells",
    "notes"}` (`cells`: check name -> `[index, id]`` of the student's exercise cell)."""
    from metagrad.course import sandbox

    path = Path(path)
    if not path.is_file():
        return _row(path, match_notebook(path, None, course), "not found", course)
    submission, problem, note = read_submission(path)
    if submission is None:
        return _row(path, match_notebook(path, None, course), problem, course, notes=[note])
    notebook_id = match_notebook(path, submission, course)
    if notebook_id is None:
        return _row(path, None, "unknown notebook", course,
                    notes=["no metadata.metagrad.notebook and no NN_ in the file name matching a course notebook"])
    course_nb = course.notebooks[notebook_id]
    try:
        nb, notes = assemble(course_nb, submission)
    except Exception as err:  # noqa: BLE001 — cells that are not cells
        return _row(path, notebook_id, "not a notebook", course, notes=[f"{type(err).__name__}: {_first_line(err)[:200]}"])
    calls = check_calls(course_nb)
    exercises = exercise_cells(course_nb)
    student_cells = [c for c in submission.cells if c.get("cell_type") == "code"]
    cells = {}
    for index, (name, arguments) in calls.items():
        course_index = exercises.get(arguments[0] if arguments else name, exercises.get(name))
        if course_index is not None:
            mine = _student_cell(course_nb.cells[course_index], student_cells)
            position = submission.cells.index(mine) if mine is not None else course_index
            cells[name] = [position, (mine or course_nb.cells[course_index]).get("id", "")]
    request = {
        "notebook": nbformat.writes(nb), "checks_module": _checks_module(course_nb), "x64": _uses_x64(course_nb),
        "kernel_name": kernel_name, "cell_timeout": cell_timeout, "notebook_timeout": notebook_timeout,
        "memory_mb": memory_mb, "tmpfs_mb": tmpfs_mb, "isolation": isolation or sandbox.isolation(),
        "result_secret": secrets.token_hex(16),
    }
    result = _spawn_worker(request, limit=notebook_timeout + STARTUP_ALLOWANCE)
    checks = {calls[int(i)][0]: tuple(v) for i, v in result.get("checks", {}).items() if int(i) in calls}
    for index, name in sorted((int(i), n) for i, n in result.get("errors", {}).items()):
        kind = nb.cells[index].metadata.get("metagrad", {})
        what = f"exercise cell {index} ({', '.join(kind['exercise'])})" if "exercise" in kind else f"demo cell {index} (not graded)"
        notes.append(f"{what}: {name}")
    return _row(path, notebook_id, result["status"], course, checks, notes, cells)


def _uses_x64(course_nb) -> bool:
    return any(re.search(r"jax_enable_x64['\"]\s*,\s*True", c.source) for c in course_nb.cells if c.cell_type == "code")


# ----------------------------------------------------------------------------------------------------
# Configuration, grade book and feedback

DEFAULT_COLUMNS = {"id": "student", "file": "file", "notebook": "notebook", "status": "status", "total": "total",
                   "max": "max", "messages": "messages"}


class Config:
    """Points per exercise (default 1), column names of the grade book and how to read a student id.

    From a TOML file (`--config`):

    ```
    [points]            # exercise -> points (default 1)
    hvp = 2
    [columns]           # grade-book column names, e.g. for an LMS import; an exercise name renames its column
    student = "Username"
    total = "Points"
    [student]
    pattern = '([^/]+)/[^/]*$'    # regular expression searched in the submission's path as given; its
                                  # group `id` (else group 1) is the student id. Default: the folder's
                                  # name when the file has a course notebook's name (a folder per
                                  # student), else the file name without .ipynb
    ```
    """

    def __init__(self, points=None, columns=None, pattern: str | None = None):
        self.course_files: set[str] = set()  # file names of the course notebooks (set by :func:`grade`)
        self.points = dict(points or {})
        self.columns = dict(DEFAULT_COLUMNS)
        unknown = set(columns or {}) - set(DEFAULT_COLUMNS) - {"student"}
        for key, value in (columns or {}).items():
            if not isinstance(value, str) or not value:
                raise GradeError(f"--config: [columns] {key} must be a non-empty string.")
            self.columns["id" if key == "student" else key] = value
        self.exercise_columns = {k: self.columns.pop(k) for k in unknown}
        for name, value in self.points.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise GradeError(f"--config: [points] {name} must be a number >= 0, got {value!r}.")
        try:
            self.pattern = re.compile(pattern) if pattern else None
        except re.error as err:
            raise GradeError(f"--config: [student] pattern is not a regular expression ({err}).") from None
        if self.pattern is not None and "id" not in self.pattern.groupindex and self.pattern.groups < 1:
            raise GradeError("--config: [student] pattern needs a group, e.g. (?P<id>...).")

    @classmethod
    def load(cls, path: Path | None, course: Course | None = None) -> "Config":
        if path is None:
            return cls()
        import tomllib

        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise GradeError(f"--config {path}: {err}") from None
        extra = set(data) - {"points", "columns", "student"}
        if extra:
            raise GradeError(f"--config {path}: unknown section(s) {', '.join(sorted(extra))}.")
        config = cls(data.get("points"), data.get("columns"), data.get("student", {}).get("pattern"))
        if course is not None:
            for name in set(config.points) | set(config.exercise_columns):
                if name not in course.columns:
                    raise GradeError(f"--config {path}: {name!r} is not an exercise of the course.")
        return config

    def student_id(self, path) -> str:
        name = Path(path).name
        if self.pattern is not None:
            match = self.pattern.search(str(path))
            found = match and (match.group("id") if "id" in self.pattern.groupindex else match.group(1))
            if found:
                return found
        if name in self.course_files and Path(path).parent.name:
            return Path(path).parent.name
        return name[:-6] if name.endswith(".ipynb") else name

    def weight(self, exercise: str) -> float:
        return self.points.get(exercise, 1)

    def column(self, exercise: str) -> str:
        return self.exercise_columns.get(exercise, exercise)


def _number(x: float):
    return int(x) if float(x).is_integer() else round(float(x), 6)


def _columns(course: Course, config: Config) -> list[str]:
    c = config.columns
    return [c["id"], c["file"], c["notebook"], c["status"], *[config.column(n) for n in course.columns], c["total"],
            c["max"], c["messages"]]


def _record(row: dict, course: Course, config: Config) -> dict:
    c = config.columns
    record = {c["id"]: config.student_id(row["file"]), c["file"]: row["file"], c["notebook"]: row["notebook"],
              c["status"]: row["status"]}
    for name in course.columns:
        record[config.column(name)] = _number(config.weight(name) * row["passed"][name]) if name in row["passed"] else ""
    record[c["total"]] = _number(sum(config.weight(n) for n, ok in row["passed"].items() if ok))
    record[c["max"]] = _number(sum(config.weight(n) for n in row["expected"])) if row["notebook"] else ""
    failures = [row["messages"][n] for n in row["expected"] if not row["passed"][n]]
    record[c["messages"]] = " | ".join(failures + row["notes"])
    return record


def _existing(out: Path, course: Course, config: Config) -> list[dict]:
    """Rows of an earlier grade book at `out` (kept when their student and notebook are not regraded)."""
    if not out.is_file() or out.stat().st_size == 0:
        return []
    try:
        with out.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise GradeError(f"--out {out}: cannot read the existing grade book to merge ({err}).") from None
    if rows and fields != _columns(course, config):
        raise GradeError(f"--out {out}: its columns differ from this course and --config; give another --out "
                         "(merging would mix two layouts).")
    return rows


def write_csv(out: Path, rows, course: Course, config: Config | None = None, previous=()) -> None:
    """Write the grade book atomically: `previous` rows (dicts) except those regraded, then `rows`."""
    config = config or Config()
    out = Path(out)
    records = [_record(r, course, config) for r in rows if r is not None]
    c = config.columns
    fresh = {(r[c["id"]], r[c["notebook"]]) for r in records}
    kept = [r for r in previous if (r.get(c["id"]), r.get(c["notebook"])) not in fresh]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(course, config))
    writer.writeheader()
    for record in kept + records:
        writer.writerow(record)
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def feedback(row: dict, course: Course, config: Config, folder: Path) -> tuple[Path, Path]:
    """Write `<student>-<notebook>.md` and `.html` into `folder`: each exercise with its points, pass/fail,
    the check's message and a link to the student's exercise cell. Returns the two paths."""
    record = _record(row, course, config)
    student = config.student_id(row["file"])
    stem = re.sub(r"[^A-Za-z0-9_.@-]+", "_", f"{student}-{row['notebook'] or 'unknown'}").lstrip(".") or "feedback"
    link = os.path.relpath(Path(row["file"]).resolve(), Path(folder).resolve())
    c = config.columns
    lines = [f"# Feedback: {student}, notebook {row['notebook'] or '?'}", "",
             f"File: `{row['file']}`  ", f"Status: **{row['status']}**  ",
             f"Points: **{record[c['total']]} / {record[c['max']] if record[c['max']] != '' else '?'}**", "",
             "| Exercise | Points | Result | Message | Cell |", "|---|---|---|---|---|"]
    parts = []
    for name in row["expected"]:
        ok = row["passed"][name]
        points = f"{_number(config.weight(name) * ok)} / {_number(config.weight(name))}"
        index, cell_id = (row["cells"].get(name) or [None, ""])
        where = f"exercise cell {index}" + (f" (id {cell_id})" if cell_id else "") if index is not None else "—"
        href = f"{link}#{cell_id}" if cell_id else link
        message = row["messages"][name].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{name}` | {points} | {'passed' if ok else 'failed'} | {message} | [{where}]({href}) |")
        parts.append((name, points, ok, row["messages"][name], where, href))
    if row["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in row["notes"]]]
    folder.mkdir(parents=True, exist_ok=True)
    markdown = folder / f"{stem}.md"
    markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    e = html.escape
    rows_html = "".join(
        f"<tr class='{'pass' if ok else 'fail'}'><td><code>{e(n)}</code></td><td>{e(p)}</td>"
        f"<td>{'passed' if ok else 'failed'}</td><td>{e(m)}</td><td><a href='{e(h, quote=True)}'>{e(w)}</a></td></tr>"
        for n, p, ok, m, w, h in parts)
    notes_html = "".join(f"<li>{e(n)}</li>" for n in row["notes"])
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Feedback {e(student)}</title>"
            "<style>td,th{border:1px solid #ccc;padding:4px}.pass{background:#e8f5e9}.fail{background:#ffebee}</style>"
            f"</head><body><h1>Feedback: {e(student)}, notebook {e(row['notebook'] or '?')}</h1>"
            f"<p>File: <code>{e(row['file'])}</code><br>Status: <b>{e(row['status'])}</b><br>"
            f"Points: <b>{e(str(record[c['total']]))} / {e(str(record[c['max']]))}</b></p>"
            "<table><tr><th>Exercise</th><th>Points</th><th>Result</th><th>Message</th><th>Cell</th></tr>"
            f"{rows_html}</table>" + (f"<h2>Notes</h2><ul>{notes_html}</ul>" if notes_html else "") + "</body></html>\n")
    page_path = folder / f"{stem}.html"
    page_path.write_text(page, encoding="utf-8")
    return markdown, page_path


def validate_out(out: Path, course: Course, config: Config | None = None) -> list[dict]:
    """Fail before grading when `out` cannot be written; returns the rows of an existing grade book."""
    config = config or Config()
    out = Path(out)
    if out.is_dir():
        raise GradeError(f"--out {out} is a folder; give a file name such as {out / 'grades.csv'}.")
    previous = _existing(out, course, config)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(out, [], course, config, previous)
    except OSError as err:
        raise GradeError(f"--out {out} cannot be written: {err.strerror or err}.") from None
    return previous


def grade(
    paths,
    out: Path,
    *,
    course: Path = Path("course"),
    jobs: int = 1,
    cell_timeout: float = 120,
    notebook_timeout: float = 900,
    memory_mb: int = 8192,
    tmpfs_mb: int = 256,
    kernel_name: str = "python3",
    config: Path | Config | None = None,
    feedback_dir: Path | None = None,
    on_row=None,
    on_start=None,
) -> list[dict]:
    """Grade every submission in `paths` with `jobs` in parallel; the grade book `out` (merged with the rows
    it already has) is rewritten after each, and each student's feedback goes to `feedback_dir` (default: a
    `feedback` folder next to `out`). Raises [`GradeError`][metagrad.course.grade.GradeError] before grading for bad options.
    """
    from metagrad.course import sandbox

    for name, value in (("jobs", jobs), ("cell_timeout", cell_timeout), ("notebook_timeout", notebook_timeout),
                        ("memory_mb", memory_mb), ("tmpfs_mb", tmpfs_mb)):
        if not value > 0:
            raise GradeError(f"{name} must be positive, got {value!r}.")
    course = course if isinstance(course, Course) else Course(Path(course))
    config = config if isinstance(config, Config) else Config.load(config, course)
    config.course_files = course.files
    previous = validate_out(out, course, config)
    feedback_dir = Path(feedback_dir) if feedback_dir is not None else Path(out).parent / "feedback"
    isolation = sandbox.isolation()
    if on_start is not None:
        on_start(sandbox.describe(isolation))
    paths = [Path(p) for p in paths]
    rows: list[dict | None] = [None] * len(paths)
    lock = threading.Lock()

    def one(index):
        try:
            row = grade_submission(paths[index], course, kernel_name=kernel_name, cell_timeout=cell_timeout,
                                   notebook_timeout=notebook_timeout, memory_mb=memory_mb, tmpfs_mb=tmpfs_mb,
                                   isolation=isolation)
        except Exception as err:  # noqa: BLE001 — one broken submission never loses the batch
            row = _row(paths[index], None, f"grader error ({type(err).__name__}: {_first_line(err)[:200]})", course)
        with lock:
            rows[index] = row
            try:
                write_csv(out, rows, course, config, previous)
                feedback(row, course, config, feedback_dir)
            except OSError as err:  # e.g. the disk filled up: keep grading, report at the end
                row["notes"].append(f"grade book or feedback not written after this row: {err}")
            if on_row is not None:
                on_row(row)
        return row

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, range(len(paths))))
    return rows


if __name__ == "__main__":
    _run_worker()
