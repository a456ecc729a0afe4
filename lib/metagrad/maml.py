"""MAML meta-RL in JAX with the derivative estimator as a plug-in (Tang et al. 2021, Sec. 4 and Fig. 1d).

One meta-iteration, for each task g of the meta-batch (``jax.vmap`` over the task parameter pytrees):

1. sample the pre-update batch D_0 with π_θ, fit the critic (stop-gradient);
2. take ``inner_steps`` differentiable ascent steps θ_{k+1} = θ_k + η ∇V̂_in(θ_k; D_k), where V̂_in is
   the chosen inner estimator's surrogate (:func:`metagrad.estimators.surrogate`; on-policy, so
   μ = stop_gradient(π_θk) and ρ_t = 1 in value but not in derivatives); D_k is sampled with π_θk;
3. sample the post-update batch D' with π_θ', θ' = θ_K;
4. differentiate the outer objective J_out(θ'(θ); D') through θ'(θ):
   ∇_θ J_out = Π_k (I + η ∇²V̂_in(θ_k)) ∇J_out(θ') — reverse-mode autodiff of the composed function, so
   only Hessian-vector products are ever formed, never a Hessian.

Inner estimators: any name of :func:`metagrad.estimators.valid_names` (``"dr"``, ``"taypo2"``, ``"dice"``,
``"lvc"``, ``"maml"`` = Finn et al.'s surrogate, …) plus

* ``"fomaml"`` — first-order MAML: the inner gradient is ``stop_gradient``-ed, so ∇_θ J_out = ∇J_out(θ');
* ``"emaml"`` — E-MAML (Stadie et al. 2018) as ProMP's TRPO-MAML implements it
  (``meta_policy_search/meta_algos/trpo_maml.py``, ``exploration=True``): the MAML inner step, and the
  meta-objective gains mean_g [mean(r̃'_g) · mean_{n,t} log π_θ(a_t|x_t) on D_0^g] — the log-likelihood of the
  *step-0* (pre-update) batch only, a mean over its (n, t) samples, weighted by the post-update rewards
  r̃' adjusted across the meta-batch (``meta_sample_processor.py``: (r − mean r)/(std r + 1e-8) over every
  post-update reward sample of every task). It is part of the objective the TRPO line search evaluates.

Objective forms (``MAMLConfig.objective``):

* ``"paper"`` — the estimators of :mod:`metagrad.estimators`: mean_n Σ_t Γ_t (…) with raw advantages
  Â_t = G_t − V(x_t) (the quantities of Tang et al.'s Sec. 3; exact oracles in the tests);
* ``"promp"`` — ProMP's code (``pro_mp.py``, ``trpo_maml.py``, ``samplers/base.py``): every surrogate is
  ``reduce_mean`` over all (n, t) samples of f_t(θ) Â_t with advantages normalised per task batch and no γ^t
  weight (:func:`metagrad.outer.promp_surrogate`); ProMP's KL penalty is β · mean_k KL_k (averaged over the
  inner steps). Inner step size η, β and the TRPO radius then mean what they mean in ProMP's run scripts.

Outer optimisers (``outer``; the three families of Fig. 1d):

* ``"pg"`` — the meta-gradient of J_out (``outer_estimator``, default TayPO-1 whose gradient is the
  policy gradient Σ_t Γ_t Â_t ∇ℓ_t) followed by an optax Adam step;
* ``"promp"`` — ProMP (Rothfuss et al. 2019): ``promp_steps`` Adam steps on the same batches of
  mean_g J^CLIP_g(θ'_g(θ)) − β Σ_k KL(π_θk^old ‖ π_θk) (a fixed penalty β = ``kl_coef`` on the pre-update
  policies); after the first step the inner surrogates are off-policy, μ = π_θk^old (their OPE form);
* ``"trpo"`` — TRPO-MAML (Finn et al. 2017): conjugate gradient on the Fisher-vector product of the mean
  KL of the post-update policies, Gauss–Newton form Jᵀ F_θ' J with J = ∂θ'/∂θ (forward mode only: Jᵀ = J
  factor by factor, :meth:`MAML.fisher_vector_product`), step to the KL radius ``max_kl``, backtracking line
  search.

:func:`train` is make_train-style: one jitted meta-iteration, ``lax.scan`` over iterations between
checkpoints, a progress bar on stderr, atomic checkpoints and bit-identical ``resume``.

**Devices.** The meta-batch axis is sharded over all visible devices with a ``jax.sharding.Mesh`` of axis
``"tasks"`` and ``NamedSharding(mesh, P("tasks"))`` constraints on the task parameters and keys; the
same code runs on one CPU, on fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``)
and on several GPUs (``num_tasks`` must be divisible by the device count). On several hosts call
``jax.distributed.initialize()`` on every host before building the config (each host runs the same
program); ``jax.devices()`` then lists the devices of all hosts, the mesh spans them, every host computes
the same replicated parameters, and only process 0 should write checkpoints
(``jax.process_index() == 0``; pass ``checkpoint_dir=None`` elsewhere).

References:
  Finn, Abbeel, Levine. Model-agnostic meta-learning. ICML 2017.
  Stadie et al. Some considerations on learning to explore via meta-reinforcement learning. NeurIPS 2018.
  Rothfuss et al. ProMP: Proximal meta-policy search. ICLR 2019.
  Tang et al. Unifying gradient estimators for meta-RL via off-policy evaluation. NeurIPS 2021.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import tempfile
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metagrad import critics as critics_lib
from metagrad import outer as outer_lib
from metagrad.policies import GaussianMLP, TabularSoftmax
from metagrad.rollout import Trajectories, sample

try:
    import fcntl
except ImportError:  # Windows: checkpoint folders are not locked
    fcntl = None

#: Environments of :class:`MAMLConfig`.
ENVS = ("navigation", "navigation-corners", "tabular")
#: Outer optimisers.
OUTERS = ("pg", "promp", "trpo")
#: Inner estimators handled by the loop itself, on top of the estimator registry.
LOOP_ESTIMATORS = ("fomaml", "emaml", "maml")
#: Objective forms: the paper's estimators, or ProMP's reduce_mean form (see the module docstring).
OBJECTIVES = ("paper", "promp")

_CHECKPOINT = "checkpoint.npz"


def valid_inner_estimators() -> list[str]:
    """Every accepted ``inner_estimator``: the registry's names plus ``fomaml``, ``emaml``, ``maml``."""
    from metagrad import estimators

    return sorted(set(estimators.valid_names()) | set(LOOP_ESTIMATORS))


@dataclasses.dataclass(frozen=True)
class MAMLConfig:
    """Everything that defines a MAML run (frozen and hashable; invalid values raise ``ValueError``).

    Defaults follow ProMP where Tang et al. are silent: 40 tasks, 20 trajectories per task, horizon 100,
    γ = 0.99, a Gaussian MLP 64×64, inner step η = 0.1, outer Adam 1e-3, 5 ProMP steps with ε = 0.3,
    TRPO KL radius 0.01, the linear feature baseline.

    Attributes:
      env: ``"navigation"`` (MAML's goals in a square), ``"navigation-corners"`` (ProMP's four corners,
        Fig. 1d) or ``"tabular"`` (random MDPs, ``num_states`` × ``num_actions``, tabular softmax policy).
      inner_estimator: see :func:`valid_inner_estimators`; ``inner_options`` its keyword options as
        ``((name, value), ...)``.
      inner_step_size: η > 0; inner_steps: K ≥ 0.
      outer: ``"pg"``, ``"promp"`` or ``"trpo"``; outer_estimator: the surrogate J_out (a registry name).
      critic: ``"linear"``, ``"none"`` or ``"exact"`` (tabular only); ``None``: exact for tabular, else linear.
      num_tasks, num_trajectories, horizon: M tasks × N trajectories × T steps per batch.
      num_iterations: meta-iterations of :func:`train`; checkpoint_every: iterations per jitted
        ``lax.scan`` chunk (and between checkpoints).
      shard: shard the meta-batch over ``jax.devices()``.
    """

    env: str = "navigation"
    num_states: int = 10
    num_actions: int = 5
    hidden_sizes: tuple[int, ...] = (64, 64)
    inner_estimator: str = "maml"
    inner_options: tuple = ()
    inner_step_size: float = 0.1
    inner_steps: int = 1
    outer: str = "pg"
    outer_estimator: str = "taypo1"
    outer_lr: float = 1e-3
    promp_steps: int = 5
    clip_eps: float = 0.3
    kl_coef: float = 5e-4
    max_kl: float = 0.01
    cg_iterations: int = 10
    cg_damping: float = 1e-5
    backtrack_steps: int = 15
    backtrack_ratio: float = 0.8
    critic: str | None = None
    num_tasks: int = 40
    num_trajectories: int = 20
    horizon: int = 100
    gamma: float = 0.99
    num_iterations: int = 100
    checkpoint_every: int = 10
    shard: bool = True
    objective: str = "paper"

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        object.__setattr__(self, "inner_options", tuple(tuple(kv) for kv in dict(self.inner_options).items()))
        if self.env not in ENVS:
            raise ValueError(f"Unknown env {self.env!r}; valid envs are {list(ENVS)}.")
        if self.outer not in OUTERS:
            raise ValueError(f"Unknown outer optimiser {self.outer!r}; valid ones are {list(OUTERS)}.")
        valid = valid_inner_estimators()
        if self.inner_estimator not in valid:
            raise ValueError(f"Unknown inner estimator {self.inner_estimator!r}; valid estimators are {valid}.")
        from metagrad import estimators

        if self.outer_estimator not in estimators.valid_names():
            raise ValueError(
                f"Unknown outer estimator {self.outer_estimator!r}; valid estimators are {estimators.valid_names()}."
            )
        critic = self.critic if self.critic is not None else ("exact" if self.env == "tabular" else "linear")
        if critic not in critics_lib.CRITICS:
            raise ValueError(f"Unknown critic {critic!r}; valid critics are {list(critics_lib.CRITICS)}.")
        if critic == "exact" and self.env != "tabular":
            raise ValueError("critic='exact' needs env='tabular' (exact values exist only for tabular tasks).")
        object.__setattr__(self, "critic", critic)
        for name in ("inner_step_size", "outer_lr", "max_kl", "clip_eps", "backtrack_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a positive step size / coefficient; got {value!r}.")
        if not self.backtrack_ratio < 1:
            raise ValueError(f"`backtrack_ratio` must lie in (0, 1); got {self.backtrack_ratio}.")
        for name in ("num_tasks", "num_trajectories", "horizon", "num_iterations", "checkpoint_every",
                     "promp_steps", "cg_iterations", "backtrack_steps", "num_states", "num_actions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer (batch / iteration size); got {value!r}.")
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, (int, np.integer)) or self.inner_steps < 0:
            raise ValueError(f"`inner_steps` must be a non-negative integer; got {self.inner_steps!r}.")
        gamma = self.gamma
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.number)) or not 0 <= gamma < 1:
            raise ValueError(f"`gamma` must be a discount in [0, 1); got {self.gamma}.")
        for name in ("kl_coef", "cg_damping"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
                np.isfinite(value) and value >= 0
            ):
                raise ValueError(f"`{name}` must be a non-negative finite number; got {value!r}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {self.objective!r}; valid forms are {list(OBJECTIVES)}.")
        if self.objective == "promp":
            for field, name in (("inner_estimator", self.inner_estimator), ("outer_estimator", self.outer_estimator)):
                if name != "emaml" and name not in outer_lib.PROMP_FORM_ESTIMATORS:
                    raise ValueError(f"`{field}` = {name!r} has no ProMP-form surrogate (objective='promp'); "
                                     f"valid: {list(outer_lib.PROMP_FORM_ESTIMATORS) + ['emaml']}.")

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        out["inner_options"] = [list(kv) for kv in self.inner_options]
        return out

    @classmethod
    def from_json(cls, data: dict) -> "MAMLConfig":
        data = dict(data)
        data.setdefault("objective", "paper")  # checkpoints written before the field existed
        data["hidden_sizes"] = tuple(data["hidden_sizes"])
        data["inner_options"] = tuple(tuple(kv) for kv in data["inner_options"])
        return cls(**data)


def make_env(config: MAMLConfig):
    """``(env, policy)`` for the config: the ``FuncEnv`` whose ``params`` are the tasks, and the policy."""
    from metagrad.envs import Navigation2D, TabularMDPEnv

    if config.env == "tabular":
        return TabularMDPEnv(config.num_states, config.num_actions), TabularSoftmax(config.num_states, config.num_actions)
    goal_sampler = "square" if config.env == "navigation" else "corners"
    return Navigation2D(goal_sampler), GaussianMLP(2, 2, config.hidden_sizes)


def sample_tasks(config: MAMLConfig, key: jax.Array, n: int):
    """``n`` tasks of the config's family, stacked along a leading axis (goals ``[n, 2]`` or MDPs)."""
    env, _ = make_env(config)
    if config.env == "tabular":
        return env.sample_tasks(key, n, gamma=config.gamma)
    return env.sample_tasks(key, n)


_ENV_METHODS = ("initial", "transition", "observation", "reward", "terminal", "sample_tasks")
_POLICY_METHODS = ("init", "log_prob", "sample", "kl")


def _check_env(env):
    from gymnasium.experimental.functional import FuncEnv

    missing = [m for m in _ENV_METHODS if not callable(getattr(env, m, None))]
    if not isinstance(env, FuncEnv) or missing:
        raise ValueError(
            "`env` must be a gymnasium FuncEnv whose methods take the task as `params` and that has "
            f"`sample_tasks(key, n)`; got {type(env).__name__}" + (f" without {missing}" if missing else "") + "."
        )
    return env


def _check_policy(policy):
    missing = [m for m in _POLICY_METHODS if not callable(getattr(policy, m, None))]
    if missing:
        raise ValueError(f"`policy` must have methods {list(_POLICY_METHODS)}; {type(policy).__name__} lacks {missing}.")
    return policy


def _check_callable(name, value):
    if not callable(value):
        raise ValueError(f"`{name}` must be a function `critic(trajectories, gamma, *, task, policy, params)`; "
                         f"got {type(value).__name__}.")
    return value


def _check_optimizer(optimizer):
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise ValueError(f"`optimizer` must be an optax.GradientTransformation (init/update); got {type(optimizer).__name__}.")
    return optimizer


class TaskData(NamedTuple):
    """One task's batches: ``pre[k]`` sampled with π_θk (k < K), ``post`` with π_θ'.

    ``*_values [N, T+1]`` are the critic's values (stop-gradient) and ``*_log_probs [N, T]`` the
    log-probabilities log π_old(a_t|x_t) of the sampling policy, recomputed by ``policy.log_prob`` (the
    behaviour policy μ of the off-policy surrogates used by ProMP's later steps and TRPO's line search).
    """

    pre: tuple
    pre_values: tuple
    pre_log_probs: tuple
    post: Trajectories
    post_values: jax.Array
    post_log_probs: jax.Array


def _observations(batch: Trajectories):
    return jax.tree_util.tree_map(lambda x: x[:, :-1], batch.observations)


def _tree_axpy(a, x, y):
    return jax.tree_util.tree_map(lambda xi, yi: yi + a * xi, x, y)


def mean_return(batch: Trajectories, gamma: float | None = None) -> jax.Array:
    """Mean over trajectories of Σ_t r_t (undiscounted when ``gamma`` is None, else Σ_t γ^t r_t)."""
    if gamma is None:
        return jnp.mean(jnp.sum(batch.rewards, axis=-1))
    discount = gamma ** jnp.arange(batch.horizon, dtype=batch.rewards.dtype)
    return jnp.mean(jnp.sum(batch.rewards * discount, axis=-1))


class MAML:
    """The pure functions of one config (all jittable; ``vmap`` the per-task ones over tasks).

    Per task: :meth:`collect` (sampling, critic, inner steps), :meth:`adapt` (θ'(θ) recomputed from the
    collected batches, differentiable), :meth:`task_objective` and :meth:`task_meta_gradient`.
    Meta-batch: :meth:`meta_gradient`, :meth:`iteration` (one full meta-iteration).
    """

    def __init__(self, config: MAMLConfig, *, env=None, policy=None, critic=None, optimizer=None):
        """``env``, ``policy``, ``critic``, ``optimizer`` replace the config's named ones (the open API).

        * ``env`` — any task-pytree environment: a Gymnasium ``FuncEnv`` whose pure JAX methods take the task
          as ``params`` (``initial``, ``transition``, ``observation``, ``reward``, ``terminal``) plus
          ``sample_tasks(key, n)`` returning ``n`` tasks stacked along a leading axis (``config.env`` is then
          ignored);
        * ``policy`` — any object with ``init(key)``, ``log_prob(params, obs, actions) -> [...]``,
          ``sample(params, key, obs) -> (action, log_prob)`` and ``kl(params_a, params_b, obs) -> [...]``;
        * ``critic`` — ``critic(trajectories, gamma, *, task, policy, params) -> values [N, T+1]`` (used
          under ``stop_gradient``; ``config.critic`` is then ignored);
        * ``optimizer`` — any ``optax.GradientTransformation`` for the outer step of ``"pg"`` and ``"promp"``
          (default ``optax.adam(config.outer_lr)``).
        """
        from metagrad import estimators

        self.config = config
        default_env, default_policy = make_env(config) if env is None or policy is None else (None, None)
        self.env = default_env if env is None else _check_env(env)
        self.policy = default_policy if policy is None else _check_policy(policy)
        self.custom_env = env is not None
        self.critic = critics_lib.make_critic(config.critic) if critic is None else _check_callable("critic", critic)
        self._surrogate = estimators.surrogate
        name = config.inner_estimator
        self.inner_name = "maml" if name == "emaml" else name
        self.first_order = name == "fomaml"
        self.inner_options = dict(config.inner_options)
        self.optimizer = optax.adam(config.outer_lr) if optimizer is None else _check_optimizer(optimizer)

    def sample_tasks(self, key: jax.Array, n: int):
        """``n`` tasks stacked along a leading axis (the custom env's ``sample_tasks`` or :func:`sample_tasks`)."""
        if self.custom_env:
            return self.env.sample_tasks(key, n)
        return sample_tasks(self.config, key, n)

    # ---------------------------------------------------------------- per task
    def inner_surrogate(self, params, batch, values, behaviour_log_probs=None):
        """V̂_in(θ; D) of the inner estimator (on-policy when ``behaviour_log_probs`` is None)."""
        if self.config.objective == "promp":
            advantage = outer_lib.normalized_advantages(batch, values, self.config.gamma)
            return outer_lib.promp_surrogate(self.inner_name, self.policy.log_prob, params, batch, advantage,
                                             behaviour_log_probs)
        return self._surrogate(
            self.inner_name, self.policy.log_prob, params, batch, values, self.config.gamma,
            behaviour_log_probs=behaviour_log_probs, **self.inner_options,
        )

    def inner_step(self, params, batch, values, behaviour_log_probs=None):
        """θ + η ∇V̂_in(θ) (for ``fomaml`` the gradient is a constant: ``stop_gradient``)."""
        gradient = jax.grad(self.inner_surrogate)(params, batch, values, behaviour_log_probs)
        if self.first_order:
            gradient = jax.lax.stop_gradient(gradient)
        return _tree_axpy(self.config.inner_step_size, gradient, params)

    def outer_surrogate(self, params, batch, values, behaviour_log_probs=None):
        """J_out(θ'; D') of ``outer_estimator``."""
        if self.config.objective == "promp":
            advantage = outer_lib.normalized_advantages(batch, values, self.config.gamma)
            return outer_lib.promp_surrogate(self.config.outer_estimator, self.policy.log_prob, params, batch,
                                             advantage, behaviour_log_probs)
        return self._surrogate(
            self.config.outer_estimator, self.policy.log_prob, params, batch, values, self.config.gamma,
            behaviour_log_probs=behaviour_log_probs,
        )

    def _sample(self, key, params, task):
        config = self.config
        params = jax.lax.stop_gradient(params)
        batch = sample(key, self.env, self.policy.sample, params, config.num_trajectories, config.horizon, task=task)
        values = self.critic(batch, config.gamma, task=task, policy=self.policy, params=params)
        log_probs = jax.lax.stop_gradient(self.policy.log_prob(params, _observations(batch), batch.actions))
        return batch, values, log_probs

    def collect(self, params, task, key) -> TaskData:
        """Sample D_0, …, D_{K−1} and D' for one task, taking the inner steps in between (no θ-graph kept)."""
        params = jax.lax.stop_gradient(params)
        keys = jax.random.split(key, self.config.inner_steps + 1)
        pre, pre_values, pre_log_probs = [], [], []
        for k in range(self.config.inner_steps):
            batch, values, log_probs = self._sample(keys[k], params, task)
            pre.append(batch), pre_values.append(values), pre_log_probs.append(log_probs)
            params = jax.lax.stop_gradient(self.inner_step(params, batch, values))
        post, post_values, post_log_probs = self._sample(keys[-1], params, task)
        return TaskData(tuple(pre), tuple(pre_values), tuple(pre_log_probs), post, post_values, post_log_probs)

    def adapt(self, params, data: TaskData, off_policy: bool = False):
        """θ'(θ) = θ_K from the collected batches, differentiable in θ; returns ``(θ', [θ_0, …, θ_{K−1}])``.

        ``off_policy``: use the recorded log π_old as μ (exactly the on-policy surrogate when θ = θ_old).
        """
        thetas = []
        for k in range(len(data.pre)):
            thetas.append(params)
            behaviour = data.pre_log_probs[k] if off_policy else None
            params = self.inner_step(params, data.pre[k], data.pre_values[k], behaviour)
        return params, thetas

    def task_objective(self, params, data: TaskData):
        """J_out(θ'(θ); D') for one task (on-policy at θ'); differentiate it for the task's meta-gradient."""
        adapted, _ = self.adapt(params, data)
        return self.outer_surrogate(adapted, data.post, data.post_values)

    def task_meta_gradient(self, params, data: TaskData):
        """∇_θ J_out(θ'(θ)) = Π_k (I + η Ĥ_k) ĝ' for one task (E-MAML's cross-task term excluded)."""
        return jax.grad(self.task_objective)(params, data)

    # ---------------------------------------------------------------- meta-batch
    def emaml_term(self, params, data: TaskData):
        """E-MAML's extra objective (ProMP trpo_maml.py): mean_g mean(r̃'_g) · mean_{n,t} log π_θ(a|x) on D_0^g.

        r̃' = (r' − m)/(s + 1e-8), m and s the mean and population std of every valid post-update reward
        sample of the meta-batch (ProMP's ``adj_avg_rewards``); only the step-0 batch D_0, sampled by π_θ.
        Zero unless ``inner_estimator == "emaml"`` and ``inner_steps ≥ 1``. ``data`` has a leading task axis.
        """
        if self.config.inner_estimator != "emaml" or not data.pre:
            return jnp.zeros((), jnp.result_type(float))
        mask = data.post.mask()
        rewards = data.post.rewards
        mean = outer_lib.masked_mean(rewards, mask)
        std = jnp.sqrt(outer_lib.masked_mean((rewards - mean) ** 2, mask))
        adjusted = jax.lax.stop_gradient((rewards - mean) / (std + 1e-8))
        weight = jax.vmap(outer_lib.masked_mean)(adjusted, mask)

        def log_likelihood(d):
            batch = d.pre[0]
            log_pi = self.policy.log_prob(params, _observations(batch), batch.actions)
            return outer_lib.masked_mean(log_pi, batch.mask())

        return jnp.mean(weight * jax.vmap(log_likelihood)(data))

    def meta_objective(self, params, data: TaskData):
        """mean_g J_out(θ'_g(θ)) (+ :meth:`emaml_term`); ``data`` has a leading task axis."""
        per_task = jax.vmap(self.task_objective, in_axes=(None, 0))(params, data)
        return jnp.mean(per_task) + self.emaml_term(params, data)

    def trpo_objective(self, params, data: TaskData):
        """The TRPO line-search objective at θ: mean_g J_out(θ'_g(θ); D', μ = π_θ'_old) + :meth:`emaml_term`.

        Off-policy (μ the recorded post-update policy), so it is the on-policy meta-objective at θ = θ_old and
        its gradient there is :meth:`meta_gradient` (ProMP's TRPO-MAML minimises this same loss).
        """
        def per_task(d):
            adapted = self.adapt(params, d, True)[0]
            return self.outer_surrogate(adapted, d.post, d.post_values, d.post_log_probs)

        return jnp.mean(jax.vmap(per_task)(data)) + self.emaml_term(params, data)

    def meta_gradient(self, params, data: TaskData):
        """∇_θ of :meth:`meta_objective` (the PG meta-gradient)."""
        return jax.grad(self.meta_objective)(params, data)

    def _promp_objective(self, params, old_params, data: TaskData):
        config = self.config

        def per_task(d):
            adapted, thetas = self.adapt(params, d, off_policy=True)
            log_pi = self.policy.log_prob(adapted, _observations(d.post), d.post.actions)
            _, old_thetas = self.adapt(old_params, d)
            if config.objective == "promp":
                # pro_mp.py: -reduce_mean(clipped) + reduce_mean(β_k · mean_g KL_k), KL over all valid samples.
                adv = outer_lib.normalized_advantages(d.post, d.post_values, config.gamma)
                clip = outer_lib.promp_clip_objective(log_pi, d.post_log_probs, adv, d.post.mask(), config.clip_eps)
                kls = [outer_lib.masked_mean(self.policy.kl(jax.lax.stop_gradient(old), theta, _observations(b)),
                                             b.mask()) for theta, old, b in zip(thetas, old_thetas, d.pre)]
                return clip - config.kl_coef * (jnp.mean(jnp.stack(kls)) if kls else 0.0)
            adv = outer_lib.advantages(d.post, d.post_values, config.gamma)
            weights = outer_lib.cumulative_discounts(d.post, config.gamma) * d.post.mask()
            clip = outer_lib.ppo_clip_objective(log_pi, d.post_log_probs, adv, weights, config.clip_eps)
            kl = 0.0
            for theta, old_theta, batch in zip(thetas, old_thetas, d.pre):
                kl = kl + jnp.mean(self.policy.kl(jax.lax.stop_gradient(old_theta), theta, _observations(batch)))
            return clip - config.kl_coef * kl

        return jnp.mean(jax.vmap(per_task)(data))

    def _post_kl(self, old_adapted, adapted, data: TaskData):
        """mean_g mean_{n,t} KL(π_θ'_g,old ‖ π_θ'_g) on the post-update batches (leading task axis everywhere)."""
        kls = jax.vmap(lambda old, new, d: jnp.mean(self.policy.kl(old, new, _observations(d.post))))(
            old_adapted, adapted, data
        )
        return jnp.mean(kls)

    def _gauss_newton_fisher(self, params, data: TaskData):
        """``(fvp, θ'_old)``: see :meth:`fisher_vector_product`; θ'_old the adapted parameters (leading task axis)."""
        num_tasks = data.post.rewards.shape[0]
        # θ_0 = θ for every task: a task axis on the parameters, so each J_k acts on a per-task vector.
        theta = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_tasks,) + x.shape), params)
        steps = []
        for k in range(len(data.pre)):
            def step(thetas, k=k):
                return jax.vmap(lambda p, d: self.inner_step(p, d.pre[k], d.pre_values[k]))(thetas, data)

            theta, linear = jax.linearize(step, theta)  # θ_{k+1} and w ↦ J_k w, linearised once at θ_k
            steps.append(linear)
        old_adapted = jax.lax.stop_gradient(theta)

        def kl_hessian_vector_product(w):
            return jax.jvp(jax.grad(lambda a: self._post_kl(old_adapted, a, data)), (old_adapted,), (w,))[1]

        _, unravel = ravel_pytree(params)

        def fvp(v):
            w = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_tasks,) + x.shape), unravel(v))
            for linear in steps:  # J v = J_K ⋯ J_1 v
                w = linear(w)
            u = kl_hessian_vector_product(w)
            for linear in reversed(steps):  # Jᵀ u = J_1ᵀ ⋯ J_Kᵀ u = J_1 ⋯ J_K u (J_k symmetric)
                u = linear(u)
            return ravel_pytree(jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), u))[0]

        return fvp, old_adapted

    def fisher_vector_product(self, params, data: TaskData):
        """``v ↦ F v``, TRPO-MAML's Gauss–Newton Fisher-vector product at θ = θ_old, on flat vectors ``[P]``.

        F v = Σ_g J_gᵀ ∇²KL J_g v with KL = mean_g mean KL(π_θ'_g,old ‖ π_θ'_g) over the post-update batches
        (its Hessian in θ at θ_old: ∇KL = 0 there, so the second-order term of θ'(θ) drops) and
        J_g = ∂θ'_g/∂θ = J_K ⋯ J_1, J_k = I + η ∇²V̂_in(θ_k) the Jacobian of the inner step k of task g
        (``data`` has a leading task axis of size M). Each J_k is symmetric — the inner step adds η times
        ``jax.grad`` of a scalar, with every ``stop_gradient`` a constant in all derivatives (the same
        linearisation for both products), and J_k = I for ``fomaml`` — for every inner estimator and both
        objective forms, so Jᵀ u = J_1 ⋯ J_K u: forward mode only, each J_k linearised once at θ_k
        (``jax.linearize``, per task under ``vmap``) and applied once in each direction. ∇²KL w is
        forward-over-reverse at θ'_old. Shapes: v and F v ``[P]`` (flat θ); the tangents between are parameter
        pytrees with a leading task axis ``[M, …]``, summed over tasks at the end (Σ_g J_gᵀ u_g). (A custom policy
        whose ``log_prob`` cannot be differentiated forward, e.g. a ``custom_vjp``, is not supported; it never
        was: J v was already forward mode.)
        """
        return self._gauss_newton_fisher(params, data)[0]

    def _trpo_update(self, params, data: TaskData):
        config = self.config
        flat, unravel = ravel_pytree(params)

        def objective(flat_params):  # (maml helper) the line search sees the E-MAML term too: trpo_objective
            return self.trpo_objective(unravel(flat_params), data)

        fisher_vector_product, old_adapted = self._gauss_newton_fisher(params, data)

        def kl(flat_params):  # adapted off-policy, as in trpo_objective
            p = unravel(flat_params)
            return self._post_kl(old_adapted, jax.vmap(lambda d: self.adapt(p, d, True)[0])(data), data)

        gradient = jax.grad(lambda f: self.meta_objective(unravel(f), data))(flat)
        new_flat, index = outer_lib.trpo_step(
            flat, gradient, fisher_vector_product, objective, kl,
            max_kl=config.max_kl, cg_iterations=config.cg_iterations, damping=config.cg_damping,
            backtrack_steps=config.backtrack_steps, backtrack_ratio=config.backtrack_ratio,
        )
        return unravel(new_flat), gradient, index

    def init(self, key):
        """``(params, opt_state)`` of the initial policy."""
        params = self.policy.init(key)
        return params, self.optimizer.init(params)

    def sample_meta_batch(self, params, key, *, sharding: NamedSharding | None = None) -> TaskData:
        """M new tasks and their :class:`TaskData` (leading task axis, sharded over devices with ``sharding``)."""
        config = self.config
        k_tasks, k_collect = jax.random.split(key)
        tasks = self.sample_tasks(k_tasks, config.num_tasks)
        keys = jax.random.split(k_collect, config.num_tasks)
        if sharding is not None:
            tasks = jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tasks)
            keys = jax.lax.with_sharding_constraint(keys, sharding)
        return jax.vmap(self.collect, in_axes=(None, 0, 0))(params, tasks, keys)

    def iteration(self, params, opt_state, key, *, sharding: NamedSharding | None = None):
        """One meta-iteration: new tasks, collect, outer update. Returns ``(params, opt_state, metrics)``."""
        config = self.config
        data = self.sample_meta_batch(params, key, sharding=sharding)
        metrics = {
            "pre_return": jnp.mean(jax.vmap(lambda d: mean_return(d.pre[0] if d.pre else d.post))(data)),
            "post_return": jnp.mean(jax.vmap(lambda d: mean_return(d.post))(data)),
        }
        if config.outer == "pg":
            gradient = self.meta_gradient(params, data)
            updates, opt_state = self.optimizer.update(jax.tree_util.tree_map(jnp.negative, gradient), opt_state, params)
            params = optax.apply_updates(params, updates)
        elif config.outer == "promp":
            old_params = params

            def step(carry, _):
                p, s = carry
                g = jax.grad(self._promp_objective)(p, old_params, data)
                updates, s = self.optimizer.update(jax.tree_util.tree_map(jnp.negative, g), s, p)
                return (optax.apply_updates(p, updates), s), optax.tree.norm(g)

            (params, opt_state), norms = jax.lax.scan(step, (params, opt_state), None, length=config.promp_steps)
            # The first ProMP step is taken at θ_old, where the clipped objective's gradient is the meta-gradient.
            metrics["meta_grad_norm"] = norms[0]
        else:
            params, gradient, index = self._trpo_update(params, data)
            metrics["backtracks"] = index
        if config.outer != "promp":
            metrics["meta_grad_norm"] = optax.tree.norm(gradient)
        return params, opt_state, metrics


# ---------------------------------------------------------------------------------------------- training
def task_sharding(config: MAMLConfig) -> NamedSharding | None:
    """``NamedSharding(Mesh(jax.devices(), ("tasks",)), P("tasks"))`` or ``None`` on one device.

    Raises ``ValueError`` when ``num_tasks`` is not divisible by the device count.
    """
    devices = jax.devices()
    if not config.shard or len(devices) == 1:
        return None
    if config.num_tasks % len(devices):
        raise ValueError(
            f"`num_tasks` = {config.num_tasks} must be divisible by the number of devices ({len(devices)}) "
            "to shard the meta-batch; change num_tasks or pass shard=False."
        )
    return NamedSharding(Mesh(np.array(devices), ("tasks",)), PartitionSpec("tasks"))


def make_train(config: MAMLConfig, *, env=None, policy=None, critic=None, optimizer=None, num_seeds: int | None = None):
    """``train_chunk(state, iterations) -> (state, metrics)`` (jitted ``lax.scan``) and ``init(key) -> state``.

    ``state = {"params", "opt_state", "key"}``; iteration i uses ``fold_in(key, i)``, so results do not
    depend on how iterations are grouped into chunks. Cached per config (``num_iterations`` aside), custom
    objects (see :class:`MAML`) and device set, so repeated and resumed runs reuse the compiled iteration.
    ``num_seeds``: ``init`` takes ``[S]`` keys and ``train_chunk`` runs the S independent runs in one jitted
    program (``jax.vmap`` over the state; no meta-batch sharding), metrics with a leading seed axis.
    """
    extras = (env, policy, critic, optimizer)
    try:
        hash(extras)
    except TypeError:  # unhashable custom objects: build without the cache
        return _make_train.__wrapped__(dataclasses.replace(config, num_iterations=1), tuple(jax.devices()), extras, num_seeds)
    return _make_train(dataclasses.replace(config, num_iterations=1), tuple(jax.devices()), extras, num_seeds)


@functools.lru_cache(maxsize=16)
def _make_train(config: MAMLConfig, devices: tuple, extras: tuple = (None,) * 4, num_seeds: int | None = None):
    env, policy, critic, optimizer = extras
    maml = MAML(config, env=env, policy=policy, critic=critic, optimizer=optimizer)
    sharding = task_sharding(config) if num_seeds is None else None

    def init(key):
        k_init, k_run = jax.random.split(key)
        params, opt_state = maml.init(k_init)
        return {"params": params, "opt_state": opt_state, "key": k_run}

    def chunk(state, iterations):
        def body(carry, i):
            params, opt_state = carry
            params, opt_state, metrics = maml.iteration(
                params, opt_state, jax.random.fold_in(state["key"], i), sharding=sharding
            )
            return (params, opt_state), metrics

        (params, opt_state), metrics = jax.lax.scan(body, (state["params"], state["opt_state"]), iterations)
        return {"params": params, "opt_state": opt_state, "key": state["key"]}, metrics

    if num_seeds is None:
        return init, jax.jit(chunk)
    return jax.vmap(init), jax.jit(jax.vmap(chunk, in_axes=(0, None)))


def train_seeds(config: MAMLConfig, keys: jax.Array, *, env=None, policy=None, critic=None, optimizer=None,
                progress: bool = True, label: str = "maml") -> tuple[Any, dict]:
    """S independent meta-training runs, one per key of ``keys [S]``, inside one jitted program (``vmap``).

    Returns ``(params, history)`` with a leading seed axis on every parameter leaf and every history array
    (``[S, num_iterations]``); run s equals ``train(config, keys[s])`` up to floating-point reassociation
    (same key streams). ``wall_time`` is shared by the seeds (``[num_iterations]``). No checkpoints.
    """
    keys = jnp.asarray(keys)
    num_seeds = int(keys.shape[0])
    init, train_chunk = make_train(config, env=env, policy=policy, critic=critic, optimizer=optimizer,
                                   num_seeds=num_seeds)
    state, history = _run_chunks(config, train_chunk, init(keys), {}, 0, progress, label)
    return state["params"], history


def _run_chunks(config, train_chunk, state, history: dict, start: int, progress: bool, label: str, after_chunk=None):
    """Run iterations ``start … num_iterations − 1`` in jitted chunks of ``checkpoint_every``, appending each
    chunk's metrics (and its share of the wall time) to ``history`` along the last axis; ``after_chunk(state,
    history, i)`` runs after each chunk (checkpoints). Returns ``(state, history)``."""
    from metagrad.progress import Progress

    elapsed = float(history["wall_time"][-1]) if len(history.get("wall_time", ())) else 0.0
    with Progress(config.num_iterations, label, enabled=progress) as bar:
        bar.update(start)
        i = start
        while i < config.num_iterations:
            n = min(config.checkpoint_every, config.num_iterations - i)
            tic = time.perf_counter()
            state, metrics = train_chunk(state, jnp.arange(i, i + n))
            metrics = jax.device_get(metrics)
            seconds = time.perf_counter() - tic
            metrics["wall_time"] = elapsed + seconds * np.arange(1, n + 1) / n
            elapsed += seconds
            for name, values in metrics.items():
                values = np.asarray(values)
                history[name] = np.concatenate([history[name], values], axis=-1) if name in history else values
            i += n
            bar.update(n, note=f"post-adaptation return {float(np.mean(history['post_return'][..., -1])):.3f}")
            if after_chunk is not None:
                after_chunk(state, history, i)
    return state, history


def _write_checkpoint(directory: str, config: MAMLConfig, state, history: dict, iteration: int) -> None:
    """state + history as one ``.npz`` (metadata JSON inside), written to a temp file then ``os.replace``-d."""
    os.makedirs(directory, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"state_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays.update({f"history_{k}": np.asarray(v) for k, v in history.items()})
    metadata = {"config": config.to_json(), "iteration": iteration, "num_leaves": len(leaves)}
    arrays["metadata"] = np.asarray(json.dumps(metadata, allow_nan=False))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, _CHECKPOINT))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(metadata, f, indent=1, allow_nan=False)
    os.replace(tmp, os.path.join(directory, "checkpoint.json"))


def load_checkpoint(directory: str, template_state) -> tuple[Any, dict, int, dict]:
    """``(state, history, iteration, metadata)`` of ``directory/checkpoint.npz`` (leaves into ``template_state``).

    A file that is not a checkpoint written by :func:`train` (truncated, corrupt, another program's) raises a
    ``ValueError`` of one sentence naming the file.
    """
    path = os.path.join(directory, _CHECKPOINT)
    treedef = jax.tree_util.tree_structure(template_state)
    template = jax.tree_util.tree_leaves(template_state)
    try:
        with np.load(path, allow_pickle=False) as data:
            metadata = json.loads(str(data["metadata"]))
            iteration, num_leaves = int(metadata["iteration"]), int(metadata["num_leaves"])
            if not isinstance(metadata["config"], dict):
                raise TypeError("config is not a mapping")
            if num_leaves == len(template):
                leaves = [jnp.asarray(data[f"state_{i}"], dtype=t.dtype) for i, t in enumerate(template)]
            history = {k[len("history_"):]: np.asarray(data[k]) for k in data.files if k.startswith("history_")}
    except FileNotFoundError:
        raise
    except Exception as err:  # zipfile.BadZipFile, EOFError, KeyError, JSON errors, ...: all mean "not ours"
        raise ValueError(
            f"{path} is not a readable metagrad MAML checkpoint (corrupt, truncated or written by another "
            f"program: {type(err).__name__}: {err})."
        ) from None
    if num_leaves != len(template):
        raise ValueError(f"The checkpoint in {directory} does not match this config's parameter structure.")
    return jax.tree_util.tree_unflatten(treedef, leaves), history, iteration, metadata


_LOCK = "checkpoint.lock"


@contextlib.contextmanager
def checkpoint_lock(directory: str):
    """Hold an exclusive lock on ``directory`` for one run, so two runs never write one ``checkpoint_dir``.

    ``fcntl.flock`` on ``directory/checkpoint.lock``: the operating system releases it when the process ends,
    also on a crash or ``kill -9``, so a stale lock never blocks a later run; the file is removed on a normal
    exit. A second run raises ``RuntimeError`` at once. (Where ``fcntl`` is missing, i.e. on Windows, no lock
    is taken.)
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"`checkpoint_dir` must be a folder; {directory!r} is a file.")
    os.makedirs(directory, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = os.path.join(directory, _LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"Another run is writing checkpoints to {directory} (it holds {path}); give each run its own "
                "checkpoint_dir."
            ) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:  # else the previous holder removed the file between our open and flock: lock the new one
            break
        os.close(fd)
    try:
        yield
    finally:
        os.unlink(path)
        os.close(fd)


def _key_data(key) -> np.ndarray:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key)


def train(
    config: MAMLConfig,
    key: jax.Array,
    *,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    label: str = "maml",
    env=None,
    policy=None,
    critic=None,
    optimizer=None,
) -> tuple[Any, dict]:
    """Meta-train for ``config.num_iterations`` iterations; returns ``(params, history)``.

    ``history`` holds NumPy arrays over iterations: ``pre_return`` and ``post_return`` (mean undiscounted
    return of the pre-update batch D_0 and of the post-update batch D'), ``meta_grad_norm``, ``wall_time``
    (cumulative seconds, compilation included in the first chunk) and, for TRPO, ``backtracks``.

    Iterations run in jitted chunks of ``config.checkpoint_every`` (a ``lax.scan``); after each chunk the
    progress bar advances and, with ``checkpoint_dir``, a checkpoint is written atomically. ``resume=True``
    continues from ``checkpoint_dir`` (same config and key required) and yields bit-identical parameters
    and returns to an uninterrupted run (``wall_time`` aside). ``env``, ``policy``, ``critic``,
    ``optimizer``: custom objects replacing the config's (see :class:`MAML`; the open API).

    A ``checkpoint_dir`` is locked for the run (:func:`checkpoint_lock`): a second run on the same folder
    raises ``RuntimeError``. With ``resume=False`` a folder that already holds a checkpoint is refused
    (``ValueError``) unless ``overwrite=True``, so a finished run is never replaced by accident.
    """
    if checkpoint_dir is None:
        return _train(config, key, None, resume, progress, label, env, policy, critic, optimizer)
    with checkpoint_lock(checkpoint_dir):
        if not resume and not overwrite and os.path.exists(os.path.join(checkpoint_dir, _CHECKPOINT)):
            raise ValueError(
                f"{checkpoint_dir} already holds a checkpoint; pass resume=True to continue it or overwrite=True "
                "to start again."
            )
        return _train(config, key, checkpoint_dir, resume, progress, label, env, policy, critic, optimizer)


def _train(config, key, checkpoint_dir, resume, progress, label, env, policy, critic, optimizer):
    init, train_chunk = make_train(config, env=env, policy=policy, critic=critic, optimizer=optimizer)
    state = init(key)
    history: dict[str, np.ndarray] = {}
    start = 0
    if resume:
        if checkpoint_dir is None or not os.path.exists(os.path.join(checkpoint_dir, _CHECKPOINT)):
            raise ValueError(f"resume=True needs an existing checkpoint in `checkpoint_dir`; got {checkpoint_dir!r}.")
        saved, history, start, metadata = load_checkpoint(checkpoint_dir, state)
        try:
            saved_config = MAMLConfig.from_json(metadata["config"])
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(
                f"The checkpoint in {checkpoint_dir} holds a config this version of metagrad cannot read ({err})."
            ) from None
        if dataclasses.replace(saved_config, num_iterations=config.num_iterations) != config:
            raise ValueError(
                "The checkpoint was written with a different config; resume needs the same config "
                "(only num_iterations may change)."
            )
        if start > config.num_iterations:
            raise ValueError(f"The checkpoint is at iteration {start}, beyond num_iterations = {config.num_iterations}.")
        if not np.array_equal(_key_data(saved["key"]), _key_data(state["key"])):
            raise ValueError("The checkpoint was written with a different key; resume needs the same key.")
        state = saved
    def checkpoint(state, history, i):
        _write_checkpoint(checkpoint_dir, config, state, history, i)

    state, history = _run_chunks(config, train_chunk, state, history, start, progress, label,
                                 checkpoint if checkpoint_dir is not None else None)
    return state["params"], history
