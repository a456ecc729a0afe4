"""Checks for notebook 02 — Policy gradients."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks._diagnose import (
    _compare,
    _float,
    _register,
    _random_mdp,
)

__all__ = ['reference_reward_to_go', 'check_reward_to_go', 'check_reinforce_gradient']


def reference_reward_to_go(rewards, gamma, bootstrap=0.0) -> np.ndarray:
    """G_t = r_t + γ G_{t+1}, G_T = bootstrap, written as a plain loop (the readable reference)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(rewards)
    running = float(bootstrap)
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


@_register("02", "reward_to_go")
def check_reward_to_go(reward_to_go: Callable) -> str:
    """``reward_to_go(rewards [T], gamma, bootstrap)`` -> G [T] with G_t = r_t + γ G_{t+1}, G_T = bootstrap."""
    key = jax.random.PRNGKey(3)
    rewards = _float(jax.random.uniform(key, (7,)))
    cases = [
        ("7 random rewards, γ = 0.9, bootstrap 0", (rewards, 0.9, 0.0)),
        ("7 random rewards, γ = 0.5, bootstrap 2.0", (rewards, 0.5, 2.0)),
        ("a single step (T = 1), γ = 0.9, bootstrap 1.0", (_float([0.3]), 0.9, 1.0)),
        ("γ = 0 (G_t = r_t)", (rewards, 0.0, 5.0)),
    ]

    def skips_current(rewards, gamma, bootstrap):
        return reference_reward_to_go(rewards, gamma, bootstrap) - np.asarray(rewards)

    def next_step_return(rewards, gamma, bootstrap):
        return np.append(reference_reward_to_go(rewards, gamma, bootstrap)[1:], bootstrap)

    def undiscounted(rewards, gamma, bootstrap):
        return reference_reward_to_go(rewards, 1.0, bootstrap)

    def forward_sum(rewards, gamma, bootstrap):
        return np.cumsum(np.asarray(rewards) * gamma ** np.arange(len(rewards)))

    def no_bootstrap(rewards, gamma, bootstrap):
        return reference_reward_to_go(rewards, gamma, 0.0)

    mistakes = [
        (skips_current, "It misses r_t itself (off by one): G_t starts with the reward at time t."),
        (next_step_return, "It returns G_{t+1} at step t (off by one): G_t starts with the reward at time t."),
        (undiscounted, "It ignores γ: each step further away is worth one more factor of γ."),
        (forward_sum, "It sums the past (r_0 … r_t) instead of the future (r_t … r_{T−1})."),
        (no_bootstrap, "It ignores `bootstrap`: the tail after the last step is worth γ^(T−t) · bootstrap."),
    ]
    _compare("reward_to_go", reward_to_go, reference_reward_to_go, cases, expected_form="(one return per step)", mistakes=mistakes)
    return "matches G_t = r_t + γ G_{t+1} on 4 inputs (γ = 0.9, 0.5 and 0, T = 1, with and without bootstrap)."


def _reinforce_reference(logits, trajectories, critic, gamma, *, time_indexed=False, discount_weights=True):
    from metagrad.tabular import log_policy

    states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
    horizon = rewards.shape[1]
    returns = jnp.stack(
        [_float(reference_reward_to_go(r, gamma, critic[s[-1]])) for r, s in zip(np.asarray(rewards), np.asarray(states))]
    )
    baseline = critic[jnp.arange(horizon)][None, :] if time_indexed else critic[states[:, :-1]]
    advantages = returns - baseline
    weights = gamma ** jnp.arange(horizon) if discount_weights else jnp.ones(horizon)

    def surrogate(theta):
        log_pi = log_policy(theta, states[:, :-1], actions)
        return jnp.mean(jnp.sum(weights * advantages * log_pi, axis=1))

    return jax.grad(surrogate)(logits)


@_register("02", "reinforce_gradient")
def check_reinforce_gradient(reinforce_gradient: Callable) -> str:
    """``reinforce_gradient(logits, trajectories, critic, gamma)`` -> (1/N) Σ_i Σ_t γ^t Â_t ∇ℓ_t, shape [S, A]."""
    from metagrad.rollout import sample, tabular_softmax_policy

    rng = np.random.default_rng(4)
    mdp = _random_mdp(rng, 5, 3, 0.9)
    logits = _float(rng.normal(size=(5, 3)))
    batch = sample(jax.random.PRNGKey(4), mdp, tabular_softmax_policy, logits, 16, 6)
    # A critic whose entries differ per state, so indexing it by time instead of by state is caught.
    critic = _float(np.linspace(0.5, 2.0, 5))
    one = batch._replace(
        observations=batch.observations[:1, :5],
        actions=batch.actions[:1, :4],
        rewards=batch.rewards[:1, :4],
        log_probs=batch.log_probs[:1, :4],
        terminated=None,
    )
    cases = [
        ("16 trajectories of length 6 in a 5-state MDP, γ = 0.9", (logits, batch, critic, 0.9)),
        ("a single trajectory of length 4, γ = 0.5", (logits, one, critic, 0.5)),
    ]
    cases.append(("the same batch with a zero critic (plain REINFORCE)", (cases[0][1][0], cases[0][1][1], jnp.zeros(5), 0.9)))

    mistakes = [
        (
            lambda *a: _reinforce_reference(*a, time_indexed=True),
            "It matches a critic indexed by time, critic[t]: the baseline must be the value of the state, critic[x_t].",
        ),
        (
            lambda *a: _reinforce_reference(*a, discount_weights=False),
            "It is missing the γ^t weight in front of each term: the policy-gradient theorem discounts "
            "the time at which the action is taken.",
        ),
    ]
    _compare(
        "reinforce_gradient",
        reinforce_gradient,
        _reinforce_reference,
        cases,
        expected_form="(same as logits, [S, A])",
        mistakes=mistakes,
    )
    return "matches (1/N) Σ_i Σ_t γ^t (G_t − V(x_t)) ∇ log π(a_t|x_t) on 3 batches (incl. one trajectory and a zero critic)."
