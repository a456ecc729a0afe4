"""Tests of metagrad.envs: Gymnasium registration and check_env, pure FuncEnv methods, hand-checked rewards."""

import subprocess
import sys
import warnings

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import metagrad.envs
from metagrad.envs import CORNERS, Navigation2D


@pytest.mark.parametrize("env_id", sorted(metagrad.envs.ENV_IDS))
def test_registered_env_passes_check_env(env_id):
    env = gymnasium.make(env_id, render_mode="rgb_array")
    assert env.spec.max_episode_steps == metagrad.envs.ENV_IDS[env_id][1]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infinity.*")  # MAML's position space is unbounded
        check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert env.render().ndim == 3
    env.close()


def test_registration_works_without_x64():
    """The registered envs declare float32 / int spaces; they must hold with jax_enable_x64 off too."""
    code = (
        "import jax, gymnasium, metagrad.envs\n"
        "from gymnasium.utils.env_checker import check_env\n"
        "assert not jax.config.jax_enable_x64\n"
        "env = gymnasium.make('metagrad/Navigation2D-v0').unwrapped\n"
        "check_env(env)\n"
        "print(env.reset(seed=0)[0].dtype)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "float32"


def test_gymnasium_episode_and_task_keyword():
    env = gymnasium.make("metagrad/Navigation2D-v0", goal=[0.05, 0.0])
    obs, _ = env.reset(seed=1)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    obs, reward, terminated, truncated, _ = env.step(np.array([0.05, 0.0], np.float32))
    np.testing.assert_allclose(obs, [0.05, 0.0], atol=1e-7)
    assert reward == pytest.approx(0.0, abs=1e-7) and terminated and not truncated
    # The time limit truncates at 100 steps.
    env = gymnasium.make("metagrad/Navigation2DCorners-v0")
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        *_, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
        assert not terminated
        steps += 1
    assert steps == 100


def test_func_env_methods_jit_and_vmap_over_tasks():
    for env in (Navigation2D("square"), Navigation2D("corners")):
        goals = env.sample_tasks(jax.random.PRNGKey(0), 5)
        keys = jax.random.split(jax.random.PRNGKey(1), 5)
        actions = jnp.tile(jnp.array([0.05, -0.3]), (5, 1))

        def one_step(key, goal, action):
            state = env.initial(key, goal)
            next_state = env.transition(state, action, key, goal)
            return (
                env.observation(next_state, key, goal),
                env.reward(state, action, next_state, key, goal),
                env.terminal(next_state, key, goal),
            )

        batched = jax.jit(jax.vmap(one_step))(keys, goals, actions)
        assert batched[0].shape == (5, 2) and batched[1].shape == (5,) and batched[2].shape == (5,)
        for i in range(5):
            single = one_step(keys[i], goals[i], actions[i])
            for b, s in zip(batched, single):
                np.testing.assert_allclose(b[i], s, rtol=1e-12)
        # The clip: the y step of −0.3 is clipped to −c, the x step of 0.05 passes (square); the corners env first
        # scales by c / 10 (ProMP's normalize wrapper), so both steps pass, scaled: (0.001, −0.006).
        start = jax.vmap(env.initial)(keys, goals)
        expected = [0.05, -env.max_action] if env.action_scale is None else [0.001, -0.006]
        np.testing.assert_allclose(batched[0] - start, np.tile(expected, (5, 1)), atol=1e-12)


def test_square_rewards_and_termination_by_hand():
    env = Navigation2D("square")
    goal = jnp.array([0.3, -0.4])
    s0 = env.initial(jax.random.PRNGKey(0), goal)
    np.testing.assert_array_equal(s0, [0.0, 0.0])
    s1 = env.transition(s0, jnp.array([0.5, 0.0]), None, goal)  # clipped to 0.1
    np.testing.assert_allclose(s1, [0.1, 0.0])
    # Distance after the move: ‖(0.1, 0) − (0.3, −0.4)‖ = √(0.04 + 0.16).
    np.testing.assert_allclose(env.reward(s0, jnp.array([0.5, 0.0]), s1, None, goal), -np.sqrt(0.2), rtol=1e-12)
    assert not env.terminal(s1, None, goal)
    assert env.terminal(jnp.array([0.305, -0.395]), None, goal)
    assert not env.terminal(jnp.array([0.32, -0.4]), None, goal)
    np.testing.assert_allclose(env.default_params, [0.5, 0.5])
    assert env.observation_space.dtype == np.float32 and env.action_space.high[0] == np.float32(0.1)


def test_corner_rewards_by_hand():
    env = Navigation2D("corners")  # ProMP's sparse reward, radius 0.5
    goal = jnp.array([2.0, 2.0])
    reward = lambda s, s2: float(env.reward(jnp.array(s), None, jnp.array(s2), None, goal))  # noqa: E731
    assert reward([0.0, 0.0], [0.2, 0.2]) == 0.0  # ‖s'‖₁ = 0.4 < 0.5: inside the start region
    # Outside the start region and nearest to the goal: progress ‖s − g‖ − ‖s' − g‖.
    expected = np.hypot(1.8, 1.8) - np.hypot(1.6, 1.6)
    assert reward([0.2, 0.2], [0.4, 0.4]) == pytest.approx(expected, rel=1e-12)
    assert reward([0.4, 0.4], [0.2, 0.2]) == 0.0  # s' back inside the start region
    assert reward([-0.3, 0.5], [-0.5, 0.6]) == 0.0  # nearest corner is (−2, 2), not the goal
    assert reward([0.6, 0.6], [0.4, 0.4]) == pytest.approx(np.hypot(1.4, 1.4) - np.hypot(1.6, 1.6))  # moving away
    dense = Navigation2D("corners", reward="dense")
    np.testing.assert_allclose(dense.reward(None, None, jnp.array([1.0, 2.0]), None, goal), -1.0)
    assert env.action_space.high[0] == np.float32(10.0)  # ProMP normalize(): actions in [−10, 10], env gets 0.02·a
    assert not env.terminal(goal, None, goal)
    start = jax.vmap(env.initial, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), 500), goal)
    assert np.all(np.abs(start) <= 0.2) and np.std(start) > 0.05


def test_sample_tasks_shapes_ranges_determinism():
    square, corners = Navigation2D("square"), Navigation2D("corners")
    key = jax.random.PRNGKey(3)
    goals = square.sample_tasks(key, 2000)
    assert goals.shape == (2000, 2)
    assert np.all(np.abs(goals) <= 0.5) and np.min(goals) < -0.45 and np.max(goals) > 0.45
    np.testing.assert_array_equal(goals, square.sample_tasks(key, 2000))
    assert not np.array_equal(goals, square.sample_tasks(jax.random.PRNGKey(4), 2000))
    goals = np.asarray(corners.sample_tasks(key, 2000))
    assert goals.shape == (2000, 2)
    counts = [np.sum(np.all(goals == c, axis=1)) for c in CORNERS]
    assert sum(counts) == 2000
    # Each corner has probability 1/4: s.e. of a count is √(2000·¼·¾) ≈ 19.4.
    assert all(abs(c - 500) < 5 * 19.4 for c in counts), counts
    with pytest.raises(ValueError, match="`n`"):
        square.sample_tasks(key, 0)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="`goal_sampler`"):
        Navigation2D("circle")
    with pytest.raises(ValueError, match="`reward`"):
        Navigation2D("corners", reward="shaped")
    with pytest.raises(ValueError, match="`reward='sparse'`"):
        Navigation2D("square", reward="sparse")
    assert Navigation2D("corners") == Navigation2D("corners") != Navigation2D("square")
    assert hash(Navigation2D()) == hash(Navigation2D("square"))


def _constant_push(params, key, obs):
    """A policy that always pushes by ``params`` (log-probability 0): rewards are then known in closed form."""
    return params, jnp.zeros((), obs.dtype)


def test_task_env_wraps_without_mutating_so_fresh_envs_sample_their_own_goal():
    """Issue 13: TaskEnv used to rebind the methods of the env it was given; environments compare equal by
    settings, so the compiled sampler then served the wrapped goal to *fresh* environments too."""
    from metagrad.envs import TaskEnv
    from metagrad.rollout import sample

    wrapped_goal, goal = jnp.array([0.5, 0.5]), jnp.array([-0.3, 0.2])
    base = Navigation2D()
    methods = {name: getattr(base, name) for name in ("initial", "transition", "reward", "terminal")}
    TaskEnv(base, wrapped_goal)
    assert all(getattr(base, name) == m for name, m in methods.items()), "TaskEnv rebinds its environment's methods"
    push = jnp.array([0.1, -0.05])
    horizon = 5
    sample(jax.random.PRNGKey(0), base, _constant_push, push, 2, horizon, task=goal)  # the wrapped object, used again
    batch = sample(jax.random.PRNGKey(1), Navigation2D(), _constant_push, push, 2, horizon, task=goal)
    # By hand: s_0 = 0, s_{t+1} = (t + 1)·push (within the clip), r_t = −‖s_{t+1} − g‖.
    expected = [-np.linalg.norm((t + 1) * np.asarray(push) - np.asarray(goal)) for t in range(horizon)]
    np.testing.assert_allclose(np.asarray(batch.rewards), np.tile(expected, (2, 1)), rtol=1e-6)


def test_gymnasium_step_refuses_actions_outside_the_action_space():
    tabular = gymnasium.make("metagrad/TabularMDP-v0")
    tabular.reset(seed=0)
    for bad in (7, -1, 2.5):
        with pytest.raises(ValueError, match="action"):
            tabular.step(bad)
    nav = gymnasium.make("metagrad/Navigation2D-v0")
    nav.reset(seed=0)
    for bad in ([np.nan, 0.0], [0.0, np.inf], [0.1, 0.1, 0.1]):
        with pytest.raises(ValueError, match="action"):
            nav.step(np.asarray(bad, np.float32))


# ------------------------------------------------------------------------- the environment protocol (issue 20 §1)
from metagrad.envs import protocol  # noqa: E402
from metagrad.rollout import sample  # noqa: E402


class _Walk1D:
    """A protocol environment written in the test (no base class): x' = x + a, done when x' > params."""

    def reset(self, key, params):
        return jnp.zeros(1), jnp.zeros(1)

    def step(self, key, state, action, params):
        x = state + action
        return x, x, x[0], x[0] > params, {}

    def observation_space(self, params):
        return gymnasium.spaces.Box(-np.inf, np.inf, (1,))

    def action_space(self, params):
        return gymnasium.spaces.Box(-np.inf, np.inf, (1,))

    def sample_tasks(self, key, n):
        return jax.random.uniform(key, (n,))


def test_check_env_names_every_missing_member():
    class Half:
        def reset(self, key, params):
            return None

    with pytest.raises(TypeError, match=r"missing `step`, `observation_space`, `action_space`, `sample_tasks`"):
        protocol.check_env(Half(), sample_tasks=True)
    assert protocol.check_env(_Walk1D(), sample_tasks=True) is not None
    with pytest.raises(TypeError, match="FuncEnv: use metagrad.envs.protocol.as_env"):
        protocol.check_env(Navigation2D())


def test_func_env_adapter_matches_the_func_env_methods():
    env = Navigation2D("corners")
    adapted = protocol.as_env(env, sample_tasks=True)
    goal = env.sample_tasks(jax.random.PRNGKey(0), 1)[0]
    key = jax.random.PRNGKey(3)
    obs, state = adapted.reset(key, goal)
    k_init, k_obs = jax.random.split(key)
    np.testing.assert_array_equal(state, env.initial(k_init, goal))
    np.testing.assert_array_equal(obs, env.observation(state, k_obs, goal))
    action = jnp.array([5.0, -3.0])
    obs2, state2, reward, done, info = jax.jit(adapted.step)(key, state, action, goal)
    nxt = env.transition(state, action, jax.random.fold_in(key, 1), goal)
    np.testing.assert_allclose(state2, nxt)
    np.testing.assert_allclose(reward, env.reward(state, action, nxt, key, goal))
    assert done.shape == () and info == {}
    assert adapted.observation_space(goal).shape == (2,) and adapted.action_space(goal).shape == (2,)
    assert protocol.as_env(Navigation2D("corners")) == adapted  # equal adapters share compiled samplers


def test_gymnasium_ids_still_work_through_the_protocol():
    adapted = protocol.as_env("metagrad/Navigation2DCorners-v0")
    assert isinstance(adapted.func_env, Navigation2D) and adapted.func_env.goal_sampler == "corners"
    with pytest.raises(TypeError, match="not a functional JAX environment"):
        protocol.as_env("CartPole-v1")


def test_rollout_of_a_protocol_env_against_a_naive_loop():
    """Rollout with termination: padding after done (reward 0), observations held; compared with a Python loop."""
    env, policy = _Walk1D(), lambda params, key, obs: (jnp.full((1,), params), jnp.zeros(()))
    batch = sample(jax.random.PRNGKey(0), env, policy, 0.3, 2, 6, task=jnp.asarray(1.0))
    x, rewards, terminated = 0.0, [], []
    for _ in range(6):
        done = bool(terminated and any(terminated))
        x_new = x if done else x + 0.3
        rewards.append(0.0 if done else x_new)
        terminated.append((not done) and x_new > 1.0)
        x = x_new
    np.testing.assert_allclose(batch.rewards[0], rewards, rtol=1e-6)
    np.testing.assert_array_equal(batch.terminated[0], terminated)
    np.testing.assert_array_equal(batch.mask()[0], [1, 1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="`task` is required"):
        sample(jax.random.PRNGKey(0), env, policy, 0.3, 2, 6)
