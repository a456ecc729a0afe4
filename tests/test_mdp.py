"""Tests of metagrad.mdp: validation, random MDPs, exact policy evaluation and occupancies.

The reference implementations are naive loops written here: iterate the Bellman operator
V ← r^π + γ P^π V and accumulate d = Σ_t γ^t p_t with p_{t+1} = (P^π)ᵀ p_t until convergence.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import mdp as mdp_lib
from metagrad.mdp import TabularMDP

# Compiled once per (S, A, start_state): eager op-by-op Dirichlet sampling is slow on small CPUs.
random_mdp = jax.jit(mdp_lib.random_mdp, static_argnums=(1, 2), static_argnames=("start_state",))


def numpy_mdp(seed, num_states, num_actions, alpha=1.0, gamma=0.8, uniform_start=False):
    """A random MDP drawn with NumPy (fast, no compilation): Dirichlet(alpha) rows, U[0, 1) rewards."""
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.full(num_states, alpha), size=(num_states, num_actions))
    initial = np.full(num_states, 1 / num_states) if uniform_start else np.eye(num_states)[0]
    return TabularMDP(transitions, rng.uniform(size=(num_states, num_actions)), initial, gamma)


def small_mdp():
    transitions = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.0, 1.0]]])
    rewards = np.array([[1.0, 0.0], [0.5, 2.0]])
    return TabularMDP(transitions, rewards, np.array([1.0, 0.0]), 0.9)


def naive_policy_evaluation(transitions, rewards, policy, gamma, sweeps=300):
    """V(x) ← Σ_a π(a|x) [r(x, a) + γ Σ_x' P(x'|x, a) V(x')], one state and action at a time."""
    num_states, num_actions, _ = transitions.shape
    v = np.zeros(num_states)
    for _ in range(sweeps):
        new = np.zeros(num_states)
        for x in range(num_states):
            for a in range(num_actions):
                new[x] += policy[x, a] * (rewards[x, a] + gamma * transitions[x, a] @ v)
        v = new
    q = rewards + gamma * np.einsum("sat,t->sa", transitions, v)
    return v, q


def naive_occupancy(transitions, initial, policy, gamma, steps=300):
    """d(x) = Σ_t γ^t Pr(x_t = x), propagating the state distribution one step at a time."""
    p_pi = np.einsum("sa,sat->st", policy, transitions)
    dist, total = np.array(initial, dtype=np.float64), np.zeros(len(initial))
    for t in range(steps):
        total += gamma**t * dist
        dist = p_pi.T @ dist
    return total


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(transitions=np.ones((2, 2)) / 2), "transitions"),  # wrong rank
        (dict(transitions=np.ones((2, 2, 3)) / 3), "transitions"),  # S' != S
        (dict(rewards=np.zeros((2, 3))), "rewards"),
        (dict(initial=np.ones(3) / 3), "initial"),
        (dict(gamma=np.array([0.9, 0.9])), "gamma"),
        (dict(gamma=1.0), "gamma"),
        (dict(gamma=-0.1), "gamma"),
        (dict(rewards=np.array([[np.nan, 0.0], [0.0, 0.0]])), "rewards"),
        (dict(rewards=np.array([[np.inf, 0.0], [0.0, 0.0]])), "rewards"),
        (dict(transitions=np.array([[[1.2, -0.2], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]])), "transitions"),
        (dict(transitions=np.array([[[0.5, 0.4], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]])), "transitions"),
        (dict(initial=np.array([0.5, 0.6])), "initial"),
        (dict(initial=np.array([1.5, -0.5])), "initial"),
    ],
)
def test_validation_names_the_argument(change, name):
    fields = dict(zip(("transitions", "rewards", "initial", "gamma"), small_mdp()))
    fields.update(change)
    with pytest.raises(ValueError, match=f"`{name}`"):
        TabularMDP(**fields)


def test_valid_mdp_is_a_pytree_and_immutable():
    mdp = small_mdp()
    assert (mdp.num_states, mdp.num_actions) == (2, 2)
    leaves = jax.tree_util.tree_leaves(mdp)
    assert len(leaves) == 4 and all(leaf.dtype == jnp.float64 for leaf in leaves)
    with pytest.raises(AttributeError):
        mdp.gamma = 0.5
    assert float(mdp._replace(gamma=0.5).gamma) == 0.5
    with pytest.raises(ValueError, match="`gamma`"):
        mdp._replace(gamma=1.5)
    # Integer inputs are converted to floats; γ = 0 is allowed.
    mdp0 = TabularMDP(np.ones((2, 1, 2), int) // 1 / 2, np.zeros((2, 1), int), np.array([1, 0]), 0)
    assert jnp.issubdtype(mdp0.rewards.dtype, jnp.floating)


def test_policy_shape_is_checked():
    with pytest.raises(ValueError, match="`policy`"):
        mdp_lib.policy_evaluation(small_mdp(), jnp.ones((3, 2)) / 2)


# --------------------------------------------------------------------------- random_mdp


@pytest.mark.parametrize("num_states", [10, 20])  # the paper's text and its released code
def test_random_mdp_paper_settings(num_states):
    mdp = random_mdp(jax.random.PRNGKey(num_states), num_states, 5)
    TabularMDP(*mdp)  # passes full validation
    assert mdp.transitions.shape == (num_states, 5, num_states)
    assert float(mdp.gamma) == 0.8
    np.testing.assert_array_equal(mdp.initial, np.eye(num_states)[0])
    assert np.all(np.asarray(mdp.rewards) >= 0) and np.all(np.asarray(mdp.rewards) < 1)
    # Dirichlet(0.001) rows are nearly deterministic: almost all mass on one next state.
    assert np.median(np.max(np.asarray(mdp.transitions), axis=-1)) > 0.99
    assert np.all(np.isfinite(mdp.transitions))


def test_random_mdp_options_and_determinism():
    key = jax.random.PRNGKey(3)
    a, b = random_mdp(key, 4, 3), random_mdp(key, 4, 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = random_mdp(jax.random.PRNGKey(4), 4, 3)
    assert not np.allclose(a.rewards, c.rewards)
    mdp = random_mdp(key, 6, 2, gamma=0.5, dirichlet=1.0, reward_scale=3.0, start_state=None)
    np.testing.assert_allclose(mdp.initial, np.full(6, 1 / 6))
    assert float(mdp.gamma) == 0.5 and np.max(mdp.rewards) < 3.0 and np.max(mdp.rewards) > 1.0
    # Dirichlet(1) rows are spread out, unlike the paper's Dirichlet(0.001).
    assert np.median(np.max(np.asarray(mdp.transitions), axis=-1)) < 0.9


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_states=0), "num_states"),
        (dict(dirichlet=0.0), "dirichlet"),
        (dict(gamma=1.0), "gamma"),
        (dict(start_state=5, num_states=5), "start_state"),
    ],
)
def test_random_mdp_rejects_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        mdp_lib.random_mdp(jax.random.PRNGKey(0), **kwargs)


# --------------------------------------------------------------------------- exact evaluation


def test_policy_evaluation_hand_values():
    # One state, one action, reward 1: V = 1 / (1 − γ).
    mdp = TabularMDP(np.ones((1, 1, 1)), np.ones((1, 1)), np.ones(1), 0.75)
    v, q = mdp_lib.policy_evaluation(mdp, jnp.ones((1, 1)))
    np.testing.assert_allclose(v, [4.0])
    np.testing.assert_allclose(q, [[4.0]])


@pytest.mark.parametrize("seed", [0, 1])
def test_policy_evaluation_matches_naive_bellman_iteration(seed):
    key_pi = jax.random.PRNGKey(seed)
    mdp = numpy_mdp(seed, 10, 5, alpha=0.3 if seed else 0.01)
    policy = mdp_lib.softmax_policy(jax.random.normal(key_pi, (10, 5)))
    v, q = mdp_lib.policy_evaluation(mdp, policy)
    v_ref, q_ref = naive_policy_evaluation(*map(np.asarray, (mdp.transitions, mdp.rewards, policy, mdp.gamma)))
    np.testing.assert_allclose(v, v_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(q, q_ref, rtol=1e-10, atol=1e-10)
    # V = Σ_a π Q, the consistency of the two outputs.
    np.testing.assert_allclose(v, jnp.sum(policy * q, axis=-1), rtol=1e-12)


@pytest.mark.parametrize("uniform_start", [False, True])
def test_occupancy_matches_naive_loop_and_sums_to_horizon(uniform_start):
    key_pi = jax.random.PRNGKey(7)
    mdp = numpy_mdp(7, 20, 5, alpha=0.05, uniform_start=uniform_start)
    policy = mdp_lib.softmax_policy(jax.random.normal(key_pi, (20, 5)))
    d = mdp_lib.discounted_occupancy(mdp, policy)
    gamma = float(mdp.gamma)
    np.testing.assert_allclose(jnp.sum(d), 1 / (1 - gamma), rtol=1e-12)
    d_ref = naive_occupancy(np.asarray(mdp.transitions), np.asarray(mdp.initial), np.asarray(policy), gamma)
    np.testing.assert_allclose(d, d_ref, rtol=1e-10, atol=1e-12)
    dsa = mdp_lib.state_action_occupancy(mdp, policy)
    assert dsa.shape == (20, 5)
    np.testing.assert_allclose(dsa, d_ref[:, None] * np.asarray(policy), rtol=1e-10, atol=1e-12)
    # J = Σ_x,a d(x, a) r(x, a) = p_0ᵀ V: the dual form of the value.
    v, _ = mdp_lib.policy_evaluation(mdp, policy)
    np.testing.assert_allclose(jnp.sum(dsa * mdp.rewards), mdp.initial @ v, rtol=1e-12)


def test_policy_transitions_and_stack():
    mdp = small_mdp()
    policy = jnp.array([[0.25, 0.75], [1.0, 0.0]])
    p_pi, r_pi = mdp_lib.policy_transitions(mdp, policy)
    np.testing.assert_allclose(p_pi, [[0.25 * 0.9 + 0.75 * 0.2, 0.25 * 0.1 + 0.75 * 0.8], [0.5, 0.5]])
    np.testing.assert_allclose(r_pi, [0.25, 0.5])
    batch = mdp_lib.stack([mdp, mdp._replace(gamma=0.5)])
    assert batch.transitions.shape == (2, 2, 2, 2)
    values = jax.vmap(lambda m: mdp_lib.policy_evaluation(m, policy)[0])(batch)
    np.testing.assert_allclose(values[0], mdp_lib.policy_evaluation(mdp, policy)[0])
    assert not np.allclose(values[0], values[1])
