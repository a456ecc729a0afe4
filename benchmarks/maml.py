"""MAML loop benchmarks: cost of a second-order meta-iteration vs a plain policy-gradient iteration.

    python benchmarks/maml.py [--quick] [--write]

1. One meta-iteration (PG outer, Adam) with a second-order inner estimator (TayPO-2, one inner step) vs one
   plain policy-gradient iteration (``inner_steps=0``) on the same batch sizes (M tasks × N trajectories ×
   T steps per batch), measured in the same run; the claim is a ratio of at most 4.
2. Meta-iterations per second on Navigation2D at 40 tasks × 20 trajectories × 100 steps (Gaussian MLP 64×64).

Times are the median of ``--repeats`` jitted calls after one compile-and-warm-up call. ``--write`` replaces the
``## MAML (benchmarks/maml.py)`` section of benchmarks/RESULTS.md, leaving the other sections intact.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time

import jax

from metagrad import maml

SECTION = "## MAML (benchmarks/maml.py)"


def time_iteration(config: maml.MAMLConfig, repeats: int) -> float:
    """Median seconds of one jitted meta-iteration (compile excluded)."""
    init, train_chunk = maml.make_train(config)
    state = init(jax.random.PRNGKey(0))
    out = train_chunk(state, jax.numpy.arange(1))
    jax.block_until_ready(out)
    times = []
    for i in range(repeats):
        tic = time.perf_counter()
        out = train_chunk(state, jax.numpy.arange(i + 1, i + 2))
        jax.block_until_ready(out)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller Navigation2D batches (8 × 10 × 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    sizes = dict(num_tasks=40, num_trajectories=20, horizon=100)
    if args.quick:
        sizes = dict(num_tasks=8, num_trajectories=10, horizon=50)
    base = maml.MAMLConfig(env="navigation", outer="pg", inner_estimator="taypo2", **sizes)
    rows = []
    plain = time_iteration(maml.MAMLConfig(**{**base.to_json(), "hidden_sizes": (64, 64), "inner_options": (),
                                              "inner_steps": 0}), args.repeats)
    rows.append(("plain policy gradient (inner_steps=0)", plain))
    for steps in (1, 3):
        config = maml.MAMLConfig(**{**base.to_json(), "hidden_sizes": (64, 64), "inner_options": (), "inner_steps": steps})
        rows.append((f"MAML TayPO-2, {steps} inner step(s)", time_iteration(config, args.repeats)))
    ratio = rows[1][1] / plain
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, JAX {jax.__version__}, backend {jax.default_backend()}"
    size = f"{sizes['num_tasks']} tasks × {sizes['num_trajectories']} trajectories × {sizes['horizon']} steps"
    lines = [
        SECTION, "",
        f"Machine: {machine} (shared machine, no GPU available for this issue). Command: "
        f"`python benchmarks/maml.py{' --quick' if args.quick else ''} --write`. Navigation2D, {size} per batch, "
        "Gaussian MLP 64×64, PG outer step (Adam), median of "
        f"{args.repeats} jitted iterations after compilation.", "",
        "| iteration | seconds | iterations / s | × plain PG |", "|---|---|---|---|",
    ]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds:.3f} | {1 / seconds:.2f} | {seconds / plain:.2f} |")
    lines += ["", f"Second-order (TayPO-2, one inner step) / plain PG on the same batch sizes: **{ratio:.2f}×** "
              f"(claim: ≤ 4×; the meta-iteration samples twice as many trajectories).", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
        old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
        pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
        new = pattern.sub(text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text + "\n"
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(new)
        os.replace(tmp, path)
    return 0 if ratio <= 4 else 1


if __name__ == "__main__":
    sys.exit(main())
