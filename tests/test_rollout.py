"""Tests of metagrad.rollout: statistics of sampled trajectories, determinism, vmap, termination.

Statistical tests are seeded and use tolerances derived from the standard error (s.e.) of the estimate,
and each also checks that a *wrong* answer would be rejected, so they neither flake nor pass vacuously.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.experimental.functional import FuncEnv

from metagrad import mdp as mdp_lib
from metagrad.envs import Navigation2D, TabularMDPEnv
from metagrad.rollout import Trajectories, sample, tabular_softmax_policy

S, A = 6, 3
# Most tests share one (N, T) so the sampler compiles once per program shape (compiling dominates here).
N, T = 16, 5


def numpy_mdp(seed, gamma=0.8):
    """A random MDP drawn with NumPy: Dirichlet(1) rows and a uniform start, so every (x, a) is visited."""
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.ones(S), size=(S, A))
    return mdp_lib.TabularMDP(transitions, rng.uniform(size=(S, A)), np.full(S, 1 / S), gamma)


@pytest.fixture(scope="module")
def tabular():
    return numpy_mdp(0), jax.random.normal(jax.random.PRNGKey(0), (S, A))


@pytest.fixture(scope="module")
def big_batch(tabular):
    """20 000 trajectories of 60 steps (γ^60/(1−γ) < 1e-5: the truncated occupancy is the full one)."""
    mdp, logits = tabular
    return sample(jax.random.PRNGKey(1), mdp, tabular_softmax_policy, logits, 20_000, 60)


def discounted_visits(batch: Trajectories, gamma: float) -> np.ndarray:
    """Per-trajectory X_n(x, a) = Σ_t γ^t 1[x_t = x, a_t = a], a naive loop over time; shape [N, S, A]."""
    states, actions = np.asarray(batch.observations[:, :-1]), np.asarray(batch.actions)
    n, horizon = actions.shape
    out = np.zeros((n, S, A))
    rows = np.arange(n)
    for t in range(horizon):
        np.add.at(out, (rows, states[:, t], actions[:, t]), gamma**t)
    return out


def test_discounted_visitation_matches_occupancy(tabular, big_batch):
    mdp, logits = tabular
    batch = big_batch
    gamma, n, horizon = float(mdp.gamma), batch.num_trajectories, batch.horizon
    visits = discounted_visits(batch, gamma)
    estimate = visits.mean(axis=0)
    se = visits.std(axis=0, ddof=1) / np.sqrt(n)
    truth = np.asarray(mdp_lib.state_action_occupancy(mdp, jax.nn.softmax(logits, axis=-1)))
    truncation = gamma**horizon / (1 - gamma)  # mass beyond the horizon: ≤ 8e-6, far below the s.e.
    assert truncation < 0.01 * se.min()
    assert se.min() > 0  # every entry is visited: the test is not vacuous
    np.testing.assert_array_less(np.abs(estimate - truth), 5 * se + truncation)
    # Global check: Σ z² over the S·A entries is ≈ χ² with S·A degrees of freedom.
    k = S * A
    chi2 = np.sum(((estimate - truth) / se) ** 2)
    assert chi2 < k + 5 * np.sqrt(2 * k), chi2
    # A wrong answer is rejected: the occupancy of a different (uniform) policy.
    wrong = np.asarray(mdp_lib.state_action_occupancy(mdp, jnp.full((S, A), 1 / A)))
    assert np.sum(((estimate - wrong) / se) ** 2) > 10 * (k + 5 * np.sqrt(2 * k))


def test_bootstrapped_monte_carlo_returns_match_policy_evaluation(tabular, big_batch):
    mdp, logits = tabular
    batch = big_batch
    gamma, n, horizon = float(mdp.gamma), batch.num_trajectories, 5  # the first 5 steps of each trajectory
    v, _ = mdp_lib.policy_evaluation(mdp, jax.nn.softmax(logits, axis=-1))
    discounts = gamma ** np.arange(horizon)
    truncated = np.asarray(batch.rewards[:, :horizon]) @ discounts
    # G = Σ_{t<T} γ^t r_t + γ^T V(x_T) is unbiased for J = p_0ᵀ V at any horizon.
    returns = truncated + gamma**horizon * np.asarray(v)[np.asarray(batch.observations[:, horizon])]
    se = returns.std(ddof=1) / np.sqrt(n)
    truth = float(mdp.initial @ v)
    assert abs(returns.mean() - truth) < 4 * se, (returns.mean(), truth, se)
    # Without the bootstrap the horizon-5 estimate is biased far beyond the same tolerance.
    assert abs(truncated.mean() - truth) > 20 * (truncated.std(ddof=1) / np.sqrt(n))
    # Rewards are exactly r(x_t, a_t) and log-probs are log π(a_t|x_t).
    x, a = np.asarray(batch.observations[:, :-1]), np.asarray(batch.actions)
    np.testing.assert_array_equal(batch.rewards, np.asarray(mdp.rewards)[x, a])
    np.testing.assert_allclose(batch.log_probs, np.asarray(jax.nn.log_softmax(logits))[x, a], rtol=1e-12)


def test_shapes_and_no_termination_for_tabular(tabular):
    mdp, logits = tabular
    batch = sample(jax.random.PRNGKey(3), mdp, tabular_softmax_policy, logits, N, T)
    assert batch.observations.shape == (N, T + 1) and batch.actions.shape == (N, T)
    assert batch.rewards.shape == batch.log_probs.shape == batch.terminated.shape == (N, T)
    assert (batch.num_trajectories, batch.horizon) == (N, T)
    assert not np.any(batch.terminated)
    np.testing.assert_array_equal(batch.mask(), np.ones((N, T)))
    np.testing.assert_allclose(batch.discounts(0.8), np.full((N, T), 0.8))


def test_same_key_same_batch_different_key_different(tabular):
    mdp, logits = tabular
    a = sample(jax.random.PRNGKey(5), mdp, tabular_softmax_policy, logits, N, T)
    b = sample(jax.random.PRNGKey(5), mdp, tabular_softmax_policy, logits, N, T)
    c = sample(jax.random.PRNGKey(6), mdp, tabular_softmax_policy, logits, N, T)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.actions, c.actions)
    # Trajectories in one batch are independent: not all copies of the first one.
    assert not np.all(a.actions == a.actions[:1])


def test_vmap_over_a_stacked_batch_of_mdps(tabular):
    _, logits = tabular
    tasks = [numpy_mdp(seed) for seed in (7, 8, 9)]
    keys = jax.random.split(jax.random.PRNGKey(8), 3)
    batched = jax.vmap(lambda m, k: sample(k, m, tabular_softmax_policy, logits, N, T))(mdp_lib.stack(tasks), keys)
    assert batched.observations.shape == (3, N, T + 1)
    for m, task in enumerate(tasks):
        single = sample(keys[m], task, tabular_softmax_policy, logits, N, T)
        np.testing.assert_array_equal(batched.actions[m], single.actions)
        np.testing.assert_array_equal(batched.observations[m], single.observations)
        x, a = np.asarray(single.observations[:, :-1]), np.asarray(single.actions)
        np.testing.assert_array_equal(batched.rewards[m], np.asarray(task.rewards)[x, a])


def gaussian_policy(params, key, obs):
    """a ~ N(W x + b, σ² I) with params (W [2, 2], b [2], log σ); returns (a, log N(a; W x + b, σ²))."""
    weights, bias, log_std = params
    mean = weights @ obs + bias
    action = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
    log_prob = jnp.sum(jax.scipy.stats.norm.logpdf(action, mean, jnp.exp(log_std)))
    return action, log_prob


@pytest.mark.parametrize("goal_sampler", ["square", "corners"])
def test_vmap_over_navigation_goals(goal_sampler):
    """Each task of the meta-batch follows its own goal (dynamics and rewards checked by hand)."""
    env = Navigation2D(goal_sampler)
    goals = env.sample_tasks(jax.random.PRNGKey(9), 4)
    params = (0.5 * jnp.eye(2), jnp.zeros(2), jnp.log(0.15))
    keys = jax.random.split(jax.random.PRNGKey(10), 4)
    batch = jax.vmap(lambda k, g: sample(k, env, gaussian_policy, params, 8, 30, task=g))(keys, goals)
    assert batch.observations.shape == (4, 8, 31, 2) and batch.actions.shape == (4, 8, 30, 2)
    obs, act = np.asarray(batch.observations), np.asarray(batch.actions)
    scale = 1.0 if env.action_scale is None else env.max_action / env.action_scale  # ProMP's normalize (corners)
    steps = np.clip(act * scale, -env.max_action, env.max_action)
    live = np.asarray(batch.mask())[..., None]
    # s_{t+1} = s_t + clip(a_t · scale) while the episode runs (padding repeats the terminal state).
    np.testing.assert_allclose(obs[:, :, 1:], obs[:, :, :-1] + live * steps, atol=1e-12)
    if goal_sampler == "square":
        np.testing.assert_array_equal(obs[:, :, 0], 0.0)
        expected = -np.linalg.norm(obs[:, :, 1:] - np.asarray(goals)[:, None, None], axis=-1)
        np.testing.assert_allclose(batch.rewards, expected * live[..., 0], atol=1e-12)
    else:
        assert np.all(np.abs(obs[:, :, 0]) <= 0.2)



class CountdownEnv(FuncEnv):
    """A tiny terminating env: state = steps taken so far; action ∈ {0, 1} adds to it; reward 1 per step;
    terminal once the state reaches the task ``params`` (an integer target)."""

    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Discrete(100)
        self.action_space = spaces.Discrete(2)

    def get_default_params(self, **kwargs):
        return jnp.asarray(3)

    def __eq__(self, other):
        return type(other) is type(self)

    def __hash__(self):
        return hash(type(self))

    def initial(self, rng, params=None):
        # Strongly typed int32 like the actions: a weak-typed jnp.asarray(0) would change dtype after one
        # step, which `lax.scan` tolerates under jit but not under `jax.disable_jit()`.
        return jnp.zeros((), jnp.int32)

    def transition(self, state, action, rng, params=None):
        return state + action

    def observation(self, state, rng, params=None):
        return state

    def reward(self, state, action, next_state, rng, params=None):
        return jnp.asarray(1.0)

    def terminal(self, state, rng, params=None):
        return state >= params


def coin(p_one, key, obs):
    """Action 1 with probability ``p_one`` (1.0: always step forward), else 0."""
    action = jax.random.bernoulli(key, p_one).astype(jnp.int32)
    return action, jnp.log(jnp.where(action == 1, p_one, 1 - p_one))


def test_termination_deterministic_hand_values():
    batch = sample(jax.random.PRNGKey(0), CountdownEnv(), coin, 1.0, 200, 8, task=jnp.asarray(3))
    np.testing.assert_array_equal(batch.observations[0], [0, 1, 2, 3, 3, 3, 3, 3, 3])
    np.testing.assert_array_equal(batch.terminated[0], [False, False, True] + [False] * 5)
    np.testing.assert_array_equal(batch.done()[0], [False, False] + [True] * 6)
    np.testing.assert_array_equal(batch.mask()[0], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(batch.discounts(0.9)[0], [0.9, 0.9, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.rewards[0], [1, 1, 1, 0, 0, 0, 0, 0])  # padding has zero reward
    np.testing.assert_array_equal(batch.log_probs[0], [0.0] * 8)  # log 1 = 0 while live, 0 as padding
    # Termination at the first step (a different task, the same compiled sampler).
    first = sample(jax.random.PRNGKey(0), CountdownEnv(), coin, 1.0, 200, 8, task=jnp.asarray(1))
    np.testing.assert_array_equal(first.mask()[0], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(first.rewards[0], [1, 0, 0, 0, 0, 0, 0, 0])


def test_jit_and_no_jit_give_identical_batches():
    # The terminating env exercises every branch of the sampler (padding included) and is cheap to run eagerly.
    key, task = jax.random.PRNGKey(11), jnp.asarray(3)
    jitted = sample(key, CountdownEnv(), coin, 0.5, 200, 8, task=task)
    with jax.disable_jit():
        eager = sample(key, CountdownEnv(), coin, 0.5, 200, 8, task=task)
    for x, y in zip(jitted, eager):
        np.testing.assert_array_equal(x, y)


def test_termination_random_times_match_a_naive_loop():
    batch = sample(jax.random.PRNGKey(11), CountdownEnv(), coin, 0.5, 200, 8, task=jnp.asarray(3))
    live_log_probs = np.asarray(batch.log_probs)[np.asarray(batch.mask()) == 1]
    np.testing.assert_allclose(live_log_probs, np.log(0.5))
    assert np.all(np.asarray(batch.log_probs)[np.asarray(batch.mask()) == 0] == 0)
    obs, act = np.asarray(batch.observations), np.asarray(batch.actions)
    terminated, mask = np.asarray(batch.terminated), np.asarray(batch.mask())
    rewards, discounts = np.asarray(batch.rewards), np.asarray(batch.discounts(0.5))
    for n in range(200):
        state, done = 0, False
        for t in range(8):
            assert obs[n, t] == state
            live = not done
            if live:
                state += act[n, t]
            ends_here = live and state >= 3
            assert terminated[n, t] == ends_here
            assert mask[n, t] == float(live)
            assert rewards[n, t] == float(live)
            assert discounts[n, t] == (0.0 if (done or ends_here) else 0.5)
            done = done or ends_here
    ended = terminated.any(axis=1)
    assert 0 < ended.mean() < 1  # both terminated and truncated trajectories occur


def test_trajectories_without_terminated_field():
    batch = Trajectories(jnp.zeros((2, 4), int), jnp.zeros((2, 3), int), jnp.ones((2, 3)), jnp.zeros((2, 3)))
    np.testing.assert_array_equal(batch.mask(), np.ones((2, 3)))
    np.testing.assert_allclose(batch.discounts(0.9), np.full((2, 3), 0.9))


def test_bad_arguments_raise(tabular):
    mdp, logits = tabular
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="`num_trajectories`"):
        sample(key, mdp, tabular_softmax_policy, logits, 0, 5)
    with pytest.raises(ValueError, match="`horizon`"):
        sample(key, mdp, tabular_softmax_policy, logits, 5, 0)
    with pytest.raises(ValueError, match="`env_or_mdp`"):
        sample(key, "CartPole-v1", tabular_softmax_policy, logits, 5, 5)


def test_out_of_range_actions_give_nan_rewards_not_silent_clamping(tabular):
    """JAX clamps out-of-range indices silently under jit; the tabular env marks them with NaN instead."""
    mdp, _ = tabular
    env = TabularMDPEnv.for_task(mdp)
    state = jnp.asarray(2)
    for bad in (A, -1):
        action = jnp.asarray(bad)
        assert np.isnan(env.reward(state, action, state, None, mdp))
        assert env.transition(state, action, jax.random.PRNGKey(0), mdp) == state
    good = jnp.asarray(A - 1)
    assert env.reward(state, good, state, None, mdp) == mdp.rewards[2, A - 1]
