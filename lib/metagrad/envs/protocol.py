"""The environment protocol of metagrad's meta-RL loop: pure functions, the task a parameter pytree (gymnax's shape).

An **environment** is any object `env` with these pure, `jit`/`vmap`-able methods (no base class):

* `env.reset(key, params) -> (obs, state)`;
* `env.step(key, state, action, params) -> (obs, state, reward, done, info)` — `obs` the next observation,
  `reward` a float scalar, `done` a bool scalar (True when the episode terminated at this step: no bootstrap
  from `obs`), `info` a dict pytree (may be empty);
* `env.observation_space(params)` and `env.action_space(params)` — spaces with `.shape` and `.dtype`:
  `gymnasium.spaces.Box` for continuous actions of any shape, `gymnasium.spaces.Discrete` for categorical
  ones.

A **task** is a `params` pytree. Tasks are drawn by `env.sample_tasks(key, n) -> params` with a leading axis
`n` on every leaf (or by a `sample_tasks(key, n)` callable passed to [`metagrad.maml.MAML`][metagrad.maml.loop.MAML]), so
`jax.vmap` over that axis is a meta-batch.

[`check_env`][metagrad.envs.protocol.check_env] checks an object structurally (a `TypeError` naming every missing member); [`as_env`][metagrad.envs.protocol.as_env]
also accepts metagrad's Gymnasium `FuncEnv` environments ([`Navigation2D`][metagrad.envs.navigation.Navigation2D],
[`TabularMDPEnv`][metagrad.envs.tabular.TabularMDPEnv], any `FuncEnv` with pure JAX methods) through [`FuncEnvAdapter`][metagrad.envs.protocol.FuncEnvAdapter],
and Gymnasium ids whose environment is a `FunctionalJaxEnv` (e.g. `"metagrad/Navigation2D-v0"`).

Example: `examples/maml_bring_your_own.py` (`Walk1D`, a terminating 1-D task in about 20 lines, trained by
[`metagrad.maml.train`][metagrad.maml.loop.train] with a user policy and an optax optimiser).

References:
  - Lange. gymnax: a JAX-based reinforcement learning environment library. 2022 (the `reset`/`step` shape).
  - Towers et al. Gymnasium. 2024 (spaces; `FuncEnv`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from gymnasium.experimental.functional import FuncEnv

__all__ = ["ENV_METHODS", "FuncEnvAdapter", "as_env", "check_env"]

#: The members every environment must have (``sample_tasks`` is checked separately: a sampler may be passed).
ENV_METHODS = ("reset", "step", "observation_space", "action_space")


def check_env(env, *, sample_tasks: bool = False):
    """Return `env` if it follows the protocol (see the module docstring), else raise `TypeError`.

    Structural: each of `ENV_METHODS` (and `sample_tasks` when `sample_tasks=True`) must be a callable
    member; the message names every missing one. `FuncEnv` objects have an `observation_space` *attribute*, not
    a method: pass them through [`as_env`][metagrad.envs.protocol.as_env].
    """
    required = ENV_METHODS + (("sample_tasks",) if sample_tasks else ())
    missing = [name for name in required if not callable(getattr(env, name, None))]
    if missing:
        hint = " (a gymnasium FuncEnv: use metagrad.envs.protocol.as_env)" if isinstance(env, FuncEnv) else ""
        raise TypeError(
            f"{type(env).__name__} does not follow metagrad's environment protocol{hint}: missing "
            + ", ".join(f"`{name}`" for name in missing)
            + ". Needed: reset(key, params) -> (obs, state); step(key, state, action, params) -> "
            "(obs, state, reward, done, info); observation_space(params); action_space(params)"
            + ("; sample_tasks(key, n) -> params with a leading axis n." if sample_tasks else ".")
        )
    return env


@dataclasses.dataclass(frozen=True)
class FuncEnvAdapter:
    """A Gymnasium `FuncEnv` (pure JAX methods taking the task as `params`) seen through the protocol.

    `reset`: x_0 = `initial`, o_0 = `observation(x_0)`; `step`: x' = `transition`, r = `reward(x, a, x')`,
    done = `terminal(x')`, o' = `observation(x')`; `info` is empty. Keys: `reset` splits its key in two
    (initial state, observation); `step` uses `fold_in(key, i)` for i = 1 … 4 (transition, reward, terminal,
    observation), so a sampler that draws the action with `fold_in(key, 0)` keeps every stream independent.
    Compares equal (and hashes) by the wrapped environment, so compiled samplers are shared across equal ones.
    """

    func_env: Any

    def reset(self, key, params):
        k_init, k_obs = jax.random.split(key)
        state = self.func_env.initial(k_init, params)
        return self.func_env.observation(state, k_obs, params), state

    def step(self, key, state, action, params):
        k_next, k_rew, k_term, k_obs = (jax.random.fold_in(key, i) for i in range(1, 5))
        env = self.func_env
        next_state = env.transition(state, action, k_next, params)
        reward = env.reward(state, action, next_state, k_rew, params)
        done = env.terminal(next_state, k_term, params)
        return env.observation(next_state, k_obs, params), next_state, reward, done, {}

    def observation_space(self, params=None):
        return self.func_env.observation_space

    def action_space(self, params=None):
        return self.func_env.action_space

    def sample_tasks(self, key, n: int, **kwargs):
        if not callable(getattr(self.func_env, "sample_tasks", None)):
            raise TypeError(f"{type(self.func_env).__name__} has no `sample_tasks(key, n)`; "
                            "pass `sample_tasks=` to MAML.")
        return self.func_env.sample_tasks(key, n, **kwargs)

    @property
    def default_params(self):
        return getattr(self.func_env, "default_params", None)


def as_env(env, *, sample_tasks: bool = False):
    """The protocol view of `env`: a protocol object itself, a `FuncEnv` wrapped in [`FuncEnvAdapter`][metagrad.envs.protocol.FuncEnvAdapter], or
    a Gymnasium id (`str`) whose environment is a `FunctionalJaxEnv` (its `FuncEnv`, wrapped). Anything else
    raises `TypeError` naming what is missing ([`check_env`][metagrad.envs.protocol.check_env])."""
    if isinstance(env, str):
        import gymnasium

        made = gymnasium.make(env).unwrapped
        func_env = getattr(made, "func_env", None)
        if func_env is None:
            raise TypeError(f"Gymnasium id {env!r} is not a functional JAX environment (no `func_env`); "
                            "the meta-RL loop needs pure reset/step functions.")
        env = getattr(func_env, "base", func_env)  # metagrad's fixed-task view: the task comes from `params`
    if isinstance(env, FuncEnvAdapter):
        return env
    if isinstance(env, FuncEnv):
        if sample_tasks and not callable(getattr(env, "sample_tasks", None)):
            raise TypeError(f"{type(env).__name__} does not follow metagrad's environment protocol: missing "
                            "`sample_tasks(key, n)` (or pass `sample_tasks=` to MAML).")
        return FuncEnvAdapter(env)
    return check_env(env, sample_tasks=sample_tasks)
