"""MAML loop benchmarks: cost of a second-order meta-iteration vs a plain policy-gradient iteration.

    python benchmarks/maml.py [--quick] [--repeats R] [--scaling] [--scaling-tasks 1,10,100,1000] [--write]

``--quick`` is the smoke size (8 tasks × 10 trajectories × 50 steps); the default is the full size
(40 × 20 × 100, the ProMP / Fig. 2 setting).

1. One meta-iteration (PG outer, Adam) with a second-order inner estimator (TayPO-2, one inner step) vs one
   plain policy-gradient iteration (``inner_steps=0``: sample one batch, fit the baseline, one Adam step on
   the policy gradient) on the same batch sizes (M tasks × N trajectories × T steps per batch), measured in
   the same run; the claim is a ratio of at most 4. The meta-iteration samples two batches per task (D_0 and
   D') where the plain iteration samples one. Also timed: three inner steps (the setting of Fig. 1d).
2. Meta-iterations per second on Navigation2D at 40 tasks × 20 trajectories × 100 steps (Gaussian MLP 64×64),
   for the PG outer step and for the other two outer optimisers of Fig. 1d: TRPO-MAML (MAML inner
   surrogate, conjugate gradient on Gauss–Newton Fisher-vector products through θ'(θ), backtracking line
   search) and ProMP (LVC inner surrogate, 5 clipped-surrogate Adam steps), each as a multiple of the plain
   policy-gradient iteration on the same batch sizes, and TRPO-MAML also as a multiple of the PG meta-iteration
   of the same config (MAML inner, one inner step, PG outer: issue 14's target ≤ 3×); also TRPO-MAML with the
   opt-in approximation ``cg_subsample=0.25`` (the CG's Fisher-vector products on 10 of the 40 tasks).
3. ``--fig1d``: the six methods of Fig. 1d at the paper's protocol (``metagrad maml-nav2d``'s configs: corners,
   40 × 20 × 100, 3 inner steps, ProMP's objective form), CPU and wall seconds of one meta-iteration each, and the
   cost of the full protocol (``--fig1d-iterations`` iterations × ``--fig1d-seeds`` seeds × the six methods) projected
   from them. Methods that share an outer step are listed together (TRPO: MAML, FMAML, EMAML, DiCE; ProMP: LVC,
   TayPO-2), so the cost of the outer optimiser and of the inner estimator can be read apart. A PG-outer
   meta-iteration of TRPO-MAML's config is timed in the same round-robin, for the TRPO / PG ratio at 3 inner steps.
4. ``--scaling``: time of one meta-iteration (TayPO-2, one inner step) against the number of tasks per
   meta-batch (``--scaling-tasks``, default 1, 10, 100, 1000), at the quick batch per task (10 trajectories
   × 50 steps) so that a CPU can reach 1000 tasks; on a GPU pass ``--scaling-full`` for 20 × 100.

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
        self.cpu_times: list[float] = []

    def compile(self) -> float:
        tic = time.perf_counter()
        jax.block_until_ready(self.train_chunk(self.state, jnp.arange(1)))
        return time.perf_counter() - tic

    def time(self) -> None:
        self.calls += 1
        tic, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(self.train_chunk(self.state, jnp.arange(self.calls, self.calls + 1)))
        self.times.append(time.perf_counter() - tic)
        self.cpu_times.append(time.process_time() - cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu(self) -> float:
        """Median CPU seconds (all threads of this process) of one iteration: less sensitive to other jobs."""
        return statistics.median(self.cpu_times)


def run(configs: dict[str, maml.MAMLConfig], repeats: int) -> dict[str, Timer]:
    timers = {}
    for name, config in configs.items():
        timers[name] = Timer(config)
        print(f"compiled {name} in {timers[name].compile():.1f} s", file=sys.stderr, flush=True)
    for _ in range(repeats):
        for timer in timers.values():
            timer.time()
    return timers


def fig1d_rows(args) -> list[str]:
    """Per-iteration cost of each Fig. 1d method at the protocol, and the full protocol projected from it."""
    from metagrad.experiments.nav_protocol import NAV_METHODS, nav_config

    pg_name = "PG outer (Adam), MAML inner (reference)"
    configs = {method: nav_config(method) for method in NAV_METHODS}
    configs[pg_name] = maml.MAMLConfig(**{**configs["TRPO-MAML"].to_json(), "outer": "pg",
                                          "hidden_sizes": (64, 64), "inner_options": ()})
    timers = run(configs, args.repeats)
    pg = timers.pop(pg_name)
    config = nav_config("ProMP")
    lines = ["", f"Fig. 1d at the paper's protocol (`metagrad maml-nav2d`'s configs: navigation-corners, "
             f"{config.num_tasks} tasks × {config.num_trajectories} trajectories × {config.horizon} steps, "
             f"{config.inner_steps} inner steps, ProMP's objective form, Gaussian MLP 64×64, float32). One meta-iteration "
             f"of one seed, compile excluded, median of {args.repeats} calls timed round-robin:", "",
             "| method | outer step | inner estimator | wall seconds | CPU seconds |", "|---|---|---|---:|---:|"]
    for method, timer in timers.items():
        outer, inner = NAV_METHODS[method]
        lines.append(f"| {method} | {outer} | {inner} | {timer.median:.2f} | {timer.cpu:.2f} |")
    per_iteration_cpu = sum(t.cpu for t in timers.values())
    per_iteration_wall = sum(t.median for t in timers.values())
    runs = args.fig1d_iterations * args.fig1d_seeds
    by_outer = {}
    for method, timer in timers.items():
        by_outer.setdefault(NAV_METHODS[method][0], []).append(timer.cpu)
    spread = "; ".join(f"{outer}: {min(v):.2f}–{max(v):.2f} CPU s over its {len(v)} inner estimators"
                       for outer, v in by_outer.items())
    lines += ["", f"- All six methods, one seed, one iteration: **{per_iteration_cpu:.1f} CPU s** "
              f"({per_iteration_wall:.1f} s wall on this machine). The full protocol, {args.fig1d_iterations} iterations × "
              f"{args.fig1d_seeds} seeds: **{per_iteration_cpu * runs / 3600:.0f} CPU-hours** "
              f"({per_iteration_wall * runs / 3600:.0f} hours wall at this machine's measured wall time per iteration).",
              f"- Cost by outer step: {spread}.",
              f"- Reference in the same run: the PG meta-iteration (Adam outer step, MAML inner, same protocol) "
              f"{pg.median:.2f} s wall, {pg.cpu:.2f} CPU s; TRPO-MAML / PG at 3 inner steps: "
              f"**{timers['TRPO-MAML'].cpu / pg.cpu:.1f}×** CPU ({timers['TRPO-MAML'].median / pg.median:.1f}× wall)."]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller Navigation2D batches (8 × 10 × 50)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scaling", action="store_true", help="also time the task scaling (--scaling-tasks)")
    parser.add_argument("--scaling-tasks", default="1,10,100,1000", help="tasks per meta-batch for --scaling")
    parser.add_argument("--scaling-full", action="store_true",
                        help="scaling at 20 trajectories x 100 steps per task (default: 10 x 50, CPU-friendly)")
    parser.add_argument("--fig1d", action="store_true", help="also time the six Fig. 1d methods at the protocol")
    parser.add_argument("--fig1d-iterations", type=int, default=1000, help="iterations of the full-protocol projection")
    parser.add_argument("--fig1d-seeds", type=int, default=5, help="seeds of the full-protocol projection")
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
        "MAML, MAML inner, 1 inner step (PG outer)": maml.MAMLConfig(**{**base.to_json(), "inner_estimator": "maml",
                                                                       "hidden_sizes": (64, 64), "inner_options": ()}),
        "TRPO-MAML (MAML inner, 1 inner step)": maml.MAMLConfig(**{**base.to_json(), "outer": "trpo",
                                                                  "inner_estimator": "maml", "hidden_sizes": (64, 64),
                                                                  "inner_options": ()}),
        "TRPO-MAML, 1 CG iteration, 1 line-search step (profile)": maml.MAMLConfig(
            **{**base.to_json(), "outer": "trpo", "inner_estimator": "maml", "cg_iterations": 1,
               "backtrack_steps": 1, "hidden_sizes": (64, 64), "inner_options": ()}),
        "TRPO-MAML, opt-in `cg_subsample=0.25` (CG on 10 of 40 tasks)": maml.MAMLConfig(
            **{**base.to_json(), "outer": "trpo", "inner_estimator": "maml", "cg_subsample": 0.25,
               "hidden_sizes": (64, 64), "inner_options": ()}),
        "ProMP (LVC inner, 1 inner step, 5 PPO steps)": maml.MAMLConfig(**{**base.to_json(), "outer": "promp",
                                                                           "inner_estimator": "lvc",
                                                                           "hidden_sizes": (64, 64),
                                                                           "inner_options": ()}),
    }
    timers = run(configs, args.repeats)
    names = list(timers)
    plain = timers[names[0]].median
    ratio = timers[names[1]].median / plain
    maml_pg, trpo_timer, trpo_cg1_timer = (timers[names[i]] for i in (3, 4, 5))
    trpo, promp = trpo_timer.median, timers[names[7]].median
    subsampled = timers[names[6]]
    trpo_wall_pg, trpo_cpu_pg = trpo / maml_pg.median, trpo_timer.cpu / maml_pg.cpu  # issue 14's baseline
    trpo_cpu = trpo_timer.cpu / timers[names[0]].cpu
    fvp = (trpo_timer.cpu - trpo_cg1_timer.cpu) / (base.cg_iterations - 1)  # CPU s per extra CG iteration
    size = f"{sizes['num_tasks']} tasks × {sizes['num_trajectories']} trajectories × {sizes['horizon']} steps"
    command = "python benchmarks/maml.py" + (" --quick" if args.quick else "") + (" --fig1d" if args.fig1d else "") + (
        f" --repeats {args.repeats}" if args.repeats != 5 else "") + (" --scaling" if args.scaling else "") + (
        f" --scaling-tasks {args.scaling_tasks}" if args.scaling and args.scaling_tasks != "1,10,100,1000" else "") + (
        " --scaling-full" if args.scaling_full else "") + " --write"
    lines = [
        SECTION, "",
        f"Navigation2D (`env=\"navigation\"`), {size} per batch, Gaussian MLP 64×64, linear feature baseline, "
        "PG outer step (Adam), float32. Time of one jitted meta-iteration (sampling, baseline fits, inner "
        f"step(s), post-update sampling, meta-gradient, Adam update), compile excluded, median of {args.repeats} "
        "calls timed round-robin with the other rows.", "",
        "| iteration | wall seconds | iterations / s | × plain PG (wall) | CPU seconds | × plain PG (CPU) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, timer in timers.items():
        lines.append(f"| {name} | {timer.median:.3f} | {1 / timer.median:.2f} | {timer.median / plain:.2f} | "
                     f"{timer.cpu:.3f} | {timer.cpu / timers[names[0]].cpu:.2f} |")
    lines += [
        "",
        f"- Second-order meta-iteration (TayPO-2, one inner step) / plain PG iteration on the same batch sizes: "
        f"**{ratio:.2f}×** (target ≤ 4×). It samples two batches per task (D_0 and D') where the plain "
        "iteration samples one, and its backward pass goes through the inner step (Hessian-vector products).",
        f"- Meta-iterations per second on this CPU, {size}: **{1 / timers[names[1]].median:.2f}** (one inner "
        f"step), {1 / timers[names[2]].median:.2f} (three inner steps); TRPO-MAML **{1 / trpo:.2f}**; "
        f"ProMP **{1 / promp:.2f}**.",
        f"- TRPO-MAML meta-iteration / the PG meta-iteration of the same config (MAML inner, one inner step, "
        f"PG outer; issue 14's baseline, target ≤ 3×): **{trpo_wall_pg:.1f}×** wall, **{trpo_cpu_pg:.1f}×** CPU "
        f"({'met' if trpo_cpu_pg <= 3 else 'not met'}); / the plain PG iteration (`inner_steps=0`): "
        f"{trpo / plain:.1f}× wall, {trpo_cpu:.1f}× CPU. Profile (CPU seconds): each conjugate-gradient iteration "
        f"beyond the first costs {fvp:.3f} s (the TRPO row minus the 1-CG-iteration row, over "
        f"{base.cg_iterations - 1}), against {maml_pg.cpu:.3f} s for that whole PG meta-iteration: a "
        "Fisher-vector product Jᵀ ∇²KL J v through θ'(θ) (J = ∂θ'/∂θ) is two Jacobian-vector products through "
        "the linearised inner gradient step (J v, then Jᵀ u = J u: the step's Jacobian is symmetric; each is a "
        "Hessian-vector product of the inner surrogate on the pre-update batch) plus the KL's Hessian in the "
        "policy's output space (J_outᵀ M J_out, linear passes through the network on the post-update batch), and "
        f"a TRPO step takes {base.cg_iterations} of them (one per CG iteration; xᵀFx comes from the product our CG "
        "tracks, where `jax.scipy.sparse.linalg.cg` would need one product more).",
        f"- Opt-in approximation (`MAMLConfig.cg_subsample`, default 1 = exact; ProMP's `subsample_factor`): the "
        f"CG's Fisher-vector products on a quarter of the tasks cost {subsampled.cpu:.3f} CPU s per TRPO "
        f"meta-iteration, **{subsampled.cpu / maml_pg.cpu:.1f}×** the PG meta-iteration by CPU "
        f"({subsampled.median / maml_pg.median:.1f}× wall).",
    ]
    if args.fig1d:
        lines += fig1d_rows(args)
    if args.scaling:
        per_task = dict(num_trajectories=20, horizon=100) if args.scaling_full else dict(num_trajectories=10, horizon=50)
        counts = [int(m) for m in args.scaling_tasks.split(",")]
        scaling = run({m: maml.MAMLConfig(**{**base.to_json(), "num_tasks": m, "hidden_sizes": (64, 64),
                                             "inner_options": (), **per_task}) for m in counts}, args.repeats)
        lines += ["", f"Scaling with the number of tasks per meta-batch (TayPO-2 inner, one inner step, PG outer, "
                  f"{per_task['num_trajectories']} trajectories × {per_task['horizon']} steps per task; median of "
                  f"{args.repeats}, compile excluded):", "",
                  "| tasks | seconds / iteration | iterations / s | seconds per task |", "|---:|---:|---:|---:|"]
        lines += [f"| {m} | {t.median:.3f} | {1 / t.median:.2f} | {t.median / m:.4f} |" for m, t in scaling.items()]
        lines.append("")
    else:
        lines.append("- GPU meta-iterations per second and the scaling of time with the number of tasks (1 → 1000): "
                     "not measured (no GPU lent to this task); `python benchmarks/maml.py --scaling` measures "
                     "the scaling on the machine it runs on.")
    lines += [
        f"- Machine: {environment()}; load average {load:.1f} when started (the 2 cores are shared with other "
        "jobs: absolute times vary between runs, the round-robin ratio much less)."
        + (" CPU only: no GPU was lent to this task." if jax.default_backend() == "cpu" else ""),
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
