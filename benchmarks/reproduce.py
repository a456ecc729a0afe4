"""End-to-end speed of ``metagrad reproduce``: whole processes, cold and warm compilation cache.

What is timed (issue 14):

* **whole process, cold** — ``python -m metagrad reproduce …`` in a fresh process with an *empty* persistent
  compilation cache (``METAGRAD_CACHE_DIR`` = a new temporary directory): Python and JAX start-up, tracing,
  XLA compilation, execution, the JSON and the figures. Wall seconds, CPU seconds (user + system of the
  process and its threads) and peak resident memory.
* **whole process, warm** — the same command again with the caches the cold run filled (what a user sees
  on every run after the first): JAX's compilation cache and metagrad's executable cache, from which the
  command's two large programs are loaded without tracing or compiling (``metagrad._cache.executable``);
  every number is computed again.
* both for the default command (panels a–c, the beyond-the-paper panels) and for the paper's Fig. 1a–b
  protocol alone (``--sweep 1000 --estimators is,dr,vtrace,taypo1,taypo2``: 4 ε × 10 trials × N = 1,000,
  five estimators, gradients and Hessians; panel (c) then has the single point N = 1,000). Runs alternate
  cold, warm, cold, warm, … (``--repeats`` pairs; medians reported).
* **per program** (in this process, cache off): trace, compile and execute seconds (wall and CPU) of the two
  programs of panels (a)–(c) — ``prepare`` (trial data and exact derivatives) and ``panels`` (per estimator).
* **compiled only** — the protocol's programs called again once compiled (best of 3): the execution alone,
  no start-up, tracing or compilation. Not an end-to-end figure.

The authors' released code is not run here (it has no licence, so it is not part of this repository): the
comparison uses the measurement of issue 14 on this 2-core machine — 376 s of CPU for the Fig. 1a–b protocol
(whole process) — against the CPU seconds of our whole process on the same protocol.

Run from the repository root::

    python benchmarks/reproduce.py            # full: default command and Fig. 1a-b protocol, 2 pairs each
    python benchmarks/reproduce.py --quick    # smoke: a 2-trial protocol, 1 pair, no per-program table
    python benchmarks/reproduce.py --write    # also replace the section of benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from _common import environment, write_section

SECTION = "## reproduce (benchmarks/reproduce.py)"
PAPER_ESTIMATORS = "is,dr,vtrace,taypo1,taypo2"
#: The authors' released code on the Fig. 1a-b protocol, whole process, CPU seconds (issue 14, this machine).
RELEASED_CODE_CPU_SECONDS = 376.0

COMMANDS = {
    "default `metagrad reproduce`": [],
    "Fig. 1a–b protocol (`--sweep 1000 --estimators is,dr,vtrace,taypo1,taypo2`)": [
        "--sweep", "1000", "--estimators", PAPER_ESTIMATORS],
}
QUICK_OPTIONS = ["--trials", "2", "--num-trajectories", "200", "--sweep", "10,200"]


def whole_process(options: list[str], cache_dir: str) -> dict:
    """Wall and CPU seconds and peak RSS (GB) of one ``python -m metagrad reproduce`` process."""
    env = {k: v for k, v in os.environ.items() if k not in ("METAGRAD_NO_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env["METAGRAD_CACHE_DIR"] = cache_dir
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "metagrad", "reproduce", "--quiet", "--out", out, *options],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "rss": after.ru_maxrss / 1024**2}


def cold_and_warm(options: list[str], repeats: int) -> dict[str, list[dict]]:
    """``repeats`` alternating (cold, warm) pairs; each pair starts from a new empty cache directory."""
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            for kind in ("cold", "warm"):
                runs[kind].append(whole_process(options, cache))
                print(f"  {kind}: {runs[kind][-1]['wall']:.1f} s wall, {runs[kind][-1]['cpu']:.1f} s CPU",
                      file=sys.stderr, flush=True)
    return runs


def per_program(options: list[str]) -> list[tuple[str, float, float, float, float, float, float]]:
    """(program, trace, compile, execute) wall and CPU seconds of the programs of panels (a)–(c), cache off."""
    os.environ["METAGRAD_NO_CACHE"] = "1"  # before `import metagrad`: compile everything here
    import jax

    jax.config.update("jax_num_cpu_devices", len(os.sched_getaffinity(0)))
    jax.config.update("jax_enable_x64", True)
    from metagrad.cli import build_parser
    from metagrad.experiments import reproduce

    args = build_parser().parse_args(["reproduce", *options])
    config = reproduce.ReproduceConfig(
        estimators=args.estimators, sweep=args.sweep, trials=args.trials, num_trajectories=args.num_trajectories,
        progress=False)
    programs = reproduce._programs(config)
    rows = []

    def clock():
        return time.perf_counter(), time.process_time()

    def timed(name, fn, args_list, compile_lowered=lambda lowered: lowered.compile()):
        t0 = clock()
        lowered = fn.lower(*args_list[0])
        t1 = clock()
        compiled = compile_lowered(lowered)
        t2 = clock()
        outs = [jax.block_until_ready(compiled(*a)) for a in args_list]
        t3 = clock()
        rows.append((name, *(b[0] - a[0] for a, b in ((t0, t1), (t1, t2), (t2, t3))),
                     *(b[1] - a[1] for a, b in ((t0, t1), (t1, t2), (t2, t3)))))
        return compiled, outs

    prepare, (data,) = timed("`prepare` (trial data + exact derivatives)", programs.prepare, [(programs.keys,)],
                             reproduce.compile_prepare)
    args_list = [(i, data["logits"], data["batch"], data["critic"], data["exact"]) for i in range(len(args.estimators))]
    compiled, _ = timed(f"`panels` ({len(args_list)} estimators, one call each)", programs.panels, args_list)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(prepare(programs.keys))
        jax.block_until_ready([compiled(*a) for a in args_list])
        best = min(best, time.perf_counter() - start)
    return rows, best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size: 2 trials, N = 200, one cold/warm pair")
    parser.add_argument("--repeats", type=int, default=None, help="cold/warm pairs per command (default 2; 1 quick)")
    parser.add_argument("--write", action="store_true", help="replace the section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    extra = QUICK_OPTIONS if args.quick else []
    load = os.getloadavg()

    results = {}
    for label, options in COMMANDS.items():
        print(label, file=sys.stderr, flush=True)
        results[label] = cold_and_warm([*options, *extra], repeats)
    paper_options = [*COMMANDS[list(COMMANDS)[1]], *extra]
    rows, compiled_only = per_program(paper_options)

    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    lines = [SECTION, "", "Whole processes, `python -m metagrad reproduce --quiet` (writes the JSON and both figures): "
             "**cold** = empty cache directory, **warm** = the caches the cold run filled (JAX's compilation cache "
             "and metagrad's executable cache: the two large programs are loaded, not traced or compiled; every "
             "number is computed again). "
             f"Median of {repeats} alternating cold/warm pair(s); CPU = user + system seconds of the process."
             + (" **Quick (smoke) size**: " + " ".join(QUICK_OPTIONS) + "." if args.quick else ""), "",
             "| command | cold wall (s) | cold CPU (s) | warm wall (s) | warm CPU (s) | peak RSS (GB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, runs in results.items():
        lines.append(f"| {label} | {med(runs['cold'], 'wall'):.1f} | {med(runs['cold'], 'cpu'):.1f} | "
                     f"{med(runs['warm'], 'wall'):.1f} | {med(runs['warm'], 'cpu'):.1f} | "
                     f"{max(r['rss'] for r in runs['cold'] + runs['warm']):.2f} |")
    paper = results[list(COMMANDS)[1]]
    default = results[list(COMMANDS)[0]]
    if not args.quick:
        cold, warm = med(default["cold"], "wall"), med(default["warm"], "wall")
        lines += ["", f"- Default command, issue 14's targets (wall, 2 cores): cold {cold:.1f} s (≤ 12 s: "
                  f"{'met' if cold <= 12 else 'not met'}), warm {warm:.1f} s (≤ 6 s: {'met' if warm <= 6 else 'not met'})."]
    lines += ["", "Per program, Fig. 1a–b protocol, in one process with the cache off (seconds; CPU = all threads):",
              "", "| program | trace wall | compile wall | execute wall | trace CPU | compile CPU | execute CPU |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, *values in rows:
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    lines += [
        "",
        f"- **Compiled only** (not end to end): both programs called again once compiled, best of 3: "
        f"{compiled_only:.2f} s wall.",
    ]
    if not args.quick:
        lines.append(
            f"- **Against the authors' released code** (Fig. 1a–b protocol, whole process, CPU seconds): "
            f"{RELEASED_CODE_CPU_SECONDS:.0f} s (issue 14's measurement on this 2-core machine; their code has no "
            f"licence and is not run here) vs ours {med(paper['cold'], 'cpu'):.1f} s cold = "
            f"**{RELEASED_CODE_CPU_SECONDS / med(paper['cold'], 'cpu'):.0f}×**, "
            f"{med(paper['warm'], 'cpu'):.1f} s warm = **{RELEASED_CODE_CPU_SECONDS / med(paper['warm'], 'cpu'):.0f}×**"
            " (target ≥ 50×: "
            + ("met" if RELEASED_CODE_CPU_SECONDS / med(paper['cold'], 'cpu') >= 50 else "met warm only"
               if RELEASED_CODE_CPU_SECONDS / med(paper['warm'], 'cpu') >= 50 else "not met") + ").")
    lines += [
        f"- Machine: {environment('numpy')}.",
        f"- Load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min) when started: the 2 cores are shared with other "
        "jobs, so wall times are inflated by the load; CPU seconds much less.",
        f"- Command: `python benchmarks/reproduce.py{' --quick' if args.quick else ''}"
        f"{f' --repeats {args.repeats}' if args.repeats else ''}{' --write' if args.write else ''}` (from the repository root, "
        f"{datetime.date.today().isoformat()}).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
