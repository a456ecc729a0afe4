"""The Fig. 1d protocol of `metagrad maml-nav2d` (Tang et al. 2021, Sec. 5.2): the six methods, every setting
with its source (`NAV_DEFAULTS`), the `--quick` sizes and [`nav_config`][metagrad.experiments.nav_protocol.nav_config], the
[`MAMLConfig`][metagrad.maml.config.MAMLConfig] of one method. Shared by the command ([`metagrad.experiments.maml_experiments`][metagrad.experiments.maml_experiments]) and its option checks
(`metagrad.experiments._options`)."""

from __future__ import annotations

#: Fig. 1d: label -> (outer optimiser, inner estimator).
NAV_METHODS = {
    "TRPO-MAML": ("trpo", "maml"),
    "TRPO-FMAML": ("trpo", "fomaml"),
    "TRPO-EMAML": ("trpo", "emaml"),
    "TRPO-DiCE": ("trpo", "dr"),  # paper §5.2: "uses DR estimate" (DiCE with a baseline = DR)
    "ProMP": ("promp", "lvc"),
    "ProMP-TayPO-2": ("promp", "taypo2"),
}

#: Methods of ``maml-nav2d --quick`` (one per family of Fig. 1d, to keep the compile time of a quick run short).
QUICK_METHODS = ("TRPO-MAML", "ProMP", "ProMP-TayPO-2")

#: The Fig. 1d protocol: setting -> (value, source). Every value not in the paper names where it comes from.
_PROMP_SCRIPT = "ProMP run_scripts/pro-mp_run_point_mass.py"
NAV_DEFAULTS = {
    "env": ("navigation-corners", "paper §5.2 (ProMP's point robot, goal one of four corners)"),
    "action_scale": (10.0, f"{_PROMP_SCRIPT}: normalize(env), normalization_scale=10 (envs/normalized_env.py)"),
    "inner_steps": (3, "paper §5.2 (3 adaptation steps)"),
    "num_tasks": (40, f"{_PROMP_SCRIPT}: meta_batch_size"),
    "num_trajectories": (20, f"{_PROMP_SCRIPT}: rollouts_per_meta_task"),
    "horizon": (100, f"{_PROMP_SCRIPT}: max_path_length"),
    "gamma": (0.99, f"{_PROMP_SCRIPT}: discount"),
    "hidden_sizes": ((64, 64), f"{_PROMP_SCRIPT}: hidden_sizes (Gaussian MLP, learned std, init σ = 1)"),
    "critic": ("linear", f"{_PROMP_SCRIPT}: LinearFeatureBaseline, gae_lambda=1"),
    "objective": ("promp", f"{_PROMP_SCRIPT}: normalize_adv=True; meta_algos/pro_mp.py and trpo_maml.py reduce_mean"),
    "inner_step_size": (0.1, f"{_PROMP_SCRIPT}: inner_lr"),
    "outer_lr": (1e-3, f"{_PROMP_SCRIPT}: learning_rate (Adam)"),
    "promp_steps": (5, f"{_PROMP_SCRIPT}: num_promp_steps"),
    "clip_eps": (0.3, f"{_PROMP_SCRIPT}: clip_eps"),
    "kl_coef": (5e-4, f"{_PROMP_SCRIPT}: init_inner_kl_penalty, adaptive_inner_kl_penalty=False"),
    "max_kl": (0.01, "ProMP run_scripts/e-maml_run_mujoco.py: step_size (= trpo_maml.py default)"),
    "cg_iterations": (10, "ProMP optimizers/conjugate_gradient_optimizer.py: cg_iters"),
    "backtrack_ratio": (0.8, "ProMP optimizers/conjugate_gradient_optimizer.py: backtrack_ratio"),
    "backtrack_steps": (15, "ProMP optimizers/conjugate_gradient_optimizer.py: max_backtracks"),
    "cg_damping": (1e-5, "our choice (ProMP: reg_coeff=0 with a finite-difference Hessian-vector product)"),
    "num_iterations": (1000, f"{_PROMP_SCRIPT}: n_itr=1001 (our notes do not record Fig. 1d's x-axis length)"),
    "seeds": (5, "our choice (≥ 5 for a mean ± standard error; the paper averages 10)"),
    "TRPO-MAML inner": ("maml", "Finn et al.'s surrogate = ProMP inner_type='log_likelihood' "
                                "(run_scripts/e-maml_run_mujoco.py)"),
    "TRPO-DiCE inner": ("dr", "paper §5.2: TRPO-DiCE uses the DR estimate"),
    "TRPO-EMAML extra term": ("emaml", "ProMP trpo_maml.py exploration=True, in the line-search objective"),
    "ProMP inner": ("lvc", "ProMP pro_mp.py likelihood_ratio"),
    "TRPO outer surrogate": ("taypo1", "ProMP trpo_maml.py: likelihood ratio · advantage"),
}

#: ``--quick``: a laptop-size smoke run (not the paper's protocol); our choice, including the outer Adam step 10⁻²
#: (10× ProMP's) so that 20 iterations show adaptation.
QUICK_SIZES = dict(num_tasks=8, num_trajectories=10, horizon=50, hidden_sizes=(32, 32), num_iterations=20,
                   inner_steps=1, outer_lr=1e-2)


def nav_config(method: str, *, quick: bool = False, env: str = "navigation-corners", iterations: int | None = None,
               **sizes):
    """The [`MAMLConfig`][metagrad.maml.config.MAMLConfig] of one Fig. 1d method (`NAV_DEFAULTS`, sources included).

    `quick`: `QUICK_SIZES`. `sizes`: any of `num_tasks`, `num_trajectories`, `horizon`,
    `inner_steps`, `hidden_sizes` overriding the protocol (`None` values are ignored).
    """
    from metagrad import maml

    outer, inner = NAV_METHODS[method]
    fields = {k: NAV_DEFAULTS[k][0] for k in ("inner_steps", "num_tasks", "num_trajectories", "horizon", "gamma",
                                               "hidden_sizes", "critic", "objective", "inner_step_size", "outer_lr",
                                               "promp_steps", "clip_eps", "kl_coef", "max_kl", "cg_iterations",
                                               "backtrack_ratio", "backtrack_steps", "cg_damping", "num_iterations")}
    if quick:
        fields.update(QUICK_SIZES)
    fields.update({k: v for k, v in sizes.items() if v is not None})
    if iterations is not None:
        fields["num_iterations"] = iterations
    if outer == "trpo":  # TRPO has no learning rate (MAMLConfig refuses one)
        del fields["outer_lr"]
    return maml.MAMLConfig(env=env, outer=outer, inner_estimator=inner, checkpoint_every=min(10, fields["num_iterations"]),
                           shard=False, **fields)
