"""Policies: log-probabilities, sampling, entropy and KL against naive formulas written here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metagrad import rollout
from metagrad.envs import Navigation2D
from metagrad.mdp import random_mdp
from metagrad.policies import CategoricalMLP, GaussianMLP, TabularSoftmax, as_policy_fn, mlp_apply


def naive_gaussian_log_prob(mean, std, action):
    total = 0.0
    for m, s, a in zip(mean, std, action):
        total += -((a - m) ** 2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)
    return total


def test_gaussian_log_prob_sample_entropy_kl():
    policy = GaussianMLP(obs_dim=3, action_dim=2, hidden_sizes=(5, 4))
    params = policy.init(jax.random.PRNGKey(0))
    params["log_std"] = jnp.array([-0.3, 0.2])
    obs = jnp.array([0.1, -0.4, 0.7])
    action, log_prob = policy.sample(params, jax.random.PRNGKey(1), obs)
    mean = np.asarray(mlp_apply(params["mean"], obs))
    std = np.exp(np.asarray(params["log_std"]))
    expected = naive_gaussian_log_prob(mean, std, np.asarray(action))
    np.testing.assert_allclose(log_prob, expected, rtol=1e-10)
    np.testing.assert_allclose(policy.log_prob(params, obs, action), expected, rtol=1e-10)
    np.testing.assert_allclose(policy.entropy(params, obs), sum(np.log(std) + 0.5 * math.log(2 * math.pi * math.e)))
    # KL: zero for equal policies, closed form against a Monte Carlo estimate otherwise.
    other = jax.tree_util.tree_map(lambda x: x + 0.1, params)
    assert abs(float(policy.kl(params, params, obs))) < 1e-12
    keys = jax.random.split(jax.random.PRNGKey(2), 200_000)
    actions, logp_a = jax.vmap(policy.sample, in_axes=(None, 0, None))(params, keys, obs)
    mc = jnp.mean(logp_a - policy.log_prob(other, obs, actions))
    np.testing.assert_allclose(policy.kl(params, other, obs), mc, atol=5e-3)


def test_gaussian_batched_and_jitted_log_prob():
    policy = GaussianMLP(2, 2, (8,))
    params = policy.init(jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, 7, 2))
    actions = jax.random.normal(jax.random.PRNGKey(2), (4, 7, 2))
    batched = policy.log_prob(params, obs, actions)
    assert batched.shape == (4, 7)
    loop = np.array([[policy.log_prob(params, obs[i, t], actions[i, t]) for t in range(7)] for i in range(4)])
    np.testing.assert_allclose(batched, loop, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(policy.log_prob)(params, obs, actions), batched, rtol=1e-12)


@pytest.mark.parametrize("kind", ["tabular", "categorical"])
def test_discrete_policies_against_naive_softmax(kind):
    if kind == "tabular":
        policy = TabularSoftmax(4, 3, init_scale=1.0)
        obs = jnp.array([0, 2, 3])
        params = policy.init(jax.random.PRNGKey(0))
        logits = np.asarray(params)[np.asarray(obs)]
    else:
        policy = CategoricalMLP(2, 3, (6,))
        obs = jnp.array([[0.1, 0.2], [-1.0, 0.5], [0.3, 0.3]])
        params = policy.init(jax.random.PRNGKey(0))
        params[-1]["w"] = params[-1]["w"] * 100  # make the policy far from uniform
        logits = np.asarray(mlp_apply(params, obs))
    other = jax.tree_util.tree_map(lambda x: x * 0.5 + 0.1, params)
    other_logits = np.asarray(other)[np.asarray(obs)] if kind == "tabular" else np.asarray(mlp_apply(other, obs))
    actions = jnp.array([0, 1, 2])
    for i in range(3):
        p = np.exp(logits[i]) / np.exp(logits[i]).sum()
        q = np.exp(other_logits[i]) / np.exp(other_logits[i]).sum()
        np.testing.assert_allclose(policy.log_prob(params, obs, actions)[i], np.log(p[int(actions[i])]), rtol=1e-10)
        np.testing.assert_allclose(policy.entropy(params, obs)[i], -(p * np.log(p)).sum(), rtol=1e-10)
        np.testing.assert_allclose(policy.kl(params, other, obs)[i], (p * np.log(p / q)).sum(), rtol=1e-9)
    action, log_prob = policy.sample(params, jax.random.PRNGKey(3), obs[0])
    np.testing.assert_allclose(log_prob, policy.log_prob(params, obs[0], action), rtol=1e-12)


def test_policy_fn_adapter_with_rollout_and_optax():
    env = Navigation2D()
    policy = GaussianMLP(2, 2, (8, 8))
    params = policy.init(jax.random.PRNGKey(0))
    batch = rollout.sample(jax.random.PRNGKey(1), env, as_policy_fn(policy), params, 3, 5, task=jnp.array([0.2, 0.3]))
    recomputed = policy.log_prob(params, batch.observations[:, :-1], batch.actions)
    np.testing.assert_allclose(recomputed, batch.log_probs, rtol=1e-9, atol=1e-12)
    # A plain pytree: an optax step on the mean log-probability works and changes every leaf.
    loss = lambda p: -jnp.mean(policy.log_prob(p, batch.observations[:, :-1], batch.actions))  # noqa: E731
    opt = optax.adam(1e-2)
    updates, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
    new = optax.apply_updates(params, updates)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
    assert all(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(params)))
    # The tabular policy is a PolicyFn for tabular MDPs too.
    tab = TabularSoftmax(20, 5)
    mdp = random_mdp(jax.random.PRNGKey(2))
    batch = rollout.sample(jax.random.PRNGKey(3), mdp, tab.sample, tab.init(jax.random.PRNGKey(4)), 4, 6)
    np.testing.assert_allclose(batch.log_probs, np.log(1 / 5), rtol=1e-12)


def test_policy_size_errors():
    with pytest.raises(ValueError, match="obs_dim"):
        GaussianMLP(0, 2)
    with pytest.raises(ValueError, match="hidden_sizes"):
        GaussianMLP(2, 2, (64, -1))
    with pytest.raises(ValueError, match="num_actions"):
        TabularSoftmax(3, 0)
    with pytest.raises(ValueError, match="num_actions"):
        CategoricalMLP(2, 1.5)


# ------------------------------------------------------------------ distributions and init/apply policies (issue 20 §1)
def test_diag_gaussian_of_any_action_shape_against_naive_formulas():
    from metagrad.policies import DiagGaussian

    key = jax.random.PRNGKey(0)
    mean, log_std = jax.random.normal(key, (4, 2, 3)), 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (2, 3))
    other = DiagGaussian(mean + 0.5, log_std - 0.2, event_ndim=2)
    dist = DiagGaussian(mean, log_std, event_ndim=2)
    action = jax.random.normal(jax.random.fold_in(key, 2), (4, 2, 3))
    m, s, a = np.asarray(mean), np.exp(np.asarray(log_std)), np.asarray(action)
    for b in range(4):
        log_p = sum(-0.5 * ((a[b, i, j] - m[b, i, j]) / s[i, j]) ** 2 - np.log(s[i, j]) - 0.5 * np.log(2 * np.pi)
                    for i in range(2) for j in range(3))
        np.testing.assert_allclose(dist.log_prob(action)[b], log_p, rtol=1e-10)
        s_b, m_b = s * np.exp(-0.2), m + 0.5
        kl = sum(np.log(s_b[i, j] / s[i, j]) + (s[i, j] ** 2 + (m[b, i, j] - m_b[b, i, j]) ** 2) / (2 * s_b[i, j] ** 2)
                 - 0.5 for i in range(2) for j in range(3))
        np.testing.assert_allclose(dist.kl(other)[b], kl, rtol=1e-10)
        np.testing.assert_allclose(dist.entropy()[b], np.sum(np.log(s) + 0.5 * np.log(2 * np.pi * np.e)), rtol=1e-10)
    sample, log_p = dist.sample_and_log_prob(jax.random.PRNGKey(3))
    assert sample.shape == (4, 2, 3)
    np.testing.assert_allclose(log_p, dist.log_prob(sample), rtol=1e-10)


def test_categorical_against_naive_formulas():
    from metagrad.policies import Categorical

    logits = jnp.array([[0.1, 2.0, -1.0], [0.0, 0.0, 0.0]])
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True)
    q = np.full((2, 3), 1 / 3)
    dist, uniform = Categorical(logits), Categorical(jnp.zeros((2, 3)))
    np.testing.assert_allclose(dist.log_prob(jnp.array([1, 2])), np.log([p[0, 1], p[1, 2]]), rtol=1e-10)
    np.testing.assert_allclose(dist.kl(uniform), [sum(p[b, a] * np.log(p[b, a] / q[b, a]) for a in range(3))
                                                  for b in range(2)], rtol=1e-10)
    np.testing.assert_allclose(dist.entropy(), -np.sum(p * np.log(p), -1), rtol=1e-10)


def test_functional_policy_maps_a_one_observation_apply_over_batch_axes():
    import gymnasium

    from metagrad.policies import DiagGaussian, FunctionalPolicy

    def init(key, observation_space, action_space):
        return {"w": jax.random.normal(key, observation_space.shape + action_space.shape), "log_std": jnp.zeros(2)}

    def apply(params, obs):
        assert obs.shape == (3,)  # written for one observation
        return DiagGaussian(obs @ params["w"], params["log_std"])

    policy = FunctionalPolicy.bind(init, apply, gymnasium.spaces.Box(-1, 1, (3,)), gymnasium.spaces.Box(-1, 1, (2,)))
    params = policy.init(jax.random.PRNGKey(0))
    obs, actions = jnp.ones((5, 4, 3)), jnp.zeros((5, 4, 2))
    log_p = policy.log_prob(params, obs, actions)
    assert log_p.shape == (5, 4)
    np.testing.assert_allclose(log_p[2, 1], apply(params, obs[2, 1]).log_prob(actions[2, 1]), rtol=1e-12)
    assert policy.kl(params, params, obs).shape == (5, 4)
    with pytest.raises(ValueError, match=r"`obs` must have shape \[..., 3\]"):
        policy.log_prob(params, jnp.ones((5, 2)), jnp.zeros((5, 2)))
