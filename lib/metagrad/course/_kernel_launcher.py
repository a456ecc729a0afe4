"""Start a Jupyter kernel under the grader's limits (run as a script, standard library only).

`python _kernel_launcher.py MEMORY_BYTES PARENT_PID -- KERNEL_COMMAND...` starts a new session (the kernel
leads its own process group, which the grader kills as a whole), sets the address-space limit
(`RLIMIT_AS`) to `MEMORY_BYTES`, no core files and a 1 GiB limit per written file, asks Linux to SIGKILL
this process when its parent (the grading worker, `PARENT_PID`; 0 inside a sandbox, whose PID namespace
dies with the worker instead) dies, sends the kernel's own stdout/stderr to `/dev/null` (a student's
`os.write(1, ...)` cannot reach the grader's pipes), and replaces itself with the kernel command.
[`metagrad.course.grade`][metagrad.course.grade] uses it as the kernel's command prefix (inside bubblewrap when available).
"""

import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1
FILE_LIMIT = 2**30


def main(argv: list[str]) -> None:
    if len(argv) < 5 or argv[3] != "--":
        sys.exit("usage: _kernel_launcher.py MEMORY_BYTES PARENT_PID -- KERNEL_COMMAND...")
    memory, parent, command = int(argv[1]), int(argv[2]), argv[4:]
    try:
        os.setsid()
    except PermissionError:  # already a session leader (bwrap --new-session)
        pass
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    if parent and sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the worker died before the death signal was armed
            sys.exit(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
