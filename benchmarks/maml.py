"""MAML loop benchmarks: cost of a second-order meta-iteration vs a plain policy-gradient iteration.

    python benchmarks/maml.py [--quick] [--repeats R] [--scaling] [--write]

1. One meta-iteration (PG outer, Adam) with a second-order inner estimator (TayPO-2, one inner step) vs one
   plain policy-gradient iteration (``inner_steps=0``: sample one batch, fit the baseline, one Adam step on
   the policy gradient) on the same batch sizes (M tasks × N trajectories × T steps per batch), measured in
   the same run; the claim is a ratio of at most 4. The meta-iteration samples two batches per task (D_0 and
   D') where the plain iteration samples one. Also timed: three inner steps (the setting of Fig. 1d).
2. Meta-iterations per second on Navigation2D at 40 tasks × 20 trajectories × 100 steps (Gaussian MLP 64×64).
3. ``--scaling``: time of one meta-iteration (TayPO-2, one inner step) for 1, 10, 100 and 1000 tasks — meant
   for a GPU (on a CPU it is slow and linear in the number of tasks).

Each configuration is compiled and warmed up first; then the configurations are timed in turn (round-robin,
so that a change of load on a shared machine hits all of them alike), ``--repeats`` times each, and the
median is reported (``block_until_ready``; float32, the JAX default). ``--write`` replaces the
``## MAML (benchmarks/maml.py)`` section of benchmarks/RESULTS.md, leaving the other sections intact.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from _common import environment, write_section

from metagrad import maml

SECTION = "## MAML (benchmarks/maml.py)"



class Timer:
    """One compiled meta-iteration of a config: ``compile()`` once, then ``time()`` calls of one iteration."""

    def __init__(self, config: maml.MAMLConfig):
        self.config = config
        self.init, self.train_chunk = maml.make_train(config)
        self.state = self.init(jax.random.PRNGKey(0))
        self.calls = 0
        self.times: list[float] = []

    def compile(self) -> float:
        tic = time.perf_counter()
        jax.block_until_ready(self.train_chunk(self.state, jnp.arange(1)))
        return time.perf_counter() - tic

    def time(self) -> None:
        self.calls += 1
        tic = time.perf_counter()
        jax.block_until_ready(self.train_chunk(self.state, jnp.arange(self.calls, self.calls + 1)))
        self.times.append(time.perf_counter() - tic)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def run(configs: dict[str, maml.MAMLConfig], repeats: int) -> dict[str, Timer]:
    timers = {}
    for name, config in configs.items():
        timers[name] = Timer(config)
        print(f"compiled {name} in {timers[name].compile():.1f} s", file=sys.stderr, flush=True)
    for _ in range(repeats):
        for timer in timers.values():
            timer.time()
    return timers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller Navigation2D batches (8 × 10 × 50)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scaling", action="store_true", help="also time 1, 10, 100, 1000 tasks (for a GPU)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    sizes = dict(num_tasks=40, num_trajectories=20, horizon=100)
    if args.quick:
        sizes = dict(num_tasks=8, num_trajectories=10, horizon=50)
    base = maml.MAMLConfig(env="navigation", outer="pg", inner_estimator="taypo2", hidden_sizes=(64, 64), **sizes)
    load = os.getloadavg()[0]
    configs = {
        "plain policy gradient (`inner_steps=0`)": maml.MAMLConfig(**{**base.to_json(), "inner_steps": 0,
                                                                     "hidden_sizes": (64, 64), "inner_options": ()}),
        "MAML, TayPO-2 inner, 1 inner step": base,
        "MAML, TayPO-2 inner, 3 inner steps": maml.MAMLConfig(**{**base.to_json(), "inner_steps": 3,
                                                                "hidden_sizes": (64, 64), "inner_options": ()}),
    }
    timers = run(configs, args.repeats)
    names = list(timers)
    plain = timers[names[0]].median
    ratio = timers[names[1]].median / plain
    size = f"{sizes['num_tasks']} tasks × {sizes['num_trajectories']} trajectories × {sizes['horizon']} steps"
    command = "python benchmarks/maml.py" + (" --quick" if args.quick else "") + (
        f" --repeats {args.repeats}" if args.repeats != 5 else "") + (" --scaling" if args.scaling else "") + " --write"
    lines = [
        SECTION, "",
        f"Navigation2D (`env=\"navigation\"`), {size} per batch, Gaussian MLP 64×64, linear feature baseline, "
        "PG outer step (Adam), float32. Time of one jitted meta-iteration (sampling, baseline fits, inner "
        f"step(s), post-update sampling, meta-gradient, Adam update), compile excluded, median of {args.repeats} "
        "calls timed round-robin with the other rows.", "",
        "| iteration | seconds | iterations / s | × plain PG |", "|---|---:|---:|---:|",
    ]
    for name, timer in timers.items():
        lines.append(f"| {name} | {timer.median:.3f} | {1 / timer.median:.2f} | {timer.median / plain:.2f} |")
    lines += [
        "",
        f"- Second-order meta-iteration (TayPO-2, one inner step) / plain PG iteration on the same batch sizes: "
        f"**{ratio:.2f}×** (target ≤ 4×). It samples two batches per task (D_0 and D') where the plain "
        "iteration samples one, and its backward pass goes through the inner step (Hessian-vector products).",
        f"- Meta-iterations per second on this CPU, {size}: **{1 / timers[names[1]].median:.2f}** (one inner "
        f"step), {1 / timers[names[2]].median:.2f} (three inner steps).",
    ]
    if args.scaling:
        scaling = run({f"{m} tasks": maml.MAMLConfig(**{**base.to_json(), "num_tasks": m, "hidden_sizes": (64, 64),
                                                        "inner_options": ()}) for m in (1, 10, 100, 1000)},
                      args.repeats)
        lines.append("- Scaling with the number of tasks (TayPO-2, one inner step): " + ", ".join(
            f"{name}: {timer.median:.3f} s" for name, timer in scaling.items()) + ".")
    else:
        lines.append("- GPU meta-iterations per second and the scaling of time with the number of tasks (1 → 1000): "
                     "not measured (no GPU lent to this task); `python benchmarks/maml.py --scaling` measures "
                     "the scaling on the machine it runs on.")
    lines += [
        f"- Machine: {environment()}; load average {load:.1f} when started (the 2 cores are shared with other "
        "jobs: absolute times vary between runs, the round-robin ratio much less)."
        + (" No GPU." if jax.default_backend() == "cpu" else ""),
        f"- Command: `{command}` (from the repository root, {datetime.date.today().isoformat()}).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text, SECTION)
    return 0 if ratio <= 4 else 1


if __name__ == "__main__":
    sys.exit(main())
