"""Bring your own environment, policy and outer optimiser to :func:`metagrad.maml.train` (no metagrad base class).

* The task family — a point on a line walks to a goal g ~ U[−1, 1] (the task), reward −|x' − g|, the episode
  *terminates* within 0.05 of the goal — is the plain class :class:`Walk1D` following
  :mod:`metagrad.envs.protocol` (``reset``/``step``/spaces/``sample_tasks``, pure JAX).
* The policy is a pair of pure functions: a dependency-free tanh MLP (:func:`init`) returning a diagonal
  Gaussian (:func:`apply`); log-probabilities, KL and entropy come from the distribution.
* The outer optimiser is any optax transformation (here Adam with gradient clipping) for the policy-gradient
  outer step.

``objective="paper"`` (the default) sums Γ_t Â_t over the T steps of a trajectory with raw advantages, so the
inner step size η must be about T times smaller than in ProMP's ``reduce_mean`` form (``objective="promp"``,
advantages normalised): ``INNER_STEP_SIZE`` below is our choice for T = 20 and rewards of order 1.

Run: ``python examples/maml_bring_your_own.py``.
"""

import gymnasium
import jax
import jax.numpy as jnp
import optax

from metagrad import maml
from metagrad.distributions import DiagGaussian

HORIZON = 20
INNER_STEP_SIZE = 0.02


class Walk1D:
    """Task = goal g (a scalar); state = observation = position [1]; x' = x + clip(a, −0.2, 0.2)."""

    def reset(self, key, params):
        x = jnp.zeros((1,))
        return x, x

    def step(self, key, state, action, params):
        x = state + jnp.clip(action, -0.2, 0.2)
        distance = jnp.abs(x[0] - params)
        return x, x, -distance, distance < 0.05, {}

    def observation_space(self, params):
        return gymnasium.spaces.Box(-jnp.inf, jnp.inf, (1,))

    def action_space(self, params):
        return gymnasium.spaces.Box(-jnp.inf, jnp.inf, (1,))

    def sample_tasks(self, key, n):
        return jax.random.uniform(key, (n,), minval=-1.0, maxval=1.0)


def init(key, observation_space, action_space, hidden=16):
    """A tanh MLP obs → hidden → action mean, and a learned log σ (σ = 0.5 at the start)."""
    k1, k2 = jax.random.split(key)
    d_in, d_out = observation_space.shape[0], action_space.shape[0]
    return {"w1": jax.random.normal(k1, (d_in, hidden)) / jnp.sqrt(d_in), "b1": jnp.zeros(hidden),
            "w2": 0.01 * jax.random.normal(k2, (hidden, d_out)), "b2": jnp.zeros(d_out),
            "log_std": jnp.full((d_out,), jnp.log(0.5))}


def apply(params, obs):
    """π_θ(·|x) for one observation: N(MLP(x), diag σ²)."""
    hidden = jnp.tanh(obs @ params["w1"] + params["b1"])
    return DiagGaussian(hidden @ params["w2"] + params["b2"], params["log_std"])


def train(iterations=30, seed=0, **overrides):
    """Meta-train on :class:`Walk1D` with the policy above; returns ``(params, history)`` of :func:`maml.train`."""
    fields = dict(env=None, inner_estimator="dr", outer="pg", inner_steps=1, inner_step_size=INNER_STEP_SIZE,
                  num_tasks=8, num_trajectories=10, horizon=HORIZON, gamma=0.95, num_iterations=iterations,
                  checkpoint_every=iterations)
    config = maml.MAMLConfig(**{**fields, **overrides})
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-2))
    return maml.train(config, jax.random.PRNGKey(seed), env=Walk1D(), policy=(init, apply), optimizer=optimizer,
                      progress=False)


if __name__ == "__main__":
    _, history = train()
    print("post-adaptation return, first and last iteration:", history["post_return"][[0, -1]])
