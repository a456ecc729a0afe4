"""MAML experiments: `metagrad maml-accuracy` and `metagrad maml-nav2d` (plots, JSON and a stdout table).

`maml-accuracy` — tabular task family (random MDPs, tabular softmax policy, exact critic). For each inner
estimator and batch size N (trajectories per task), the meta-gradient of the loop ([`metagrad.maml`][metagrad.maml])
is compared with the exact meta-gradient [`metagrad.exact.maml_gradient`][metagrad.exact.maml_gradient]: Pearson correlation and
relative error ‖ĝ − g‖/‖g‖, mean ± s.e. over seeds (each seed: new tasks and a new θ; `--repeats`
independent batches per seed). The bias ‖E ĝ − g‖/‖g‖ is estimated from the repeat average with its noise
subtracted ([`run_accuracy`][metagrad.experiments.maml_experiments.run_accuracy]). For DiCE, DR and TayPO-2 (unbiased gradient and Hessian estimates with
the exact critic) it is the *plug-in bias* of Tang et al. Sec. 2.2: θ̂' = θ + η ĝ_in is random and ∇J is
nonlinear in it, so E ĝ ≠ g at finite N (O(1/N)); for the MAML surrogate and LVC it also holds their
Hessian's bias, which does not vanish as N grows.

`maml-nav2d` — meta-training curves on Navigation2D (Tang et al. 2021, Fig. 1d): TRPO-MAML, TRPO-FMAML,
TRPO-EMAML, TRPO-DiCE, ProMP (LVC) and ProMP-TayPO-2 with 3 adaptation steps; post-adaptation (solid) and
pre-adaptation (dotted) return vs iteration, mean ± s.e. over seeds; plus trajectories before and after
adaptation for a few goals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys

import numpy as np

from metagrad.experiments._options import check_accuracy, check_nav2d
from metagrad.experiments.nav_protocol import NAV_DEFAULTS, NAV_METHODS, QUICK_METHODS, nav_config

ACCURACY_ESTIMATORS = ("dice", "dr", "taypo2", "maml", "lvc")

def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers; got {text!r}")
    return values


def _positive_int(text: str) -> int:
    return _positive_ints(text)[0] if "," not in text else _fail(text)


def _fail(text):
    raise argparse.ArgumentTypeError(f"expected one positive integer; got {text!r}")


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


# ------------------------------------------------------------------------------------------ accuracy
def squared_bias(estimates, truth):
    r"""An unbiased estimate of the squared bias $\|\mathbb E\hat g - g\|^2$ from $M$ independent estimates.

    Args:
        estimates: `[M, D]`, $M \ge 2$ independent, identically distributed estimates $\hat g_i$.
        truth: `[D]`, the exact value $g$.

    Returns:
        A scalar whose expectation is $\|\mathbb E\hat g - g\|^2$. The noise of the mean of the $M$ estimates is
        removed, so the value may be negative when the bias is smaller than that noise; it is not clipped.
        Traceable (`jax.jit`, `jax.vmap`). Notebook 07 derives it; [`squared_bias_report`][metagrad.experiments.maml_experiments.squared_bias_report]
        adds its standard error.
    """
    import jax.numpy as jnp

    m = estimates.shape[0]
    error = jnp.mean(estimates, axis=0) - truth
    return jnp.sum(error**2) - jnp.sum(jnp.var(estimates, axis=0, ddof=1)) / m


def squared_bias_report(estimates, truth):
    r"""(squared bias, its jackknife standard error, per-estimate variance $\operatorname{tr}\hat\Sigma$).

    Args:
        estimates: `[M, D]`, $M \ge 3$ independent estimates.
        truth: `[D]`, the exact value.

    Returns:
        Three scalars: [`squared_bias`][metagrad.experiments.maml_experiments.squared_bias]; its jackknife standard
        error over the $M$ leave-one-out subsets (Efron & Stein, 1981), $\sqrt{\tfrac{M-1}{M}\sum_i(\hat b^2_{(i)} -
        \overline{\hat b^2_{(\cdot)}})^2}$; and the trace of the sample covariance (ddof 1) of one estimate. A bias is
        resolved when the first exceeds about twice the second. Traceable.
    """
    import jax
    import jax.numpy as jnp

    estimates = jnp.asarray(estimates)
    m = estimates.shape[0]
    others = jnp.arange(m - 1)[None, :]
    leave_one_out = others + (others >= jnp.arange(m)[:, None])  # row i: every index but i
    partial = jax.vmap(lambda rows: squared_bias(estimates[rows], truth))(leave_one_out)
    se = jnp.sqrt((m - 1) / m * jnp.sum((partial - partial.mean()) ** 2))
    return squared_bias(estimates, truth), se, jnp.sum(jnp.var(estimates, axis=0, ddof=1))


def choose_by_mse(squared_biases: dict, variances: dict, num_samples: int) -> str:
    r"""The name with the smallest predicted mean squared error of a mean of `num_samples` estimates.

    Args:
        squared_biases: name -> unbiased estimate of $\|b\|^2$ (may be negative when unresolved; a squared bias
            cannot be, so 0 is used there).
        variances: name -> per-estimate variance $\operatorname{tr}\Sigma$ (same keys).
        num_samples: $N \ge 1$, the number of estimates averaged.

    Returns:
        $\arg\min_{\text{name}}\ \max(\hat b^2, 0) + \operatorname{tr}\Sigma / N$ (notebook 07 §3).
    """
    if set(squared_biases) != set(variances) or not squared_biases:
        raise ValueError(f"`squared_biases` and `variances` need the same non-empty keys; got {sorted(squared_biases)} "
                         f"and {sorted(variances)}.")
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive integer; got {num_samples!r}.")
    return min(squared_biases, key=lambda name: max(squared_biases[name], 0.0) + variances[name] / num_samples)


def run_accuracy(*, seed: int, seeds: int, batch_sizes, estimators, num_tasks: int, num_states: int,
                 num_actions: int, horizon: int, gamma: float, step_size: float, repeats: int = 4,
                 progress: bool = True) -> dict:
    """The numbers of `maml-accuracy` as a JSON-able dict (see the module docstring).

    For each seed s (a problem: θ_s, tasks, exact g_s) and each (estimator, N), `repeats` independent
    meta-gradients ĝ_{s,r} are estimated from fresh batches. Correlation and relative error are averaged over
    the repeats of a seed, then reported as mean ± s.e. over seeds. The bias uses e_{s,r} = (ĝ_{s,r} − g_s)/‖g_s‖:
    b²_s = ‖mean_r e_{s,r}‖² − n²_s, n²_s = tr Ĉov_r(e_{s,r}) / R, is an unbiased estimate of ‖E ĝ − g‖²/‖g‖² (the
    noise n²_s of the repeat average subtracted). `bias` = sqrt(max(mean_s b²_s, 0)); `bias_noise` =
    sqrt(mean_s n²_s), the resolution; `bias_resolved` = bias > bias_noise (under zero bias the estimate
    fluctuates by a fraction of the noise, so a resolved bias is real; an unresolved one is at most about the noise).
    """
    import jax

    from metagrad import exact, maml
    from metagrad.progress import Progress

    if repeats < 2:
        raise ValueError(f"`repeats` must be at least 2 (the bias subtracts the repeat variance); got {repeats}.")
    results = {name: {} for name in estimators}
    task_config = maml.MAMLConfig(env="tabular", num_states=num_states, num_actions=num_actions, num_tasks=num_tasks,
                                  horizon=horizon, gamma=gamma, inner_step_size=step_size, shard=False)

    # θ, the tasks and the exact meta-gradient depend on the seed only: compiled once, shared by every (estimator, N).
    @jax.jit
    def problem(key):
        k_theta, k_tasks, k_data = jax.random.split(key, 3)
        theta = 0.5 * jax.random.normal(k_theta, (num_states, num_actions))
        tasks = maml.sample_tasks(task_config, k_tasks, num_tasks)
        return theta, tasks, k_data, exact.maml_gradient(tasks, theta, step_size, 1)

    problems = [problem(jax.random.PRNGKey(seed * 1000 + s)) for s in range(seeds)]
    with Progress(len(estimators) * len(batch_sizes) * seeds, "maml-accuracy", enabled=progress) as bar:
        for name in estimators:
            for n in batch_sizes:
                config = dataclasses.replace(task_config, num_trajectories=n, inner_estimator=name)
                model = maml.MAML(config)

                @jax.jit
                def many(theta, tasks, k_data, model=model):
                    def one(key):
                        keys = jax.random.split(key, num_tasks)
                        data = jax.vmap(model.collect, in_axes=(None, 0, 0))(theta, tasks, keys)
                        return model.meta_gradient(theta, data)

                    return jax.lax.map(one, jax.random.split(k_data, repeats))  # sequential: memory of one repeat

                corr, rel, bias2, noise2 = [], [], [], []
                for theta, tasks, k_data, truth in problems:
                    estimates = np.asarray(many(theta, tasks, k_data), np.float64).reshape(repeats, -1)
                    truth = np.asarray(truth, np.float64).ravel()
                    corr.append(float(np.mean([np.corrcoef(e, truth)[0, 1] for e in estimates])))
                    errors = (estimates - truth) / np.linalg.norm(truth)
                    rel.append(float(np.mean(np.linalg.norm(errors, axis=1))))
                    noise2.append(float(np.sum(np.var(errors, axis=0, ddof=1)) / repeats))
                    bias2.append(float(np.sum(errors.mean(0) ** 2)) - noise2[-1])
                    bar.update(1, note=f"{name} N={n}")
                b2, noise = float(np.mean(bias2)), float(np.sqrt(np.mean(noise2)))
                results[name][str(n)] = {
                    "correlation": _mean_se(corr), "relative_error": _mean_se(rel),
                    "bias": float(np.sqrt(max(b2, 0.0))), "bias_noise": noise, "bias_resolved": bool(b2 > noise**2),
                    "bias_squared": _mean_se(bias2),
                    "correlation_per_seed": corr, "relative_error_per_seed": rel, "bias_squared_per_seed": bias2,
                }
    return results


#: DR and TayPO-2 coincide on-policy (same first two derivatives), so TayPO-2 is drawn dashed on top of DR.
_DASHED = ("taypo2",)


def _plot_accuracy(results: dict, batch_sizes, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metagrad import plotting

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for name, per_n in results.items():
        style = plotting.style(name)  # the library's palette: one colour and marker per estimator
        colour, marker, line = style["color"], style["marker"], "--" if name in _DASHED else "-"
        xs = [int(n) for n in per_n]
        for ax, key in zip(axes[:2], ("correlation", "relative_error")):
            mean = np.array([per_n[str(n)][key][0] for n in xs])
            se = np.nan_to_num(np.array([per_n[str(n)][key][1] for n in xs]))
            ax.errorbar(xs, mean, yerr=se, marker=marker, ls=line, color=colour, capsize=3, label=name)
        bias = np.array([per_n[str(n)]["bias"] for n in xs])
        noise = np.array([per_n[str(n)]["bias_noise"] for n in xs])
        resolved = np.array([per_n[str(n)]["bias_resolved"] for n in xs])
        shown = np.where(resolved, bias, noise)  # an unresolved bias is drawn at the noise level (an upper bound)
        axes[2].plot(xs, shown, ls=line, color=colour, label=name)
        axes[2].plot(np.array(xs)[resolved], bias[resolved], marker, color=colour)
        axes[2].plot(np.array(xs)[~resolved], shown[~resolved], "1", color=colour, ms=12, mew=1.5)
    titles = ("correlation with the exact meta-gradient", "relative error ‖ĝ − g‖ / ‖g‖",
              "bias ‖E ĝ − g‖ / ‖g‖  (Y: below the noise, shown at the noise level)")
    for ax, text in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("trajectories per task N")
        ax.set_title(text, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _command_line(args) -> str | None:
    """The command that was run (`metagrad …`), when `metagrad.cli.main` recorded its argv."""
    argv = getattr(args, "argv", None)
    return None if argv is None else "metagrad " + shlex.join(argv)


def _cmd_accuracy(args) -> int:
    from metagrad._validation import write_json_atomic

    check_accuracy(args)  # every option, before any computation (fills the --quick defaults)
    import jax

    jax.config.update("jax_enable_x64", True)
    from metagrad.cli import environment_info

    settings = dict(seed=args.seed, seeds=args.seeds, batch_sizes=args.batch_sizes, estimators=args.estimators,
                    num_tasks=args.num_tasks, num_states=args.num_states, num_actions=args.num_actions,
                    horizon=args.horizon, gamma=args.gamma, step_size=args.step_size, repeats=args.repeats)
    results = run_accuracy(**settings, progress=not args.no_progress)
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "maml_accuracy.json"),
                      {"settings": {**settings, "quick": args.quick, "command_line": _command_line(args)},
                       "results": results, "environment": environment_info()})
    title = (f"random {args.num_states}×{args.num_actions} MDPs, {args.num_tasks} tasks, T = {args.horizon}, "
             f"γ = {args.gamma}, one inner step η = {args.step_size}, exact critic; mean ± s.e. over {args.seeds} "
             f"seeds (new θ and tasks), {args.repeats} batches each")
    _plot_accuracy(results, args.batch_sizes, os.path.join(args.out, "maml_accuracy.png"), title)
    print(f"{'estimator':>10} {'N':>6} {'correlation':>18} {'relative error':>18} {'bias':>8} {'noise':>8}")
    for name, per_n in results.items():
        for n, r in per_n.items():
            c, e = r["correlation"], r["relative_error"]
            print(f"{name:>10} {n:>6} {c[0]:>9.4f} ± {c[1]:<6.4f} {e[0]:>9.4f} ± {e[1]:<6.4f} "
                  f"{r['bias']:>8.4f} {r['bias_noise']:>8.4f}{'' if r['bias_resolved'] else '  (not resolved)'}")
    print(f"wrote {os.path.join(args.out, 'maml_accuracy.png')} and maml_accuracy.json", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------ navigation
def _plot_nav(curves: dict, pre_curves: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metagrad import plotting

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for method, runs in curves.items():
        colour = plotting.style(method)["color"]
        for data, style, label in ((runs, "-", method), (pre_curves[method], ":", None)):
            data = np.asarray(data)
            mean = data.mean(0)
            se = data.std(0, ddof=1) / np.sqrt(len(data)) if len(data) > 1 else np.zeros_like(mean)
            xs = np.arange(1, len(mean) + 1)
            ax.plot(xs, mean, style, color=colour, label=label)
            ax.fill_between(xs, mean - se, mean + se, color=colour, alpha=0.15)
    ax.plot([], [], "k-", label="post-adaptation (solid)")
    ax.plot([], [], "k:", label="pre-adaptation (dotted)")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean undiscounted return per trajectory")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def trajectory_goals(env_name: str, num_goals: int, key):
    """Distinct goals for the trajectory panels: the four corners (corners task) or `num_goals` random goals."""
    import jax.numpy as jnp

    from metagrad.envs.navigation import CORNERS, Navigation2D

    if env_name == "navigation-corners":
        return jnp.asarray(CORNERS[:num_goals], dtype=jnp.result_type(float))
    return Navigation2D("square").sample_tasks(key, num_goals)


def _plot_trajectories(config, params, key, path: str, num_goals: int = 4, num_paths: int = 5) -> dict:
    """Pre-update (grey) and adapted (blue, after `inner_steps` steps) paths for distinct goals.

    The adaptation uses the run's own batch size (`config.num_trajectories` trajectories per inner step, as in
    training); `num_paths` of each batch are drawn. Returns, per goal, the mean final distance to the goal
    before and after adaptation (over the whole batch), so the caption can state what the panels show.
    """
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metagrad import maml

    model = maml.MAML(config)
    goals = trajectory_goals(config.env, num_goals, key)
    data = jax.jit(jax.vmap(model.collect, in_axes=(None, 0, 0)))(params, goals, jax.random.split(key, num_goals))
    fig, axes = plt.subplots(1, num_goals, figsize=(3.3 * num_goals, 3.6), squeeze=False)
    distances = {}
    for g, ax in enumerate(axes[0]):
        goal = np.asarray(goals[g], dtype=np.float64)
        first = data.pre[0] if data.pre else data.post
        summary = []
        for (label, batch), colour in zip((("pre-update", first), ("adapted", data.post)), ("tab:grey", "tab:blue")):
            xy = np.asarray(batch.observations[g], dtype=np.float64)  # [N, T+1, 2]
            for n in range(min(num_paths, xy.shape[0])):
                ax.plot(xy[n, :, 0], xy[n, :, 1], color=colour, lw=0.9, alpha=0.8, label=label if n == 0 else None)
            summary.append(float(np.mean(np.linalg.norm(xy[:, -1] - goal, axis=-1))))
        distances[f"({goal[0]:g}, {goal[1]:g})"] = {"pre_final_distance": summary[0], "adapted_final_distance": summary[1]}
        ax.scatter([goal[0]], [goal[1]], color="tab:red", marker="*", s=120, label="goal", zorder=3)
        half = 2.4 if config.env == "navigation-corners" else 0.6  # the same arena in every panel
        ax.set_xlim(-half, half)
        ax.set_ylim(-half, half)
        ax.set_aspect("equal")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.grid(alpha=0.3)
        ax.set_title(f"goal ({goal[0]:g}, {goal[1]:g}); final distance\npre {summary[0]:.2f} → adapted {summary[1]:.2f}",
                     fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return distances


def _cmd_nav2d(args) -> int:
    from metagrad._validation import write_json_atomic

    check_nav2d(args)  # every option, before any computation (fills the --quick defaults)
    import time

    import jax

    from metagrad import maml
    from metagrad.cli import environment_info

    sizes = dict(num_tasks=args.num_tasks, num_trajectories=args.num_trajectories, horizon=args.horizon,
                 inner_steps=args.inner_steps)
    curves, pre_curves, summary, configs, wall, last = {}, {}, {}, {}, {}, None
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.seeds)
    tic_all = time.perf_counter()
    for method in args.methods:
        config = nav_config(method, quick=args.quick, env=args.env, iterations=args.iterations, **sizes)
        tic = time.perf_counter()
        if args.checkpoint_dir is None:
            # All seeds of a method in one jitted program (vmap over the seed keys): the public API.
            params, history = maml.train_seeds(config, keys, progress=not args.no_progress, label=method)
        else:
            config, params, history = _train_checkpointed(config, keys, args, method)
        wall[method] = time.perf_counter() - tic
        curves[method] = np.asarray(history["post_return"]).tolist()
        pre_curves[method] = np.asarray(history["pre_return"]).tolist()
        configs[method] = config.to_json()
        last = (config, jax.tree_util.tree_map(lambda x: x[-1], params))
        window = min(5, config.num_iterations)
        post, pre = np.asarray(curves[method]), np.asarray(pre_curves[method])
        summary[method] = {
            "initial_post": _mean_se(post[:, :window].mean(1)), "final_post": _mean_se(post[:, -window:].mean(1)),
            "final_pre": _mean_se(pre[:, -window:].mean(1)), "best_post": _mean_se(post.max(1)),
            # Instability: the largest drop of the post-adaptation curve below its running best, per seed.
            "max_drop": _mean_se((np.maximum.accumulate(post, axis=1) - post).max(1)),
            # Roughness: mean |change| of the post-adaptation return between consecutive iterations, second half.
            "roughness": _mean_se(np.abs(np.diff(post[:, post.shape[1] // 2:], axis=1)).mean(1))
            if post.shape[1] > 2 else None,
        }
        os.makedirs(args.out, exist_ok=True)
        write_json_atomic(os.path.join(args.out, "maml_nav2d.partial.json"),  # survives an interrupted run
                          {"curves": curves, "pre_curves": pre_curves, "summary": summary, "wall_time_s": wall,
                           "configs": configs})
    total = time.perf_counter() - tic_all
    os.makedirs(args.out, exist_ok=True)
    c = last[0]
    protocol = {k: {"value": (list(v) if isinstance(v, tuple) else v), "source": src}
                for k, (v, src) in NAV_DEFAULTS.items()}
    full_size = all(args_value is None for args_value in sizes.values()) and not args.quick and args.iterations is None
    distances = _plot_trajectories(last[0], last[1], jax.random.PRNGKey(args.seed + 12345),
                                   os.path.join(args.out, "maml_nav2d_trajectories.png"))
    settings = {**{k: v for k, v in vars(args).items() if k not in ("func", "argv")},
                "command_line": _command_line(args), "paper_protocol": full_size}
    write_json_atomic(os.path.join(args.out, "maml_nav2d.json"),
                      {"settings": settings, "protocol_defaults": protocol, "configs": configs, "curves": curves,
                       "pre_curves": pre_curves, "summary": summary, "wall_time_s": {"per_method": wall, "total": total},
                       "trajectories": {"method": args.methods[-1], "seed": args.seeds - 1, "final_distances": distances},
                       "environment": environment_info()})
    label = "paper protocol" if full_size else "REDUCED size (not the paper's protocol)"
    title = nav_title(label, args.env, c, args.seeds)
    _plot_nav(curves, pre_curves, os.path.join(args.out, "maml_nav2d.png"), title)
    print(f"{label}; mean return over the first / last 5 iterations, mean ± s.e. over {args.seeds} seeds")
    print(f"{'method':>14} {'post-adaptation, first':>24} {'post-adaptation, last':>24} {'pre-adaptation, last':>24}"
          f" {'max drop':>18} {'wall s':>8}")
    for method, r in summary.items():
        cells = [f"{r[k][0]:>13.3f} ± {r[k][1]:<7.3f}" for k in ("initial_post", "final_post", "final_pre", "max_drop")]
        print(f"{method:>14} " + " ".join(cells) + f" {wall[method]:>8.1f}")
    print(f"wrote {args.out}/maml_nav2d.png, maml_nav2d_trajectories.png and maml_nav2d.json "
          f"(trajectories: {args.methods[-1]}, last seed); total {total:.0f} s", file=sys.stderr)
    return 0


#: Iterations between checkpoints of ``maml-nav2d --checkpoint-dir`` (fixed, so that ``--iterations`` may change on
#: ``--resume``: a checkpoint's config must equal the resumed one but for ``num_iterations``).
NAV_CHECKPOINT_EVERY = 10


def _train_checkpointed(config, keys, args, method):
    """One method's seeds one after another, each a [`metagrad.maml.train`][metagrad.maml.loop.train] run checkpointed every
    `NAV_CHECKPOINT_EVERY` iterations in `<checkpoint-dir>/<method>/seed-<s>` (resumed with `--resume`;
    a seed that has no checkpoint yet starts). The meta-batch is sharded over the devices when they divide it.
    Returns `(config, params, history)` stacked over seeds like [`metagrad.maml.train_seeds`][metagrad.maml.loop.train_seeds]."""
    import jax

    from metagrad import maml

    shard = len(jax.devices()) > 1 and config.num_tasks % len(jax.devices()) == 0
    config = dataclasses.replace(config, checkpoint_every=NAV_CHECKPOINT_EVERY, shard=shard)
    runs = []
    for s, key in enumerate(keys):
        folder = os.path.join(args.checkpoint_dir, method, f"seed-{s}")
        resume = args.resume and os.path.exists(os.path.join(folder, maml.checkpoint.CHECKPOINT))
        runs.append(maml.train(config, key, checkpoint_dir=folder, resume=resume, progress=not args.no_progress,
                               label=f"{method} seed {s}"))
    params = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *[p for p, _ in runs])
    history = {name: np.stack([h[name] for _, h in runs]) for name in runs[0][1]}
    return config, params, history


def nav_title(label: str, env: str, config, seeds: int) -> str:
    """The three-line title of the Fig. 1d plot (size label, batch sizes, seeds)."""
    return (f"{label}: {env}\n{config.num_tasks} tasks × {config.num_trajectories} traj. × {config.horizon} steps, "
            f"{config.inner_steps} inner step(s) η = {config.inner_step_size}, {config.num_iterations} iterations\n"
            f"mean ± s.e. over {seeds} seeds")


def replot_nav(json_path: str) -> None:
    """Redraw `maml_nav2d.png` next to `json_path` from its curves (no training)."""
    from metagrad import maml

    data = json.load(open(json_path))
    config = maml.MAMLConfig.from_json(next(iter(data["configs"].values())))
    label = "paper protocol" if data["settings"]["paper_protocol"] else "REDUCED size (not the paper's protocol)"
    title = nav_title(label, data["settings"]["env"], config, data["settings"]["seeds"])
    _plot_nav(data["curves"], data["pre_curves"], os.path.join(os.path.dirname(json_path), "maml_nav2d.png"), title)


def _nav_help() -> str:
    lines = ["Fig. 1d of Tang et al. (2021). With no size flags it runs the paper's protocol; defaults and sources:"]
    lines += [f"  {k} = {v!r}: {src}" for k, (v, src) in NAV_DEFAULTS.items()]
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add `maml-accuracy` and `maml-nav2d` to the `metagrad` command line."""
    acc = subparsers.add_parser("maml-accuracy", help="meta-gradient accuracy vs batch size on tabular MDPs")
    acc.add_argument("--out", default="results/maml-accuracy", help="output directory")
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--seeds", type=_positive_int, default=None,
                     help="independent trials (new tasks and θ), ≥ 2; default 5 (3 with --quick)")
    acc.add_argument("--batch-sizes", type=_positive_ints, default=None,
                     help="trajectories per task, comma-separated; default 10,100,1000,10000 (10,100,1000 with --quick)")
    acc.add_argument("--estimators", type=lambda s: [e for e in s.split(",") if e], default=list(ACCURACY_ESTIMATORS))
    acc.add_argument("--num-tasks", type=_positive_int, default=None, help="default 8 (4 with --quick)")
    acc.add_argument("--num-states", type=_positive_int, default=6)
    acc.add_argument("--num-actions", type=_positive_int, default=3)
    acc.add_argument("--horizon", type=_positive_int, default=25)
    acc.add_argument("--gamma", type=float, default=0.8)
    acc.add_argument("--step-size", type=float, default=1.0, help="inner step size η")
    acc.add_argument("--repeats", type=_positive_int, default=4,
                     help="independent batches per seed and N (≥ 2; their spread is subtracted from the bias)")
    acc.add_argument("--quick", action="store_true",
                     help="smaller defaults (N ∈ {10, 100, 1000}, 3 seeds, 4 tasks); options given explicitly win")
    acc.add_argument("--no-progress", action="store_true")
    acc.set_defaults(func=_cmd_accuracy)

    nav = subparsers.add_parser("maml-nav2d", help="meta-training curves on Navigation2D (Fig. 1d)",
                                description=_nav_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    nav.add_argument("--out", default="results/maml-nav2d", help="output directory")
    nav.add_argument("--seed", type=int, default=0, help="root key; seed s of a method uses split(PRNGKey(seed))[s]")
    nav.add_argument("--seeds", type=_positive_int, default=None,
                     help=f"default {NAV_DEFAULTS['seeds'][0]} ({NAV_DEFAULTS['seeds'][1]}); 2 with --quick")
    nav.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m], default=None,
                     help=f"comma-separated; default all of {list(NAV_METHODS)} ({', '.join(QUICK_METHODS)} with --quick)")
    nav.add_argument("--env", choices=["navigation-corners", "navigation"], default="navigation-corners",
                     help="navigation-corners: ProMP's corners with its action normalisation (paper); "
                          "navigation: pytorch-maml-rl's square")
    nav.add_argument("--iterations", type=_positive_int, default=None,
                     help=f"meta-iterations (default {NAV_DEFAULTS['num_iterations'][0]}: {NAV_DEFAULTS['num_iterations'][1]})")
    nav.add_argument("--num-tasks", type=_positive_int, default=None, help="tasks per meta-batch (default 40, ProMP)")
    nav.add_argument("--num-trajectories", type=_positive_int, default=None,
                     help="trajectories per task and batch (default 20, ProMP)")
    nav.add_argument("--horizon", type=_positive_int, default=None, help="steps per trajectory (default 100, ProMP)")
    nav.add_argument("--inner-steps", type=_positive_int, default=None, help="adaptation steps (default 3, paper)")
    nav.add_argument("--quick", action="store_true",
                     help="8 tasks × 10 trajectories × 50 steps, 32×32, 1 inner step, outer Adam 1e-2, 20 iterations, "
                          "2 seeds (our choice; not the paper's protocol); options given explicitly win")
    nav.add_argument("--checkpoint-dir", default=None,
                     help=f"run each method's seeds one after another, checkpointing every {NAV_CHECKPOINT_EVERY} "
                          "iterations in DIR/<method>/seed-<s> (a folder that holds a checkpoint is refused "
                          "without --resume)")
    nav.add_argument("--resume", action="store_true",
                     help="continue the checkpoints in --checkpoint-dir (same options; --iterations may grow)")
    nav.add_argument("--no-progress", action="store_true")
    nav.set_defaults(func=_cmd_nav2d)
