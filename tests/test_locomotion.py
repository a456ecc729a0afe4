"""ProMP's locomotion tasks on MJX (``metagrad.envs.locomotion``) against MuJoCo's C step and ProMP's formulas.

``promp_step`` below is ProMP's ``step`` (``meta_policy_search/envs/mujoco_envs/*.py`` behind its ``normalize``
wrapper) written again with MuJoCo's Python bindings: set the control, ``mj_step`` ``frame_skip`` times,
read the reward terms. The MJX environment must agree with it, in float32 (what a user runs):

* for the first ``STEPS`` = 5 env steps, qpos within 1e-4 and qvel within 1e-3 + 1e-3·|qvel| (measured:
  ≤ 3e-6 and ≤ 3e-5 for HalfCheetah and Walker2d). Later the two drift apart (float32 against float64 and
  contacts: differences of 1e-3 in qvel after ~7 steps, growing) — expected, not tested;
* Ant: only until the first foot touches the floor. From then on MJX and C differ by design: MJX's
  capsule–plane contact frame has fixed tangent axes where C's follow the capsule, and with MuJoCo's default
  pyramidal friction cone the friction force depends on those axes (the normal force agrees). Measured here in
  float64: the step matches to 1e-14 before the first contact and differs by ~0.05 in qvel at it;
* each reward term equals ProMP's formula evaluated on the MJX state itself (all steps, contacts included).

Needs the extra ``metagrad[locomotion]`` (skipped with that reason otherwise). Compiling MJX's step costs
tens of seconds per task, so each task is simulated once (a module fixture) and every test reads that run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco", reason="needs the optional extra: pip install -e '.[locomotion]' -c constraints.txt")

from metagrad.envs.locomotion import TASKS, Locomotion  # noqa: E402

STEPS = 5  # env steps compared with MuJoCo C
ROLLOUT = 8  # env steps simulated (Ant's feet touch the floor within it)


def promp_step(m, d, action, task, name):
    """ProMP's ``normalize(env).step(action)`` in MuJoCo C: (obs, reward, done, terms, contact_seen)."""
    ctrl = np.clip(-1 + (action + 10) * 2 / 20, -1, 1)  # normalize: lb + (a + S)(ub - lb)/(2S), S = 10
    torso = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "torso")
    frame_skip = {"walker2d-direction": 8}.get(name, 5)
    dt = m.opt.timestep * frame_skip
    qpos_before, torso_before = d.qpos.copy(), d.xpos[torso].copy()
    d.ctrl[:] = ctrl
    contact_seen = False
    for _ in range(frame_skip):
        mujoco.mj_step(m, d)
        contact_seen |= bool(np.any(d.efc_type == mujoco.mjtConstraint.mjCNSTR_CONTACT_PYRAMIDAL))
    mujoco.mj_rnePostConstraint(m, d)  # MuJoCo 1.50 (ProMP's) filled cfrc_ext in every step
    contact = np.square(np.clip(d.cfrc_ext, -1, 1)).sum()
    if name == "halfcheetah-direction":
        terms = dict(forward=task * (d.qpos[0] - qpos_before[0]) / dt, ctrl=-0.5 * 0.1 * np.square(ctrl).sum(),
                     contact=0.0, survive=0.0)
        obs, done = np.concatenate([d.qpos[1:], d.qvel]), False
    elif name == "ant-direction":
        terms = dict(forward=task * (d.xpos[torso][0] - torso_before[0]) / dt, ctrl=-0.5 * np.square(ctrl).sum(),
                     contact=-0.5 * 1e-3 * contact, survive=1.0)
        state = np.concatenate([d.qpos, d.qvel])
        done = not (np.isfinite(state).all() and 1.0 >= state[2] >= 0.0)
        obs = np.concatenate([d.qpos[2:], d.qvel, np.clip(d.cfrc_ext, -1, 1).ravel()])
    elif name == "ant-goal":
        terms = dict(forward=-np.abs(d.xpos[torso][:2] - task).sum(), ctrl=-0.1 * np.square(ctrl).sum(),
                     contact=-0.5 * 1e-3 * contact, survive=0.0)
        obs, done = np.concatenate([d.qpos, d.qvel, np.clip(d.cfrc_ext, -1, 1).ravel()]), False
    else:
        height, angle = d.qpos[1:3]
        terms = dict(forward=task * (d.qpos[0] - qpos_before[0]) / dt, ctrl=-1e-3 * np.square(ctrl).sum(), contact=0.0,
                     survive=1.0)
        done = not (0.8 < height < 2.0 and -1.0 < angle < 1.0)
        obs = np.concatenate([d.qpos[1:], np.clip(d.qvel, -10, 10)])
    return obs, sum(terms.values()), done, terms, contact_seen


@pytest.fixture(scope="module", params=sorted(TASKS))
def run(request):
    """One task simulated ``ROLLOUT`` steps by MJX (float32) and by ``promp_step`` from the same initial state."""
    name = request.param
    with jax.enable_x64(False):
        env = Locomotion(name)
        task = env.sample_tasks(jax.random.PRNGKey(3), 1)[0]
        obs, state = jax.jit(env.reset)(jax.random.PRNGKey(0), task)
        actions = 10 * np.asarray(jax.random.normal(jax.random.PRNGKey(1), (ROLLOUT,) + env.action_space().shape))
        m = env.mj_model
        d = mujoco.MjData(m)
        d.qpos[:], d.qvel[:] = np.asarray(state.qpos), np.asarray(state.qvel)
        mujoco.mj_forward(m, d)
        step = jax.jit(env.step)
        mjx_steps, c_steps = [], []
        for t in range(ROLLOUT):
            before = state
            obs, state, reward, done, info = step(jax.random.PRNGKey(t), state, jnp.asarray(actions[t]), task)
            mjx_steps.append(dict(obs=np.asarray(obs), reward=float(reward), done=bool(done),
                                  info={k: float(v) for k, v in info.items()}, before=jax.device_get(before),
                                  after=jax.device_get(state)))
            c_obs, c_reward, c_done, c_terms, contact = promp_step(m, d, actions[t], np.asarray(task), name)
            c_steps.append(dict(obs=c_obs, reward=c_reward, done=c_done, terms=c_terms, contact=contact,
                                qpos=d.qpos.copy(), qvel=d.qvel.copy()))
    return name, env, np.asarray(task), actions, mjx_steps, c_steps


def _matched_steps(name, c_steps):
    """Steps compared with C: the first STEPS; for Ant, those before its first contact (at least 2)."""
    if not name.startswith("ant"):
        return STEPS
    first_contact = next(t for t, c in enumerate(c_steps) if c["contact"])
    assert first_contact >= 2, "the Ant touched the floor too early for a comparison: change the seed"
    return min(STEPS, first_contact)


def test_mjx_step_matches_mujoco_c(run):
    name, _, _, _, mjx_steps, c_steps = run
    for t in range(_matched_steps(name, c_steps)):
        mine, ref = mjx_steps[t], c_steps[t]
        np.testing.assert_allclose(mine["after"].qpos, ref["qpos"], rtol=0, atol=1e-4, err_msg=f"{name} step {t}")
        np.testing.assert_allclose(mine["after"].qvel, ref["qvel"], rtol=1e-3, atol=1e-3, err_msg=f"{name} step {t}")
        np.testing.assert_allclose(mine["obs"], ref["obs"], rtol=1e-3, atol=1e-3, err_msg=f"{name} step {t}")
        np.testing.assert_allclose(mine["reward"], ref["reward"], rtol=1e-3, atol=1e-3, err_msg=f"{name} step {t}")
        assert mine["done"] == ref["done"]


def test_reward_terms_are_promps_formulas_on_the_mjx_state(run):
    name, env, task, actions, mjx_steps, _ = run
    spec = TASKS[name]
    torso = mujoco.mj_name2id(env.mj_model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    dt = env.mj_model.opt.timestep * spec.frame_skip
    contact_terms = []
    for t, step in enumerate(mjx_steps):
        before, after = step["before"], step["after"]
        ctrl = np.clip(actions[t] / 10, -1, 1)
        if name.startswith("ant"):
            x_before, x_after = np.asarray(before.xpos)[torso], np.asarray(after.xpos)[torso]
        else:
            x_before, x_after = np.asarray(before.qpos)[:1], np.asarray(after.qpos)[:1]
        if name == "ant-goal":
            forward = -np.abs(x_after[:2] - task).sum()
        else:
            forward = task * (x_after[0] - x_before[0]) / dt
        weights = {"halfcheetah-direction": 0.05, "ant-direction": 0.5, "ant-goal": 0.1, "walker2d-direction": 1e-3}
        contact = 0.5e-3 * np.square(np.clip(np.asarray(after._impl.cfrc_ext), -1, 1)).sum() if name.startswith("ant") else 0.0
        expected = dict(forward=forward, ctrl=-weights[name] * np.square(ctrl).sum(), contact=-contact,
                        survive={"ant-direction": 1.0, "walker2d-direction": 1.0}.get(name, 0.0))
        for term, value in expected.items():
            np.testing.assert_allclose(step["info"][term], value, rtol=1e-5, atol=1e-5, err_msg=f"{name} {term} step {t}")
        np.testing.assert_allclose(step["reward"], sum(expected.values()), rtol=1e-5, atol=1e-5)
        contact_terms.append(contact)
    if name.startswith("ant"):
        assert max(contact_terms) > 0, "no contact cost in the rollout: the contact term was not exercised"


def test_observation_shapes_and_spaces_are_promps(run):
    name, env, _, _, mjx_steps, _ = run
    size = {"halfcheetah-direction": 17, "ant-direction": 111, "ant-goal": 113, "walker2d-direction": 17}[name]
    assert env.observation_space().shape == (size,) and env.observation_space().dtype == np.float32
    assert env.action_space().shape == (env.mj_model.nu,) and np.all(env.action_space().high == 10)
    assert all(step["obs"].shape == (size,) and step["obs"].dtype == np.float32 for step in mjx_steps)


def test_termination_rules():
    # ProMP's rules on hand-made states (no simulation: the rule is a function of qpos and qvel).
    ant, walker = Locomotion("ant-direction"), Locomotion("walker2d-direction")

    def ant_done(z, qvel0=0.0):
        d = ant._data0
        return bool(ant._done(d.replace(qpos=d.qpos.at[2].set(z), qvel=d.qvel.at[0].set(qvel0))))

    assert [ant_done(z) for z in (-0.01, 0.0, 0.5, 1.0, 1.01)] == [True, False, False, False, True]
    assert ant_done(0.5, np.nan)

    def walker_done(height, angle):
        d = walker._data0
        return bool(walker._done(d.replace(qpos=d.qpos.at[1].set(height).at[2].set(angle))))

    assert [walker_done(h, 0.0) for h in (0.8, 0.81, 1.99, 2.0)] == [True, False, False, True]
    assert [walker_done(1.2, a) for a in (-1.0, -0.99, 0.99, 1.0)] == [True, False, False, True]
    assert not bool(Locomotion("halfcheetah-direction")._done(None))


def test_task_distributions_are_promps():
    n = 4000
    directions = np.asarray(Locomotion("halfcheetah-direction").sample_tasks(jax.random.PRNGKey(0), n))
    assert set(np.unique(directions)) == {-1.0, 1.0}
    assert abs(directions.mean()) < 4 / np.sqrt(n)  # mean 0, standard error 1/√n
    goals = np.asarray(Locomotion("ant-goal").sample_tasks(jax.random.PRNGKey(0), n))
    radius2 = np.square(goals).sum(-1)
    assert goals.shape == (n, 2) and radius2.max() <= 9 + 1e-9
    # Uniform on the disc of radius 3: r² ~ U[0, 9] (mean 4.5, sd 9/√12); angle uniform (mean of cos, sin 0).
    assert abs(radius2.mean() - 4.5) < 4 * (9 / np.sqrt(12)) / np.sqrt(n)
    assert np.all(np.abs((goals / np.sqrt(radius2)[:, None]).mean(0)) < 4 * np.sqrt(0.5 / n))


def test_models_are_gymnasiums_with_promps_frame_skips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo's default warning handler would write MUJOCO_LOG.TXT here
    cheetah = Locomotion("halfcheetah-direction")
    # half_cheetah.xml's deprecated settotalmass="14" is still applied by MuJoCo 3.17.
    assert cheetah.mj_model.body_mass.sum() == pytest.approx(14.0)
    assert [Locomotion(name).dt for name in sorted(TASKS)] == pytest.approx([0.05, 0.05, 0.05, 0.016])
    assert not list(tmp_path.iterdir())


def test_control_is_promps_normalize_wrapper():
    env = Locomotion("halfcheetah-direction")
    u = jnp.asarray([-20.0, -10.0, -2.5, 0.0, 7.0, 11.0])
    np.testing.assert_allclose(env.control(u), [-1.0, -1.0, -0.25, 0.0, 0.7, 1.0], rtol=1e-6)
    np.testing.assert_allclose(Locomotion("halfcheetah-direction", action_scale=None).control(u / 10),
                               [-1.0, -1.0, -0.25, 0.0, 0.7, 1.0], rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(task="hopper"), "`task` must be one of"),
    (dict(action_scale=0), "`action_scale`"),
    (dict(solver_iterations=0), "`solver_iterations`"),
    (dict(ls_iterations=2.5), "`ls_iterations`"),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Locomotion(**kwargs)


def test_gymnasium_ids_make_every_task():
    import gymnasium

    import metagrad  # noqa: F401  registers the ids
    from metagrad import _registration

    for env_id, name in _registration.LOCOMOTION.items():
        env = gymnasium.make(env_id)
        assert env.unwrapped.env.task == name and env.spec.max_episode_steps == 100
        assert env.unwrapped.func_env == Locomotion(name)  # metagrad.envs.protocol.as_env reads it


def test_gymnasium_env_and_vector_env_step_halfcheetah():
    import gymnasium

    import metagrad  # noqa: F401

    env = gymnasium.make("metagrad/HalfCheetahRandDirec-v0", params=-1.0)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and np.isfinite(reward) and not terminated and not truncated
    np.testing.assert_allclose(reward, info["forward"] + info["ctrl"], rtol=1e-6)
    with pytest.raises(ValueError, match="`action` must be finite"):
        env.step(np.full(6, np.nan))
    # The vector env's reset only: compiling its step (with the autoreset branch) costs minutes of CPU.
    envs = gymnasium.make_vec("metagrad/HalfCheetahRandDirec-v0", num_envs=2, params=[1.0, -1.0])
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 17) and envs.observation_space.contains(obs)
    np.testing.assert_array_equal(envs.unwrapped.params, [1.0, -1.0])
    with pytest.raises(ValueError, match="`params` must be one task"):
        gymnasium.make_vec("metagrad/HalfCheetahRandDirec-v0", num_envs=2, params=[1.0, -1.0, 1.0])


def test_every_task_follows_the_env_protocol():
    from metagrad.envs.protocol import as_env, check_env

    for name in TASKS:
        env = Locomotion(name)
        assert check_env(env, sample_tasks=True) is env
        tasks = env.sample_tasks(jax.random.PRNGKey(0), 3)
        assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(tasks))
        obs, state = jax.eval_shape(env.reset, jax.random.PRNGKey(0), tasks[0])  # traced, not compiled
        assert obs.shape == env.observation_space(tasks[0]).shape
        out = jax.eval_shape(env.step, jax.random.PRNGKey(0), state, jnp.zeros(env.action_space().shape), tasks[0])
        assert out[3].shape == () and out[3].dtype == jnp.bool_ and out[2].shape == ()
    assert as_env("metagrad/HalfCheetahRandDirec-v0") == Locomotion("halfcheetah-direction")
