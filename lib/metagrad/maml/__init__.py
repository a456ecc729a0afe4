"""MAML meta-RL in JAX with the derivative estimator as a plug-in (Tang et al. 2021, Sec. 4 and Fig. 1d).

One meta-iteration, for each task g of the meta-batch (`jax.vmap` over the task parameter pytrees):

1. sample the pre-update batch D_0 with π_θ, fit the critic (stop-gradient);
2. take `inner_steps` differentiable ascent steps θ_{k+1} = θ_k + η ∇V̂_in(θ_k; D_k), where V̂_in is
   the chosen inner estimator's surrogate ([`metagrad.estimators.surrogate`][metagrad.estimators.surrogate]; on-policy, so
   μ = stop_gradient(π_θk) and ρ_t = 1 in value but not in derivatives); D_k is sampled with π_θk;
3. sample the post-update batch D' with π_θ', θ' = θ_K;
4. differentiate the outer objective J_out(θ'(θ); D') through θ'(θ):
   ∇_θ J_out = Π_k (I + η ∇²V̂_in(θ_k)) ∇J_out(θ') — reverse-mode autodiff of the composed function, so
   only Hessian-vector products are ever formed, never a Hessian.

Inner estimators: any name of [`metagrad.estimators.valid_names`][metagrad.estimators.valid_names] (`"dr"`, `"taypo2"`, `"dice"`,
`"lvc"`, `"maml"` = Finn et al.'s surrogate, …) plus

* `"fomaml"` — first-order MAML: the inner gradient is `stop_gradient`-ed, so ∇_θ J_out = ∇J_out(θ');
* `"emaml"` — E-MAML (Stadie et al. 2018) as ProMP's TRPO-MAML implements it
  (`meta_policy_search/meta_algos/trpo_maml.py`, `exploration=True`): the MAML inner step, and the
  meta-objective gains mean_g [mean(r̃'_g) · mean_{n,t} log π_θ(a_t|x_t) on D_0^g] — the log-likelihood of the
  *step-0* (pre-update) batch only, a mean over its (n, t) samples, weighted by the post-update rewards
  r̃' adjusted across the meta-batch (`meta_sample_processor.py`: (r − mean r)/(std r + 1e-8) over every
  post-update reward sample of every task). It is part of the objective the TRPO line search evaluates.

Objective forms (`MAMLConfig.objective`):

* `"paper"` — the estimators of [`metagrad.estimators`][metagrad.estimators]: mean_n Σ_t Γ_t (…) with raw advantages
  Â_t = G_t − V(x_t) (the quantities of Tang et al.'s Sec. 3; exact oracles in the tests);
* `"promp"` — ProMP's code (`pro_mp.py`, `trpo_maml.py`, `samplers/base.py`): every surrogate is
  `reduce_mean` over all (n, t) samples of f_t(θ) Â_t with advantages normalised per task batch and no γ^t
  weight ([`metagrad.outer.promp_surrogate`][metagrad.outer.promp_surrogate]); ProMP's KL penalty is β · mean_k KL_k (averaged over the
  inner steps). Inner step size η, β and the TRPO radius then mean what they mean in ProMP's run scripts.

Outer optimisers (`outer`; the three families of Fig. 1d):

* `"pg"` — the meta-gradient of J_out (`outer_estimator`, default TayPO-1 whose gradient is the
  policy gradient Σ_t Γ_t Â_t ∇ℓ_t) followed by an optax Adam step;
* `"promp"` — ProMP (Rothfuss et al. 2019): `promp_steps` Adam steps on the same batches of
  mean_g J^CLIP_g(θ'_g(θ)) − β Σ_k KL(π_θk^old ‖ π_θk) (a fixed penalty β = `kl_coef` on the pre-update
  policies); after the first step the inner surrogates are off-policy, μ = π_θk^old (their OPE form);
* `"trpo"` — TRPO-MAML (Finn et al. 2017): conjugate gradient on the Fisher-vector product of the mean
  KL of the post-update policies, Gauss–Newton form Jᵀ F_θ' J with J = ∂θ'/∂θ (forward mode only: Jᵀ = J
  factor by factor, [`MAML.fisher_vector_product`][metagrad.maml.loop.MAML.fisher_vector_product]), step to the KL radius `max_kl`, backtracking line
  search.

[`train`][metagrad.maml.loop.train] is make_train-style: one jitted meta-iteration, `lax.scan` over iterations between
checkpoints, a progress bar on stderr, atomic checkpoints and bit-identical `resume`.

**Devices.** The meta-batch axis is sharded over all visible devices with a `jax.sharding.Mesh` of axis
`"tasks"` and `NamedSharding(mesh, P("tasks"))` constraints on the task parameters and keys; the
same code runs on one CPU, on fake CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`)
and on several GPUs (`num_tasks` must be divisible by the device count). On several hosts call
`jax.distributed.initialize()` on every host before building the config (each host runs the same
program); `jax.devices()` then lists the devices of all hosts, the mesh spans them, every host computes
the same replicated parameters, and only process 0 should write checkpoints
(`jax.process_index() == 0`; pass `checkpoint_dir=None` elsewhere). Tested with two local CPU processes joined by
`jax.distributed.initialize(coordinator_address="localhost:PORT", num_processes=2, process_id=i)`
(`tests/test_maml_sharding.py`): both end with the one-process run's parameters.

Modules: [`config`][metagrad.maml.config] ([`MAMLConfig`][metagrad.maml.config.MAMLConfig], the task families), [`loop`][metagrad.maml.loop]
([`MAML`][metagrad.maml.loop.MAML], [`make_train`][metagrad.maml.loop.make_train], [`train`][metagrad.maml.loop.train], [`train_seeds`][metagrad.maml.loop.train_seeds]), [`sampling`][metagrad.maml.sampling]
([`TaskData`][metagrad.maml.sampling.TaskData], [`mean_return`][metagrad.maml.sampling.mean_return]), [`promp`][metagrad.maml.promp] and [`trpo`][metagrad.maml.trpo] (the ProMP
and TRPO outer steps, the Fisher-vector product), [`checkpoint`][metagrad.maml.checkpoint] (checkpoint files and the folder
lock), [`sharding`][metagrad.maml.sharding] (the meta-batch over devices). Every public name is importable from
`metagrad.maml`.

References:
  - Finn, Abbeel, Levine. Model-agnostic meta-learning. ICML 2017.
  - Stadie et al. Some considerations on learning to explore via meta-reinforcement learning. NeurIPS 2018.
  - Rothfuss et al. ProMP: Proximal meta-policy search. ICLR 2019.
  - Tang et al. Unifying gradient estimators for meta-RL via off-policy evaluation. NeurIPS 2021.
"""

from metagrad.maml.checkpoint import checkpoint_lock, load_checkpoint
from metagrad.maml.config import (
    ENVS,
    LOOP_ESTIMATORS,
    OBJECTIVES,
    OUTERS,
    MAMLConfig,
    make_env,
    sample_tasks,
    valid_inner_estimators,
)
from metagrad.maml.loop import MAML, make_train, train, train_seeds
from metagrad.maml.sampling import TaskData, mean_return
from metagrad.maml.sharding import task_sharding

__all__ = [
    "ENVS", "LOOP_ESTIMATORS", "MAML", "MAMLConfig", "OBJECTIVES", "OUTERS", "TaskData", "checkpoint_lock",
    "load_checkpoint", "make_env", "make_train", "mean_return", "sample_tasks", "task_sharding", "train",
    "train_seeds", "valid_inner_estimators",
]
