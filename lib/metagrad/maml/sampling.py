"""The data of one meta-iteration: [`TaskData`][metagrad.maml.sampling.TaskData] (one task's pre- and post-update batches with their critic
values and behaviour log-probabilities) and the summaries read from a batch ([`mean_return`][metagrad.maml.sampling.mean_return])."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metagrad.rollout import Trajectories


class TaskData(NamedTuple):
    """One task's batches: `pre[k]` sampled with π_θk (k < K), `post` with π_θ'.

    `*_values [N, T+1]` are the critic's values (stop-gradient) and `*_log_probs [N, T]` the
    log-probabilities log π_old(a_t|x_t) of the sampling policy, recomputed by `policy.log_prob` (the
    behaviour policy μ of the off-policy surrogates used by ProMP's later steps and TRPO's line search).
    `dropped_steps`: with `MAMLConfig(sampling="steps")`, the steps of episodes that did not fit in
    `max_episodes` rows, summed over the task's batches (else None).
    """

    pre: tuple
    pre_values: tuple
    pre_log_probs: tuple
    post: Trajectories
    post_values: jax.Array
    post_log_probs: jax.Array
    dropped_steps: jax.Array | None = None


def observations(batch: Trajectories):
    return jax.tree_util.tree_map(lambda x: x[:, :-1], batch.observations)


def mean_return(batch: Trajectories, gamma: float | None = None) -> jax.Array:
    """Mean over episodes of Σ_t m_t r_t (undiscounted when `gamma` is None, else Σ_t m_t γ^t r_t), m the
    valid-step mask (padding after a termination excluded; empty rows of a fixed-steps batch weigh 0)."""
    rewards = batch.rewards * batch.mask()
    if gamma is not None:
        rewards = rewards * gamma ** jnp.arange(batch.horizon, dtype=batch.rewards.dtype)
    if batch.valid is None:
        return jnp.mean(jnp.sum(rewards, axis=-1))
    return jnp.sum(batch.weights() * jnp.sum(rewards, axis=-1))
