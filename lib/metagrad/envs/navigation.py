r"""2-D point-robot navigation (Finn et al. 2017; ProMP's four-corner variant) as a Gymnasium `FuncEnv`.

The state is the position s ∈ ℝ², the action a ∈ ℝ² a displacement, the task the goal g ∈ ℝ² (the
`params` pytree of every method, so `jax.vmap` over a stacked `[M, 2]` array of goals is a
meta-batch). Dynamics are deterministic:

$$
s_{t+1} = s_t + \mathrm{clip}(a_t, -c, c) \qquad (\mathrm{componentwise}),
$$

and the observation is the position itself. Two task distributions, chosen by `goal_sampler`:

`"square"` — the MAML navigation task (Finn et al. 2017, Sec. 5.3; as in pytorch-maml-rl's
  `Navigation2DEnv`, adapted from Finn's `point_env_randgoal.py`): start at the origin, c = 0.1,
  goals g ~ U[−0.5, 0.5]², dense reward r_t = −‖s_{t+1} − g‖₂, the episode *terminates* when
  |s_{t+1} − g| < 0.01 in both coordinates, horizon 100.

`"corners"` — ProMP's `MetaPointEnvCorner` (Rothfuss et al. 2019,
  `meta_policy_search/envs/point_envs/point_env_2d_corner.py` in github.com/jonasrothfuss/ProMP),
  the task of Tang et al. (2021), Fig. 1d: start s_0 ~ U[−0.2, 0.2]², c = 0.2, the goal is one of the four
  corners (±2, ±2) with equal probability, no termination, horizon 100 (ProMP's `max_path_length`).
  Its default reward (`reward="sparse"`, radius 0.5) pays progress towards the goal only once the
  robot has left the start region and is nearer the goal than any other corner:

  $$
  r_t = \| s_t - g\|  - \| s_{t+1} - g\| \qquad \text{ if } \| s_{t+1}\| _1 \ge  0.5 \text{ and } g = \mathrm{argmin}_{\mathrm{corner} k} \| s_{t+1} - k\| ,
  $$

  $$
  r_t = 0 \qquad \text{ otherwise },
  $$

  so the four tasks are indistinguishable near the start and the agent must explore to find its
  corner. `reward="dense"` gives r_t = −‖s_{t+1} − g‖ (ProMP's `'dense'` option).

  **Action normalisation (ProMP's `normalize` wrapper).** ProMP's point-mass run script
  (`run_scripts/pro-mp_run_point_mass.py`) wraps the env in `normalize(env)`
  (`meta_policy_search/envs/normalized_env.py`, `normalization_scale=10`): the policy acts in
  [−10, 10]² and the env receives lb + (a + 10)(ub − lb)/20 = 0.02·a, clipped to ±0.2. With
  `action_scale=10` (the default of `"corners"`) the transition here is exactly that:

  $$
  s_{t+1} = s_t + \mathrm{clip}(a_t \cdot  c / \mathrm{action\_scale}, -c, c),
  $$

  so a unit-σ Gaussian policy moves 0.02 per step (final spread ≈ 0.2 after 100 steps), as in the
  paper's experiment; without it (`action_scale=None`) the raw action is clipped, a far easier
  exploration problem. `"square"` keeps pytorch-maml-rl's raw clipping (`action_scale=None`).

**When the distance is measured.** Both variants measure the distance *after* the move, from
s_{t+1} = s_t + clip(a_t), exactly like the reference implementations. This makes r_t depend on the
action a_t that earned it (r(s, a) = −‖s + clip(a) − g‖), so credit is immediate; measuring before
the move would make r_t a function of s_t alone, delay every signal by one step and give r_0 = −‖g‖ for
every action.

Positions and goals use JAX's default float dtype (float64 under `jax_enable_x64`); the Gymnasium
spaces are float32 `Box`-es and the registered `gymnasium.make` environments cast observations to
float32 (see [`metagrad.envs`][metagrad.envs]).

References:
  - Finn, Abbeel, Levine. Model-agnostic meta-learning for fast adaptation of deep networks. ICML 2017.
  - Rothfuss, Lee, Clavera, Asfour, Abbeel. ProMP: Proximal meta-policy search. ICLR 2019.
  - Tang, Kozuno, Rowland, Munos, Valko. Unifying gradient estimators for meta-reinforcement learning via
    off-policy evaluation. NeurIPS 2021, Sec. 5 and Fig. 1d.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.experimental.functional import FuncEnv

from metagrad._validation import check_finite

#: The four goals of the ``"corners"`` variant, in ProMP's order.
CORNERS = ((-2.0, -2.0), (2.0, -2.0), (-2.0, 2.0), (2.0, 2.0))

#: Horizon of both variants (Finn et al. 2017; ProMP's ``max_path_length``).
HORIZON = 100

_VARIANTS = {
    # goal_sampler: (max_action, start half-width, default reward, goal tolerance for termination)
    "square": (0.1, 0.0, "dense", 0.01),
    "corners": (0.2, 0.2, "sparse", None),
}


class Navigation2D(FuncEnv):
    """The 2-D point robot whose task is a goal `[2]` (see the module docstring for the maths).

    Pure JAX methods, all jittable and `vmap`-able over the goal:

    * `initial(key, goal) -> s_0 [2]`; `transition(s, a, key, goal) -> s + clip(a·c/S, −c, c)`
      (S = `action_scale`; s + clip(a, −c, c) when it is `None`);
    * `observation(s, key, goal) -> s`; `reward(s, a, s', key, goal) -> []`;
    * `terminal(s', key, goal) -> [] bool` (only the `"square"` variant terminates).

    `goal=None` uses `default_params`: (0.5, 0.5) for `"square"` and (2, 2) for `"corners"`.

    Args:
      goal_sampler: `"square"` (MAML: goals U[−0.5, 0.5]², start at 0, c = 0.1, dense reward,
        termination within 0.01 of the goal) or `"corners"` (ProMP: goals (±2, ±2), start
        U[−0.2, 0.2]², c = 0.2, no termination).
      reward: `"dense"` (−‖s' − g‖) or `"sparse"` (ProMP's corner reward, `"corners"` only);
        `None` picks the reference default (`"dense"` for square, `"sparse"` for corners).
      sparse_radius: ProMP's `sparse_reward_radius` (L1 radius of the reward-free start region).
      action_scale: `None` (the raw action is clipped to ±c) or a positive float S: ProMP's `normalize`
        wrapper, the env receives clip(a·c/S, −c, c) and the action space is [−S, S]². `"default"`
        picks the reference: 10 for `"corners"` (ProMP), `None` for `"square"` (pytorch-maml-rl).

    Examples:
      >>> env = Navigation2D()
      >>> goals = env.sample_tasks(jax.random.PRNGKey(0), 4)            # [4, 2]
      >>> s0 = env.initial(jax.random.PRNGKey(1), goals[0])              # [0., 0.]
      >>> env.reward(s0, jnp.array([0.1, 0.0]), env.transition(s0, jnp.array([0.1, 0.0]), None, goals[0]),
      ...            None, goals[0]).shape
      ()
    """

    def __init__(self, goal_sampler: str = "square", reward: str | None = None, sparse_radius: float = 0.5,
                 action_scale: float | None | str = "default"):
        if goal_sampler not in _VARIANTS:
            raise ValueError(f"`goal_sampler` must be one of {sorted(_VARIANTS)}; got {goal_sampler!r}.")
        max_action, start_width, default_reward, tolerance = _VARIANTS[goal_sampler]
        reward = default_reward if reward is None else reward
        if reward not in ("dense", "sparse"):
            raise ValueError(f"`reward` must be 'dense' or 'sparse'; got {reward!r}.")
        if reward == "sparse" and goal_sampler != "corners":
            raise ValueError("`reward='sparse'` is ProMP's corner reward: use it with `goal_sampler='corners'`.")
        if not float(sparse_radius) >= 0:
            raise ValueError(f"`sparse_radius` must be non-negative; got {sparse_radius}.")
        if isinstance(action_scale, str):
            if action_scale != "default":
                raise ValueError(f"`action_scale` must be None, a positive number or 'default'; got {action_scale!r}.")
            action_scale = 10.0 if goal_sampler == "corners" else None
        if action_scale is not None:
            if isinstance(action_scale, bool) or not (isinstance(action_scale, (int, float)) and np.isfinite(action_scale)
                                                      and action_scale > 0):
                raise ValueError(f"`action_scale` must be None or a positive finite number; got {action_scale!r}.")
            action_scale = float(action_scale)
        self.action_scale = action_scale
        self.goal_sampler = goal_sampler
        self.reward_type = reward
        self.sparse_radius = float(sparse_radius)
        self.max_action = max_action
        self.start_width = start_width
        self.goal_tolerance = tolerance
        super().__init__()
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        bound = max_action if action_scale is None else action_scale
        self.action_space = spaces.Box(-bound, bound, shape=(2,), dtype=np.float32)

    # Environments with equal settings are equal (the goal is an argument), so jitted samplers are reused.
    def _key(self):
        return (type(self), self.goal_sampler, self.reward_type, self.sparse_radius, self.action_scale)

    def __eq__(self, other):
        return isinstance(other, Navigation2D) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Navigation2D(goal_sampler={self.goal_sampler!r}, reward={self.reward_type!r}, "
                f"action_scale={self.action_scale!r})")

    def get_default_params(self, **kwargs) -> jax.Array:
        default = (0.5, 0.5) if self.goal_sampler == "square" else CORNERS[3]
        return jnp.asarray(default, dtype=jnp.result_type(float))

    def sample_tasks(self, key: jax.Array, n: int) -> jax.Array:
        """`n` goals stacked as `[n, 2]`: U[−0.5, 0.5]² (square) or uniform over the four corners.

        Deterministic in `key`; `jax.vmap` the environment's methods over the leading axis.
        """
        n = int(n)
        if n < 1:
            raise ValueError(f"`n` must be a positive number of tasks; got {n}.")
        dtype = jnp.result_type(float)
        if self.goal_sampler == "square":
            return jax.random.uniform(key, (n, 2), dtype, minval=-0.5, maxval=0.5)
        return jnp.asarray(CORNERS, dtype)[jax.random.randint(key, (n,), 0, len(CORNERS))]

    def _goal(self, params):
        return self.default_params if params is None else jnp.asarray(params)

    def initial(self, rng, params=None):
        goal = self._goal(params)
        if self.start_width == 0.0:
            return jnp.zeros((2,), goal.dtype)
        return jax.random.uniform(rng, (2,), goal.dtype, minval=-self.start_width, maxval=self.start_width)

    def transition(self, state, action, rng, params=None):
        check_finite("action", action)  # concrete actions only: under jit a NaN action makes the position NaN
        action = jnp.asarray(action)
        if self.action_scale is not None:  # ProMP's normalize wrapper: lb + (a + S)(ub − lb)/(2S) = a·c/S
            action = action * (self.max_action / self.action_scale)
        return state + jnp.clip(action, -self.max_action, self.max_action).astype(state.dtype)

    def observation(self, state, rng, params=None):
        return state

    def reward(self, state, action, next_state, rng, params=None):
        goal = self._goal(params)
        distance = jnp.linalg.norm(next_state - goal)
        if self.reward_type == "dense":
            return -distance
        corners = jnp.asarray(CORNERS, next_state.dtype)
        nearest = jnp.min(jnp.linalg.norm(next_state - corners, axis=-1))
        paid = (jnp.sum(jnp.abs(next_state)) >= self.sparse_radius) & (distance <= nearest)
        return jnp.where(paid, jnp.linalg.norm(state - goal) - distance, 0.0).astype(distance.dtype)

    def terminal(self, state, rng, params=None):
        if self.goal_tolerance is None:
            return jnp.zeros((), dtype=bool)
        return jnp.all(jnp.abs(state - self._goal(params)) < self.goal_tolerance)

    def render_init(self, params=None, **kwargs):
        return None

    def render_image(self, state, render_state, params=None, size: int = 64):
        """A `[size, size, 3]` uint8 image: the goal in red, the robot in blue (arena ±0.6 or ±2.4)."""
        half = 0.6 if self.goal_sampler == "square" else 2.4
        image = np.full((size, size, 3), 255, dtype=np.uint8)

        def pixel(p):
            p = np.clip((np.asarray(p, dtype=np.float64) + half) / (2 * half), 0, 1 - 1e-9)
            return int((1 - p[1]) * size), int(p[0] * size)

        for point, colour in ((self._goal(params), (220, 30, 30)), (state, (30, 30, 220))):
            row, col = pixel(point)
            image[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = colour
        return render_state, image

    def render_close(self, render_state, params=None):
        return None
