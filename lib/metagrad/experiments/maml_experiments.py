"""MAML experiments: ``metagrad maml-accuracy`` and ``metagrad maml-nav2d`` (plots, JSON and a stdout table).

``maml-accuracy`` — tabular task family (random MDPs, tabular softmax policy, exact critic). For each inner
estimator and batch size N (trajectories per task), the meta-gradient of the loop (:mod:`metagrad.maml`)
is compared with the exact meta-gradient :func:`metagrad.exact.maml_gradient`: Pearson correlation and
relative error ‖ĝ − g‖/‖g‖, mean ± s.e. over seeds (each seed: new tasks and a new θ). The *plug-in bias*
(paper-notes §5: θ̂' is itself random, so E[ĝ] ≠ g at finite N) is measured as the relative error of the
seed-averaged estimate, ‖mean_s ĝ_s − g‖/‖g‖, which keeps the bias but divides the variance by the seeds.

``maml-nav2d`` — meta-training curves on Navigation2D (Tang et al. 2021, Fig. 1d): TRPO-MAML, TRPO-FMAML,
TRPO-EMAML, TRPO-DiCE, ProMP (LVC) and ProMP-TayPO-2 with 3 adaptation steps; post-adaptation return vs
iteration, mean ± s.e. over seeds; plus trajectories before and after adaptation for a few goals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

ACCURACY_ESTIMATORS = ("dice", "dr", "taypo2", "maml", "lvc")

#: Fig. 1d: label -> (outer optimiser, inner estimator).
NAV_METHODS = {
    "TRPO-MAML": ("trpo", "maml"),
    "TRPO-FMAML": ("trpo", "fomaml"),
    "TRPO-EMAML": ("trpo", "emaml"),
    "TRPO-DiCE": ("trpo", "dice"),
    "ProMP": ("promp", "lvc"),
    "ProMP-TayPO-2": ("promp", "taypo2"),
}


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
def run_accuracy(*, seed: int, seeds: int, batch_sizes, estimators, num_tasks: int, num_states: int,
                 num_actions: int, horizon: int, gamma: float, step_size: float, progress: bool = True) -> dict:
    """The numbers of ``maml-accuracy`` as a JSON-able dict (see the module docstring)."""
    import jax

    from metagrad import exact, maml
    from metagrad.progress import Progress

    results = {name: {} for name in estimators}
    with Progress(len(estimators) * len(batch_sizes) * seeds, "maml-accuracy", enabled=progress) as bar:
        for name in estimators:
            for n in batch_sizes:
                config = maml.MAMLConfig(
                    env="tabular", num_states=num_states, num_actions=num_actions, num_tasks=num_tasks,
                    num_trajectories=n, horizon=horizon, gamma=gamma, inner_step_size=step_size,
                    inner_estimator=name, shard=False,
                )
                model = maml.MAML(config)

                @jax.jit
                def one(key, model=model, config=config):
                    k_theta, k_tasks, k_data = jax.random.split(key, 3)
                    theta = 0.5 * jax.random.normal(k_theta, (num_states, num_actions))
                    tasks = maml.sample_tasks(config, k_tasks, num_tasks)
                    data = jax.vmap(model.collect, in_axes=(None, 0, 0))(theta, tasks, jax.random.split(k_data, num_tasks))
                    return model.meta_gradient(theta, data), exact.maml_gradient(tasks, theta, step_size, 1)

                estimates, truths, corr, rel = [], [], [], []
                for s in range(seeds):
                    estimate, truth = (np.asarray(x, np.float64).ravel() for x in one(jax.random.PRNGKey(seed * 1000 + s)))
                    estimates.append(estimate), truths.append(truth)
                    corr.append(float(np.corrcoef(estimate, truth)[0, 1]))
                    rel.append(float(np.linalg.norm(estimate - truth) / np.linalg.norm(truth)))
                    bar.update(1, note=f"{name} N={n}")
                # The plug-in bias: error of the seed average of (estimate − truth), relative to the mean ‖truth‖.
                mean_error = np.mean(np.asarray(estimates) - np.asarray(truths), axis=0)
                bias = float(np.linalg.norm(mean_error) / np.mean([np.linalg.norm(t) for t in truths]))
                results[name][str(n)] = {
                    "correlation": _mean_se(corr), "relative_error": _mean_se(rel), "bias": bias,
                    "correlation_per_seed": corr, "relative_error_per_seed": rel,
                }
    return results


def _plot_accuracy(results: dict, batch_sizes, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, per_n in results.items():
        xs = [int(n) for n in per_n]
        for ax, key in zip(axes[:2], ("correlation", "relative_error")):
            mean = np.array([per_n[str(n)][key][0] for n in xs])
            se = np.nan_to_num(np.array([per_n[str(n)][key][1] for n in xs]))
            ax.errorbar(xs, mean, yerr=se, marker="o", capsize=3, label=name)
        axes[2].plot(xs, [per_n[str(n)]["bias"] for n in xs], marker="o", label=name)
    for ax, title in zip(axes, ("correlation with exact meta-gradient", "relative error", "plug-in bias (seed-averaged error)")):
        ax.set_xscale("log")
        ax.set_xlabel("trajectories per task")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cmd_accuracy(args) -> int:
    from metagrad import maml

    valid = maml.valid_inner_estimators()
    unknown = [e for e in args.estimators if e not in valid]
    if unknown:
        raise SystemExit(f"metagrad maml-accuracy: error: unknown estimator(s) {unknown}; valid: {valid}")
    if not 0 < args.step_size:
        raise SystemExit("metagrad maml-accuracy: error: --step-size must be positive")
    if args.seeds < 2:
        raise SystemExit("metagrad maml-accuracy: error: --seeds must be at least 2 (for a standard error)")
    import jax

    jax.config.update("jax_enable_x64", True)
    from metagrad.cli import environment_info

    if args.quick:
        args.batch_sizes, args.seeds, args.num_tasks = [10, 100, 1000], min(args.seeds, 3), min(args.num_tasks, 4)
    settings = dict(seed=args.seed, seeds=args.seeds, batch_sizes=args.batch_sizes, estimators=args.estimators,
                    num_tasks=args.num_tasks, num_states=args.num_states, num_actions=args.num_actions,
                    horizon=args.horizon, gamma=args.gamma, step_size=args.step_size)
    results = run_accuracy(**settings, progress=not args.no_progress)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "maml_accuracy.json"), "w") as f:
        json.dump({"settings": settings, "results": results, "environment": environment_info()}, f, indent=1)
    _plot_accuracy(results, args.batch_sizes, os.path.join(args.out, "maml_accuracy.png"))
    print(f"{'estimator':>10} {'N':>6} {'correlation':>18} {'relative error':>18} {'plug-in bias':>13}")
    for name, per_n in results.items():
        for n, r in per_n.items():
            c, e = r["correlation"], r["relative_error"]
            print(f"{name:>10} {n:>6} {c[0]:>9.4f} ± {c[1]:<6.4f} {e[0]:>9.4f} ± {e[1]:<6.4f} {r['bias']:>13.4f}")
    print(f"wrote {os.path.join(args.out, 'maml_accuracy.png')} and maml_accuracy.json", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------ navigation
def nav_config(method: str, *, quick: bool, env: str, iterations: int | None):
    from metagrad import maml

    outer, inner = NAV_METHODS[method]
    sizes = dict(num_tasks=40, num_trajectories=20, horizon=100, hidden_sizes=(64, 64), num_iterations=100)
    if quick:
        sizes = dict(num_tasks=8, num_trajectories=10, horizon=50, hidden_sizes=(32, 32), num_iterations=20)
    if iterations is not None:
        sizes["num_iterations"] = iterations
    return maml.MAMLConfig(env=env, outer=outer, inner_estimator=inner, inner_steps=3, inner_step_size=0.1,
                           checkpoint_every=5, outer_lr=1e-3, **sizes)


def _plot_nav(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, runs in curves.items():
        runs = np.asarray(runs)
        mean = runs.mean(0)
        se = runs.std(0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros_like(mean)
        xs = np.arange(1, len(mean) + 1)
        ax.plot(xs, mean, label=method)
        ax.fill_between(xs, mean - se, mean + se, alpha=0.2)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("post-adaptation return")
    ax.set_title("Navigation2D, 3 adaptation steps (mean ± s.e. over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_trajectories(config, params, key, path: str, num_goals: int = 4) -> None:
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metagrad import maml

    model = maml.MAML(dataclasses.replace(config, num_trajectories=1))
    goals = maml.sample_tasks(config, key, num_goals)
    data = jax.jit(jax.vmap(model.collect, in_axes=(None, 0, 0)))(params, goals, jax.random.split(key, num_goals))
    fig, axes = plt.subplots(1, num_goals, figsize=(3.2 * num_goals, 3.4))
    for g, ax in enumerate(np.atleast_1d(axes)):
        batches = [("pre-update", data.pre[0])] + [("post-update", data.post)]
        for (label, batch), colour in zip(batches, ("tab:grey", "tab:blue")):
            xy = np.asarray(batch.observations[g, 0])
            ax.plot(xy[:, 0], xy[:, 1], color=colour, label=label, lw=1.2)
        goal = np.asarray(goals[g])
        ax.scatter([goal[0]], [goal[1]], color="tab:red", marker="*", s=120, label="goal", zorder=3)
        ax.set_aspect("equal")
        ax.set_title(f"goal ({goal[0]:.2f}, {goal[1]:.2f})", fontsize=9)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cmd_nav2d(args) -> int:
    unknown = [m for m in args.methods if m not in NAV_METHODS]
    if unknown:
        raise SystemExit(f"metagrad maml-nav2d: error: unknown method(s) {unknown}; valid: {list(NAV_METHODS)}")
    import jax

    from metagrad import maml
    from metagrad.cli import environment_info

    curves, summary, last = {}, {}, None
    for method in args.methods:
        config = nav_config(method, quick=args.quick, env=args.env, iterations=args.iterations)
        curves[method] = []
        for s in range(args.seeds):
            params, history = maml.train(config, jax.random.PRNGKey(args.seed * 1000 + s), progress=not args.no_progress,
                                         label=f"{method} seed {s}")
            curves[method].append(history["post_return"].tolist())
            last = (config, params)
        final = [c[-1] for c in curves[method]]
        summary[method] = {"initial": _mean_se([c[0] for c in curves[method]]), "final": _mean_se(final)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "maml_nav2d.json"), "w") as f:
        json.dump({"settings": {**vars(args), "func": None, "config": last[0].to_json()}, "curves": curves,
                   "summary": summary, "environment": environment_info()}, f, indent=1)
    _plot_nav(curves, os.path.join(args.out, "maml_nav2d.png"))
    _plot_trajectories(last[0], last[1], jax.random.PRNGKey(args.seed + 12345), os.path.join(args.out, "maml_nav2d_trajectories.png"))
    print(f"{'method':>14} {'initial post-adaptation return':>32} {'final':>20}")
    for method, r in summary.items():
        print(f"{method:>14} {r['initial'][0]:>22.3f} ± {r['initial'][1]:<7.3f} {r['final'][0]:>11.3f} ± {r['final'][1]:<7.3f}")
    print(f"wrote {args.out}/maml_nav2d.png, maml_nav2d_trajectories.png and maml_nav2d.json "
          f"(trajectories: {args.methods[-1]}, last seed)", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``maml-accuracy`` and ``maml-nav2d`` to the ``metagrad`` command line."""
    acc = subparsers.add_parser("maml-accuracy", help="meta-gradient accuracy vs batch size on tabular MDPs")
    acc.add_argument("--out", default="results/maml-accuracy", help="output directory")
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--seeds", type=_positive_int, default=5, help="independent trials (new tasks and θ)")
    acc.add_argument("--batch-sizes", type=_positive_ints, default=[10, 100, 1000, 10000],
                     help="trajectories per task, comma-separated")
    acc.add_argument("--estimators", type=lambda s: [e for e in s.split(",") if e], default=list(ACCURACY_ESTIMATORS))
    acc.add_argument("--num-tasks", type=_positive_int, default=8)
    acc.add_argument("--num-states", type=_positive_int, default=6)
    acc.add_argument("--num-actions", type=_positive_int, default=3)
    acc.add_argument("--horizon", type=_positive_int, default=25)
    acc.add_argument("--gamma", type=float, default=0.8)
    acc.add_argument("--step-size", type=float, default=1.0, help="inner step size η")
    acc.add_argument("--quick", action="store_true", help="N ∈ {10, 100, 1000}, ≤ 3 seeds, ≤ 4 tasks")
    acc.add_argument("--no-progress", action="store_true")
    acc.set_defaults(func=_cmd_accuracy)

    nav = subparsers.add_parser("maml-nav2d", help="meta-training curves on Navigation2D (Fig. 1d)")
    nav.add_argument("--out", default="results/maml-nav2d", help="output directory")
    nav.add_argument("--seed", type=int, default=0)
    nav.add_argument("--seeds", type=_positive_int, default=3)
    nav.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m], default=list(NAV_METHODS))
    nav.add_argument("--env", choices=["navigation-corners", "navigation"], default="navigation-corners")
    nav.add_argument("--iterations", type=_positive_int, default=None)
    nav.add_argument("--quick", action="store_true", help="8 tasks × 10 trajectories × 50 steps, 32×32, 20 iterations")
    nav.add_argument("--no-progress", action="store_true")
    nav.set_defaults(func=_cmd_nav2d)
