"""Environment steps per second of ProMP's locomotion tasks on MJX (``metagrad.envs.locomotion``), batched.

For each task and batch size B, one jitted program samples B tasks, resets B environments and runs
``--steps`` env steps under ``lax.scan`` (``vmap`` over the batch) with Gaussian actions of ProMP's scale
(10·N(0, 1) before its ``normalize`` wrapper, i.e. N(0, 1) controls clipped to [−1, 1]) — the cost of the
simulator in a rollout, without a policy network. Timed: ``lower(...).compile()`` (compile time, cold, with
JAX's persistent cache off) and then the compiled call (best of ``--repeats`` after one warm-up call,
``jax.block_until_ready``). Steps/s = B·steps / seconds.

Solver settings compared on the same keys (so the same tasks, initial states and actions): MuJoCo's defaults
from the model files (Newton, ``iterations=100``, ``ls_iterations=50``, tolerance 1e-8: MJX's solver loop
exits early when converged, but under ``vmap`` every batch member runs until the slowest has converged) and
capped iterations (default 4 / 6, the values of the issue's reference point). The reward columns say what the
cap changes: the mean reward per step of each setting, and the mean |Δ reward| per step between them, on
identical inputs.

Seconds per ProMP meta-iteration (``--meta-tasks``): the compiled iteration of ``metagrad maml-locomotion``
(``metagrad.experiments.maml_locomotion.loco_config``: sampling of the pre- and post-update batches, the linear
baseline, the inner step and ProMP's 5 outer steps) at the paper's protocol (``--meta-sizes 40,20,100``: 40 tasks
× 20 trajectories × horizon 100, one inner step) or a smaller one. Timed: ``lower().compile()`` (cold) and each
of ``--meta-repeats`` calls of the compiled one-iteration chunk (the first with no warm-up before it); steps/s =
simulated env steps of the iteration / its seconds. Written to its own section of RESULTS.md.

Run from the repository root (JAX's default float32; CPU is the default backend here)::

    nice python benchmarks/locomotion.py                                   # every task, B = 800 and 8192
    python benchmarks/locomotion.py --tasks halfcheetah-direction --batches 800 --no-write
    nice python benchmarks/locomotion.py --tasks "" --meta-tasks halfcheetah-direction   # meta-iteration only
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("METAGRAD_NO_CACHE", "1")  # compile times are cold ones

import jax
import jax.numpy as jnp
import numpy as np

from _common import environment, write_section
from metagrad.envs.locomotion import TASKS, Locomotion

SECTION = "## Locomotion (benchmarks/locomotion.py)"
SECTION_META = "## Locomotion: ProMP meta-iteration (benchmarks/locomotion.py --meta-tasks)"


def make_rollout(env: Locomotion, batch: int, steps: int):
    """``key -> rewards [steps, B]``: B tasks and resets, then ``steps`` batched env steps in ``lax.scan``."""
    num_actions = env.action_space().shape[0]

    def rollout(key):
        k_tasks, k_reset, k_steps = jax.random.split(key, 3)
        tasks = env.sample_tasks(k_tasks, batch)
        _, state = jax.vmap(env.reset)(jax.random.split(k_reset, batch), tasks)

        def body(state, key):
            k_action, k_env = jax.random.split(key)
            actions = 10 * jax.random.normal(k_action, (batch, num_actions))
            _, state, reward, _, _ = jax.vmap(env.step)(jax.random.split(k_env, batch), state, actions, tasks)
            return state, reward

        return jax.lax.scan(body, state, jax.random.split(k_steps, steps))[1]

    return rollout


def measure(env: Locomotion, batch: int, steps: int, repeats: int):
    """(compile seconds, best compiled seconds, rewards [steps, B]) of one rollout program."""
    key = jax.random.PRNGKey(0)
    tic = time.perf_counter()
    compiled = jax.jit(make_rollout(env, batch, steps)).lower(key).compile()
    compile_s = time.perf_counter() - tic
    rewards = jax.block_until_ready(compiled(key))
    best = np.inf
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(compiled(key))
        best = min(best, time.perf_counter() - tic)
    return compile_s, best, np.asarray(rewards)


def measure_meta_iteration(task: str, method: str, sizes: tuple[int, int, int], repeats: int):
    """(config, compile seconds, [seconds of each compiled call]) of one ProMP meta-iteration of ``task``."""
    from metagrad import maml
    from metagrad.experiments.maml_locomotion import loco_config, loco_env

    num_tasks, num_trajectories, horizon = sizes
    config = loco_config(task, method, num_tasks=num_tasks, num_trajectories=num_trajectories, horizon=horizon,
                         num_iterations=1)
    init, chunk = maml.make_train(config, env=loco_env(task))
    state = init(jax.random.PRNGKey(0))
    tic = time.perf_counter()
    compiled = chunk.lower(state, jnp.arange(0, 1)).compile()
    compile_s = time.perf_counter() - tic
    seconds = []
    for i in range(repeats):
        tic = time.perf_counter()
        state, metrics = jax.block_until_ready(compiled(state, jnp.arange(i, i + 1)))
        seconds.append(time.perf_counter() - tic)
        if not np.all(np.isfinite(np.asarray(metrics["post_return"]))):
            raise RuntimeError(f"{task}: the meta-iteration returned a non-finite return")
    return config, compile_s, seconds


def meta_section(args, argv) -> str:
    """Time ``--meta-tasks`` and return the RESULTS.md section (also printed line by line)."""
    from metagrad.experiments.maml_locomotion import env_steps_per_iteration, simulated_steps_per_iteration

    sizes = tuple(int(v) for v in args.meta_sizes.split(","))
    rows = []
    for task in [t for t in args.meta_tasks.split(",") if t]:
        config, compile_s, seconds = measure_meta_iteration(task, args.meta_method, sizes, args.meta_repeats)
        best = min(seconds)
        simulated = simulated_steps_per_iteration(config)
        print(f"{task} meta-iteration {sizes}: compile {compile_s:.0f} s, calls "
              f"{', '.join(f'{s:.1f}' for s in seconds)} s, {simulated / best:,.0f} simulated steps/s", flush=True)
        rows.append(f"| {task} | {args.meta_method} | {' × '.join(map(str, sizes))} | {config.sampling} | "
                    f"{env_steps_per_iteration(config):,} | {simulated:,} | {compile_s:.0f} | "
                    f"{', '.join(f'{s:.1f}' for s in seconds)} | {simulated / best:,.0f} | "
                    f"{best * 1001 / 3600:.1f} |")
    command = "python benchmarks/locomotion.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return "\n".join([
        SECTION_META, "",
        f"Machine: {environment('mujoco', 'mujoco-mjx')}. Load average (1 min) at the end: {load:.1f}. "
        f"Command: `{command.strip()}`. One compiled meta-iteration of `metagrad maml-locomotion` (tasks × "
        "trajectories × horizon, one inner step, ProMP's 5 outer steps, default solver settings); compile = "
        "`lower().compile()`, cold; each compiled call timed (the first without warm-up). Budget = ProMP's env "
        "steps per iteration (the figure's x-axis); simulated = steps the sampler runs (2T − 1 per environment with "
        "fixed-steps sampling). 1001 iterations = ProMP's `n_itr`, from the best call.", "",
        "| task | method | M × N × T | sampling | budget steps/iter | simulated steps/iter | compile s | "
        "s per iteration (each call) | simulated steps/s | 1001 iterations (h) |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|",
        *rows, ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names (default: all four)")
    parser.add_argument("--batches", default="800,8192", help="comma-separated batch sizes (default 800,8192)")
    parser.add_argument("--steps", type=int, default=10, help="env steps per timed rollout (default 10)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up (default 2)")
    parser.add_argument("--fast", default="4,6", help="capped solver,line-search iterations (default 4,6)")
    parser.add_argument("--fast-batches", default="800", help="batch sizes at which the capped setting is also "
                        "timed (default 800; each setting and size is one more compilation)")
    parser.add_argument("--meta-tasks", default="", help="comma-separated tasks whose ProMP meta-iteration is timed "
                        "(default: none)")
    parser.add_argument("--meta-sizes", default="40,20,100", help="tasks,trajectories,horizon of the timed "
                        "meta-iteration (default 40,20,100: the paper's protocol)")
    parser.add_argument("--meta-method", default="promp", choices=["promp", "promp-taypo2"])
    parser.add_argument("--meta-repeats", type=int, default=2, help="timed calls of the compiled iteration (default 2)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks + [t for t in args.meta_tasks.split(",") if t] if t not in TASKS]
    if unknown:
        parser.error(f"--tasks / --meta-tasks: unknown task(s) {unknown}; choose from {sorted(TASKS)}")
    try:
        meta_sizes = [int(v) for v in args.meta_sizes.split(",")]
    except ValueError:
        meta_sizes = []
    if len(meta_sizes) != 3 or min(meta_sizes) < 1 or args.meta_repeats < 1:
        parser.error("--meta-sizes must be three positive integers 'tasks,trajectories,horizon' and --meta-repeats "
                     "positive")
    try:
        batches = [int(b) for b in args.batches.split(",")]
        fast_batches = {int(b) for b in args.fast_batches.split(",") if b}
        solver, line_search = (int(v) for v in args.fast.split(","))
    except ValueError:
        parser.error("--batches must be comma-separated integers and --fast two integers 'solver,line-search'")
    if min(batches) < 1 or args.steps < 1 or args.repeats < 1 or min(solver, line_search) < 1:
        parser.error("--batches, --steps, --repeats and --fast must be positive")

    if args.meta_tasks:
        section = meta_section(args, argv)
        print(section)
        if not args.no_write:
            write_section(section, SECTION_META)
    if not tasks:
        return 0
    rows = []
    for task in tasks:
        for batch in batches:
            results = {}
            settings = [("default", {}), ("fast", dict(solver_iterations=solver, ls_iterations=line_search))]
            for label, kwargs in settings[:2 if batch in fast_batches else 1]:
                env = Locomotion(task, **kwargs)
                results[label] = measure(env, batch, args.steps, args.repeats)
                c, s, r = results[label]
                delta = f", mean |Δ reward| vs default {np.abs(r - results['default'][2]).mean():.4f}" if label == "fast" else ""
                print(f"{task} B={batch} {label}: compile {c:.1f} s, {batch * args.steps / s:,.0f} steps/s, "
                      f"mean reward {r.mean():.3f}{delta}", flush=True)
            c0, s0, r0 = results["default"]
            row = f"| {task} | {batch} | {c0:.0f} | {batch * args.steps / s0:,.0f} | "
            if "fast" in results:
                c1, s1, r1 = results["fast"]
                row += (f"{c1:.0f} | {batch * args.steps / s1:,.0f} | {s0 / s1:.1f}× | {r0.mean():.3f} | {r1.mean():.3f} | "
                        f"{np.abs(r0 - r1).mean():.3f} |")
            else:
                row += f"– | – | – | {r0.mean():.3f} | – | – |"
            rows.append(row)
    command = "python benchmarks/locomotion.py " + " ".join(sys.argv[1:] if argv is None else argv)
    section = "\n".join([
        SECTION, "",
        f"Machine: {environment('mujoco', 'mujoco-mjx')}. Command: `{command.strip()}`. "
        f"{args.steps} env steps per rollout (all tasks' reset + steps in one compiled program, random actions, "
        f"no policy), best of {args.repeats} compiled calls; compile = `lower().compile()`, cold. "
        f"Default: the models' solver settings (100 / 50 iterations); fast: {solver} / {line_search}. "
        "Rewards: mean per step of each setting on identical inputs, and the mean |Δ| per step between them.", "",
        "| task | B | compile s (default) | steps/s (default) | compile s (fast) | steps/s (fast) | speed-up | "
        "reward (default) | reward (fast) | mean abs Δ reward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows, ""])
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
