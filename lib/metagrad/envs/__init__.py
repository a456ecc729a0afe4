"""Gymnasium environments whose task is a parameter pytree (`jax.vmap` over tasks is a meta-batch).

Two functional environments (`gymnasium.experimental.functional.FuncEnv`; pure JAX methods, the fast
path used by [`metagrad.rollout.sample`][metagrad.rollout.sample]):

* [`TabularMDPEnv`][metagrad.envs.tabular.TabularMDPEnv] — a [`TabularMDP`][metagrad.mdp.TabularMDP] task (Tang et al. 2021, Sec. 5, Fig. 1a–c);
* [`Navigation2D`][metagrad.envs.navigation.Navigation2D] — the 2-D point robot, MAML's goals in a square (Finn et al. 2017) or ProMP's
  four corners (Rothfuss et al. 2019; Tang et al. 2021, Fig. 1d).

`import metagrad` registers classic Gymnasium environments (one fixed task each, via
`gymnasium.envs.functional_jax_env.FunctionalJaxEnv`; they return NumPy observations in the dtype of
their spaces and pass `gymnasium.utils.env_checker.check_env`):

* `metagrad/Navigation2D-v0` — MAML's goals in a square; `gymnasium.make` keyword `goal` `[2]`
  (default (0.5, 0.5)); `max_episode_steps=100`;
* `metagrad/Navigation2DCorners-v0` — ProMP's corners; keywords `goal` (default (2, 2)) and `reward`
  (`"sparse"` or `"dense"`); `max_episode_steps=100`;
* `metagrad/TabularMDP-v0` — keyword `mdp` (a [`TabularMDP`][metagrad.mdp.TabularMDP]; default
  `random_mdp(PRNGKey(0))`, 20 states and 5 actions); `max_episode_steps=20` (the paper's T).

`import metagrad` imports Gymnasium but not JAX (`metagrad._registration`); this module is imported
by Gymnasium the first time one of them is made. These classic environments step one transition at a time
(for interoperability and `check_env`); for speed, sample with [`metagrad.rollout.sample`][metagrad.rollout.sample], which calls
the `FuncEnv` methods inside `lax.scan`.

Vector environments: `gymnasium.make_vec(id, num_envs)` uses each id's `vector_entry_point`, a
[`TaskVectorEnv`][metagrad.envs.vector.TaskVectorEnv] (all copies in one jitted `vmap`, one process; `goal` /
`mdp` may stack one task per copy). `vectorization_mode="async"` runs one process per copy: making
one of these environments switches Python's default start method from `fork` to `forkserver` (the
default of Python 3.14), unless the program chose one, because a process forked after JAX started can
deadlock. As with any non-fork start method, a script that makes async environments at top level needs
`if __name__ == "__main__":`; to keep `fork`, call `multiprocessing.set_start_method("fork")` first
(at your own risk).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.envs.functional_jax_env import FunctionalJaxEnv
from gymnasium.experimental.functional import FuncEnv

from metagrad._registration import ENVIRONMENTS, avoid_fork_start_method
from metagrad.envs.navigation import CORNERS, HORIZON, Navigation2D
from metagrad.envs.tabular import TabularMDPEnv
from metagrad.envs.vector import TaskVectorEnv

__all__ = ["CORNERS", "HORIZON", "Navigation2D", "TabularMDPEnv", "TaskEnv", "TaskVectorEnv", "ENV_IDS"]


class _FixedTask(FuncEnv):
    """A `FuncEnv` view of `base` whose methods use `task` when called without `params`.

    A new object, never a mutation of `base`: metagrad environments compare equal by their settings
    (so [`metagrad.rollout.sample`][metagrad.rollout.sample] reuses compiled code across equal environments), and rebinding the
    methods of `base` would leak this task into every equal environment's compiled sampler. This view
    keeps object identity for `==` and `hash`, so it never shares a cache entry with another object.
    """

    def __init__(self, base: FuncEnv, task: Any):
        self.base, self.task = base, task
        self._jitted = {
            name: jax.jit(getattr(base, name))
            for name in ("initial", "transition", "observation", "reward", "terminal")
        }
        super().__init__()
        self.observation_space, self.action_space = base.observation_space, base.action_space

    def initial(self, rng, params=None):
        return self._jitted["initial"](rng, self._params(params))

    def transition(self, state, action, rng, params=None):
        return self._jitted["transition"](state, action, rng, self._params(params))

    def observation(self, state, rng, params=None):
        return self._jitted["observation"](state, rng, self._params(params))

    def reward(self, state, action, next_state, rng, params=None):
        return self._jitted["reward"](state, action, next_state, rng, self._params(params))

    def terminal(self, state, rng, params=None):
        return self._jitted["terminal"](state, rng, self._params(params))

    def render_init(self, params=None, **kwargs):
        return self.base.render_init(self._params(params), **kwargs)

    def render_image(self, state, render_state, params=None):
        return self.base.render_image(state, render_state, self._params(params))

    def render_close(self, render_state, params=None):
        return self.base.render_close(render_state, self._params(params))

    def _params(self, params):
        return self.task if params is None else params


class TaskEnv(FunctionalJaxEnv):
    """A classic `gymnasium.Env` running one fixed task of a metagrad `FuncEnv`.

    `FunctionalJaxEnv` calls the `FuncEnv` methods without `params` (the default task); this
    subclass runs them on a view of `func_env` bound to `task` (`func_env` itself is left untouched),
    jit-compiles the methods, and returns observations as NumPy arrays in the dtype of
    `observation_space` (float32 for navigation, an integer scalar for tabular), so the declared spaces
    hold whether or not `jax_enable_x64` is on. (Gymnasium's `JaxToNumpy` wrapper would need the
    optional `array_api_compat` package; converting here avoids that dependency.)

    `step` refuses an action outside `action_space` with a `ValueError` (a discrete action
    outside `[0, A)`, a continuous action that is not finite; finite continuous actions are clipped by
    the dynamics, as in the reference implementations).

    Args:
      func_env: a metagrad `FuncEnv` ([`Navigation2D`][metagrad.envs.navigation.Navigation2D] or [`TabularMDPEnv`][metagrad.envs.tabular.TabularMDPEnv]).
      task: its `params` pytree (a goal `[2]` or a `TabularMDP`); `None`: `func_env.default_params`.
      render_mode: `None` or `"rgb_array"`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, func_env: FuncEnv, task: Any = None, render_mode: str | None = None, spec=None):
        self.task = func_env.default_params if task is None else task
        super().__init__(_FixedTask(func_env, self.task), metadata=dict(self.metadata), render_mode=render_mode,
                         spec=spec)

    def _cast(self, obs):
        if isinstance(self.observation_space, gymnasium.spaces.Discrete):
            return np.int64(obs)
        return np.asarray(obs, dtype=self.observation_space.dtype)

    def _check_action(self, action):
        space = self.action_space
        if isinstance(space, gymnasium.spaces.Discrete):
            value = np.asarray(action)
            if value.shape != () or not np.issubdtype(value.dtype, np.integer) or not 0 <= int(value) < space.n:
                raise ValueError(f"`action` must be an integer in [0, {space.n}); got {action!r}.")
            return value
        value = np.asarray(action, dtype=np.float64)
        if value.shape != space.shape:
            raise ValueError(f"`action` must have shape {space.shape}; got shape {value.shape}.")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"`action` must be finite; got {value.tolist()}.")
        return np.asarray(action, dtype=space.dtype)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        return self._cast(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(self._check_action(action))
        return self._cast(obs), reward, terminated, truncated, info


def make_navigation(goal=None, render_mode: str | None = None, **navigation_kwargs) -> TaskEnv:
    """`gymnasium.make` entry point of `metagrad/Navigation2D-v0` (keywords go to [`Navigation2D`][metagrad.envs.navigation.Navigation2D])."""
    avoid_fork_start_method()
    return TaskEnv(Navigation2D(**navigation_kwargs), None if goal is None else jnp.asarray(goal), render_mode)


def make_navigation_corners(goal=None, render_mode: str | None = None, reward: str | None = None) -> TaskEnv:
    """`gymnasium.make` entry point of `metagrad/Navigation2DCorners-v0`."""
    return make_navigation(goal, render_mode, goal_sampler="corners", reward=reward)


def make_tabular(mdp=None, render_mode: str | None = None, num_states: int = 20, num_actions: int = 5) -> TaskEnv:
    """`gymnasium.make` entry point of `metagrad/TabularMDP-v0` (`mdp` fixes S and A when given)."""
    avoid_fork_start_method()
    env = TabularMDPEnv.for_task(mdp) if mdp is not None else TabularMDPEnv(num_states, num_actions)
    return TaskEnv(env, mdp, render_mode)


def make_navigation_vector(num_envs: int = 1, goal=None, max_episode_steps: int = HORIZON,
                           render_mode: str | None = None, **navigation_kwargs) -> TaskVectorEnv:
    """`gymnasium.make_vec` entry point of `metagrad/Navigation2D-v0`: `goal` `[2]` or `[num_envs, 2]`."""
    goal = None if goal is None else jnp.asarray(goal)
    return TaskVectorEnv(Navigation2D(**navigation_kwargs), num_envs, goal, max_episode_steps, render_mode)


def make_navigation_corners_vector(num_envs: int = 1, goal=None, reward: str | None = None,
                                   max_episode_steps: int = HORIZON, render_mode: str | None = None) -> TaskVectorEnv:
    """`gymnasium.make_vec` entry point of `metagrad/Navigation2DCorners-v0`."""
    return make_navigation_vector(num_envs, goal, max_episode_steps, render_mode, goal_sampler="corners", reward=reward)


def make_tabular_vector(num_envs: int = 1, mdp=None, max_episode_steps: int = 20, render_mode: str | None = None,
                        num_states: int = 20, num_actions: int = 5) -> TaskVectorEnv:
    """`gymnasium.make_vec` entry point of `metagrad/TabularMDP-v0`: `mdp` one MDP or `num_envs` stacked."""
    env = TabularMDPEnv(*jnp.shape(mdp.rewards)[-2:]) if mdp is not None else TabularMDPEnv(num_states, num_actions)
    return TaskVectorEnv(env, num_envs, mdp, max_episode_steps, render_mode)


#: Gymnasium ids registered by ``import metagrad`` (``metagrad._registration``): entry point, episode limit.
ENV_IDS = {env_id: (entry_point, steps) for env_id, (entry_point, _, steps) in ENVIRONMENTS.items()}
