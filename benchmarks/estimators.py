"""Time to compute a batch-mean Hessian estimate, per estimator: batched autodiff vs a per-trajectory loop.

Setting of the paper's tabular experiment (Tang et al. 2021, Sec. 5; released-code sizes): a random MDP
with 20 states × 5 actions, γ = 0.8, N = 1000 trajectories of T = 20 steps, tabular softmax logits
(100 parameters, so a Hessian has 10⁴ entries), critic = V^μ plus Gaussian noise, on-policy.

* **batched autodiff** — :func:`metagrad.estimators.tabular_derivatives_autodiff` (``order=2``):
  ``jax.jacfwd(jax.grad)`` of the batch-mean surrogate in θ, one jitted call for all N trajectories.
* **per-trajectory loop** — the approach of the authors' released toy code: a jitted per-trajectory
  ``jax.hessian`` of the estimator's objective, called in a Python loop and averaged. It is timed on a
  subset of ``--loop-subset`` trajectories and scaled linearly to N (said so in the table).
* **chain rule** — :func:`metagrad.tabular.derivatives`, the assembly through ℓ = log π that
  :func:`metagrad.estimators.tabular_derivatives` uses.

Each jitted function is timed after a warm-up call (compilation excluded), best of ``--repeats``, with
``jax.block_until_ready``. Float32 (JAX's default).

Run from the repository root::

    python benchmarks/estimators.py            # prints a Markdown table, updates benchmarks/RESULTS.md
    python benchmarks/estimators.py --no-write # prints only
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

from _common import environment, write_section
from metagrad import estimators
from metagrad import mdp as mdp_lib
from metagrad.rollout import sample, tabular_softmax_policy

SECTION = "## Estimators (benchmarks/estimators.py)"
NAMES = ("is", "dr", "vtrace", "taypo1", "taypo2", "maml", "dice", "loaded_dice", "lvc")
S, A, N, T, GAMMA = 20, 5, 1000, 20, 0.8


def best_time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # warm-up: compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def batched(name):
    return jax.jit(lambda logits, batch, critic: estimators.tabular_derivatives_autodiff(
        name, logits, batch, critic, discount=GAMMA, order=2)[1])


def per_trajectory_hessian(name):
    """The loop body: a jitted Hessian of one trajectory's objective in the logits."""

    def objective(logits, states, actions, rewards, values):
        log_pi = jax.nn.log_softmax(logits, axis=-1)[states, actions]
        return estimators.trajectory_objective(name, log_pi, jax.lax.stop_gradient(log_pi), rewards, values, GAMMA)

    return jax.jit(jax.hessian(objective))


def loop_time(name, logits, batch, critic, subset, repeats):
    hess = per_trajectory_hessian(name)
    states, actions = batch.observations[:, :-1], batch.actions
    values = critic[batch.observations]

    def run():
        total = jnp.zeros((S, A, S, A), logits.dtype)
        for i in range(subset):
            total = total + hess(logits, states[i], actions[i], batch.rewards[i], values[i])
        return total / subset

    run()  # warm-up
    best = float("inf")
    for _ in range(max(1, repeats // 2)):
        start = time.perf_counter()
        jax.block_until_ready(run())
        best = min(best, time.perf_counter() - start)
    return best * N / subset


def chain_rule(name):
    from metagrad.tabular import derivatives

    def fn(log_pi, rewards, values):
        return estimators.trajectory_objective(name, log_pi, jax.lax.stop_gradient(log_pi), rewards, values, GAMMA)

    def run(logits, batch, critic):
        args = (batch.rewards, critic[batch.observations])
        return derivatives(fn, logits, batch.observations[:, :-1], batch.actions, args, order=2)[1]

    return jax.jit(run)



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print the table without updating RESULTS.md")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (best kept)")
    parser.add_argument("--loop-subset", type=int, default=50, help="trajectories timed in the per-trajectory loop")
    parser.add_argument("--names", nargs="+", default=list(NAMES), help="estimators to time")
    args = parser.parse_args(argv)

    mdp = mdp_lib.random_mdp(jax.random.PRNGKey(0), S, A, gamma=GAMMA)
    mu_logits = jnp.zeros((S, A))
    batch = sample(jax.random.PRNGKey(1), mdp, tabular_softmax_policy, mu_logits, N, T)
    v_mu, _ = mdp_lib.policy_evaluation(mdp, jax.nn.softmax(mu_logits, axis=-1))
    noise = jax.random.normal(jax.random.PRNGKey(2), (S,)) * jnp.linalg.norm(v_mu) / S
    critic = v_mu + noise

    rows, speedups, chain_speedups = [], [], []
    for name in args.names:
        t_batch = best_time(batched(name), mu_logits, batch, critic, repeats=args.repeats)
        t_loop = loop_time(name, mu_logits, batch, critic, args.loop_subset, args.repeats)
        t_chain = best_time(chain_rule(name), mu_logits, batch, critic, repeats=args.repeats)
        speedups.append(t_loop / t_batch)
        chain_speedups.append(t_loop / t_chain)
        rows.append(f"| `{name}` | {t_loop * 1e3:,.0f} | {t_batch * 1e3:,.1f} | {t_loop / t_batch:,.0f}× | "
                    f"{t_chain * 1e3:,.1f} | {t_loop / t_chain:,.0f}× |")
        print(f"{name}: loop {t_loop:.3f}s, batched {t_batch:.4f}s, chain {t_chain:.4f}s", file=sys.stderr)

    table = "\n".join([
        "| estimator | per-trajectory loop, scaled to N (ms) | batched autodiff (ms) | speed-up | chain rule `metagrad.tabular` (ms) | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
    ])
    low, high = min(speedups), max(speedups)
    section = f"""{SECTION}

Time to compute one batch-mean Hessian estimate (`[20, 5, 20, 5]`) from N = {N:,} on-policy trajectories of
T = {T} steps of a random 20×5 MDP (γ = {GAMMA}), tabular softmax logits, critic V^μ + noise. **Batched**:
`metagrad.estimators.tabular_derivatives_autodiff(name, …, order=2)` jitted (forward-over-reverse autodiff
of the batch-mean surrogate in θ). **Per-trajectory loop** (the authors' toy-code approach): a jitted per-trajectory
`jax.hessian` called in a Python loop, timed on {args.loop_subset} trajectories and **scaled linearly to
N = {N:,}**. **Chain rule**: `metagrad.tabular.derivatives` through ℓ (autodiff in the T log-probabilities,
then two P×P products), what `metagrad.estimators.tabular_derivatives` uses. Compile excluded (warm-up call), best of {args.repeats} repeats
({max(1, args.repeats // 2)} for the loop), `block_until_ready`; float32 (JAX default).

Batched autodiff is {low:,.0f}–{high:,.0f}× faster than the per-trajectory loop; the chain rule
{min(chain_speedups):,.0f}–{max(chain_speedups):,.0f}×.

{table}

- Machine: {environment("numpy")}. CPU only (no GPU for this benchmark).
- Command: `python benchmarks/estimators.py` (from the repository root).
- The 2 CPU cores were shared with other jobs while measuring: absolute times vary by about ±30 % between runs.
"""
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
    return 0



if __name__ == "__main__":
    sys.exit(main())
