"""Inputs that would make every number NaN, or read another state's numbers, are refused with an error naming
the argument (issue 13 §2). Each case here returned NaN or a clamped value before."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import estimators, mdp, ope, policies
from metagrad.envs import Navigation2D
from metagrad.rollout import Trajectories


def test_random_mdp_refuses_infinite_dirichlet_and_reward_scale():
    with pytest.raises(ValueError, match="`dirichlet`"):
        mdp.random_mdp(jax.random.PRNGKey(0), 3, 2, dirichlet=float("inf"))
    # Found by Hypothesis (test_properties.py): a denormal concentration made every transition NaN.
    with pytest.raises(ValueError, match="`dirichlet`"):
        mdp.random_mdp(jax.random.PRNGKey(0), 3, 2, dirichlet=2.2250738585e-313)
    tiny = mdp.random_mdp(jax.random.PRNGKey(0), 3, 2, dirichlet=mdp.MIN_DIRICHLET)
    np.testing.assert_allclose(np.asarray(tiny.transitions).sum(-1), 1.0)
    with pytest.raises(ValueError, match="`reward_scale`"):
        mdp.random_mdp(jax.random.PRNGKey(0), 3, 2, reward_scale=float("nan"))


def test_tabular_softmax_refuses_out_of_range_states_and_actions_outside_jit():
    policy = policies.TabularSoftmax(3, 2)
    logits = jnp.arange(6.0).reshape(3, 2)
    with pytest.raises(ValueError, match="`obs`.*\\[0, 3\\)"):
        policy.log_prob(logits, jnp.array([0, 7]), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="`action`.*\\[0, 2\\)"):
        policy.log_prob(logits, jnp.array([0, 1]), jnp.array([0, 2]))
    with pytest.raises(ValueError, match="`obs`"):
        policy.log_probs_all(logits, jnp.array(-1))
    # In range: unchanged, and still jittable (no value checks on tracers).
    expected = jax.nn.log_softmax(logits[jnp.array([0, 2])], axis=-1)[jnp.arange(2), jnp.array([1, 0])]
    np.testing.assert_allclose(policy.log_prob(logits, jnp.array([0, 2]), jnp.array([1, 0])), expected)
    np.testing.assert_allclose(jax.jit(policy.log_prob)(logits, jnp.array([0, 2]), jnp.array([1, 0])), expected)


def test_gaussian_policy_refuses_nan_actions():
    policy = policies.GaussianMLP(2, 2, (4,))
    params = policy.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="`action`"):
        policy.log_prob(params, jnp.zeros(2), jnp.array([jnp.nan, 0.0]))


def test_navigation_refuses_nan_actions_when_concrete():
    env = Navigation2D()
    with pytest.raises(ValueError, match="`action`"):
        env.transition(jnp.zeros(2), jnp.array([jnp.nan, 0.0]), None, env.default_params)
    np.testing.assert_allclose(env.transition(jnp.zeros(2), jnp.array([0.5, -0.05]), None), [0.1, -0.05])


def _batch(rewards):
    n, t = rewards.shape
    return Trajectories(jnp.zeros((n, t + 1), jnp.int32), jnp.zeros((n, t), jnp.int32), rewards, jnp.zeros((n, t)))


def test_surrogate_refuses_nan_rewards_values_and_behaviour():
    log_prob = lambda p, o, a: jax.nn.log_softmax(p)[o, a]  # noqa: E731
    params = jnp.zeros((1, 2))
    good = _batch(jnp.ones((2, 3)))
    values = jnp.zeros((2, 4))
    assert np.isfinite(estimators.surrogate("dr", log_prob, params, good, values, 0.9))
    with pytest.raises(ValueError, match="`trajectories.rewards`"):
        estimators.surrogate("dr", log_prob, params, _batch(jnp.full((2, 3), jnp.nan)), values, 0.9)
    with pytest.raises(ValueError, match="`values`"):
        estimators.surrogate("dr", log_prob, params, good, values.at[0, 0].set(jnp.inf), 0.9)
    with pytest.raises(ValueError, match="`behaviour_log_probs`"):
        estimators.surrogate("dr", log_prob, params, good, values, 0.9,
                             behaviour_log_probs=jnp.full((2, 3), jnp.nan))


def test_ope_refuses_nan_log_ratios_but_accepts_minus_infinity():
    with pytest.raises(ValueError, match="`log_ratios`"):
        ope.doubly_robust(jnp.array([0.0, jnp.nan]), jnp.ones(2), jnp.zeros(3), 0.9)
    # log π = −∞ (an action π never takes): ρ = 0, a finite estimate.
    assert float(ope.step_importance_sampling(jnp.array([-jnp.inf, 0.0]), jnp.ones(2), jnp.zeros(3), 0.9)) == 0.0
