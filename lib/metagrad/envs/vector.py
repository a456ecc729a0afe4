"""Gymnasium vector environments: `num_envs` copies of a metagrad `FuncEnv` in one jitted `vmap`.

The `vector_entry_point` of the registered ids, so `gymnasium.make_vec("metagrad/Navigation2D-v0", 8)`
(`vectorization_mode=None`, Gymnasium's default when an id has one) steps all copies at once in this
process: no subprocesses, nothing to pickle, nothing to fork. Each copy may have its own task, so a
vector environment can hold a meta-batch: `goal` / `mdp` is either one task (every copy runs it) or
a stack of `num_envs` tasks along a leading axis (`FuncEnv.sample_tasks` gives one).

Gymnasium's own `FunctionalJaxVectorEnv` cannot be used as is: it calls the `FuncEnv` methods
without `params` (one default task) and returns JAX arrays outside the declared space dtypes.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.experimental.functional import FuncEnv
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

__all__ = ["TaskVectorEnv"]


class TaskVectorEnv(gymnasium.vector.VectorEnv):
    """`num_envs` copies of a metagrad `FuncEnv`, each with its task, stepped by one jitted `vmap`.

    Autoreset follows Gymnasium's default (`AutoresetMode.NEXT_STEP`): the `step` after a copy's
    episode ended (terminated, or truncated at `max_episode_steps`) resets that copy, ignores its action
    and returns its first observation with reward 0. Observations, rewards and flags are NumPy arrays in
    the dtypes of the batched spaces.

    Args:
      func_env: a metagrad `FuncEnv` ([`Navigation2D`][metagrad.envs.navigation.Navigation2D] or
        [`TabularMDPEnv`][metagrad.envs.tabular.TabularMDPEnv]).
      num_envs: the number of copies, a positive integer.
      tasks: `None` (`func_env.default_params` for every copy), one task pytree (every copy), or
        `num_envs` tasks stacked along a leading axis (one per copy).
      max_episode_steps: truncate each episode after this many steps (`0`: never).

    Examples:
      >>> import gymnasium, metagrad, numpy as np
      >>> envs = gymnasium.make_vec("metagrad/Navigation2D-v0", num_envs=3, goal=[[0.1, 0.0], [0.0, 0.1], [0.3, 0.3]])
      >>> obs, _ = envs.reset(seed=0)
      >>> obs.shape, obs.dtype
      ((3, 2), dtype('float32'))
      >>> obs, reward, terminated, truncated, _ = envs.step(np.full((3, 2), 0.1, np.float32))
      >>> terminated.tolist()
      [False, False, False]
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, func_env: FuncEnv, num_envs: int, tasks: Any = None, max_episode_steps: int = 0,
                 render_mode: str | None = None, spec=None):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"`num_envs` must be a positive integer; got {num_envs!r}.")
        if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, (int, np.integer)) or max_episode_steps < 0:
            raise ValueError(f"`max_episode_steps` must be a non-negative integer (0: no limit); got {max_episode_steps!r}.")
        if render_mode is not None:
            raise ValueError(f"`render_mode` must be None for the vector environment (render a single "
                             f"environment from gymnasium.make instead); got {render_mode!r}.")
        self.func_env = func_env
        self.num_envs = int(num_envs)
        self.time_limit = int(max_episode_steps)
        self.render_mode = None
        self.spec = spec
        self.tasks = _batch_tasks(func_env.default_params if tasks is None else tasks, func_env.default_params, self.num_envs)
        self.single_observation_space = func_env.observation_space
        self.single_action_space = func_env.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._reset = jax.jit(jax.vmap(_reset_one(func_env)))
        self._step = jax.jit(jax.vmap(_step_one(func_env, self.time_limit)))
        self._key = jax.random.PRNGKey(int(np.random.SeedSequence().generate_state(1)[0]))
        self._state = self._done = self._steps = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._key = jax.random.PRNGKey(seed)
        self._key, key = jax.random.split(self._key)
        self._state, obs = self._reset(jax.random.split(key, self.num_envs), self.tasks)
        self._done = jnp.zeros(self.num_envs, bool)
        self._steps = jnp.zeros(self.num_envs, jnp.int32)
        return self._cast(obs), {}

    def step(self, actions):
        if self._state is None:
            raise gymnasium.error.ResetNeeded("Call `reset` before `step`.")
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.num_envs,):
            raise ValueError(f"`actions` must have a leading axis of num_envs = {self.num_envs}; got shape {actions.shape}.")
        self._key, key = jax.random.split(self._key)
        self._state, obs, reward, terminated, truncated, self._steps = self._step(
            self._state, jnp.asarray(actions), jax.random.split(key, self.num_envs), self.tasks, self._done, self._steps
        )
        self._done = terminated | truncated
        return self._cast(obs), np.asarray(reward), np.asarray(terminated), np.asarray(truncated), {}

    def _cast(self, obs):
        return np.asarray(obs, dtype=self.observation_space.dtype)


def _batch_tasks(tasks, default, num_envs: int):
    """`tasks` with a leading axis of `num_envs`: a single task (the leaves' ranks of `default`) is
    repeated; a stack must have exactly `num_envs` tasks."""
    leaves, default_leaves = jax.tree.leaves(tasks), jax.tree.leaves(default)
    tasks = jax.tree.map(jnp.asarray, tasks)
    ranks = {jnp.ndim(leaf) - jnp.ndim(ref) for leaf, ref in zip(leaves, default_leaves)}
    if len(leaves) != len(default_leaves) or len(ranks) != 1 or ranks - {0, 1}:
        raise ValueError("the task (`goal` / `mdp`) must be one task shaped like the environment's default "
                         "task, or a stack of `num_envs` of them along a leading axis.")
    if ranks == {0}:
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_envs,) + x.shape), tasks)
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(tasks)}
    if sizes != {num_envs}:
        raise ValueError(f"a stack of tasks must hold num_envs = {num_envs} tasks; got {sorted(sizes)}.")
    return tasks


def _reset_one(env: FuncEnv):
    def reset(key, task):
        k_init, k_obs = jax.random.split(key)
        state = env.initial(k_init, task)
        return state, env.observation(state, k_obs, task)

    return reset


def _step_one(env: FuncEnv, time_limit: int):
    """One copy's step with NEXT_STEP autoreset: a copy whose episode ended last step is reset instead."""
    reset = _reset_one(env)

    def step(state, action, key, task, done, steps):
        k_reset, k_step, k_obs = jax.random.split(key, 3)
        next_state = env.transition(state, action, k_step, task)
        reward = env.reward(state, action, next_state, k_step, task)
        terminated = env.terminal(next_state, k_step, task)
        steps = steps + 1
        truncated = steps >= time_limit if time_limit > 0 else jnp.zeros((), bool)
        obs = env.observation(next_state, k_obs, task)
        fresh_state, fresh_obs = reset(k_reset, task)

        def pick(fresh, stepped):
            return jnp.where(done, fresh, stepped)

        return (jax.tree.map(pick, fresh_state, next_state), pick(fresh_obs, obs),
                pick(jnp.zeros_like(reward), reward), pick(False, terminated), pick(False, truncated),
                pick(0, steps))

    return step
