"""ProMP's MuJoCo meta-RL locomotion tasks (Tang et al. 2021, Fig. 2) on MuJoCo XLA (MJX), in JAX.

Four task families, as in ProMP (Rothfuss et al. 2019, `meta_policy_search/envs/mujoco_envs/` in
github.com/jonasrothfuss/ProMP), each a pure, `jit`/`vmap`-able environment whose task is a params pytree:

=========================  ===========================  ======================================================
name                       ProMP class (file)           task distribution
=========================  ===========================  ======================================================
`halfcheetah-direction`  `HalfCheetahRandDirecEnv`  direction d ∈ {−1, +1}, uniform (a scalar)
`ant-direction`          `AntRandDirecEnv`          direction d ∈ {−1, +1}, uniform (a scalar)
`ant-goal`               `AntRandGoalEnv`           goal g = r(cos α, sin α), α ~ U[0, 2π), r = 3√u, u ~ U[0, 1)
                                                        (uniform on the disc of radius 3; `[2]`)
`walker2d-direction`     `Walker2DRandDirecEnv`     direction d ∈ {−1, +1}, uniform (a scalar)
=========================  ===========================  ======================================================

Rewards (a the action the simulator receives, Δt = timestep × frame_skip, x the forward coordinate):

* HalfCheetah: r = d (x' − x)/Δt − 0.05 ‖a‖²; x = qpos[0]; never terminates.
* Ant direction: r = d (x' − x)/Δt − 0.5 ‖a‖² − 0.5·10⁻³ ‖clip(cfrc_ext, −1, 1)‖² + 1, x the torso's
  `xpos[0]`; terminates unless the state is finite and 0 ≤ z ≤ 1 (z = qpos[2], the torso height;
  ProMP's bounds, not Gymnasium's 0.2).
* Ant goal: r = −‖xy' − g‖₁ − 0.1 ‖a‖² − 0.5·10⁻³ ‖clip(cfrc_ext, −1, 1)‖²; no survival bonus, never
  terminates (ProMP comments both out).
* Walker2d: r = d (x' − x)/Δt + 1 − 10⁻³ ‖a‖²; x = qpos[0]; terminates unless 0.8 < height < 2 and
  −1 < angle < 1 (qpos[1], qpos[2]).

Sources of the settings the paper does not fix:

* Models: Gymnasium's MuJoCo assets (`gymnasium/envs/mujoco/assets`: `half_cheetah.xml`, `ant.xml`,
  `walker2d.xml`, the files of gym's v2–v4 environments, which ProMP's gym 0.10.5 shipped; not
  `walker2d_v5.xml`, whose left foot's friction differs). Frame skips from ProMP: 5, 5, 8 (Walker2d: 8, not
  gym's 4), so Δt = 0.05, 0.05 and 0.016 s.
* Resets from ProMP: qpos₀ + U[−0.1, 0.1], 0.1·N(0, 1) velocities (HalfCheetah, Ant); qpos₀ + U[−0.005, 0.005]
  and U[−0.005, 0.005] velocities (Walker2d). The state is then made consistent with `mj_forward` (gym's
  `set_state`).
* Observations from ProMP: HalfCheetah (qpos[1:], qvel) [17]; Ant direction (qpos[2:], qvel,
  clip(cfrc_ext, −1, 1)) [111]; Ant goal (qpos, qvel, clip(cfrc_ext, −1, 1)) [113]; Walker2d (qpos[1:],
  clip(qvel, −10, 10)) [17].
* Actions: ProMP's run script wraps every env in `normalize(env)` (`meta_policy_search/envs/normalized_env.py`,
  `normalization_scale=10`), so the policy acts in [−10, 10]ⁿ and the simulator receives
  clip(lb + (u + S)(ub − lb)/(2S), lb, ub) = clip(u/10, −1, 1) for these models' control ranges [−1, 1];
  `action_scale=10` (the default) is that wrapper, `action_scale=None` the bare env (u clipped to [−1, 1]).
  Control costs are computed on the action the simulator receives.
* Contact forces: `cfrc_ext` (Ant) is computed after the step by `mj_rnePostConstraint` from the data of
  the step's last dynamics evaluation. MuJoCo 1.50 (ProMP's mujoco-py) computed it in every forward pass;
  MuJoCo ≥ 2.0 only on demand, which is why Gymnasium's Ant v2/v3 read zeros under MuJoCo 2.
* Ant's torso position is MuJoCo's `xpos` after `mj_step` (gym's `get_body_com`), which is the
  position at the start of the last substep (MuJoCo integrates after computing kinematics); kept as in ProMP.
* Solver: MuJoCo's defaults from the model files (Newton, `iterations=100`, `ls_iterations=50`,
  tolerance 10⁻⁸) unless `solver_iterations` / `ls_iterations` are given (a speed knob; see
  `docs/locomotion.md` for what it changes).

Protocol (the one every metagrad environment follows; a task is a params pytree):
`reset(key, params) -> (obs, state)`, `step(key, state, action, params) -> (obs, state, reward, done, info)`
(`done` a bool scalar; `info` the reward terms), `observation_space(params)`, `action_space(params)`,
`sample_tasks(key, n)` (params with a leading axis n). The state is an `mjx.Data`; after `done` the
caller resets (ProMP's sampler does).

`mujoco` and `mujoco-mjx` are the optional extra `metagrad[locomotion]`: this module imports them when
an environment is made, so `import metagrad` works without them.

References:
  - Rothfuss, Lee, Clavera, Asfour, Abbeel. ProMP: Proximal meta-policy search. ICLR 2019.
  - Tang, Kozuno, Rowland, Munos, Valko. Unifying gradient estimators for meta-reinforcement learning via
    off-policy evaluation. NeurIPS 2021, Sec. 5 and Fig. 2.
  - Todorov, Erez, Tassa. MuJoCo: a physics engine for model-based control. IROS 2012.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import warnings
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

__all__ = ["TASKS", "Locomotion", "LocomotionEnv", "LocomotionVectorEnv", "load_mujoco", "model_path"]

#: ProMP's ``normalize`` wrapper scale (``normalization_scale``): the policy acts in [−10, 10]ⁿ.
ACTION_SCALE = 10.0

#: Horizon of the paper's protocol (ProMP's ``max_path_length``).
HORIZON = 100


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task family: model, frame skip, reset noise, reward weights and termination (see the module)."""

    xml: str
    frame_skip: int
    reset: str  # "cheetah": qpos U[−0.1, 0.1], qvel 0.1·N(0, 1); "walker": both U[−0.005, 0.005]
    target: str  # "direction" (a scalar d) or "goal" (g [2])
    ctrl_weight: float
    contact_weight: float  # 0: no contact cost and no cfrc_ext in the observation
    survive: float
    termination: str  # "none", "ant" (finite, 0 ≤ z ≤ 1) or "walker" (0.8 < h < 2, |angle| < 1)
    observation: str  # "cheetah", "ant-direction", "ant-goal" or "walker"
    promp: str  # ProMP's class, for error messages and docs


#: The four task families of Fig. 2, by name.
TASKS = {
    "halfcheetah-direction": TaskSpec("half_cheetah.xml", 5, "cheetah", "direction", 0.05, 0.0, 0.0, "none",
                                      "cheetah", "HalfCheetahRandDirecEnv"),
    "ant-direction": TaskSpec("ant.xml", 5, "cheetah", "direction", 0.5, 0.5e-3, 1.0, "ant", "ant-direction",
                              "AntRandDirecEnv"),
    "ant-goal": TaskSpec("ant.xml", 5, "cheetah", "goal", 0.1, 0.5e-3, 0.0, "none", "ant-goal", "AntRandGoalEnv"),
    "walker2d-direction": TaskSpec("walker2d.xml", 8, "walker", "direction", 1e-3, 0.0, 1.0, "walker", "walker",
                                   "Walker2DRandDirecEnv"),
}


def load_mujoco():
    """Import `mujoco` and `mujoco.mjx`, or raise an `ImportError` naming the extra to install.

    `mujoco.mjx` prints a line when the optional NVIDIA Warp backend is missing; it is silenced here
    (this module uses MJX's JAX implementation).
    """
    try:
        import mujoco
        with contextlib.redirect_stdout(io.StringIO()):
            from mujoco import mjx
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("the locomotion tasks need MuJoCo and MJX: pip install 'metagrad[locomotion]' "
                          "-c constraints.txt") from error
    return mujoco, mjx


def model_path(xml: str) -> str:
    """Path of one of Gymnasium's MuJoCo model files (`gymnasium/envs/mujoco/assets/<xml>`)."""
    return os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", xml)


def _load_model(mujoco, path: str):
    """`MjModel.from_xml_path` with MuJoCo's compiler warnings as Python warnings (by default MuJoCo writes them
    to stderr and appends them to `MUJOCO_LOG.TXT` in the working directory).

    `half_cheetah.xml`'s `settotalmass="14"` is deprecated since MuJoCo 3.x but still applied (the test
    checks the total mass): that one warning is expected and dropped.
    """
    messages, previous = [], mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(messages.append)
    try:
        model = mujoco.MjModel.from_xml_path(path)
    finally:
        mujoco.set_mju_user_warning(previous)
    for message in messages:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo, loading {os.path.basename(path)}: {message}", stacklevel=3)
    return model


def _positive_int_or_none(name: str, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be None or a positive integer; got {value!r}.")
    return int(value)


class Locomotion:
    """One of ProMP's locomotion task families on MJX (see the module docstring for the maths and sources).

    Pure methods, all `jit`- and `vmap`-able over keys, states, actions and tasks:

    * `reset(key, params) -> (obs [O], state mjx.Data)` (JAX's default float dtype, float32 unless x64);
    * `step(key, state, action [A], params) -> (obs, state, reward [], done [] bool, info)` with `info` a
      dict of the reward terms (`forward`, `ctrl`, `contact`, `survive`; each already signed, their sum
      is the reward) and `x_velocity`;
    * `sample_tasks(key, n)`: `[n]` directions or `[n, 2]` goals;
    * `observation_space(params)`, `action_space(params)`: float32 `gymnasium.spaces.Box`.

    Args:
      task: one of `TASKS` (`"halfcheetah-direction"`, `"ant-direction"`, `"ant-goal"`,
        `"walker2d-direction"`).
      action_scale: ProMP's `normalize` scale S (the simulator receives clip(u/S, −1, 1)); `None`: the
        bare env (u clipped to the control range). Default 10, ProMP's run scripts.
      solver_iterations, ls_iterations: override MuJoCo's constraint-solver and line-search iteration caps
        (`None`: the model's, 100 and 50).

    Example (not a doctest: compiling MJX's step takes a minute or more on a laptop CPU):

    ```
    env = Locomotion("halfcheetah-direction")
    tasks = env.sample_tasks(jax.random.PRNGKey(0), 4)                    # [4] of ±1
    obs, state = jax.jit(env.reset)(jax.random.PRNGKey(1), tasks[0])      # obs [17]
    obs, state, reward, done, info = jax.jit(env.step)(jax.random.PRNGKey(2), state, jnp.zeros(6), tasks[0])
    ```
    """

    def __init__(self, task: str = "halfcheetah-direction", action_scale: float | None = ACTION_SCALE,
                 solver_iterations: int | None = None, ls_iterations: int | None = None):
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {sorted(TASKS)}; got {task!r}.")
        if action_scale is not None and (isinstance(action_scale, bool) or not isinstance(action_scale, (int, float))
                                         or not np.isfinite(action_scale) or action_scale <= 0):
            raise ValueError(f"`action_scale` must be None or a positive finite number; got {action_scale!r}.")
        self.task = task
        self.spec = TASKS[task]
        self.action_scale = None if action_scale is None else float(action_scale)
        self.solver_iterations = _positive_int_or_none("solver_iterations", solver_iterations)
        self.ls_iterations = _positive_int_or_none("ls_iterations", ls_iterations)
        mujoco, mjx = load_mujoco()
        self._mjx = mjx
        self.mj_model = _load_model(mujoco, model_path(self.spec.xml))
        if self.solver_iterations is not None:
            self.mj_model.opt.iterations = self.solver_iterations
        if self.ls_iterations is not None:
            self.mj_model.opt.ls_iterations = self.ls_iterations
        self.model = mjx.put_model(self.mj_model, impl="jax")
        self._data0 = mjx.make_data(self.model, impl="jax")
        self.dt = float(self.mj_model.opt.timestep) * self.spec.frame_skip
        self._torso = mujoco.mj_name2id(self.mj_model, mujoco.mjtObj.mjOBJ_BODY, "torso")
        ctrl_range = np.asarray(self.mj_model.actuator_ctrlrange, np.float32)
        self._low, self._high = ctrl_range[:, 0], ctrl_range[:, 1]
        obs_size = jax.eval_shape(lambda: self.reset(jax.random.PRNGKey(0), self.default_params))[0].shape
        self._observation_space = spaces.Box(-np.inf, np.inf, shape=obs_size, dtype=np.float32)
        bound = self._high if self.action_scale is None else np.full_like(self._high, self.action_scale)
        self._action_space = spaces.Box(-bound, bound, dtype=np.float32)

    # Equal settings make equal environments (the task is an argument), so compiled functions are reused.
    def _key(self):
        return (type(self), self.task, self.action_scale, self.solver_iterations, self.ls_iterations)

    def __eq__(self, other):
        return isinstance(other, Locomotion) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Locomotion({self.task!r}, action_scale={self.action_scale!r}, "
                f"solver_iterations={self.solver_iterations!r}, ls_iterations={self.ls_iterations!r})")

    # ----- tasks and spaces -------------------------------------------------------------------------------
    @property
    def default_params(self) -> jax.Array:
        """Direction +1 (ProMP's default `goal_direction`) or the goal (3, 0) (the rim, along x)."""
        if self.spec.target == "goal":
            return jnp.asarray([3.0, 0.0], jnp.result_type(float))
        return jnp.asarray(1.0, jnp.result_type(float))

    def sample_tasks(self, key: jax.Array, n: int) -> jax.Array:
        """`n` tasks from ProMP's distribution: `[n]` directions ±1 or `[n, 2]` goals in the disc of radius 3."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"`n` must be a positive integer number of tasks; got {n!r}.")
        dtype = jnp.result_type(float)
        if self.spec.target == "direction":
            return jnp.where(jax.random.bernoulli(key, 0.5, (int(n),)), 1.0, -1.0).astype(dtype)
        k_angle, k_radius = jax.random.split(key)
        angle = jax.random.uniform(k_angle, (int(n),), dtype) * 2 * jnp.pi
        radius = 3 * jax.random.uniform(k_radius, (int(n),), dtype) ** 0.5
        return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=-1)

    def observation_space(self, params: Any = None) -> spaces.Box:
        return self._observation_space

    def action_space(self, params: Any = None) -> spaces.Box:
        return self._action_space

    # ----- dynamics -----------------------------------------------------------------------------------------
    def reset(self, key: jax.Array, params: Any = None):
        """A fresh episode: ProMP's `reset_model` noise around the model's reference pose, then `mj_forward`."""
        model, mjx = self.model, self._mjx
        k_pos, k_vel = jax.random.split(key)
        nq, nv = self.mj_model.nq, self.mj_model.nv
        dtype = self._data0.qpos.dtype
        qpos0 = jnp.asarray(self.mj_model.qpos0, dtype)
        if self.spec.reset == "cheetah":
            qpos = qpos0 + jax.random.uniform(k_pos, (nq,), dtype, -0.1, 0.1)
            qvel = 0.1 * jax.random.normal(k_vel, (nv,), dtype)
        else:
            qpos = qpos0 + jax.random.uniform(k_pos, (nq,), dtype, -0.005, 0.005)
            qvel = jax.random.uniform(k_vel, (nv,), dtype, -0.005, 0.005)
        data = mjx.forward(model, self._data0.replace(qpos=qpos, qvel=qvel))
        if self.spec.contact_weight:
            data = mjx.rne_postconstraint(model, data)
        return self._observation(data), data

    def control(self, action: jax.Array) -> jax.Array:
        """The control the simulator receives: clip(u/S, lb, ub) (ProMP's `normalize`) or clip(u, lb, ub)."""
        action = jnp.asarray(action, self._data0.ctrl.dtype)
        if self.action_scale is not None:
            low, high = self._low, self._high
            action = low + (action + self.action_scale) * (high - low) / (2 * self.action_scale)
        return jnp.clip(action, self._low, self._high)

    def step(self, key: jax.Array, state, action: jax.Array, params: Any = None):
        """`frame_skip` MuJoCo steps with the control held, then ProMP's reward terms and termination rule."""
        model, mjx, spec = self.model, self._mjx, self.spec
        params = self.default_params if params is None else jnp.asarray(params)
        ctrl = self.control(action)
        before = self._position(state)
        data = jax.lax.fori_loop(0, spec.frame_skip, lambda _, d: mjx.step(model, d), state.replace(ctrl=ctrl))
        if spec.contact_weight:
            data = mjx.rne_postconstraint(model, data)
        after = self._position(data)
        x_velocity = (after[0] - before[0]) / self.dt
        if spec.target == "direction":
            forward = params * x_velocity
        else:
            forward = -jnp.sum(jnp.abs(after[:2] - params))
        info = {
            "forward": forward,
            "ctrl": -spec.ctrl_weight * jnp.sum(jnp.square(ctrl)),
            "contact": -spec.contact_weight * jnp.sum(jnp.square(jnp.clip(data._impl.cfrc_ext, -1, 1))),
            "survive": jnp.asarray(spec.survive, data.qpos.dtype),
            "x_velocity": x_velocity,
        }
        reward = info["forward"] + info["ctrl"] + info["contact"] + info["survive"]
        return self._observation(data), data, reward, self._done(data), info

    def _position(self, data) -> jax.Array:
        """The forward position ProMP differentiates: qpos[0] (HalfCheetah, Walker2d), torso `xpos` (Ant)."""
        if self.spec.xml == "ant.xml":
            return data.xpos[self._torso]
        return data.qpos[:1]

    def _done(self, data) -> jax.Array:
        rule = self.spec.termination
        if rule == "none":
            return jnp.zeros((), bool)
        if rule == "ant":
            finite = jnp.all(jnp.isfinite(data.qpos)) & jnp.all(jnp.isfinite(data.qvel))
            return ~(finite & (data.qpos[2] >= 0.0) & (data.qpos[2] <= 1.0))
        height, angle = data.qpos[1], data.qpos[2]
        return ~((height > 0.8) & (height < 2.0) & (angle > -1.0) & (angle < 1.0))

    def _observation(self, data) -> jax.Array:
        kind = self.spec.observation
        if kind == "cheetah":
            parts = [data.qpos[1:], data.qvel]
        elif kind == "walker":
            parts = [data.qpos[1:], jnp.clip(data.qvel, -10, 10)]
        else:
            contact = jnp.clip(data._impl.cfrc_ext, -1, 1).ravel()
            parts = [data.qpos[2:] if kind == "ant-direction" else data.qpos, data.qvel, contact]
        return jnp.concatenate(parts)


# ----- Gymnasium interoperability ------------------------------------------------------------------------------
def _check_actions(actions, space: spaces.Box, name: str = "action"):
    value = np.asarray(actions, dtype=np.float64)
    if value.shape != space.shape:
        raise ValueError(f"`{name}` must have shape {space.shape}; got shape {value.shape}.")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"`{name}` must be finite; got {value.tolist()}.")
    return jnp.asarray(value, jnp.result_type(float))


class LocomotionEnv(gymnasium.Env):
    """A classic `gymnasium.Env` running one task of [`Locomotion`][metagrad.envs.locomotion.Locomotion] (`gymnasium.make` entry point).

    Each `reset`/`step` is one jitted call (for interoperability; train with the pure methods inside
    `lax.scan`). Observations are float32 NumPy arrays; `terminated` is ProMP's rule; the registered ids
    truncate at ProMP's horizon (100). A finite action is scaled and clipped like ProMP's `normalize`
    wrapper; a NaN or infinite action is refused.

    Args:
      task: a `TASKS` name. params: the task (a direction or a goal `[2]`; `None`: the default).
      render_mode: `None` only. Other keywords go to [`Locomotion`][metagrad.envs.locomotion.Locomotion].
    """

    metadata = {"render_modes": []}

    def __init__(self, task: str = "halfcheetah-direction", params=None, render_mode: str | None = None,
                 **locomotion_kwargs):
        if render_mode is not None:
            raise ValueError(f"`render_mode` must be None (rendering is not implemented); got {render_mode!r}.")
        self.env = Locomotion(task, **locomotion_kwargs)
        self.params = self.env.default_params if params is None else jnp.asarray(params, jnp.result_type(float))
        if self.params.shape != self.env.default_params.shape:
            raise ValueError(f"`params` must have shape {self.env.default_params.shape} for {task!r}; "
                             f"got {self.params.shape}.")
        self.observation_space = self.env.observation_space(self.params)
        self.action_space = self.env.action_space(self.params)
        # `metagrad.envs.protocol.as_env(gymnasium id)` takes the pure environment from `func_env`.
        self.func_env = self.env
        self._reset, self._step = jax.jit(self.env.reset), jax.jit(self.env.step)
        self._key = self._state = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self._key is None:
            self._key = jax.random.PRNGKey(int(self.np_random.integers(2**31)) if seed is None else seed)
        self._key, key = jax.random.split(self._key)
        obs, self._state = self._reset(key, self.params)
        return np.asarray(obs, np.float32), {}

    def step(self, action):
        if self._state is None:
            raise gymnasium.error.ResetNeeded("Call `reset` before `step`.")
        self._key, key = jax.random.split(self._key)
        obs, self._state, reward, done, info = self._step(key, self._state, _check_actions(action, self.action_space),
                                                          self.params)
        return np.asarray(obs, np.float32), float(reward), bool(done), False, {k: float(v) for k, v in info.items()}


class LocomotionVectorEnv(gymnasium.vector.VectorEnv):
    """`num_envs` copies of [`Locomotion`][metagrad.envs.locomotion.Locomotion], one jitted `vmap` (`gymnasium.make_vec` entry point).

    `params` is one task (every copy) or `num_envs` tasks stacked (a meta-batch, e.g. from
    `Locomotion.sample_tasks`). Autoreset is Gymnasium's default (`NEXT_STEP`): the step after a copy's
    episode ended (terminated, or truncated at `max_episode_steps`) resets it, ignores its action and returns
    its first observation with reward 0.
    """

    metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, task: str = "halfcheetah-direction", params=None,
                 max_episode_steps: int = HORIZON, render_mode: str | None = None, **locomotion_kwargs):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"`num_envs` must be a positive integer; got {num_envs!r}.")
        if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, (int, np.integer)) \
                or max_episode_steps < 0:
            raise ValueError(f"`max_episode_steps` must be a non-negative integer (0: no limit); got {max_episode_steps!r}.")
        if render_mode is not None:
            raise ValueError(f"`render_mode` must be None; got {render_mode!r}.")
        self.env = env = Locomotion(task, **locomotion_kwargs)
        self.num_envs, self.time_limit, self.render_mode = int(num_envs), int(max_episode_steps), None
        default = env.default_params
        params = default if params is None else jnp.asarray(params, default.dtype)
        if params.shape == default.shape:
            params = jnp.broadcast_to(params, (self.num_envs,) + default.shape)
        if params.shape != (self.num_envs,) + default.shape:
            raise ValueError(f"`params` must be one task of shape {default.shape} or {self.num_envs} stacked; "
                             f"got shape {params.shape}.")
        self.params = params
        self.single_observation_space, self.single_action_space = env.observation_space(), env.action_space()
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._reset = jax.jit(jax.vmap(env.reset))
        self._step = jax.jit(jax.vmap(self._step_one))
        self._key = jax.random.PRNGKey(int(np.random.SeedSequence().generate_state(1)[0]))
        self._state = self._done = self._steps = None

    def _step_one(self, key, state, action, params, done, steps):
        k_reset, k_step = jax.random.split(key)
        obs, next_state, reward, terminated, _ = self.env.step(k_step, state, action, params)
        steps = steps + 1
        truncated = steps >= self.time_limit if self.time_limit else jnp.zeros((), bool)
        fresh_obs, fresh_state = self.env.reset(k_reset, params)

        def pick(fresh, stepped):
            return jnp.where(done, fresh, stepped)

        return (pick(fresh_obs, obs), jax.tree.map(pick, fresh_state, next_state), pick(jnp.zeros_like(reward), reward),
                pick(False, terminated), pick(False, truncated), pick(0, steps))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._key = jax.random.PRNGKey(seed)
        self._key, key = jax.random.split(self._key)
        obs, self._state = self._reset(jax.random.split(key, self.num_envs), self.params)
        self._done, self._steps = jnp.zeros(self.num_envs, bool), jnp.zeros(self.num_envs, jnp.int32)
        return np.asarray(obs, np.float32), {}

    def step(self, actions):
        if self._state is None:
            raise gymnasium.error.ResetNeeded("Call `reset` before `step`.")
        actions = _check_actions(actions, self.action_space, "actions")
        self._key, key = jax.random.split(self._key)
        obs, self._state, reward, terminated, truncated, self._steps = self._step(
            jax.random.split(key, self.num_envs), self._state, actions, self.params, self._done, self._steps)
        self._done = terminated | truncated
        return np.asarray(obs, np.float32), np.asarray(reward), np.asarray(terminated), np.asarray(truncated), {}
