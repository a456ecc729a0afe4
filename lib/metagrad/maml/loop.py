"""The MAML loop: [`MAML`][metagrad.maml.loop.MAML] (the pure functions of one config: sampling, inner steps, objectives, one
meta-iteration) and the make_train-style training functions [`make_train`][metagrad.maml.loop.make_train], [`train`][metagrad.maml.loop.train] (checkpoints,
resume) and [`train_seeds`][metagrad.maml.loop.train_seeds] (several seeds in one jitted program). See [`metagrad.maml`][metagrad.maml] for the maths."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from metagrad import critics as critics_lib
from metagrad import outer as outer_lib
from metagrad.maml import promp as promp_lib
from metagrad.maml import trpo as trpo_lib
from metagrad.maml.checkpoint import CHECKPOINT, checkpoint_lock, key_data, load_checkpoint, write_checkpoint
from metagrad.maml.config import MAMLConfig, make_env, sample_tasks
from metagrad.maml.sampling import TaskData, mean_return, observations
from metagrad.maml.sharding import task_sharding
from metagrad.envs.protocol import as_env
from metagrad.policies import FunctionalPolicy, default_policy
from metagrad.rollout import sample, sample_steps

_POLICY_METHODS = ("init", "log_prob", "sample", "kl")


def _as_policy(policy, env, task):
    """A policy object of the loop: `policy` itself when it has `_POLICY_METHODS`, else the `(init, apply)`
    pair (a tuple, or an object with `init` and `apply`) bound to `env`'s spaces (`FunctionalPolicy`)."""
    if all(callable(getattr(policy, m, None)) for m in _POLICY_METHODS):
        return policy
    if isinstance(policy, tuple) and len(policy) == 2 and all(callable(f) for f in policy):
        init_fn, apply_fn = policy
    elif callable(getattr(policy, "init", None)) and callable(getattr(policy, "apply", None)):
        init_fn, apply_fn = policy.init, policy.apply
    else:
        raise TypeError(f"`policy` must be an (init, apply) pair of functions — init(key, observation_space, "
                        f"action_space) -> params, apply(params, obs) -> distribution — or an object with "
                        f"{list(_POLICY_METHODS)}; got {type(policy).__name__}.")
    return FunctionalPolicy.bind(init_fn, apply_fn, env.observation_space(task), env.action_space(task))


def _check_callable(name, value):
    if not callable(value):
        raise ValueError(f"`{name}` must be a function `critic(trajectories, gamma, *, task, policy, params)`; "
                         f"got {type(value).__name__}.")
    return value


def _check_optimizer(optimizer):
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise ValueError(f"`optimizer` must be an optax.GradientTransformation (init/update); got {type(optimizer).__name__}.")
    return optimizer


def _tree_axpy(a, x, y):
    return jax.tree_util.tree_map(lambda xi, yi: yi + a * xi, x, y)


class MAML:
    """The pure functions of one config (all jittable; `vmap` the per-task ones over tasks).

    Per task: [`collect`][metagrad.maml.loop.MAML.collect] (sampling, critic, inner steps), [`adapt`][metagrad.maml.loop.MAML.adapt] (θ'(θ) recomputed from the
    collected batches, differentiable), [`task_objective`][metagrad.maml.loop.MAML.task_objective] and [`task_meta_gradient`][metagrad.maml.loop.MAML.task_meta_gradient].
    Meta-batch: [`meta_gradient`][metagrad.maml.loop.MAML.meta_gradient], [`iteration`][metagrad.maml.loop.MAML.iteration] (one full meta-iteration).
    """

    def __init__(self, config: MAMLConfig, *, env=None, policy=None, critic=None, optimizer=None, sample_tasks=None):
        """`env`, `policy`, `critic`, `optimizer`, `sample_tasks` replace the config's named ones (open API).

        * `env` — any environment of [`metagrad.envs.protocol`][metagrad.envs.protocol] (`reset`/`step`/spaces, the task a params
          pytree; no base class), a Gymnasium `FuncEnv` or a Gymnasium id of a functional JAX environment; needs
          `MAMLConfig(env=None)` (a named `config.env` would be unused, so it is refused);
        * `sample_tasks` — `sample_tasks(key, n) -> params` with a leading axis n (default: `env.sample_tasks`);
        * `policy` — an `(init, apply)` pair of pure functions, ``init(key, observation_space, action_space) ->
          params` and `apply(params, obs) -> distribution` for one observation (`metagrad.policies``'
          `DiagGaussian` or `Categorical`;
          log-probability, KL and entropy come from it), or an object with `init(key)`, `log_prob`, `sample`,
          `kl` ([`metagrad.policies`][metagrad.policies]). Default: [`metagrad.policies.default_policy`][metagrad.policies.default_policy] of the environment's
          spaces with `config.hidden_sizes` (a custom policy refuses a non-default `hidden_sizes`);
        * `critic` — `critic(trajectories, gamma, *, task, policy, params) -> values [N, T+1]` (used
          under `stop_gradient`; needs `config.critic` at its default, a named critic is refused);
        * `optimizer` — any `optax.GradientTransformation` for the outer step of `"pg"` and `"promp"`
          (default `optax.adam(config.outer_lr)`). Refused with `outer="trpo"` (no optimiser there), and
          together with a non-default `outer_lr` (which it would replace).

        Raises `ValueError` naming the argument or field for each combination above that would leave something
        unused, `TypeError` (naming the missing members) for an `env` or `policy` that does not fit.
        """
        from metagrad import estimators

        fields = type(config).__dataclass_fields__
        self.config = config
        if env is None:
            if sample_tasks is not None:
                raise ValueError("`sample_tasks` draws tasks of a custom `env`; the config's task family has its own.")
            func_env, default = make_env(config)
            self.env = as_env(func_env)
        else:
            if config.env is not None:
                raise ValueError(f"`MAMLConfig.env` = {config.env!r} would be unused with a custom `env=`; set "
                                 "MAMLConfig(env=None).")
            if sample_tasks is not None and not callable(sample_tasks):
                raise ValueError("`sample_tasks` must be a function (key, n) -> tasks; "
                                 f"got {type(sample_tasks).__name__}.")
            self.env = as_env(env, sample_tasks=sample_tasks is None)
            default = None
        self._sample_tasks = sample_tasks if sample_tasks is not None else getattr(self.env, "sample_tasks", None)
        self.custom_env = env is not None
        if policy is not None and config.hidden_sizes != fields["hidden_sizes"].default:
            raise ValueError(f"`hidden_sizes` = {config.hidden_sizes} is used only by the default policy; a custom "
                             "`policy=` brings its own network.")
        if policy is None and default is not None:
            self.policy = default
        else:
            task = jax.tree_util.tree_map(lambda x: x[0], self.sample_tasks(jax.random.PRNGKey(0), 1))
            if policy is None:
                self.policy = default_policy(self.env.observation_space(task), self.env.action_space(task),
                                             config.hidden_sizes)
            else:
                self.policy = _as_policy(policy, self.env, task)
        if critic is not None and config.critic != ("exact" if config.env == "tabular" else "linear"):
            raise ValueError(f"`MAMLConfig.critic` = {config.critic!r} would be unused with a custom `critic=`; leave "
                             "it at its default (None).")
        self.critic = critics_lib.make_critic(config.critic) if critic is None else _check_callable("critic", critic)
        self._surrogate = estimators.surrogate
        name = config.inner_estimator
        self.inner_name = "maml" if name == "emaml" else name
        self.first_order = name == "fomaml"
        self.inner_options = dict(config.inner_options)
        if optimizer is not None:
            if config.outer == "trpo":
                raise ValueError("`optimizer` is unused by outer='trpo' (conjugate gradient and a line search to "
                                 "`max_kl`); pass it with outer='pg' or 'promp'.")
            if config.outer_lr != fields["outer_lr"].default:
                raise ValueError(f"`outer_lr` = {config.outer_lr} would be unused: the `optimizer` passed sets its own "
                                 "learning rate.")
        self.optimizer = optax.adam(config.outer_lr) if optimizer is None else _check_optimizer(optimizer)

    def sample_tasks(self, key: jax.Array, n: int):
        """`n` tasks stacked along a leading axis (the custom `sample_tasks` / env's, or [`sample_tasks`][metagrad.maml.loop.MAML.sample_tasks])."""
        if self.custom_env:
            return self._sample_tasks(key, n)
        return sample_tasks(self.config, key, n)

    # ---------------------------------------------------------------- per task
    def inner_surrogate(self, params, batch, values, behaviour_log_probs=None):
        """V̂_in(θ; D) of the inner estimator (on-policy when `behaviour_log_probs` is None)."""
        if self.config.objective == "promp":
            advantage = outer_lib.normalized_advantages(batch, values, self.config.gamma)
            return outer_lib.promp_surrogate(self.inner_name, self.policy.log_prob, params, batch, advantage,
                                             behaviour_log_probs)
        return self._surrogate(
            self.inner_name, self.policy.log_prob, params, batch, values, self.config.gamma,
            behaviour_log_probs=behaviour_log_probs, **self.inner_options,
        )

    def inner_step(self, params, batch, values, behaviour_log_probs=None):
        """θ + η ∇V̂_in(θ) (for `fomaml` the gradient is a constant: `stop_gradient`)."""
        gradient = jax.grad(self.inner_surrogate)(params, batch, values, behaviour_log_probs)
        if self.first_order:
            gradient = jax.lax.stop_gradient(gradient)
        return _tree_axpy(self.config.inner_step_size, gradient, params)

    def outer_surrogate(self, params, batch, values, behaviour_log_probs=None):
        """J_out(θ'; D') of `outer_estimator`."""
        if self.config.objective == "promp":
            advantage = outer_lib.normalized_advantages(batch, values, self.config.gamma)
            return outer_lib.promp_surrogate(self.config.outer_estimator, self.policy.log_prob, params, batch,
                                             advantage, behaviour_log_probs)
        return self._surrogate(
            self.config.outer_estimator, self.policy.log_prob, params, batch, values, self.config.gamma,
            behaviour_log_probs=behaviour_log_probs,
        )

    def _sample(self, key, params, task):
        """One batch of the task, its critic values, behaviour log-probabilities and dropped steps (`sampling`)."""
        config = self.config
        params = jax.lax.stop_gradient(params)
        if config.sampling == "steps":
            batch, dropped = sample_steps(key, self.env, self.policy.sample, params, task, config.num_trajectories,
                                          config.horizon, config.horizon, config.episode_rows)
        else:
            batch = sample(key, self.env, self.policy.sample, params, config.num_trajectories, config.horizon, task=task)
            dropped = None
        values = self.critic(batch, config.gamma, task=task, policy=self.policy, params=params)
        log_probs = jax.lax.stop_gradient(self.policy.log_prob(params, observations(batch), batch.actions))
        return batch, values, log_probs, dropped

    def collect(self, params, task, key) -> TaskData:
        """Sample D_0, …, D_{K−1} and D' for one task, taking the inner steps in between (no θ-graph kept)."""
        params = jax.lax.stop_gradient(params)
        keys = jax.random.split(key, self.config.inner_steps + 1)
        pre, pre_values, pre_log_probs, dropped = [], [], [], []
        for k in range(self.config.inner_steps):
            batch, values, log_probs, dropped_k = self._sample(keys[k], params, task)
            pre.append(batch), pre_values.append(values), pre_log_probs.append(log_probs), dropped.append(dropped_k)
            params = jax.lax.stop_gradient(self.inner_step(params, batch, values))
        post, post_values, post_log_probs, dropped_post = self._sample(keys[-1], params, task)
        dropped = None if dropped_post is None else sum(dropped, dropped_post)
        return TaskData(tuple(pre), tuple(pre_values), tuple(pre_log_probs), post, post_values, post_log_probs,
                        dropped)

    def adapt(self, params, data: TaskData, off_policy: bool = False):
        """θ'(θ) = θ_K from the collected batches, differentiable in θ; returns `(θ', [θ_0, …, θ_{K−1}])`.

        `off_policy`: use the recorded log π_old as μ (exactly the on-policy surrogate when θ = θ_old).
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
        sample of the meta-batch (ProMP's `adj_avg_rewards`); only the step-0 batch D_0, sampled by π_θ.
        Zero unless `inner_estimator == "emaml"` and `inner_steps ≥ 1`. `data` has a leading task axis.
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
            log_pi = self.policy.log_prob(params, observations(batch), batch.actions)
            return outer_lib.masked_mean(log_pi, batch.mask())

        return jnp.mean(weight * jax.vmap(log_likelihood)(data))

    def meta_objective(self, params, data: TaskData):
        """mean_g J_out(θ'_g(θ)) (+ [`emaml_term`][metagrad.maml.loop.MAML.emaml_term]); `data` has a leading task axis."""
        per_task = jax.vmap(self.task_objective, in_axes=(None, 0))(params, data)
        return jnp.mean(per_task) + self.emaml_term(params, data)

    def trpo_objective(self, params, data: TaskData):
        """The TRPO line-search objective at θ: mean_g J_out(θ'_g(θ); D', μ = π_θ'_old) + [`emaml_term`][metagrad.maml.loop.MAML.emaml_term].

        Off-policy (μ the recorded post-update policy), so it is the on-policy meta-objective at θ = θ_old and
        its gradient there is [`meta_gradient`][metagrad.maml.loop.MAML.meta_gradient] (ProMP's TRPO-MAML minimises this same loss).
        """
        def per_task(d):
            adapted = self.adapt(params, d, True)[0]
            return self.outer_surrogate(adapted, d.post, d.post_values, d.post_log_probs)

        return jnp.mean(jax.vmap(per_task)(data)) + self.emaml_term(params, data)

    def meta_gradient(self, params, data: TaskData):
        """∇_θ of [`meta_objective`][metagrad.maml.loop.MAML.meta_objective] (the PG meta-gradient)."""
        return jax.grad(self.meta_objective)(params, data)

    def _promp_objective(self, params, old_params, data: TaskData):
        """[`metagrad.maml.promp.promp_objective`][metagrad.maml.promp.promp_objective] of this run."""
        return promp_lib.promp_objective(self, params, old_params, data)

    def fisher_vector_product(self, params, data: TaskData):
        """[`metagrad.maml.trpo.fisher_vector_product`][metagrad.maml.trpo.fisher_vector_product] of this run: `v ↦ F v` on flat vectors `[P]`."""
        return trpo_lib.fisher_vector_product(self, params, data)

    def init(self, key):
        """`(params, opt_state)` of the initial policy."""
        params = self.policy.init(key)
        return params, self.optimizer.init(params)

    def sample_meta_batch(self, params, key, *, sharding: NamedSharding | None = None) -> TaskData:
        """M new tasks and their [`TaskData`][metagrad.maml.sampling.TaskData] (leading task axis, sharded over devices with `sharding`)."""
        config = self.config
        k_tasks, k_collect = jax.random.split(key)
        tasks = self.sample_tasks(k_tasks, config.num_tasks)
        keys = jax.random.split(k_collect, config.num_tasks)
        if sharding is not None:
            tasks = jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tasks)
            keys = jax.lax.with_sharding_constraint(keys, sharding)
        return jax.vmap(self.collect, in_axes=(None, 0, 0))(params, tasks, keys)

    def iteration(self, params, opt_state, key, *, sharding: NamedSharding | None = None):
        """One meta-iteration: new tasks, collect, outer update. Returns `(params, opt_state, metrics)`."""
        config = self.config
        data = self.sample_meta_batch(params, key, sharding=sharding)
        metrics = {
            "pre_return": jnp.mean(jax.vmap(lambda d: mean_return(d.pre[0] if d.pre else d.post))(data)),
            "post_return": jnp.mean(jax.vmap(lambda d: mean_return(d.post))(data)),
        }
        if data.dropped_steps is not None:
            metrics["dropped_steps"] = jnp.sum(data.dropped_steps)
        if config.outer == "pg":
            gradient = self.meta_gradient(params, data)
            updates, opt_state = self.optimizer.update(jax.tree_util.tree_map(jnp.negative, gradient), opt_state, params)
            params = optax.apply_updates(params, updates)
        elif config.outer == "promp":
            params, opt_state, metrics["meta_grad_norm"] = promp_lib.promp_update(self, params, opt_state, data)
        else:
            params, gradient, index = trpo_lib.trpo_update(self, params, data)
            metrics["backtracks"] = index
        if config.outer != "promp":
            metrics["meta_grad_norm"] = optax.tree.norm(gradient)
        return params, opt_state, metrics




def make_train(config: MAMLConfig, *, env=None, policy=None, critic=None, optimizer=None, sample_tasks=None,
               num_seeds: int | None = None):
    """`train_chunk(state, iterations) -> (state, metrics)` (jitted `lax.scan`) and `init(key) -> state`.

    `state = {"params", "opt_state", "key"}`; iteration i uses `fold_in(key, i)`, so results do not
    depend on how iterations are grouped into chunks. Cached per config (`num_iterations` aside), custom
    objects (see [`MAML`][metagrad.maml.loop.MAML]) and device set, so repeated and resumed runs reuse the compiled iteration.
    `num_seeds`: `init` takes `[S]` keys and `train_chunk` runs the S independent runs in one jitted
    program (`jax.vmap` over the state; no meta-batch sharding), metrics with a leading seed axis.
    """
    extras = (env, policy, critic, optimizer, sample_tasks)
    try:
        hash(extras)
    except TypeError:  # unhashable custom objects: build without the cache
        return _make_train.__wrapped__(dataclasses.replace(config, num_iterations=1), tuple(jax.devices()), extras, num_seeds)
    return _make_train(dataclasses.replace(config, num_iterations=1), tuple(jax.devices()), extras, num_seeds)


@functools.lru_cache(maxsize=16)
def _make_train(config: MAMLConfig, devices: tuple, extras: tuple = (None,) * 5, num_seeds: int | None = None):
    env, policy, critic, optimizer, sample_tasks = extras
    maml = MAML(config, env=env, policy=policy, critic=critic, optimizer=optimizer, sample_tasks=sample_tasks)
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
                sample_tasks=None, progress: bool = True, label: str = "maml") -> tuple[Any, dict]:
    """S independent meta-training runs, one per key of `keys [S]`, inside one jitted program (`vmap`).

    Returns `(params, history)` with a leading seed axis on every parameter leaf and every history array
    (`[S, num_iterations]`); run s equals `train(config, keys[s])` up to floating-point reassociation
    (same key streams). `wall_time` is shared by the seeds (`[num_iterations]`). No checkpoints.
    """
    keys = jnp.asarray(keys)
    num_seeds = int(keys.shape[0])
    init, train_chunk = make_train(config, env=env, policy=policy, critic=critic, optimizer=optimizer,
                                   sample_tasks=sample_tasks, num_seeds=num_seeds)
    state, history = _run_chunks(config, train_chunk, init(keys), {}, 0, progress, label)
    return state["params"], history


def _run_chunks(config, train_chunk, state, history: dict, start: int, progress: bool, label: str, after_chunk=None):
    """Run iterations `start … num_iterations − 1` in jitted chunks of `checkpoint_every`, appending each
    chunk's metrics (and its share of the wall time) to `history` along the last axis; ``after_chunk(state,
    history, i)` runs after each chunk (checkpoints). Returns `(state, history)``."""
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
            if np.any(np.asarray(metrics.get("dropped_steps", 0)) > 0):
                warnings.warn(f"sampling='steps': up to {int(np.max(metrics['dropped_steps']))} environment steps "
                              f"of an iteration did not fit in max_episodes = {config.episode_rows} rows and were left "
                              "out; raise `MAMLConfig.max_episodes`.", RuntimeWarning, stacklevel=3)
            for name, values in metrics.items():
                values = np.asarray(values)
                history[name] = np.concatenate([history[name], values], axis=-1) if name in history else values
            i += n
            bar.update(n, note=f"post-adaptation return {float(np.mean(history['post_return'][..., -1])):.3f}")
            if after_chunk is not None:
                after_chunk(state, history, i)
    return state, history


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
    sample_tasks=None,
    on_chunk=None,
) -> tuple[Any, dict]:
    """Meta-train for `config.num_iterations` iterations; returns `(params, history)`.

    `history` holds NumPy arrays over iterations: `pre_return` and `post_return` (mean undiscounted
    return of the pre-update batch D_0 and of the post-update batch D'), `meta_grad_norm`, `wall_time`
    (cumulative seconds, compilation included in the first chunk), for TRPO `backtracks` and, with
    `sampling="steps"`, `dropped_steps` (steps of episodes beyond `max_episodes` rows, left out; a warning
    is raised when it is positive).

    Iterations run in jitted chunks of `config.checkpoint_every` (a `lax.scan`); after each chunk the
    progress bar advances and, with `checkpoint_dir`, a checkpoint is written atomically. `resume=True`
    continues from `checkpoint_dir` (same config and key required) and yields bit-identical parameters
    and returns to an uninterrupted run (`wall_time` aside). `env`, `policy`, `critic`,
    `optimizer`, `sample_tasks`: custom objects replacing the config's (see [`MAML`][metagrad.maml.loop.MAML]; the open API).

    A `checkpoint_dir` is locked for the run ([`checkpoint_lock`][metagrad.maml.checkpoint.checkpoint_lock]): a second run on the same folder
    raises `RuntimeError`. Under `jax.distributed` only process 0 takes the lock and writes; every process reads
    the folder (its checks, `resume`), so it must be on storage all processes share. With `resume=False` a folder that already holds a checkpoint is refused
    (`ValueError`) unless `overwrite=True`, so a finished run is never replaced by accident.
    """
    if checkpoint_dir is None:
        return _train(config, key, None, resume, progress, label, (env, policy, critic, optimizer, sample_tasks),
                      on_chunk)
    writer = jax.process_index() == 0  # under jax.distributed only process 0 locks and writes the folder
    with checkpoint_lock(checkpoint_dir) if writer else contextlib.nullcontext():
        if not resume and not overwrite and os.path.exists(os.path.join(checkpoint_dir, CHECKPOINT)):
            raise ValueError(
                f"{checkpoint_dir} already holds a checkpoint; pass resume=True to continue it or overwrite=True "
                "to start again."
            )
        return _train(config, key, checkpoint_dir, resume, progress, label, (env, policy, critic, optimizer, sample_tasks),
                      on_chunk)


def _train(config, key, checkpoint_dir, resume, progress, label, extras, on_chunk=None):
    env, policy, critic, optimizer, sample_tasks = extras
    init, train_chunk = make_train(config, env=env, policy=policy, critic=critic, optimizer=optimizer,
                                   sample_tasks=sample_tasks)
    state = init(key)
    history: dict[str, np.ndarray] = {}
    start = 0
    if resume:
        if checkpoint_dir is None or not os.path.exists(os.path.join(checkpoint_dir, CHECKPOINT)):
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
        if not np.array_equal(key_data(saved["key"]), key_data(state["key"])):
            raise ValueError("The checkpoint was written with a different key; resume needs the same key.")
        state = saved
    def after_chunk(state, history, i):
        if checkpoint_dir is not None and jax.process_index() == 0:
            write_checkpoint(checkpoint_dir, config, state, history, i)
        if on_chunk is not None:
            on_chunk(history, i)

    state, history = _run_chunks(config, train_chunk, state, history, start, progress, label, after_chunk)
    return state["params"], history
