"""Batched trajectories: one jitted `lax.scan` over time with the batch `vmap`-ed inside each step.

A batch of N trajectories of horizon T is the pytree [`Trajectories`][metagrad.rollout.Trajectories]:

* `observations [N, T+1, ...]` — x_0 … x_T (x_T is the bootstrap state; for tabular MDPs integer
  state indices `[N, T+1]`),
* `actions [N, T, ...]`, `rewards [N, T]`,
* `log_probs [N, T]` — log μ(a_t|x_t) of the behaviour policy that sampled the actions,
* `terminated [N, T]` (optional) — True at step t when x_{t+1} is a terminal state. Steps after the
  first termination are padding (reward 0, behaviour log-probability 0). A trajectory that reaches the
  horizon without terminating is *truncated*: its tail is bootstrapped with the critic value V(x_T).

Every estimator consumes the per-step discounts of [`Trajectories.discounts`][metagrad.rollout.Trajectories.discounts], γ_t = γ·(1 − done_t),
which is zero at and after termination (so no bootstrap there) and γ elsewhere (bootstrap on
truncation only, as Gymnasium's `terminated` / `truncated` convention requires).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from metagrad.mdp import TabularMDP

#: ``policy_fn(params, key, observation) -> (action, log_prob)`` for a single observation.
PolicyFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


class Trajectories(NamedTuple):
    """A batch of N trajectories of horizon T (see the module docstring for the fields)."""

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    log_probs: jax.Array
    terminated: jax.Array | None = None
    valid: jax.Array | None = None

    @property
    def num_trajectories(self) -> int:
        return self.rewards.shape[0]

    @property
    def horizon(self) -> int:
        return self.rewards.shape[-1]

    def done(self) -> jax.Array:
        """`[N, T]` bool: True at and after the first termination."""
        if self.terminated is None:
            return jnp.zeros(self.rewards.shape, dtype=bool)
        return jnp.cumsum(self.terminated.astype(jnp.int32), axis=-1) > 0

    def mask(self) -> jax.Array:
        """`[N, T]` float: 1 for steps that happened (up to and including termination), 0 for padding (and on
        every step of a row with `valid` False)."""
        done = self.done()
        before = jnp.concatenate([jnp.zeros_like(done[..., :1]), done[..., :-1]], axis=-1)
        mask = 1.0 - before.astype(self.rewards.dtype)
        if self.valid is None:
            return mask
        return mask * self.valid[..., None].astype(self.rewards.dtype)

    def weights(self) -> jax.Array:
        """`[N]` batch weights of a mean over episodes: 1/N, or 1/(number of valid rows) on valid rows and 0 on
        empty ones when `valid` is set."""
        n = self.rewards.shape[0]
        if self.valid is None:
            return jnp.full(self.rewards.shape[:1], 1.0 / n, self.rewards.dtype)
        valid = self.valid.astype(self.rewards.dtype)
        return valid / jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1.0)

    def discounts(self, gamma) -> jax.Array:
        """`[N, T]` per-step discounts γ_t = γ·(1 − done_t): zero at and after termination."""
        return gamma * (1.0 - self.done().astype(self.rewards.dtype))


def tabular_softmax_policy(logits: jax.Array, key: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample a ~ softmax(θ[x]) for one state; returns `(action, log π(a|x))`. A `PolicyFn`.

    Inverse-CDF sampling (one uniform number instead of A Gumbel numbers) keeps rollouts fast.
    """
    log_pi = jax.nn.log_softmax(logits[state])
    cdf = jnp.cumsum(jnp.exp(log_pi))
    u = jax.random.uniform(key, (), cdf.dtype) * cdf[-1]
    action = jnp.minimum(jnp.sum(cdf <= u), cdf.shape[0] - 1)
    return action, log_pi[action]


def sample(
    key: jax.Array,
    env_or_mdp: Any,
    policy_fn: PolicyFn,
    params: Any,
    num_trajectories: int,
    horizon: int,
    *,
    task: Any = None,
) -> Trajectories:
    """Sample `num_trajectories` trajectories of `horizon` steps with π = `policy_fn(params, ·)`.

    One `lax.scan` over the T steps; at each step the N trajectories advance together under
    `jax.vmap`. The environment is either a [`TabularMDP`][metagrad.mdp.TabularMDP] (which is then also the
    task) or any Gymnasium `FuncEnv` whose methods are pure JAX, with `task` its `params`
    (`None`: the environment's default task). Pure and jittable with `policy_fn`, `num_trajectories`
    and `horizon` static; `vmap` over `task` (or a stacked batch of MDPs) samples a meta-batch.
    The same `key` gives the same batch. An environment of [`metagrad.envs.protocol`][metagrad.envs.protocol]
    (`reset`/`step`) is used as it is; a `FuncEnv` through [`FuncEnvAdapter`][metagrad.envs.protocol.FuncEnvAdapter].

    Args:
      key: a `jax.random` key.
      env_or_mdp: a `TabularMDP`, a `FuncEnv` or a protocol environment.
      policy_fn: `policy_fn(params, key, observation) -> (action, log_prob)`.
      params: the policy parameters (e.g. `logits [S, A]` for [`tabular_softmax_policy`][metagrad.rollout.tabular_softmax_policy]).
      num_trajectories: N ≥ 1.
      horizon: T ≥ 1.
      task: the environment's task parameters (ignored for a `TabularMDP`; `None`: its `default_params`).

    Returns:
      [`Trajectories`][metagrad.rollout.Trajectories] with `log_probs` = log π(a_t|x_t) of the sampling policy.

    Examples:
      >>> import metagrad.mdp
      >>> mdp = metagrad.mdp.random_mdp(jax.random.PRNGKey(0))
      >>> batch = sample(jax.random.PRNGKey(1), mdp, tabular_softmax_policy, jnp.zeros((20, 5)), 100, 20)
      >>> batch.observations.shape, batch.rewards.shape
      ((100, 21), (100, 20))
    """
    if int(num_trajectories) < 1:
        raise ValueError(f"`num_trajectories` must be a positive integer; got {num_trajectories}.")
    if int(horizon) < 1:
        raise ValueError(f"`horizon` must be a positive integer; got {horizon}.")
    from metagrad.envs.protocol import as_env

    if isinstance(env_or_mdp, TabularMDP):
        from metagrad.envs.tabular import TabularMDPEnv

        env, task = as_env(TabularMDPEnv.for_task(env_or_mdp)), env_or_mdp
    else:
        try:
            env = as_env(env_or_mdp)
        except TypeError as err:
            raise ValueError(f"`env_or_mdp` must be a metagrad.mdp.TabularMDP, a gymnasium FuncEnv or an environment "
                             f"of metagrad.envs.protocol; {err}") from None
        if task is None:
            task = getattr(env, "default_params", None)
            if task is None:
                raise ValueError(f"`task` is required: {type(env_or_mdp).__name__} has no default task.")
    return _sample(key, env, policy_fn, params, task, int(num_trajectories), int(horizon))


@functools.partial(jax.jit, static_argnums=(1, 2, 5, 6))
def _sample(key, env, policy_fn, params, task, num_trajectories, horizon):
    def reset(k):
        obs, state = env.reset(k, task)
        return state, obs

    def step(state, obs, done, k):
        # The action's stream is fold_in(k, 0); the environment gets k (the FuncEnv adapter folds in 1 … 4).
        action, log_prob = policy_fn(params, jax.random.fold_in(k, 0), obs)
        next_obs, next_state, reward, env_done, _ = env.step(k, state, action, task)
        terminated = jnp.logical_and(jnp.logical_not(done), env_done)
        # After termination the trajectory is padding: keep the terminal state, zero reward and log-prob.
        keep = lambda new, old: jnp.where(done, old, new)  # noqa: E731
        next_state = jax.tree_util.tree_map(keep, next_state, state)
        next_obs = jax.tree_util.tree_map(keep, next_obs, obs)
        reward = jnp.where(done, 0.0, reward)
        log_prob = jnp.where(done, 0.0, log_prob)
        out = (obs, action, reward, log_prob, terminated)
        return next_state, next_obs, jnp.logical_or(done, terminated), out

    key_reset, key_steps = jax.random.split(key)
    states, obs = jax.vmap(reset)(jax.random.split(key_reset, num_trajectories))
    done = jnp.zeros((num_trajectories,), dtype=bool)

    def scan_step(carry, k):
        states, obs, done = carry
        states, obs, done, out = jax.vmap(step)(states, obs, done, jax.random.split(k, num_trajectories))
        return (states, obs, done), out

    (_, last_obs, _), (observations, actions, rewards, log_probs, terminated) = jax.lax.scan(
        scan_step, (states, obs, done), jax.random.split(key_steps, horizon)
    )
    time_major_to_batch = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    observations = jax.tree_util.tree_map(
        lambda seq, last: jnp.concatenate([time_major_to_batch(seq), last[:, None]], axis=1), observations, last_obs
    )
    return Trajectories(
        observations=observations,
        actions=jax.tree_util.tree_map(time_major_to_batch, actions),
        rewards=time_major_to_batch(rewards),
        log_probs=time_major_to_batch(log_probs),
        terminated=time_major_to_batch(terminated),
    )


def sample_steps(
    key: jax.Array,
    env: Any,
    policy_fn: PolicyFn,
    params: Any,
    task: Any,
    num_envs: int,
    steps_per_env: int,
    horizon: int,
    max_episodes: int,
) -> tuple[Trajectories, jax.Array]:
    """ProMP's fixed-number-of-steps sampling: `num_envs` environments with auto-reset, repacked into episodes.

    ProMP's `MetaSampler.obtain_samples` (meta_policy_search/samplers/meta_sampler.py) steps `envs_per_task`
    environments per task, ends a path when the environment is done or after `max_path_length` steps, resets
    that environment, and stops once the *completed* paths hold the step budget (unfinished paths are
    dropped). Terminating tasks therefore give more, shorter episodes than a fixed episode count would.

    Here, with fixed shapes: each of the E = `num_envs` environments is stepped S + T − 1 times (S =
    `steps_per_env`, T = `horizon`, one `lax.scan`, the envs `vmap`-ed), an episode ending at termination or
    after T steps and the environment then reset. The batch keeps exactly the episodes that *start* within the
    first S steps of their environment, each complete (terminated, or T steps long and bootstrapped as a
    fixed-horizon episode is), so every environment contributes ≥ S valid steps and the task ≥ E·S, with no
    episode cut by the budget. (ProMP counts the budget over the whole meta-batch and over-runs it by the last
    paths that finish; we count it per environment.)

    The episodes are repacked, environment by environment and in order, into the rows of a
    [`Trajectories`][metagrad.rollout.Trajectories] of shape `[max_episodes, T]` (the layout of [`sample`][metagrad.rollout.sample]: padding after a
    termination repeats the last observation and has reward and log-probability 0); rows after the last
    episode have `valid` False. Estimators, critics and masks then see separate episodes: no prefix sum or
    return crosses an episode boundary.

    Keys: reset of env i from `split(split(key)[0], E)[i]`; step s uses k = `split(split(key)[1], S+T−1)[s]`,
    env i's k_i = `split(k, E)[i]`, split into (k_env, k_reset): the action from `fold_in(k_env, 0)` (as
    [`sample`][metagrad.rollout.sample]), `env.step(k_env, …)`, and `env.reset(k_reset, …)` when the episode ends.

    Returns:
      `(batch, dropped_steps)`: `dropped_steps` (int scalar) counts the kept steps of episodes beyond
      `max_episodes` rows, which do not fit and are left out — raise `max_episodes` if it is ever positive
      (the MAML loop reports it as the metric `dropped_steps` and warns).
    """
    from metagrad.envs.protocol import as_env

    for name, value in (("num_envs", num_envs), ("steps_per_env", steps_per_env), ("horizon", horizon),
                        ("max_episodes", max_episodes)):
        if isinstance(value, bool) or int(value) != value or int(value) < 1:
            raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return _sample_steps(key, as_env(env), policy_fn, params, task, int(num_envs), int(steps_per_env), int(horizon),
                         int(max_episodes))


@functools.partial(jax.jit, static_argnums=(1, 2, 5, 6, 7, 8))
def _sample_steps(key, env, policy_fn, params, task, num_envs, steps_per_env, horizon, max_episodes):
    length = steps_per_env + horizon - 1

    def env_step(carry, k, s):
        state, obs, tau, episode, start = carry
        k_env, k_reset = jax.random.split(k)
        action, log_prob = policy_fn(params, jax.random.fold_in(k_env, 0), obs)
        next_obs, next_state, reward, terminated, _ = env.step(k_env, state, action, task)
        terminated = jnp.asarray(terminated, bool)
        end = terminated | (tau + 1 == horizon)
        reset_obs, reset_state = env.reset(k_reset, task)
        pick = lambda new, old: jnp.where(end, new, old)  # noqa: E731
        carry = (jax.tree_util.tree_map(pick, reset_state, next_state), jax.tree_util.tree_map(pick, reset_obs, next_obs),
                 jnp.where(end, 0, tau + 1), episode + end, jnp.where(end, s + 1, start))
        out = (obs, next_obs, action, reward, log_prob, terminated, tau, episode, start < steps_per_env)
        return carry, out

    key_reset, key_steps = jax.random.split(key)
    obs, states = jax.vmap(lambda k: env.reset(k, task))(jax.random.split(key_reset, num_envs))
    zeros = jnp.zeros((num_envs,), jnp.int32)

    def scan_step(carry, inputs):
        k, s = inputs
        return jax.vmap(lambda c, ki: env_step(c, ki, s), in_axes=(0, 0))(carry, jax.random.split(k, num_envs))

    _, out = jax.lax.scan(scan_step, (states, obs, zeros, zeros, zeros),
                          (jax.random.split(key_steps, length), jnp.arange(length, dtype=jnp.int32)))
    obs, next_obs, actions, rewards, log_probs, terminated, tau, episode, keep = out  # time-major [L, E, ...]
    kept_episodes = jnp.sum(keep & (tau == 0), axis=0)  # [E]
    offset = jnp.cumsum(kept_episodes) - kept_episodes
    row = jnp.where(keep, offset[None, :] + episode, max_episodes)  # [L, E]; out of range = dropped
    dropped_steps = jnp.sum(keep & (row >= max_episodes))

    def scatter(x, column, shape_tail, dtype):
        target = jnp.zeros((max_episodes, horizon + 1) + shape_tail, dtype)
        return target.at[row, column].set(x, mode="drop")

    def pack(x, column, width):
        x = jnp.asarray(x)
        return scatter(x, column, x.shape[2:], x.dtype)[:, :width]

    lengths = jnp.zeros((max_episodes,), jnp.int32).at[row].max(tau + 1, mode="drop")
    observations = jax.tree_util.tree_map(
        lambda o, o_next: scatter(o_next, tau + 1, o.shape[2:], o.dtype).at[row, tau].set(o, mode="drop"), obs, next_obs
    )
    fill = jnp.minimum(jnp.arange(horizon + 1)[None, :], lengths[:, None])  # padding repeats the last observation
    observations = jax.tree_util.tree_map(
        lambda o: jnp.take_along_axis(o, fill.reshape(fill.shape + (1,) * (o.ndim - 2)), axis=1), observations
    )
    num_valid = jnp.minimum(jnp.sum(kept_episodes), max_episodes)
    batch = Trajectories(
        observations=observations,
        actions=jax.tree_util.tree_map(lambda a: pack(a, tau, horizon), actions),
        rewards=pack(rewards, tau, horizon),
        log_probs=pack(log_probs, tau, horizon),
        terminated=pack(terminated, tau, horizon),
        valid=jnp.arange(max_episodes) < num_valid,
    )
    return batch, dropped_steps
