"""Option checks of `metagrad maml-accuracy` and `metagrad maml-nav2d`, run before any computation.

Each function takes the parsed `argparse` namespace, fills the defaults that depend on `--quick` (an
option given explicitly always wins over `--quick`), and raises `OptionError`
(one line naming the option; `metagrad` exits with status 2) for anything that would fail later, give
NaN, or not fit in memory. Nothing is created here.
"""

from __future__ import annotations

import math
import os

from metagrad._validation import OptionError, check_choices, check_memory, check_out_dir, check_seed
from metagrad.experiments.nav_protocol import NAV_DEFAULTS, NAV_METHODS, QUICK_METHODS, nav_config

#: ``maml-accuracy`` sizes: (full run, ``--quick``), used where the option is not given.
ACCURACY_DEFAULTS = {"batch_sizes": ([10, 100, 1000, 10000], [10, 100, 1000]), "seeds": (5, 3), "num_tasks": (8, 4)}
#: ``maml-nav2d`` seeds: (full run, ``--quick``).
NAV_SEEDS_QUICK = 2


def _fill_quick_defaults(args, defaults: dict) -> None:
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def check_accuracy(args) -> None:
    """Check `maml-accuracy`'s options (see the module docstring); fills `--quick` defaults in `args`."""
    from metagrad import maml
    from metagrad.estimators import get

    _fill_quick_defaults(args, ACCURACY_DEFAULTS)
    check_choices("--estimators", args.estimators, maml.valid_inner_estimators(), what="estimator")
    for name in args.estimators:
        if name not in maml.LOOP_ESTIMATORS:
            try:
                get(name).resolve({})
            except ValueError as err:
                raise OptionError(f"estimator {name!r} in --estimators cannot run without options ({err}); for "
                                  "TayPO-K use taypo1, taypo2 or taypo3.") from None
    if not (math.isfinite(args.step_size) and args.step_size > 0):
        raise OptionError(f"--step-size must be a positive finite number (the inner step η); got {args.step_size}.")
    if not (math.isfinite(args.gamma) and 0 <= args.gamma < 1):
        raise OptionError(f"--gamma must be a discount in [0, 1); got {args.gamma}.")
    if args.seeds < 2:
        raise OptionError(f"--seeds must be at least 2 (results are mean ± standard error over seeds); got {args.seeds}.")
    if args.repeats < 2:
        raise OptionError(f"--repeats must be at least 2 (the bias subtracts the repeat variance); got {args.repeats}.")
    if args.num_actions < 2:
        raise OptionError(f"--num-actions must be at least 2 (with one action every gradient is zero and the "
                          f"relative error is undefined); got {args.num_actions}.")
    if len(set(args.batch_sizes)) != len(args.batch_sizes):
        raise OptionError(f"--batch-sizes lists a value more than once: {args.batch_sizes}.")
    largest = (2**63 - 1 - (args.seeds - 1)) // 1000
    check_seed("--seed", args.seed, largest, "each problem's key is seed · 1000 + i, a 64-bit JAX seed")
    check_out_dir("--out", args.out)
    check_memory("--num-tasks, --batch-sizes, --horizon, --num-states and --num-actions", accuracy_memory(args))


def accuracy_memory(args) -> int:
    """Lower bound on the bytes of one `maml-accuracy` repeat: M tasks × N trajectories × (T+1) steps of
    pre- and post-update data with their float64 log-probability rows [A] kept for the second derivative, and
    the exact meta-gradient's Hessian-sized intermediates (M × P², P = S·A)."""
    p = args.num_states * args.num_actions
    per_step = 2 * (25 + 4 * 8 * args.num_actions)
    return int(args.num_tasks * max(args.batch_sizes) * (args.horizon + 1) * per_step + 4 * args.num_tasks * p * p * 8)


def check_nav2d(args) -> None:
    """Check `maml-nav2d`'s options (see the module docstring); fills `--quick` defaults in `args`."""
    if args.methods is None:
        args.methods = list(QUICK_METHODS if args.quick else NAV_METHODS)
    if args.seeds is None:
        args.seeds = NAV_SEEDS_QUICK if args.quick else NAV_DEFAULTS["seeds"][0]
    check_choices("--methods", args.methods, list(NAV_METHODS), what="method")
    if args.seeds < 2:
        raise OptionError(f"--seeds must be at least 2 (curves are mean ± standard error over seeds); got {args.seeds}.")
    # Navigation runs without jax_enable_x64: JAX keys take 32-bit seeds (larger ones wrap and collide).
    check_seed("--seed", args.seed, 2**32 - 1 - 12345, "keys are PRNGKey(seed) and PRNGKey(seed + 12345), 32-bit JAX seeds here")
    check_out_dir("--out", args.out)
    if args.resume and args.checkpoint_dir is None:
        raise OptionError("--resume continues the checkpoints of --checkpoint-dir; give --checkpoint-dir.")
    if args.checkpoint_dir is not None and os.path.exists(args.checkpoint_dir) and not os.path.isdir(args.checkpoint_dir):
        raise OptionError(f"--checkpoint-dir must be a folder; {args.checkpoint_dir!r} is a file.")
    if args.checkpoint_dir is not None and not args.resume:
        for method in args.methods:
            for s in range(args.seeds):
                if os.path.exists(os.path.join(args.checkpoint_dir, method, f"seed-{s}", "checkpoint.npz")):
                    raise OptionError(f"--checkpoint-dir {args.checkpoint_dir!r} already holds a checkpoint of {method} "
                                      f"seed {s}; pass --resume to continue it, or choose another folder.")
    check_memory("--seeds, --num-tasks, --num-trajectories, --horizon and --inner-steps", nav_memory(args))


def nav_memory(args) -> int:
    """Lower bound on the bytes of one `maml-nav2d` method: for every seed (all seeds run in one program),
    the (inner steps + 1) batches of tasks × trajectories × (T+1) steps, each step holding float32 observation,
    action, reward and log-probability (6 numbers) plus their gradients through the inner steps (× 2)."""
    config = nav_config(args.methods[0], quick=args.quick, env=args.env, iterations=args.iterations,
                        num_tasks=args.num_tasks, num_trajectories=args.num_trajectories, horizon=args.horizon,
                        inner_steps=args.inner_steps)
    steps = config.num_tasks * config.num_trajectories * (config.horizon + 1) * (config.inner_steps + 1)
    return int(args.seeds * steps * 6 * 4 * 2)
