"""Plug your own task family into :func:`metagrad.maml.train` (issue 12 §3): a 2-D continuous bandit.

Each task is a random optimum c ~ U[−1, 1]²; one step per episode; reward r = −‖a − c‖². The task family is the
class below (a Gymnasium ``FuncEnv`` whose methods take the task as ``params``, plus ``sample_tasks``; any object
of :mod:`metagrad.envs.protocol` works too, see ``maml_bring_your_own.py``); the policy, critic and outer optimiser
are passed the same way, with ``MAMLConfig(env=None)``. Run: ``python examples/maml_custom_bandit.py``.
"""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import optax
from gymnasium.experimental.functional import FuncEnv

from metagrad import maml
from metagrad.policies import GaussianMLP


class Bandit2D(FuncEnv):
    """Task = optimum c [2]; state = a dummy [1]; r(a) = −‖a − c‖²."""

    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (1,))
    action_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,))

    def sample_tasks(self, key, n):
        return jax.random.uniform(key, (n, 2), minval=-1.0, maxval=1.0)

    def initial(self, rng, params=None):
        return jnp.zeros((1,))

    def transition(self, state, action, rng, params=None):
        return state

    def observation(self, state, rng, params=None):
        return state

    def reward(self, state, action, next_state, rng, params=None):
        return -jnp.sum((action - params) ** 2)

    def terminal(self, state, rng, params=None):
        return jnp.zeros((), bool)


def mean_reward_critic(trajectories, gamma, *, task=None, policy=None, params=None):
    """A constant baseline: the batch-mean return at every step, 0 after the last step (horizon 1)."""
    values = jnp.full(trajectories.rewards.shape, jnp.mean(trajectories.rewards))
    return jnp.concatenate([values, jnp.zeros_like(values[:, :1])], axis=1)


def train(iterations=40, seed=0):
    config = maml.MAMLConfig(env=None, inner_estimator="dr", outer="pg", inner_steps=1, inner_step_size=0.5, num_tasks=8,
                             num_trajectories=20, horizon=1, num_iterations=iterations, checkpoint_every=iterations)
    return maml.train(config, jax.random.PRNGKey(seed), env=Bandit2D(), policy=GaussianMLP(1, 2, (16,)),
                      critic=mean_reward_critic, optimizer=optax.adam(3e-2), progress=False)


if __name__ == "__main__":
    _, history = train()
    print("post-adaptation return, first and last iteration:", history["post_return"][[0, -1]])
