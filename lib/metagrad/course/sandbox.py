"""Where a grading kernel runs: a bubblewrap sandbox when the machine has one, else a limited process.

With `bwrap` (bubblewrap) and user namespaces, each kernel runs as uid/gid 65534 in new user, PID,
network, IPC, UTS and mount namespaces (`--unshare-all`), with no capabilities, in its own session, and:

- sees only the Python installation, the virtual environment, the package source (`metagrad`) — all
  read-only — and a **public copy of the checks package** ([`write_public_checks`][metagrad.course.sandbox.write_public_checks]: the checks with their
  bodies and every `*reference*` definition removed) over `metagrad/course/checks`; the course folder,
  the submissions, the grade book, the rest of the repository and `/root` are not there;
- writes only to a fresh temporary working folder (its `HOME` and current folder), the folder of its
  socket files, and size-limited `/tmp` and `/dev/shm` (`tmpfs_mb` each, counted on top of the
  address-space limit `RLIMIT_AS` set by `metagrad.course._kernel_launcher`);
- cannot see or signal any other process (its own PID namespace: the grader, sibling kernels and the
  worker are invisible; no ptrace of them), and has no network;
- dies with the grading worker (`--die-with-parent`); killing the sandbox's first process ends its PID
  namespace, so no background process outlives the kernel.

[`probe`][metagrad.course.sandbox.probe] tries this very command before any kernel starts; where a container
forbids mounting a new `/proc`, the sandbox has none (processes are then not even listed).

Without bubblewrap (`isolation() == "none"`) the kernel runs as the grader's user, in its own session and
process group (killed as a whole), with the same resource limits and a fresh working folder; the grader still
decides every check in its own process, but a student's code can read files the grader's user can read
(including the reference solutions in the installed package) and signal processes of that user.
`docs/grading.md` lists what holds in each case.
"""

from __future__ import annotations

import ast
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SANDBOX_UID = 65534
CHECKS = Path(__file__).with_name("checks")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "localtime", "fonts",
        "hosts", "alternatives")


@functools.cache
def probe() -> tuple[str | None, bool, str]:
    """Whether the sandbox works here: `(bwrap path or None, mount_proc, why_not)`.

    Runs the very command [`command`][metagrad.course.sandbox.command] builds, with this Python in place of
    the kernel, so every mount, the user mapping and the interpreter's paths are tried. Some containers
    (Docker's default profile masks files of its own `/proc`) forbid mounting a new `/proc`; the sandbox
    then goes without one (`mount_proc` False: no process, not even the kernel's own, is listed, which
    hides more, and Python, Jupyter and JAX run without it). `why_not` says why the sandbox cannot be used
    (empty when it can); the grader prints it. Computed once per process."""
    path = shutil.which("bwrap")
    if path is None:
        return None, True, "bubblewrap (bwrap) is not installed"
    why = ""
    for mount_proc in (True, False):
        with tempfile.TemporaryDirectory(prefix="metagrad-probe-") as tmp:
            root = Path(tmp)
            folders = [root / name for name in ("work", "sockets", "checks")]
            for folder in folders:
                folder.mkdir()
            args = _args(path, [sys.executable, "-c", "import json, ipykernel"], workdir=folders[0],
                         sockets=folders[1], public_checks=folders[2], tmpfs_mb=16, env={}, mount_proc=mount_proc)
            try:
                run = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
            except (OSError, subprocess.TimeoutExpired) as err:
                return None, True, f"bwrap did not run: {err}"
        if run.returncode == 0:
            return path, mount_proc, ""
        why = why or (run.stderr.strip().splitlines() or [f"exit code {run.returncode}"])[-1]
    return None, True, f"bwrap cannot build the sandbox here ({why})"


def bwrap() -> str | None:
    """The path of a `bwrap` that can build the sandbox here, else None (see [`probe`][metagrad.course.sandbox.probe])."""
    return probe()[0]


def isolation() -> str:
    """'bwrap' or 'none' (see the module docstring for what each guarantees)."""
    return "bwrap" if bwrap() else "none"


def describe(kind: str) -> str:
    """One line for the grader to print when it starts."""
    if kind == "bwrap":
        no_proc = "" if probe()[1] else " (no /proc: this machine forbids mounting one)"
        return ("isolation: bubblewrap sandbox (uid 65534, own PID/network/mount namespaces, package read-only, "
                f"course, submissions and reference solutions invisible, fresh working folder){no_proc}")
    return (f"isolation: NONE ({probe()[2] or 'not requested'}): kernels run as this user in their own process "
            "group with resource limits and a fresh working folder; checks are still decided outside the kernel, "
            "but student code can read this user's files, including the reference solutions, and signal this "
            "user's processes. Install bubblewrap (apt-get install bubblewrap) where user namespaces are allowed "
            "for the full guarantees (docs/grading.md).")


def _ro_paths() -> list[str]:
    """Folders the kernel must read: the Python installation, the environment and every import path."""
    candidates = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))]
    candidates += [p for p in sys.path if p and os.path.isdir(p) and os.path.abspath(p) != os.getcwd()]
    paths: list[str] = []
    for path in sorted({os.path.realpath(p) for p in candidates} | {os.path.abspath(p) for p in candidates}, key=len):
        if path in ("/", "/usr") or path.startswith("/usr/"):
            continue
        if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths):
            paths.append(path)
    return paths


def _interpreter_links(bound: list[str]) -> list[tuple[str, str]]:
    """The symbolic links on the way from `sys.executable` to the interpreter, as `(target, link)`, that lie
    outside `bound` (and /usr). A virtual environment made by an interpreter reached through a link in a
    temporary folder (as CI does: `python3` is a link in `mktemp -d`) points its `bin/python` and its
    `pyvenv.cfg` home at that link; without it in the sandbox the kernel cannot even start."""
    links, path, seen = [], os.path.abspath(sys.executable), set()
    while os.path.islink(path) and path not in seen:
        seen.add(path)
        target = os.readlink(path)
        inside = path.startswith("/usr/") or any(path.startswith(p.rstrip("/") + "/") for p in bound)
        if not inside:
            links.append((target, path))
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return links


def command(kernel_cmd: list[str], *, workdir: Path, sockets: Path, public_checks: Path, tmpfs_mb: int,
            env: dict[str, str]) -> list[str]:
    """The bwrap command line that runs `kernel_cmd` in the sandbox described above."""
    path, mount_proc, why = probe()
    if path is None:
        raise RuntimeError(f"no sandbox: {why}")
    return _args(path, kernel_cmd, workdir=workdir, sockets=sockets, public_checks=public_checks, tmpfs_mb=tmpfs_mb,
                 env=env, mount_proc=mount_proc)


def _args(path: str, kernel_cmd: list[str], *, workdir: Path, sockets: Path, public_checks: Path, tmpfs_mb: int,
          env: dict[str, str], mount_proc: bool) -> list[str]:
    args = [path, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    # The size-limited /tmp and /dev/shm first: bwrap mounts in order, so the read-only binds below (a venv or a
    # checkout that lives under /tmp, as in a CI clone) stay visible on top of the empty /tmp.
    size = str(tmpfs_mb * 2**20)
    args += ["--proc", "/proc"] if mount_proc else []
    args += ["--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--size", size, "--tmpfs", "/tmp"]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in _ETC:
        if (Path("/etc") / name).exists():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    bound = _ro_paths()
    for path in bound:
        args += ["--ro-bind", path, path]
    for target, link in _interpreter_links(bound):
        args += ["--symlink", target, link]
    args += ["--ro-bind", str(public_checks), str(CHECKS.resolve())]
    args += ["--bind", str(workdir), str(workdir), "--bind", str(sockets), str(sockets), "--chdir", str(workdir)]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return [*args, "--", *kernel_cmd]


def _mentions_reference(node) -> bool:
    names = []
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names = [node.name]
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return any("reference" in name.lower() for name in names)


def public_source(source: str, keep=frozenset()) -> str:
    """A checks module without what a kernel must not see: every top-level definition whose name mentions
    'reference', the bodies of the `check_*` functions (which hold the references and known mistakes) and
    every private top-level helper (`_name`: cases, mistakes, reference helpers) that neither a kept public
    function nor a sibling module (`keep`) uses. Imports of removed names are dropped; `__all__` keeps the names that remain."""
    tree = ast.parse(source)
    body = [node for node in tree.body if not _mentions_reference(node)]
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("check_"):
            doc = ast.get_docstring(node)
            node.body = ([ast.Expr(ast.Constant(doc))] if doc else []) + [ast.Return(ast.Constant(
                "not checked in this kernel: `metagrad course grade` runs the checks itself"))]
        elif isinstance(node, ast.ImportFrom):
            node.names = [a for a in node.names if "reference" not in (a.asname or a.name).lower()]
    defined = {n.name: n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    needed = {name for name in defined if not name.startswith("_") or name in keep}
    frontier = list(needed)
    while frontier:
        used = {n.id for n in ast.walk(defined[frontier.pop()]) if isinstance(n, ast.Name)}
        for name in used & defined.keys() - needed:
            needed.add(name)
            frontier.append(name)
    body = [n for n in body if not isinstance(n, (ast.FunctionDef, ast.ClassDef)) or n.name in needed]
    body = [n for n in body if not isinstance(n, ast.ImportFrom) or n.names]
    for node in body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            if isinstance(node.value, (ast.List, ast.Tuple)):
                node.value.elts = [e for e in node.value.elts if not (isinstance(e, ast.Constant) and "reference" in str(e.value).lower())]
    tree.body = body
    return "# Public copy written by metagrad.course.sandbox for grading kernels (no reference solutions).\n" + ast.unparse(tree) + "\n"


def write_public_checks(dest: Path) -> Path:
    """Write the public copy of `metagrad/course/checks` into `dest` (created); returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    sources = {path: path.read_text(encoding="utf-8") for path in sorted(CHECKS.glob("*.py"))}
    imported = {alias.name for source in sources.values() for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("metagrad.course.checks")
                for alias in node.names}
    for path, source in sources.items():
        text = source if path.name == "_diagnose.py" else public_source(source, frozenset(imported))
        (dest / path.name).write_text(text, encoding="utf-8")
    return dest
