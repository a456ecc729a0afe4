"""Start a Jupyter kernel under the grader's limits (run as a script, standard library only).

``python _kernel_launcher.py MEMORY_BYTES PARENT_PID -- KERNEL_COMMAND...`` sets the address-space limit
(``RLIMIT_AS``) to ``MEMORY_BYTES``, asks Linux to SIGKILL this process when its parent (the grading
worker) dies (``PR_SET_PDEATHSIG``), sends the kernel's own stdout/stderr to ``/dev/null`` (a student's
``os.write(1, ...)`` cannot reach the grader's pipes), and then replaces itself with the kernel command.
:mod:`metagrad.course.grade` uses it as the kernel's command prefix.
"""

import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if len(argv) < 5 or argv[3] != "--":
        sys.exit("usage: _kernel_launcher.py MEMORY_BYTES PARENT_PID -- KERNEL_COMMAND...")
    memory, parent, command = int(argv[1]), int(argv[2]), argv[4:]
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if sys.platform.startswith("linux"):
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
