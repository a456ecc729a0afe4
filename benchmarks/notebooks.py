"""Benchmark the solution notebooks: wall time and peak memory of each, executed as CI executes them.

Each notebook in solutions/ is executed by nbclient in a fresh kernel, inside its own subprocess. The
peak memory is the largest total resident set size (RSS, from /proc) of that subprocess and all its
descendants (the kernel included), polled every 50 ms. Results go to the section
``## Notebooks (benchmarks/notebooks.py)`` of benchmarks/RESULTS.md (other sections are left intact).

Each notebook runs twice, as a learner meets it: a **first run** with an empty persistent compilation cache
(``METAGRAD_CACHE_DIR`` = a new temporary directory, so every program is compiled) and a **re-run** with the
cache the first run filled (XLA compilation skipped; tracing and execution remain).

Usage:  python benchmarks/notebooks.py [--solutions solutions] [--only 00_,05_] [--no-write]
Budget: each notebook must run in well under 90 s on 2 CPU cores and stay below 1.5 GB.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Notebooks (benchmarks/notebooks.py)"
TIME_BUDGET_S, MEMORY_BUDGET_MB = 90.0, 1536.0

_RUNNER = """
import sys, nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
               resources={"metadata": {"path": sys.argv[2]}}).execute()
"""


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(root: int) -> float:
    """Total RSS of ``root`` and all its descendants, in MiB."""
    tree, total, stack = _children(), 0, [root]
    while stack:
        pid = stack.pop()
        total += _rss_kb(pid)
        stack.extend(tree.get(pid, []))
    return total / 1024


def run_notebook(path: Path, cache_dir: str) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS MiB of the process tree, exit code), compilation cache ``cache_dir``."""
    env = {k: v for k, v in os.environ.items() if k not in ("METAGRAD_NO_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env["METAGRAD_CACHE_DIR"] = cache_dir  # inherited by the kernel
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(path), str(path.parent)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes the kernel: the runner waits for it
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode()[-2000:])
    return wall, cpu, peak, proc.returncode




def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solutions", default=str(ROOT / "solutions"))
    parser.add_argument("--only", default="", help="comma-separated name prefixes of the notebooks to run (default all)")
    parser.add_argument("--no-write", action="store_true", help="print the table without updating RESULTS.md")
    args = parser.parse_args(argv)
    notebooks = sorted(Path(args.solutions).glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [p for p in notebooks if p.name.startswith(tuple(args.only.split(",")))]
    load = os.getloadavg()[0]
    rows, failed = [], False
    for path in notebooks:
        with tempfile.TemporaryDirectory() as cache:
            wall, cpu, peak, code = run_notebook(path, cache)  # first run: empty cache
            wall2, cpu2, peak2, code2 = run_notebook(path, cache) if code == 0 else (0.0, 0.0, 0.0, code)
        ok = code == code2 == 0 and max(wall, wall2) < TIME_BUDGET_S and max(peak, peak2) < MEMORY_BUDGET_MB
        failed |= not ok
        status = "ok" if ok else "FAILED" if code or code2 else "over budget"
        rows.append(f"| `{path.name}` | {wall:.1f} | {cpu:.1f} | {wall2:.1f} | {cpu2:.1f} | {max(peak, peak2):.0f} "
                    f"| {status} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        SECTION,
        "",
        f"Machine: {machine()}; {platform.system()} {platform.release()}; load average {load:.1f} when started (shared machine: times include "
        "contention; CPU time, user + system of runner and kernel, is the load-independent figure). "
        "Python " + platform.python_version() + ".",
        f"Command: `python benchmarks/notebooks.py` ({datetime.date.today().isoformat()}). Each notebook runs in a "
        "fresh kernel via nbclient, end to end (kernel start-up included): first run with an empty persistent "
        "compilation cache (every program compiled), re-run with the cache the first run filled; memory is the "
        "peak total RSS of the runner and kernel processes over both. "
        f"Budget: < {TIME_BUDGET_S:.0f} s and < {MEMORY_BUDGET_MB / 1024:.1f} GB each.",
        "",
        "| notebook | first run wall (s) | first run CPU (s) | re-run wall (s) | re-run CPU (s) | peak RSS (MiB) | status |",
        "|---|---:|---:|---:|---:|---:|---|",
        *rows,
    ])
    if args.no_write:
        print(text)
    else:
        write_section(text, SECTION)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
