"""Issue 20 §2: ProMP's fixed-steps-per-task sampling (`MAMLConfig(sampling="steps")`,
`metagrad.rollout.sample_steps`) on a terminating 1-D walk written here. The repacked episodes are compared with
a naive Python loop over the same auto-reset stream (same keys), the step budget is checked, and the estimators are
shown to see separate episodes (a surrogate equals the weighted sum of the surrogates of single episodes)."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import estimators, maml, outer
from metagrad.policies import DiagGaussian
from metagrad.rollout import sample_steps

E, S, T = 3, 5, 5  # environments per task, steps per environment (the budget is E·S), max path length


class Walk:
    """Position x ∈ ℝ from 0, x' = x + clip(a, −1, 1) + small noise; terminates when |x'| ≥ `params` (so episodes
    of every length occur); reward x'. Observation (x, 1)."""

    def reset(self, key, params):
        x = 0.1 * jax.random.normal(key)
        return jnp.stack([x, 1.0]), x

    def step(self, key, state, action, params):
        x = state + jnp.clip(action[0], -1.0, 1.0) + 0.1 * jax.random.normal(jax.random.fold_in(key, 7))
        return jnp.stack([x, 1.0]), x, x, jnp.abs(x) >= params, {}

    def observation_space(self, params):
        return gymnasium.spaces.Box(-np.inf, np.inf, (2,))

    def action_space(self, params):
        return gymnasium.spaces.Box(-np.inf, np.inf, (1,))

    def sample_tasks(self, key, n):
        return jax.random.uniform(key, (n,), minval=1.0, maxval=2.0)


def init(key, observation_space, action_space):
    return {"w": 0.3 * jax.random.normal(key, (2, 1)), "log_std": jnp.zeros(1)}


def apply(params, obs):
    return DiagGaussian(obs @ params["w"], params["log_std"])


def policy_fn(params, key, obs):
    dist = apply(params, obs)
    action = dist.sample(key)
    return action, dist.log_prob(action)


PARAMS = {"w": jnp.array([[0.8], [0.3]]), "log_std": jnp.array([0.3])}


def naive_episodes(key, task):
    """The same stream as `sample_steps`, one environment and one step at a time: the episodes (lists of
    (obs, action, reward, log_prob, terminated, next_obs)) that start within the first S steps of each env."""
    env = Walk()
    length = S + T - 1
    key_reset, key_steps = jax.random.split(key)
    step_keys = jax.random.split(key_steps, length)
    episodes = []
    for i in range(E):
        obs, state = env.reset(jax.random.split(key_reset, E)[i], task)
        current, start = [], 0
        for s in range(length):
            k_env, k_reset = jax.random.split(jax.random.split(step_keys[s], E)[i])
            action, log_prob = policy_fn(PARAMS, jax.random.fold_in(k_env, 0), obs)
            next_obs, state, reward, terminated, _ = env.step(k_env, state, action, task)
            current.append((obs, action, reward, log_prob, bool(terminated), next_obs))
            obs = next_obs
            if terminated or len(current) == T:
                if start < S:
                    episodes.append(current)
                current, start = [], s + 1
                obs, state = env.reset(k_reset, task)
    return episodes


@pytest.fixture(scope="module")
def stream():
    key, task = jax.random.PRNGKey(3), jnp.asarray(2.0)
    batch, dropped = sample_steps(key, Walk(), policy_fn, PARAMS, task, E, S, T, 4 * E)
    return batch, int(dropped), naive_episodes(key, task)


def test_repacked_episodes_equal_a_naive_loop_over_the_same_stream(stream):
    batch, dropped, episodes = stream
    lengths = [len(ep) for ep in episodes]
    assert dropped == 0 and len(episodes) > E and min(lengths) < T  # terminations happened: more, shorter episodes
    assert any(len(ep) == T and not ep[-1][4] for ep in episodes)  # and an episode that hit max_path_length
    valid = np.asarray(batch.valid)
    assert valid.sum() == len(episodes) and not valid[len(episodes):].any()
    mask = np.asarray(batch.mask())
    for n, ep in enumerate(episodes):
        ell = len(ep)
        np.testing.assert_array_equal(mask[n], np.arange(T) < ell)
        np.testing.assert_allclose(batch.rewards[n, :ell], [st[2] for st in ep], rtol=1e-6)
        np.testing.assert_allclose(batch.log_probs[n, :ell], [st[3] for st in ep], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch.actions[n, :ell], np.stack([st[1] for st in ep]), rtol=1e-6)
        np.testing.assert_allclose(batch.observations[n, :ell], np.stack([st[0] for st in ep]), rtol=1e-6)
        np.testing.assert_allclose(batch.observations[n, ell], ep[-1][5], rtol=1e-6)  # x_ℓ: terminal or bootstrap
        np.testing.assert_array_equal(batch.terminated[n, :ell], [st[4] for st in ep])
        assert all(st[4] == (t == ell - 1 and st[4]) for t, st in enumerate(ep))
    assert float(np.abs(batch.rewards * (1 - mask)).max()) == 0.0


def test_every_environment_fills_its_step_budget(stream):
    """ProMP's budget: ≥ E·S valid steps per task (each env ≥ S), in complete episodes none of which starts after
    step S of its environment, so less than E·(S + T − 1) in all."""
    batch, _, episodes = stream
    total = int(np.asarray(batch.mask()).sum())
    assert total == sum(len(ep) for ep in episodes)
    assert E * S <= total <= E * (S + T - 1)


def test_estimators_never_mix_two_episodes(stream):
    """Surrogate of the repacked batch = mean over its valid episodes of each episode's surrogate evaluated alone
    (a batch of one row), for estimators with prefix sums (DR, TayPO-2) — values and gradients."""
    batch, _, episodes = stream
    n_valid = len(episodes)
    log_prob = lambda p, o, a: apply(p, o).log_prob(a)  # noqa: E731
    values = 0.1 * jnp.arange(batch.observations.shape[0] * (T + 1), dtype=batch.rewards.dtype).reshape(-1, T + 1)
    for name in ("dr", "taypo2", "maml"):
        def full(p):
            return estimators.surrogate(name, log_prob, p, batch, values, 0.9, behaviour_log_probs=batch.log_probs)

        def separate(p):
            total = 0.0
            for n in range(n_valid):
                one = jax.tree_util.tree_map(lambda x: x[n:n + 1], batch._replace(valid=None))
                total = total + estimators.surrogate(name, log_prob, p, one, values[n:n + 1], 0.9,
                                                     behaviour_log_probs=batch.log_probs[n:n + 1])
            return total / n_valid

        np.testing.assert_allclose(full(PARAMS), separate(PARAMS), rtol=1e-5, atol=1e-6)
        g_full, g_sep = jax.grad(full)(PARAMS), jax.grad(separate)(PARAMS)
        for leaf_full, leaf_sep in zip(jax.tree_util.tree_leaves(g_full), jax.tree_util.tree_leaves(g_sep)):
            np.testing.assert_allclose(leaf_full, leaf_sep, rtol=1e-4, atol=1e-6)
    # ProMP's form: advantages per episode alone, and the reduce_mean over the valid steps of all episodes.
    advantages = outer.advantages(batch, values, 0.9)
    for n in range(n_valid):
        one = jax.tree_util.tree_map(lambda x: x[n:n + 1], batch._replace(valid=None))
        np.testing.assert_allclose(advantages[n], outer.advantages(one, values[n:n + 1], 0.9)[0], rtol=1e-6, atol=1e-9)
    log_pi = log_prob(PARAMS, batch.observations[:, :-1], batch.actions)
    steps = [(float(log_pi[n, t]), float(advantages[n, t])) for n in range(n_valid) for t in range(len(episodes[n]))]
    np.testing.assert_allclose(
        outer.promp_surrogate("maml", log_prob, PARAMS, batch, advantages), np.mean([lp * a for lp, a in steps]),
        rtol=1e-5)
    # The post-update return of the loop: mean over valid episodes of their undiscounted returns.
    np.testing.assert_allclose(maml.mean_return(batch), np.mean([sum(st[2] for st in ep) for ep in episodes]),
                               rtol=1e-5)


def _config(**kw):
    fields = dict(env=None, inner_estimator="dr", outer="pg", inner_steps=1, inner_step_size=0.01, num_tasks=2,
                  num_trajectories=E, horizon=T, gamma=0.9, num_iterations=2, checkpoint_every=2, shard=False)
    return maml.MAMLConfig(**{**fields, **kw})


@pytest.mark.parametrize("outer_step", ["pg", "promp", "trpo"])
def test_maml_iterations_with_fixed_steps_run(outer_step):
    config = _config(sampling="steps", outer=outer_step)
    _, history = maml.train(config, jax.random.PRNGKey(0), env=Walk(), policy=(init, apply), progress=False)
    for name, values in history.items():
        assert np.all(np.isfinite(values)), name
    assert np.all(history["dropped_steps"] == 0)


def test_default_sampling_is_episodes_and_bad_values_are_refused():
    assert maml.MAMLConfig().sampling == "episodes" and maml.MAMLConfig().episode_rows == 20
    assert maml.MAMLConfig(sampling="steps").episode_rows == 80
    with pytest.raises(ValueError, match="sampling"):
        maml.MAMLConfig(sampling="step")
    with pytest.raises(ValueError, match="max_episodes"):
        maml.MAMLConfig(max_episodes=10)  # unused by sampling="episodes"
    with pytest.raises(ValueError, match="max_episodes"):
        maml.MAMLConfig(sampling="steps", max_episodes=0)
    config = maml.MAMLConfig(sampling="steps", max_episodes=7)
    assert maml.MAMLConfig.from_json(config.to_json()) == config


def test_too_few_rows_warn_and_count_the_dropped_steps():
    config = _config(sampling="steps", max_episodes=1, num_iterations=1, checkpoint_every=1)
    with pytest.warns(RuntimeWarning, match="max_episodes"):
        _, history = maml.train(config, jax.random.PRNGKey(0), env=Walk(), policy=(init, apply), progress=False)
    assert history["dropped_steps"][0] > 0
