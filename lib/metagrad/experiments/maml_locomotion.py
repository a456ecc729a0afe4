"""`metagrad maml-locomotion`: Fig. 2 of Tang et al. (2021) — ProMP and ProMP-TayPO-2 on ProMP's MuJoCo tasks.

For each task (`--task`, comma-separated: one panel each), method and seed, one
[`metagrad.maml.train`][metagrad.maml.loop.train] run on the MJX task of
[`metagrad.envs.locomotion`][metagrad.envs.locomotion], one iteration per jitted chunk (a progress line and,
with `--checkpoint-dir`, a checkpoint after each). Outputs in `--out`: `maml_locomotion.json` (every curve:
post- and pre-adaptation return per seed and iteration, the env steps at each iteration, the configs, the
protocol with its sources, wall times, the environment) and `maml_locomotion.png` (Fig. 2's layout: the
post-adaptation return against env steps, mean ± standard error over seeds, one panel per task).

Env steps: each meta-iteration samples M tasks × (K + 1) batches × N·T steps (ProMP's budget,
`rollouts_per_meta_task · max_path_length` per task and batch), the x-axis of the figure. With fixed-steps
sampling (`MAMLConfig.sampling="steps"`, the default of the terminating tasks) each of the N environments of
a task is simulated S + T − 1 = 2T − 1 steps to complete its last episode
([`metagrad.rollout.sample_steps`][metagrad.rollout.sample_steps]); the steps/s of the progress lines count
those simulated steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time

import numpy as np

#: Fig. 2's methods: CLI name -> (label of the figure and the palette, outer optimiser, inner estimator).
LOCO_METHODS = {
    "promp": ("ProMP", "promp", "lvc"),  # ProMP's pro_mp.py: inner_type='likelihood_ratio' = LVC (TayPO-1)
    "promp-taypo2": ("ProMP-TayPO-2", "promp", "taypo2"),
}

#: Tasks that terminate early (ProMP's fixed-steps sampling with masks by default).
TERMINATING = ("ant-direction", "walker2d-direction")

_SCRIPT = "ProMP run_scripts/pro-mp_run_mujoco.py"
#: The Fig. 2 protocol: setting -> (value, source). Every value the paper does not fix names where it comes from.
LOCO_DEFAULTS = {
    "num_tasks": (40, f"paper §5 (40 tasks per iteration); {_SCRIPT}: meta_batch_size"),
    "inner_steps": (1, f"paper §5 (1 inner step); {_SCRIPT}: num_inner_grad_steps"),
    "num_trajectories": (20, f"paper §5 (20 trajectories per task); {_SCRIPT}: rollouts_per_meta_task"),
    "horizon": (100, f"paper §5 (horizon 100); {_SCRIPT}: max_path_length"),
    "gamma": (0.99, f"{_SCRIPT}: discount"),
    "hidden_sizes": ((64, 64), f"{_SCRIPT}: hidden_sizes (MetaGaussianMLPPolicy, learn_std=True)"),
    "critic": ("linear", f"{_SCRIPT}: LinearFeatureBaseline, gae_lambda=1"),
    "objective": ("promp", f"{_SCRIPT}: normalize_adv=True; meta_algos/pro_mp.py reduce_mean"),
    "inner_step_size": (0.1, f"{_SCRIPT}: inner_lr"),
    "outer_lr": (1e-3, f"{_SCRIPT}: learning_rate (Adam)"),
    "promp_steps": (5, f"{_SCRIPT}: num_promp_steps"),
    "clip_eps": (0.3, f"{_SCRIPT}: clip_eps"),
    "kl_coef": (5e-4, f"{_SCRIPT}: init_inner_kl_penalty, adaptive_inner_kl_penalty=False"),
    "num_iterations": (1001, f"{_SCRIPT}: n_itr=1001 (our notes do not record Fig. 2's x-axis length)"),
    "action_scale": (10.0, f"{_SCRIPT}: normalize(env), normalization_scale=10 (envs/normalized_env.py)"),
    "sampling": ({t: "steps" if t in TERMINATING else "episodes" for t in
                  ("halfcheetah-direction", "ant-direction", "ant-goal", "walker2d-direction")},
                 "ProMP samplers/meta_sampler.py: a fixed number of env steps per task, paths ending at termination "
                 "(fixed-steps sampling with masks on the terminating tasks; on the others every path is T steps "
                 "long, so a fixed number of episodes is the same batch)"),
    "max_episodes": ("4·N", "ours (ProMP's path lists are unbounded; steps of episodes beyond it are counted "
                            "and warned about)"),
    "seeds": (5, "ours (≥ 5 for a mean ± standard error; the paper's seed count is not in our notes)"),
    "ProMP inner": ("lvc", "ProMP meta_algos/pro_mp.py: inner_type='likelihood_ratio'"),
    "ProMP-TayPO-2 inner": ("taypo2", "paper §5: TayPO-2 replaces ProMP's inner estimator"),
}

#: ``--quick``: a smoke size (our choice; not the paper's protocol). Options given explicitly win.
QUICK_SIZES = dict(num_tasks=4, num_trajectories=4, horizon=20, hidden_sizes=(32, 32), num_iterations=3, seeds=2)

#: Iterations per jitted chunk: one, so that each iteration prints a progress line and writes a checkpoint, and
#: the compiled chunk is the same for every `--iterations` (a shorter last chunk would compile again).
CHECKPOINT_EVERY = 1

OUTPUT = "maml_locomotion"


def loco_config(task: str, method: str, *, quick: bool = False, **sizes):
    """The [`MAMLConfig`][metagrad.maml.config.MAMLConfig] of one Fig. 2 (task, method) (`LOCO_DEFAULTS`, sources included).

    `quick`: `QUICK_SIZES`. `sizes`: `num_tasks`, `num_trajectories`, `horizon`, `hidden_sizes`,
    `num_iterations` overriding the protocol (`None` values are ignored). The env is passed to
    [`metagrad.maml.train`][metagrad.maml.loop.train] separately (`loco_env`), so `env=None` here.
    """
    from metagrad import maml

    _, outer, inner = LOCO_METHODS[method]
    fields = {k: LOCO_DEFAULTS[k][0] for k in ("num_tasks", "inner_steps", "num_trajectories", "horizon", "gamma",
                                               "hidden_sizes", "critic", "objective", "inner_step_size", "outer_lr",
                                               "promp_steps", "clip_eps", "kl_coef", "num_iterations")}
    if quick:
        fields.update({k: v for k, v in QUICK_SIZES.items() if k != "seeds"})
    fields.update({k: v for k, v in sizes.items() if v is not None})
    return maml.MAMLConfig(env=None, outer=outer, inner_estimator=inner, sampling=LOCO_DEFAULTS["sampling"][0][task],
                           checkpoint_every=CHECKPOINT_EVERY, shard=False, **fields)


def loco_env(task: str):
    """The MJX environment of a task with ProMP's action normalisation (`LOCO_DEFAULTS["action_scale"]`)."""
    from metagrad.envs.locomotion import Locomotion

    return Locomotion(task, action_scale=LOCO_DEFAULTS["action_scale"][0])


def env_steps_per_iteration(config) -> int:
    """ProMP's step budget of one meta-iteration: M tasks × (K + 1) batches × N·T steps."""
    return config.num_tasks * (config.inner_steps + 1) * config.num_trajectories * config.horizon


def simulated_steps_per_iteration(config) -> int:
    """Env steps simulated per meta-iteration: the budget, or M·(K+1)·N·(2T − 1) with fixed-steps sampling."""
    per_env = config.horizon if config.sampling == "episodes" else 2 * config.horizon - 1
    return config.num_tasks * (config.inner_steps + 1) * config.num_trajectories * per_env


def seed_key(seed: int, s: int):
    """Key of seed `s`: `fold_in(PRNGKey(seed), s)` (adding seeds later leaves the earlier ones unchanged)."""
    import jax

    return jax.random.fold_in(jax.random.PRNGKey(seed), s)


def run_seed(task: str, method: str, config, key, *, checkpoint_dir: str | None = None, resume: bool = False,
             progress: bool = True, stream=None) -> dict:
    """One seed's run; returns its history (NumPy arrays over iterations, see [`metagrad.maml.train`][metagrad.maml.loop.train]).

    Prints one line per iteration to `stream` (default stderr): iteration, post-adaptation return, env
    steps/s of that iteration (simulated steps over its wall time; the first includes compilation).
    """
    from metagrad import maml

    stream = sys.stderr if stream is None else stream
    simulated = simulated_steps_per_iteration(config)

    def on_chunk(history, i):
        wall = np.asarray(history["wall_time"])
        seconds = wall[-1] - (wall[-2] if len(wall) > 1 else 0.0)
        if progress:
            print(f"{task} {method} iteration {i}/{config.num_iterations}: post-adaptation return "
                  f"{float(history['post_return'][-1]):.2f}, pre-adaptation {float(history['pre_return'][-1]):.2f}, "
                  f"{simulated / max(seconds, 1e-9):,.0f} env steps/s ({seconds:.1f} s)", file=stream, flush=True)

    _, history = maml.train(config, key, checkpoint_dir=checkpoint_dir, resume=resume, progress=False,
                            env=loco_env(task), on_chunk=on_chunk)
    return {name: np.asarray(values) for name, values in history.items()}


def _mean_se(values, axis=0):
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[axis]
    se = values.std(axis=axis, ddof=1) / np.sqrt(n) if n > 1 else np.full(values.shape[1:], np.nan)
    return values.mean(axis=axis), se


def plot(results: dict, path: str, title: str) -> None:
    """Fig. 2's layout: one panel per task, post-adaptation return against env steps, mean ± s.e. over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metagrad import plotting

    tasks = list(results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        entry = results[task]
        steps = np.asarray(entry["env_steps"], dtype=np.float64)
        for method, curves in entry["post_return"].items():
            label = LOCO_METHODS[method][0]
            colour = plotting.style(label)["color"]
            mean, se = _mean_se(curves)
            ax.plot(steps, mean, color=colour, label=f"{label} ({len(curves)} seeds)")
            ax.fill_between(steps, mean - np.nan_to_num(se), mean + np.nan_to_num(se), color=colour, alpha=0.2)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("env steps")
        ax.set_ylabel("average return (post-adaptation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(label: str, config, seeds: int) -> str:
    return (f"{label}\n{config.num_tasks} tasks × {config.num_trajectories} traj. × {config.horizon} steps, "
            f"{config.inner_steps} inner step, {config.num_iterations} iterations\nmean ± s.e. over {seeds} seeds")


def replot(json_path: str) -> None:
    """Redraw `maml_locomotion.png` next to `json_path` from its curves (no training)."""
    import json

    from metagrad import maml

    data = json.load(open(json_path))
    config = maml.MAMLConfig.from_json(next(iter(next(iter(data["configs"].values())).values())))
    label = "paper protocol" if data["settings"]["paper_protocol"] else "REDUCED size (not the paper's protocol)"
    plot(data["results"], os.path.join(os.path.dirname(json_path), f"{OUTPUT}.png"),
         _title(label, config, data["settings"]["seeds"]))


def _command_line(args) -> str | None:
    argv = getattr(args, "argv", None)
    return None if argv is None else "metagrad " + shlex.join(argv)


def _cmd_locomotion(args) -> int:
    from metagrad._validation import OptionError, write_json_atomic

    check_locomotion(args)  # every option, before any computation (fills the --quick defaults)
    from metagrad.cli import environment_info

    sizes = dict(num_tasks=args.num_tasks, num_trajectories=args.num_trajectories, horizon=args.horizon,
                 hidden_sizes=args.hidden_sizes, num_iterations=args.iterations)
    results, configs, wall = {}, {}, {}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, f"{OUTPUT}.json")
    settings = {**{k: v for k, v in vars(args).items() if k not in ("func", "argv")},
                "command_line": _command_line(args)}
    full_size = not args.quick and all(v is None for v in sizes.values())
    settings["paper_protocol"] = full_size
    protocol = {k: {"value": (list(v) if isinstance(v, tuple) else v), "source": src}
                for k, (v, src) in LOCO_DEFAULTS.items()}
    tic_all = time.perf_counter()
    for task in args.task:
        entry = results.setdefault(task, {"env_steps": None, "post_return": {}, "pre_return": {}})
        for method in args.methods:
            config = loco_config(task, method, quick=args.quick, **sizes)
            histories = []
            for s in range(args.seeds):
                folder = None
                resume = False
                if args.checkpoint_dir is not None:
                    from metagrad.maml.checkpoint import CHECKPOINT

                    folder = os.path.join(args.checkpoint_dir, task, method, f"seed-{s}")
                    resume = args.resume and os.path.exists(os.path.join(folder, CHECKPOINT))
                try:
                    histories.append(run_seed(task, method, config, seed_key(args.seed, s), checkpoint_dir=folder,
                                              resume=resume, progress=not args.no_progress))
                except ValueError as err:  # a checkpoint of other options, or further than --iterations
                    if not resume:
                        raise
                    raise OptionError(f"--resume of {task} {method} seed {s}: {err}") from None
            budget = env_steps_per_iteration(config)
            entry["env_steps"] = (budget * np.arange(1, config.num_iterations + 1)).tolist()
            entry["post_return"][method] = np.stack([h["post_return"] for h in histories]).tolist()
            entry["pre_return"][method] = np.stack([h["pre_return"] for h in histories]).tolist()
            wall.setdefault(task, {})[method] = [float(h["wall_time"][-1]) for h in histories]
            configs.setdefault(task, {})[method] = config.to_json()
            dropped = [int(np.max(h["dropped_steps"])) for h in histories if "dropped_steps" in h]
            if dropped:
                entry.setdefault("max_dropped_steps", {})[method] = max(dropped)
            write_json_atomic(os.path.join(args.out, f"{OUTPUT}.partial.json"),  # survives an interrupted run
                              {"results": results, "configs": configs, "wall_time_s": wall})
    total = time.perf_counter() - tic_all
    summary = _summary(results)
    write_json_atomic(json_path, {"settings": settings, "protocol_defaults": protocol, "configs": configs,
                                  "results": results, "summary": summary,
                                  "wall_time_s": {"per_seed": wall, "total": total},
                                  "environment": environment_info()})
    label = "paper protocol" if full_size else "REDUCED size (not the paper's protocol)"
    plot(results, os.path.join(args.out, f"{OUTPUT}.png"), _title(label, config, args.seeds))
    window = min(5, config.num_iterations)
    print(f"{label}; post-adaptation return, mean over the first / last {window} iterations, mean ± s.e. over "
          f"{args.seeds} seeds")
    for task, per_method in summary.items():
        for method, r in per_method.items():
            print(f"{task:>22} {method:>13} first {r['first'][0]:>9.2f} ± {r['first'][1]:<7.2f} "
                  f"last {r['last'][0]:>9.2f} ± {r['last'][1]:<7.2f}")
    print(f"wrote {args.out}/{OUTPUT}.png and {OUTPUT}.json; total {total:.0f} s", file=sys.stderr)
    return 0


def _summary(results: dict) -> dict:
    """Per task and method: post-adaptation return averaged over the first / last min(5, I) iterations,
    mean ± s.e. over seeds (the per-seed values too)."""
    out = {}
    for task, entry in results.items():
        for method, curves in entry["post_return"].items():
            curves = np.asarray(curves, dtype=np.float64)
            window = min(5, curves.shape[1])
            first, last = curves[:, :window].mean(1), curves[:, -window:].mean(1)
            out.setdefault(task, {})[method] = {
                "first": [float(v) for v in _mean_se(first)], "last": [float(v) for v in _mean_se(last)],
                "last_per_seed": last.tolist(), "window": window}
    return out


def check_locomotion(args) -> None:
    """Check `maml-locomotion`'s options; fills the `--quick` defaults in `args`. Raises `OptionError` (one line
    naming the option; exit status 2) before any computation."""
    from metagrad._validation import OptionError, check_choices, check_memory, check_out_dir, check_seed
    from metagrad.envs.locomotion import TASKS

    if args.seeds is None:
        args.seeds = QUICK_SIZES["seeds"] if args.quick else LOCO_DEFAULTS["seeds"][0]
    check_choices("--task", args.task, list(TASKS), what="task")
    check_choices("--methods", args.methods, list(LOCO_METHODS), what="method")
    if args.seeds < 2:
        raise OptionError(f"--seeds must be at least 2 (curves are mean ± standard error over seeds); got {args.seeds}.")
    check_seed("--seed", args.seed, 2**32 - 1, "keys are PRNGKey(seed), 32-bit JAX seeds here")
    check_out_dir("--out", args.out)
    if args.resume and args.checkpoint_dir is None:
        raise OptionError("--resume continues the checkpoints of --checkpoint-dir; give --checkpoint-dir.")
    if args.checkpoint_dir is not None:
        if os.path.exists(args.checkpoint_dir) and not os.path.isdir(args.checkpoint_dir):
            raise OptionError(f"--checkpoint-dir must be a folder; {args.checkpoint_dir!r} is a file.")
        if not args.resume:
            for task in args.task:
                for method in args.methods:
                    for s in range(args.seeds):
                        if os.path.exists(os.path.join(args.checkpoint_dir, task, method, f"seed-{s}",
                                                       "checkpoint.npz")):
                            raise OptionError(f"--checkpoint-dir {args.checkpoint_dir!r} already holds a checkpoint "
                                              f"of {task} {method} seed {s}; pass --resume to continue it, or choose "
                                              "another folder.")
    config = loco_config(args.task[0], args.methods[0], quick=args.quick, num_tasks=args.num_tasks,
                         num_trajectories=args.num_trajectories, horizon=args.horizon,
                         hidden_sizes=args.hidden_sizes, num_iterations=args.iterations)
    check_memory("--num-tasks, --num-trajectories and --horizon", loco_memory(config))


def loco_memory(config) -> int:
    """Lower bound on the bytes of one iteration: (K + 1) batches of M tasks × rows × (T + 1) steps of the
    largest observation (Ant goal: 113 floats) plus action, reward and log-probability, float32, kept twice
    (the values and their gradients through the inner step)."""
    steps = config.num_tasks * config.episode_rows * (config.horizon + 1) * (config.inner_steps + 1)
    return int(steps * (113 + 8 + 3) * 4 * 2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer; got {text!r}")
    return value


def _hidden_sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers; got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers; got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _help() -> str:
    lines = ["Fig. 2 of Tang et al. (2021). With no size flags it runs the paper's protocol; defaults and sources:"]
    lines += [f"  {k} = {v!r}: {src}" for k, (v, src) in LOCO_DEFAULTS.items()]
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add `maml-locomotion` to the `metagrad` command line."""
    p = subparsers.add_parser("maml-locomotion", help="ProMP vs ProMP-TayPO-2 on MuJoCo locomotion tasks (Fig. 2)",
                              description=_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", type=_names, default=["halfcheetah-direction"],
                   help="comma-separated: halfcheetah-direction, ant-direction, ant-goal, walker2d-direction "
                        "(default halfcheetah-direction); one figure panel each")
    p.add_argument("--methods", type=_names, default=list(LOCO_METHODS),
                   help=f"comma-separated; default {','.join(LOCO_METHODS)}")
    p.add_argument("--seeds", type=_positive_int, default=None,
                   help=f"≥ 2; default {LOCO_DEFAULTS['seeds'][0]} ({QUICK_SIZES['seeds']} with --quick)")
    p.add_argument("--seed", type=int, default=0, help="root key; seed s uses fold_in(PRNGKey(seed), s)")
    p.add_argument("--iterations", type=_positive_int, default=None,
                   help=f"meta-iterations (default {LOCO_DEFAULTS['num_iterations'][0]}, ProMP's n_itr)")
    p.add_argument("--num-tasks", type=_positive_int, default=None, help="tasks per meta-batch (default 40)")
    p.add_argument("--num-trajectories", type=_positive_int, default=None,
                   help="trajectories (environments) per task and batch (default 20)")
    p.add_argument("--horizon", type=_positive_int, default=None, help="steps per trajectory (default 100)")
    p.add_argument("--hidden-sizes", type=_hidden_sizes, default=None, help="policy MLP (default 64,64)")
    p.add_argument("--out", default="results/maml-locomotion", help="output directory")
    p.add_argument("--checkpoint-dir", default=None,
                   help="checkpoint after every iteration in DIR/<task>/<method>/seed-<s> (a folder that holds a "
                        "checkpoint is refused without --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoints in --checkpoint-dir (same options; --iterations may grow)")
    p.add_argument("--quick", action="store_true",
                   help="4 tasks × 4 trajectories × 20 steps, 32×32 policy, 3 iterations, 2 seeds (a smoke run, "
                        "not the paper's protocol); options given explicitly win")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_locomotion)
