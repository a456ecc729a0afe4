"""MAML experiments: ``metagrad maml-accuracy`` and ``metagrad maml-nav2d`` (plots, JSON and a stdout table).

``maml-accuracy`` — tabular task family (random MDPs, tabular softmax policy, exact critic). For each inner
estimator and batch size N (trajectories per task), the meta-gradient of the loop (:mod:`metagrad.maml`)
is compared with the exact meta-gradient :func:`metagrad.exact.maml_gradient`: Pearson correlation and
relative error ‖ĝ − g‖/‖g‖, mean ± s.e. over seeds (each seed: new tasks and a new θ; ``--repeats``
independent batches per seed). The bias ‖E ĝ − g‖/‖g‖ is estimated from the repeat average with its noise
subtracted (:func:`run_accuracy`). For DiCE, DR and TayPO-2 (unbiased gradient and Hessian estimates with
the exact critic) it is the *plug-in bias* of Tang et al. Sec. 2.2: θ̂' = θ + η ĝ_in is random and ∇J is
nonlinear in it, so E ĝ ≠ g at finite N (O(1/N)); for the MAML surrogate and LVC it also holds their
Hessian's bias, which does not vanish as N grows.

``maml-nav2d`` — meta-training curves on Navigation2D (Tang et al. 2021, Fig. 1d): TRPO-MAML, TRPO-FMAML,
TRPO-EMAML, TRPO-DiCE, ProMP (LVC) and ProMP-TayPO-2 with 3 adaptation steps; post-adaptation (solid) and
pre-adaptation (dotted) return vs iteration, mean ± s.e. over seeds; plus trajectories before and after
adaptation for a few goals.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
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
                 num_actions: int, horizon: int, gamma: float, step_size: float, repeats: int = 4,
                 progress: bool = True) -> dict:
    """The numbers of ``maml-accuracy`` as a JSON-able dict (see the module docstring).

    For each seed s (a problem: θ_s, tasks, exact g_s) and each (estimator, N), ``repeats`` independent
    meta-gradients ĝ_{s,r} are estimated from fresh batches. Correlation and relative error are averaged over
    the repeats of a seed, then reported as mean ± s.e. over seeds. The bias uses e_{s,r} = (ĝ_{s,r} − g_s)/‖g_s‖:
    b²_s = ‖mean_r e_{s,r}‖² − n²_s, n²_s = tr Ĉov_r(e_{s,r}) / R, is an unbiased estimate of ‖E ĝ − g‖²/‖g‖² (the
    noise n²_s of the repeat average subtracted). ``bias`` = sqrt(max(mean_s b²_s, 0)); ``bias_noise`` =
    sqrt(mean_s n²_s), the resolution; ``bias_resolved`` = bias > bias_noise (under zero bias the estimate
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


#: Line styles of the accuracy plot: DR and TayPO-2 coincide on-policy (same first two derivatives), so
#: TayPO-2 is drawn dashed on top of DR.
_STYLES = {"dice": ("C0", "o", "-"), "dr": ("C1", "s", "-"), "taypo2": ("C2", "x", "--"), "maml": ("C3", "v", "-"),
           "lvc": ("C4", "^", "-")}


def _plot_accuracy(results: dict, batch_sizes, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for i, (name, per_n) in enumerate(results.items()):
        colour, marker, line = _STYLES.get(name, (f"C{5 + i}", "o", "-"))
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
    """The command that was run (``metagrad …``), when :func:`metagrad.cli.main` recorded its argv."""
    argv = getattr(args, "argv", None)
    return None if argv is None else "metagrad " + shlex.join(argv)


def _cmd_accuracy(args) -> int:
    from metagrad._validation import write_json_atomic
    from metagrad.experiments._options import check_accuracy

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
#: Methods of ``maml-nav2d --quick`` (one per family of Fig. 1d, to keep the compile time of a quick run short).
QUICK_METHODS = ("TRPO-MAML", "ProMP", "ProMP-TayPO-2")


def nav_config(method: str, *, quick: bool, env: str, iterations: int | None):
    """The :class:`~metagrad.maml.MAMLConfig` of one Fig. 1d method.

    Full size: ProMP's 40 tasks × 20 trajectories × 100 steps, MLP 64×64, 3 adaptation steps of η = 0.02,
    outer Adam 1e-3, 100 iterations. The inner step differs from ProMP's 0.1 because ProMP's inner
    surrogate is a mean over all N·T steps with normalised advantages, whereas the surrogates here are
    mean_n Σ_t Γ_t (…) with raw advantages (≈ 1/(1 − γ) = 100 times larger gradients): at η = 0.1 the
    adapted policy overshoots and post-adaptation returns fall below pre-adaptation ones; η = 0.01–0.02
    improves the return at every inner step from the random initial policy.
    ``quick``: 8 tasks × 10 trajectories × 50 steps, MLP 32×32, one adaptation step of η = 0.05 (one step
    compiles ~3× faster than three), outer Adam 1e-2, 20 iterations.
    """
    from metagrad import maml

    outer, inner = NAV_METHODS[method]
    sizes = dict(num_tasks=40, num_trajectories=20, horizon=100, hidden_sizes=(64, 64), num_iterations=100,
                 inner_steps=3, inner_step_size=0.02, outer_lr=1e-3)
    if quick:
        sizes = dict(num_tasks=8, num_trajectories=10, horizon=50, hidden_sizes=(32, 32), num_iterations=20,
                     inner_steps=1, inner_step_size=0.05, outer_lr=1e-2)
    if iterations is not None:
        sizes["num_iterations"] = iterations
    return maml.MAMLConfig(env=env, outer=outer, inner_estimator=inner, checkpoint_every=5, **sizes)


def _plot_nav(curves: dict, pre_curves: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (method, runs) in enumerate(curves.items()):
        colour = f"C{i}"
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
    ax.set_ylabel("mean return")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
    from metagrad._validation import write_json_atomic
    from metagrad.experiments._options import check_nav2d

    check_nav2d(args)  # every option, before any computation (fills the --quick defaults)
    import jax

    from metagrad import maml
    from metagrad.cli import environment_info

    curves, pre_curves, summary, last = {}, {}, {}, None
    for method in args.methods:
        config = nav_config(method, quick=args.quick, env=args.env, iterations=args.iterations)
        curves[method], pre_curves[method] = [], []
        for s in range(args.seeds):
            params, history = maml.train(config, jax.random.PRNGKey(args.seed * 1000 + s), progress=not args.no_progress,
                                         label=f"{method} seed {s}")
            curves[method].append(history["post_return"].tolist())
            pre_curves[method].append(history["pre_return"].tolist())
            last = (config, params)
        # First and last 5 iterations (single iterations are noisy), seeds pooled.
        window = min(5, config.num_iterations)
        post, pre = np.asarray(curves[method]), np.asarray(pre_curves[method])
        summary[method] = {
            "initial_post": _mean_se(post[:, :window].mean(1)), "final_post": _mean_se(post[:, -window:].mean(1)),
            "final_pre": _mean_se(pre[:, -window:].mean(1)),
        }
    os.makedirs(args.out, exist_ok=True)
    settings = {**vars(args), "func": None, "command_line": _command_line(args), "config": last[0].to_json()}
    write_json_atomic(os.path.join(args.out, "maml_nav2d.json"), {"settings": settings, "curves": curves,
                      "pre_curves": pre_curves, "summary": summary, "environment": environment_info()})
    c = last[0]
    title = (f"{args.env}: {c.num_tasks} tasks × {c.num_trajectories} traj. × {c.horizon} steps, "
             f"{c.inner_steps} inner step(s) η = {c.inner_step_size}\nmean ± s.e. over {args.seeds} seeds")
    _plot_nav(curves, pre_curves, os.path.join(args.out, "maml_nav2d.png"), title)
    _plot_trajectories(last[0], last[1], jax.random.PRNGKey(args.seed + 12345), os.path.join(args.out, "maml_nav2d_trajectories.png"))
    print("mean return over the first / last 5 iterations, mean ± s.e. over seeds")
    print(f"{'method':>14} {'post-adaptation, first':>24} {'post-adaptation, last':>24} {'pre-adaptation, last':>24}")
    for method, r in summary.items():
        cells = [f"{r[k][0]:>13.3f} ± {r[k][1]:<7.3f}" for k in ("initial_post", "final_post", "final_pre")]
        print(f"{method:>14} " + " ".join(cells))
    print(f"wrote {args.out}/maml_nav2d.png, maml_nav2d_trajectories.png and maml_nav2d.json "
          f"(trajectories: {args.methods[-1]}, last seed)", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``maml-accuracy`` and ``maml-nav2d`` to the ``metagrad`` command line."""
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

    nav = subparsers.add_parser("maml-nav2d", help="meta-training curves on Navigation2D (Fig. 1d)")
    nav.add_argument("--out", default="results/maml-nav2d", help="output directory")
    nav.add_argument("--seed", type=int, default=0)
    nav.add_argument("--seeds", type=_positive_int, default=None, help="default 3 (2 with --quick)")
    nav.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m], default=None,
                     help=f"comma-separated; default all of {list(NAV_METHODS)} ({', '.join(QUICK_METHODS)} with --quick)")
    nav.add_argument("--env", choices=["navigation-corners", "navigation"], default="navigation-corners")
    nav.add_argument("--iterations", type=_positive_int, default=None)
    nav.add_argument("--quick", action="store_true", help="8 tasks × 10 trajectories × 50 steps, 32×32, 1 inner step, 20 iterations, 2 seeds; "
                     "--iterations, --seeds and --methods given explicitly win")
    nav.add_argument("--no-progress", action="store_true")
    nav.set_defaults(func=_cmd_nav2d)
