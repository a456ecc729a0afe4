"""Gymnasium registration by ``import metagrad``, vector entry points, and async vector envs that do not hang."""

import multiprocessing
import subprocess
import sys

import gymnasium
import jax
import numpy as np
import pytest

import metagrad
import metagrad.envs
from metagrad import _registration
from metagrad.envs import HORIZON, TaskVectorEnv, TabularMDPEnv


def multiprocessing_default() -> str:
    """The platform's default start method (``fork`` on Linux before Python 3.14)."""
    return multiprocessing.get_all_start_methods()[0]


def _run(code: str, timeout: float) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_import_metagrad_registers_the_environments_without_importing_jax():
    out = _run(
        "import sys, gymnasium, metagrad\n"
        "print('jax' in sys.modules)\n"
        "env = gymnasium.make('metagrad/TabularMDP-v0')\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(env.observation_space.contains(obs), env.spec.max_episode_steps)\n",
        timeout=120,
    )
    assert out.split() == ["False", "True", "20"]


def test_every_id_has_an_entry_point_a_vector_entry_point_and_its_limit():
    assert set(_registration.ENVIRONMENTS) == set(metagrad.envs.ENV_IDS) == {
        "metagrad/TabularMDP-v0", "metagrad/Navigation2D-v0", "metagrad/Navigation2DCorners-v0"}
    for env_id, (entry_point, vector_entry_point, steps) in _registration.ENVIRONMENTS.items():
        spec = gymnasium.spec(env_id)
        assert (spec.entry_point, spec.vector_entry_point, spec.max_episode_steps) == (entry_point, vector_entry_point, steps)
        assert steps == (20 if "Tabular" in env_id else HORIZON)
        envs = gymnasium.make_vec(env_id, num_envs=2)  # vectorization_mode=None: the vector entry point
        assert isinstance(envs.unwrapped, TaskVectorEnv)
        obs, _ = envs.reset(seed=0)
        assert envs.observation_space.contains(obs)
        envs.close()


def test_async_vector_env_completes_and_keeps_a_chosen_start_method():
    # Before: the default `fork` start method copied a process in which JAX had started (the dummy env
    # Gymnasium makes first), and the first reset hung forever.
    out = _run(
        "import multiprocessing, gymnasium, metagrad\n"
        "envs = gymnasium.make_vec('metagrad/Navigation2D-v0', num_envs=2, vectorization_mode='async', goal=[0.1, 0.0])\n"
        "obs, _ = envs.reset(seed=0)\n"
        "obs, reward, *_ = envs.step(envs.action_space.sample() * 0 + 0.1)\n"
        "envs.close()\n"
        "print(type(envs).__name__, multiprocessing.get_start_method(), obs.tolist(), reward.round(4).tolist())\n",
        timeout=300,
    )
    name, method, *rest = out.split(maxsplit=2)
    assert name == "AsyncVectorEnv"
    expected = "forkserver" if multiprocessing_default() == "fork" else multiprocessing_default()
    assert method == expected
    assert rest[0].strip() == "[[0.10000000149011612, 0.10000000149011612], [0.10000000149011612, 0.10000000149011612]] [-0.1, -0.1]"
    # A start method the program chose is kept.
    out = _run("import multiprocessing, gymnasium, metagrad\nmultiprocessing.set_start_method('spawn')\n"
               "gymnasium.make('metagrad/TabularMDP-v0')\nprint(multiprocessing.get_start_method())\n", timeout=120)
    assert out.strip() == "spawn"


def test_vector_env_one_goal_per_copy_rewards_and_autoreset_by_hand():
    goals = np.array([[0.1, 0.1], [0.0, 0.1], [0.3, 0.3]])
    envs = gymnasium.make_vec("metagrad/Navigation2D-v0", num_envs=3, goal=goals)
    obs, _ = envs.reset(seed=0)
    np.testing.assert_array_equal(obs, np.zeros((3, 2), np.float32))
    action = np.full((3, 2), 0.1, np.float32)
    obs, reward, terminated, truncated, _ = envs.step(action)
    assert obs.dtype == np.float32 and reward.shape == (3,)
    np.testing.assert_allclose(obs, np.full((3, 2), 0.1), atol=1e-7)
    np.testing.assert_allclose(reward, -np.linalg.norm(0.1 - goals, axis=1), atol=1e-6)  # MAML's dense reward
    assert terminated.tolist() == [True, False, False] and not truncated.any()  # copy 0 reached its goal
    # The same as the classic environment, copy by copy.
    for goal, r in zip(goals, reward):
        env = gymnasium.make("metagrad/Navigation2D-v0", goal=goal)
        env.reset(seed=0)
        assert env.step(action[0])[1] == pytest.approx(float(r), abs=1e-6)
    # NEXT_STEP autoreset: copy 0 starts again (first observation, reward 0), the others go on.
    obs, reward, terminated, truncated, _ = envs.step(action)
    np.testing.assert_allclose(obs, [[0.0, 0.0], [0.2, 0.2], [0.2, 0.2]], atol=1e-7)
    assert reward[0] == 0.0 and not terminated.any()
    np.testing.assert_allclose(reward[1:], -np.linalg.norm(0.2 - goals[1:], axis=1), atol=1e-6)


def test_tabular_vector_env_stacked_mdps_rewards_and_time_limit():
    tasks = TabularMDPEnv(4, 3).sample_tasks(jax.random.PRNGKey(3), 5)
    envs = gymnasium.make_vec("metagrad/TabularMDP-v0", num_envs=5, mdp=tasks)
    rewards = np.asarray(tasks.rewards)
    obs, _ = envs.reset(seed=1)
    assert envs.observation_space.contains(obs)
    for t in range(20):
        actions = np.arange(5) % 3
        next_obs, reward, terminated, truncated, _ = envs.step(actions)
        np.testing.assert_allclose(reward, rewards[np.arange(5), obs, actions], rtol=1e-6)
        assert not terminated.any() and truncated.all() == (t == 19)
        obs = next_obs
    _, reward, _, truncated, _ = envs.step(np.zeros(5, np.int64))  # autoreset after the time limit
    assert not truncated.any() and (reward == 0).all()


def test_vector_env_bad_arguments():
    with pytest.raises(ValueError, match="num_envs"):
        gymnasium.make_vec("metagrad/Navigation2D-v0", num_envs=0)
    with pytest.raises(ValueError, match="num_envs = 3"):
        gymnasium.make_vec("metagrad/Navigation2D-v0", num_envs=3, goal=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="render_mode"):
        gymnasium.make_vec("metagrad/Navigation2D-v0", num_envs=2, render_mode="rgb_array")
    envs = gymnasium.make_vec("metagrad/Navigation2D-v0", num_envs=2)
    with pytest.raises(gymnasium.error.ResetNeeded):
        envs.step(np.zeros((2, 2), np.float32))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="leading axis"):
        envs.step(np.zeros((3, 2), np.float32))
