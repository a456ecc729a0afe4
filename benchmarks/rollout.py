"""Environment steps per second of :func:`metagrad.rollout.sample` against a naive per-step Python loop.

Two settings (Tang et al. 2021, Sec. 5):

* the tabular MDP of the paper's released code (20 states, 5 actions, Dirichlet(0.001), γ = 0.8) with a
  softmax policy, horizon T = 20;
* MAML's 2-D navigation (:class:`metagrad.envs.Navigation2D`, goals in a square) with a linear-Gaussian
  policy, horizon T = 100.

For N ∈ {10², 10⁴, 10⁵} trajectories the jitted sampler is timed after a warm-up call (compilation
excluded), best of several repeats (fewer for 10⁵), with ``jax.block_until_ready``. The baseline is what a
naive implementation does: NumPy, one trajectory and one step at a time (sample the action, step the
environment, store the transition), timed in the same run on a small number of trajectories. Steps are
N·T environment transitions (padding after termination counts, as it costs the same). The headline is
the speed-up at N = 10⁴.

Run from the repository root (JAX's default float32)::

    python benchmarks/rollout.py            # prints a Markdown table, updates benchmarks/RESULTS.md
    python benchmarks/rollout.py --no-write # prints only
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from _common import environment, write_section
from metagrad import mdp as mdp_lib
from metagrad.envs import Navigation2D
from metagrad.rollout import sample, tabular_softmax_policy

SECTION = "## Rollouts (benchmarks/rollout.py)"
SIZES = (100, 10_000, 100_000)


def gaussian_policy(params, key, obs):
    """a ~ N(W x + b, σ² I); returns (a, log N(a; W x + b, σ² I))."""
    weights, bias, log_std = params
    mean = weights @ obs + bias
    std = jnp.exp(log_std)
    action = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
    log_prob = jnp.sum(-0.5 * ((action - mean) / std) ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi))
    return action, log_prob


# --------------------------------------------------------------------------- naive loops


def naive_tabular(rng, transitions, rewards, initial, logits, num_trajectories, horizon):
    """One trajectory, one step at a time, as a first implementation would write it."""
    num_states, num_actions = rewards.shape
    transitions = transitions / transitions.sum(-1, keepdims=True)  # float32 rows, renormalised in float64
    out = []
    for _ in range(num_trajectories):
        x = rng.choice(num_states, p=initial)
        states, actions, rews, log_probs = [x], [], [], []
        for _ in range(horizon):
            z = logits[x] - logits[x].max()
            pi = np.exp(z) / np.exp(z).sum()
            a = rng.choice(num_actions, p=pi)
            rews.append(rewards[x, a])
            log_probs.append(np.log(pi[a]))
            x = rng.choice(num_states, p=transitions[x, a])
            actions.append(a)
            states.append(x)
        out.append((states, actions, rews, log_probs))
    return out


def naive_navigation(rng, goal, params, num_trajectories, horizon, max_action=0.1, tolerance=0.01):
    weights, bias, log_std = (np.asarray(p) for p in params)
    std = np.exp(log_std)
    out = []
    for _ in range(num_trajectories):
        s = np.zeros(2)
        states, actions, rews, log_probs, done = [s], [], [], [], False
        for _ in range(horizon):
            mean = weights @ s + bias
            a = mean + std * rng.normal(size=2)
            log_probs.append(np.sum(-0.5 * ((a - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)))
            if not done:
                s = s + np.clip(a, -max_action, max_action)
                rews.append(-np.linalg.norm(s - goal))
                done = bool(np.all(np.abs(s - goal) < tolerance))
            else:
                rews.append(0.0)
            actions.append(a)
            states.append(s)
        out.append((states, actions, rews, log_probs))
    return out


# --------------------------------------------------------------------------- timing


def best_time(fn, repeats):
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return min(times)


def bench_jax(env, policy, params, task, horizon, sizes):
    rates = {}
    for n in sizes:
        run = lambda i, n=n: jax.block_until_ready(  # noqa: E731
            sample(jax.random.PRNGKey(i), env, policy, params, n, horizon, task=task)
        )
        run(-1)  # compile
        seconds = best_time(run, 2 if n >= 100_000 else 5)
        rates[n] = (n * horizon / seconds, seconds)
    return rates


def bench_loop(fn, num_trajectories, horizon):
    seconds = best_time(lambda i: fn(np.random.default_rng(i), num_trajectories), 3)
    return num_trajectories * horizon / seconds, seconds



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print the table without updating RESULTS.md")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="numbers of trajectories N")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]

    mdp = mdp_lib.random_mdp(jax.random.PRNGKey(0), 20, 5)
    logits = jax.random.normal(jax.random.PRNGKey(1), (20, 5))
    nav = Navigation2D("square")
    goal = nav.sample_tasks(jax.random.PRNGKey(2), 1)[0]
    nav_params = (0.5 * jnp.eye(2), jnp.zeros(2), jnp.log(jnp.asarray(0.1)))

    settings = [
        ("tabular 20×5 (paper)", 20, mdp, tabular_softmax_policy, logits, None, 200,
         lambda rng, n: naive_tabular(rng, *(np.asarray(x, np.float64) for x in (mdp.transitions, mdp.rewards,
                                                                                  mdp.initial, logits)), n, 20)),
        ("Navigation2D (MAML)", 100, nav, gaussian_policy, nav_params, goal, 50,
         lambda rng, n: naive_navigation(rng, np.asarray(goal), nav_params, n, 100)),
    ]
    rows, headline = [], {}
    for name, horizon, env, policy, params, task, loop_n, loop in settings:
        loop_rate, loop_seconds = bench_loop(loop, loop_n, horizon)
        rates = bench_jax(env, policy, params, task, horizon, args.sizes)
        rows.append(f"| {name} | naive NumPy loop | {loop_n:,} | {horizon} | {loop_seconds * 1e3:,.1f} | "
                    f"{loop_rate:,.0f} | 1× |")
        for n, (rate, seconds) in rates.items():
            rows.append(f"| {name} | `rollout.sample` (jit) | {n:,} | {horizon} | {seconds * 1e3:,.1f} | "
                        f"{rate:,.0f} | {rate / loop_rate:,.0f}× |")
            if n == 10_000:
                headline[name] = rate / loop_rate
        print(f"{name}: done", file=sys.stderr)

    table = "\n".join(
        ["| setting | sampler | N | T | best time (ms) | env steps/s | speed-up |",
         "|---|---|---:|---:|---:|---:|---:|", *rows]
    )
    summary = "; ".join(f"{k}: **{v:,.0f}×**" for k, v in headline.items())
    section = f"""{SECTION}

Environment steps per second of `metagrad.rollout.sample` (one jitted `lax.scan` over time, `vmap` over
trajectories; compile excluded, best of 5 repeats, 2 for N = 10⁵, `block_until_ready`) against a naive
NumPy loop (one trajectory and one step at a time) timed in the same run. Float32 (JAX default).

Speed-up at N = 10⁴ (headline, target ≥ 100×): {summary}.

{table}

- Machine: {environment("numpy", "gymnasium")}. No GPU was available for this run (CPU only).
- Command: `python benchmarks/rollout.py` (from the repository root).
- The 2 CPU cores were shared with other jobs while measuring (load average {load:.1f} when started): both the loop and the
  sampler slow down, and ratios vary by about ±30 % between runs.
"""
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
    return 0



if __name__ == "__main__":
    sys.exit(main())
