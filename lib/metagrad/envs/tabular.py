"""A tabular MDP as a Gymnasium functional environment; the task is the [`TabularMDP`][metagrad.mdp.TabularMDP] itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.experimental.functional import FuncEnv

from metagrad.mdp import TabularMDP, random_mdp


class TabularMDPEnv(FuncEnv):
    """Pure-function environment over a [`TabularMDP`][metagrad.mdp.TabularMDP] task.

    State and observation are the integer state index; the reward of (x, a) is r(x, a); the next state is
    drawn from P(·|x, a); no state is terminal (episodes end by truncation at the horizon and are
    bootstrapped with a critic). Because the task is the `params` argument of every method,
    `jax.vmap` over a stacked batch of MDPs is a meta-batch.

    An action outside `[0, A)` (a buggy policy) cannot raise under `jit`, and JAX would clamp the
    index silently; instead its reward is NaN and the state does not change, so the error shows in every
    return computed from it.

    Args:
      num_states, num_actions: the sizes S and A (static: they fix the spaces).
      default_task: the MDP used when `params` is `None`; by default `random_mdp(PRNGKey(0), S, A)`.
    """

    def __init__(self, num_states: int = 20, num_actions: int = 5, default_task: TabularMDP | None = None):
        self.num_states = int(num_states)
        self.num_actions = int(num_actions)
        self._default_task = default_task
        super().__init__()
        self.observation_space = spaces.Discrete(self.num_states)
        self.action_space = spaces.Discrete(self.num_actions)

    # Equal sizes give equal environments (the task is an argument), so jitted samplers are reused.
    def __eq__(self, other):
        return type(other) is type(self) and (other.num_states, other.num_actions) == (self.num_states, self.num_actions)

    def __hash__(self):
        return hash((type(self), self.num_states, self.num_actions))

    @classmethod
    def for_task(cls, mdp: TabularMDP) -> "TabularMDPEnv":
        """The environment whose spaces fit `mdp` (with `mdp` as the default task)."""
        num_states, num_actions = jnp.shape(mdp.rewards)[-2:]
        return cls(num_states, num_actions, default_task=mdp)

    def get_default_params(self, **kwargs) -> TabularMDP:
        if self._default_task is not None:
            return self._default_task
        return random_mdp(jax.random.PRNGKey(0), self.num_states, self.num_actions)

    def sample_tasks(self, key: jax.Array, n: int, **mdp_kwargs) -> TabularMDP:
        """`n` random MDPs stacked along a leading axis (keyword arguments go to [`random_mdp`][metagrad.mdp.random_mdp])."""
        keys = jax.random.split(key, n)
        return jax.vmap(lambda k: random_mdp(k, self.num_states, self.num_actions, **mdp_kwargs))(keys)

    def _task(self, params):
        return self.default_params if params is None else params

    def initial(self, rng, params=None):
        mdp = self._task(params)
        return jax.random.categorical(rng, jnp.log(mdp.initial))

    def transition(self, state, action, rng, params=None):
        mdp = self._task(params)
        # Inverse-CDF sampling: one uniform per step instead of S Gumbels (the sampler's main cost).
        cdf = jnp.cumsum(mdp.transitions[state, action])
        u = jax.random.uniform(rng, (), cdf.dtype) * cdf[-1]
        next_state = jnp.minimum(jnp.sum(cdf <= u), cdf.shape[0] - 1)  # first x' with cdf(x') > u
        return jnp.where(_valid_action(action, mdp), next_state.astype(state.dtype), state)

    def observation(self, state, rng, params=None):
        return state

    def reward(self, state, action, next_state, rng, params=None):
        mdp = self._task(params)
        return jnp.where(_valid_action(action, mdp), mdp.rewards[state, action], jnp.nan)

    def terminal(self, state, rng, params=None):
        return jnp.zeros((), dtype=bool)

    def render_init(self, params=None, **kwargs):
        return None

    def render_image(self, state, render_state, params=None):
        image = np.zeros((8, 8 * self.num_states, 3), dtype=np.uint8)
        s = int(state)
        image[:, 8 * s : 8 * (s + 1)] = 255
        return render_state, image

    def render_close(self, render_state, params=None):
        return None


def _valid_action(action, mdp: TabularMDP):
    return (action >= 0) & (action < mdp.rewards.shape[-1])
