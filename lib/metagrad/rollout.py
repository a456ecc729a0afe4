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
        """`[N, T]` float: 1 for steps that happened (up to and including termination), 0 for padding."""
        done = self.done()
        before = jnp.concatenate([jnp.zeros_like(done[..., :1]), done[..., :-1]], axis=-1)
        return 1.0 - before.astype(self.rewards.dtype)

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
