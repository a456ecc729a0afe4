"""Speed of the paper's tabular protocol (``metagrad reproduce``) against a per-trajectory loop baseline.

The protocol of Tang et al. (2021), Fig. 1a–b: 4 values of ε × 10 trials × N = 1000 off-policy trajectories
of T = 20 steps (random 20×5 MDP, γ = 0.8), 5 estimators (step-wise IS, DR, V-trace, TayPO-1, TayPO-2),
gradient and Hessian estimates. The authors' released code computes them one trajectory at a time and takes
about 190 s on a 2-core machine.

* **ours** — the jitted programs of :mod:`metagrad.experiments.reproduce` (trial data + exact derivatives,
  trials sharded over one XLA device per CPU core as the command does,
  then one ``lax.switch`` program per estimator: batch-mean gradient and Hessian by the chain-rule
  assembly of :mod:`metagrad.tabular`, plus the correlation metrics). Timed once compiled (second call).
* **per-trajectory loop** — the released code's approach in JAX: a jitted per-trajectory ``jax.grad`` and
  ``jax.hessian`` of the estimator's objective, called in a Python loop over trajectories. Timed on
  ``--loop-subset`` trajectories per estimator and scaled linearly to the protocol's 200,000 trajectory
  evaluations (stated in the table). Its MDP sampling and exact derivatives are not even counted.
* **whole command** — the default ``metagrad reproduce`` (all three panels, 10 trials, N up to 3000, six
  estimators) in a fresh process: wall time including Python and JAX start-up and compilation, and peak
  resident memory.

Run from the repository root::

    python benchmarks/reproduce.py            # prints a Markdown section, updates benchmarks/RESULTS.md
    python benchmarks/reproduce.py --no-write # prints only
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from _common import environment, write_section
from metagrad.estimators import trajectory_objective
from metagrad.experiments import reproduce


SECTION = "## reproduce (benchmarks/reproduce.py)"
PAPER_ESTIMATORS = ("is", "dr", "vtrace", "taypo1", "taypo2")
RELEASED_CODE_SECONDS = 190.0  # the authors' released code on a 2-core machine (issue 4)


def protocol_config() -> reproduce.ReproduceConfig:
    """The paper's protocol for panels (a)–(b): 4 ε × 10 trials × N = 1000, five estimators, order 2."""
    return reproduce.ReproduceConfig(estimators=PAPER_ESTIMATORS, sweep=(1000,), order=2, progress=False)


def time_ours(config) -> tuple[float, float]:
    """(first call incl. compilation, compiled call) seconds for the whole protocol."""
    programs = reproduce._programs(config)

    def once():
        data = programs.prepare(programs.keys)
        outs = [programs.panels(i, data["logits"], data["batch"], data["critic"], data["exact"])
                for i in range(len(config.estimators))]
        return jax.block_until_ready(outs)

    start = time.perf_counter()
    once()
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return first, best


def time_loop(config, subset: int) -> float:
    """Seconds of the per-trajectory loop for the whole protocol (scaled from ``subset`` per estimator)."""
    programs = reproduce._programs(config)
    data = jax.block_until_ready(programs.prepare(programs.keys))
    batch, critic = data["batch"], data["critic"]
    logits = data["logits"][0, 2].astype(jnp.float32)  # trial 0, ε = 0.5
    states, actions = batch.observations[0, :subset, :-1], batch.actions[0, :subset]
    rewards = batch.rewards[0, :subset].astype(jnp.float32)
    values = critic[0].astype(jnp.float32)[batch.observations[0, :subset]]
    log_mu = jnp.full(actions.shape[1:], -jnp.log(config.actions), jnp.float32)
    total = 0.0
    for name in config.estimators:
        def objective(theta, s, a, r, v, name=name):
            log_pi = jax.nn.log_softmax(theta, axis=-1)[s, a]
            return trajectory_objective(name, log_pi, log_mu, r, v, config.gamma)

        grad, hess = jax.jit(jax.grad(objective)), jax.jit(jax.hessian(objective))
        jax.block_until_ready((grad(logits, states[0], actions[0], rewards[0], values[0]),
                               hess(logits, states[0], actions[0], rewards[0], values[0])))  # compile
        start = time.perf_counter()
        g_sum = jnp.zeros_like(logits)
        h_sum = jnp.zeros(logits.shape * 2, logits.dtype)
        for i in range(subset):
            g_sum = g_sum + grad(logits, states[i], actions[i], rewards[i], values[i])
            h_sum = h_sum + hess(logits, states[i], actions[i], rewards[i], values[i])
        jax.block_until_ready((g_sum, h_sum))
        total += time.perf_counter() - start
    per_trajectory = total / subset  # all estimators, one trajectory
    evaluations = len(config.epsilons) * config.trials * config.num_trajectories
    return per_trajectory * evaluations


def time_command() -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of the default ``metagrad reproduce`` in a fresh process."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "metagrad", "reproduce", "--quiet", "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak_kb / 1024**2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print the section without updating RESULTS.md")
    parser.add_argument("--loop-subset", type=int, default=100, help="trajectories timed per estimator in the loop")
    args = parser.parse_args(argv)
    # As `metagrad reproduce` does: one XLA CPU device per core, trials sharded over them.
    jax.config.update("jax_num_cpu_devices", len(os.sched_getaffinity(0)))
    jax.config.update("jax_enable_x64", True)

    config = protocol_config()
    load = os.getloadavg()[0]
    first, ours = time_ours(config)
    print(f"ours: first call {first:.2f} s, compiled {ours:.3f} s", file=sys.stderr)
    loop = time_loop(config, args.loop_subset)
    print(f"per-trajectory loop (scaled): {loop:.1f} s", file=sys.stderr)
    wall, peak = time_command()
    print(f"metagrad reproduce: {wall:.1f} s, peak {peak:.2f} GB", file=sys.stderr)

    section = f"""{SECTION}

The paper's protocol for Fig. 1a–b: 4 ε × 10 trials × N = 1,000 off-policy trajectories (T = 20, random
20×5 MDP, γ = 0.8), five estimators (IS, DR, V-trace, TayPO-1, TayPO-2), batch-mean gradient **and**
Hessian estimates. The authors' released code takes about {RELEASED_CODE_SECONDS:.0f} s for it on a 2-core machine.

| implementation | protocol time (s) | speed-up vs per-trajectory loop | vs released code ({RELEASED_CODE_SECONDS:.0f} s) |
|---|---:|---:|---:|
| per-trajectory loop (jitted `jax.grad` + `jax.hessian` per trajectory, timed on {args.loop_subset} trajectories per estimator, scaled to 200,000) | {loop:,.1f} | 1× | {RELEASED_CODE_SECONDS / loop:,.1f}× |
| `metagrad.experiments.reproduce`, first call (includes compilation) | {first:,.2f} | {loop / first:,.0f}× | {RELEASED_CODE_SECONDS / first:,.0f}× |
| `metagrad.experiments.reproduce`, compiled (best of 3) | {ours:,.3f} | **{loop / ours:,.0f}×** | **{RELEASED_CODE_SECONDS / ours:,.0f}×** |

The whole default command `metagrad reproduce` (panels a–c: six estimators, 10 trials, N up to 3,000, plus
the beyond-the-paper panels e–f; fresh process, so including Python and JAX start-up and compilation):
**{wall:.1f} s wall, peak resident memory {peak:.2f} GB** (targets: < 30 s, < 1.5 GB).

- Machine: {environment("numpy")}. CPU only: no GPU was lent to this task, so GPU times are not measured.
- Load average when started: {load:.1f} (a shared machine: times vary by about ±30 % between runs).
- Command: `python benchmarks/reproduce.py` (from the repository root).
"""
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
