"""The MAML loop: meta-gradients against explicit formulas and the exact oracle, E-MAML, critics, checkpoints,
devices, config errors."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metagrad import critics as critics_lib
from metagrad import exact, maml, mdp
from metagrad import outer as outer_lib
from metagrad.rollout import Trajectories

TABULAR = maml.MAMLConfig(
    env="tabular", num_states=3, num_actions=2, num_tasks=2, num_trajectories=8, horizon=5, gamma=0.8,
    inner_step_size=0.7, inner_estimator="taypo2", inner_steps=2,
)


@pytest.fixture(scope="module")
def tabular():
    """``(theta, data)``: one task's batches D_0, D_1 (two inner steps) and D', shared by the identity tests.

    The identities below hold for any batches, so the one-step tests reuse D_0 and D' of this collection.
    """
    # On-policy the inner gradients of TayPO-2 and of the MAML surrogate coincide, so collecting with the
    # cheaper-to-compile MAML surrogate gives the batches TayPO-2 would have sampled.
    m = maml.MAML(dataclasses.replace(TABULAR, inner_estimator="maml"))
    theta = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (TABULAR.num_states, TABULAR.num_actions))
    task = jax.tree_util.tree_map(lambda x: x[0], maml.sample_tasks(TABULAR, jax.random.PRNGKey(0), 1))
    return theta, jax.jit(m.collect)(theta, task, jax.random.PRNGKey(100))


def _with_inner_steps(data, k):
    """The same batches with only the first ``k`` pre-update batches (D' unchanged)."""
    return data._replace(pre=data.pre[:k], pre_values=data.pre_values[:k], pre_log_probs=data.pre_log_probs[:k])


def test_task_meta_gradient_is_one_plus_eta_hessian_times_post_gradient(tabular):
    """∇_θ J_out(θ + η∇V̂_in(θ)) = (I + η Ĥ) ĝ' with Ĥ the inner estimator's own Hessian, formed explicitly."""
    theta, data = tabular
    data = _with_inner_steps(data, 1)
    size, eta = theta.size, TABULAR.inner_step_size
    for estimator in ("taypo2", "maml"):
        m = maml.MAML(dataclasses.replace(TABULAR, inner_estimator=estimator, inner_steps=1))

        @jax.jit
        def explicit(theta, data):
            pre, values = data.pre[0], data.pre_values[0]
            hessian = jax.hessian(m.inner_surrogate)(theta, pre, values).reshape(size, size)
            adapted = theta + eta * jax.grad(m.inner_surrogate)(theta, pre, values)
            post_gradient = jax.grad(m.outer_surrogate)(adapted, data.post, data.post_values).reshape(size)
            return (jnp.eye(size) + eta * hessian) @ post_gradient, m.task_meta_gradient(theta, data)

        expected, loop = explicit(theta, data)
        np.testing.assert_allclose(loop.reshape(size), expected, rtol=1e-9, atol=1e-12, err_msg=estimator)


def test_two_inner_steps_chain_the_jacobians(tabular):
    theta, data = tabular
    m = maml.MAML(TABULAR)
    size, eta = theta.size, TABULAR.inner_step_size

    @jax.jit
    def explicit(theta, data):
        thetas, jacobian = [theta], jnp.eye(size)
        for k in range(2):
            h = jax.hessian(m.inner_surrogate)(thetas[-1], data.pre[k], data.pre_values[k]).reshape(size, size)
            jacobian = (jnp.eye(size) + eta * h) @ jacobian
            thetas.append(thetas[-1] + eta * jax.grad(m.inner_surrogate)(thetas[-1], data.pre[k], data.pre_values[k]))
        post_gradient = jax.grad(m.outer_surrogate)(thetas[-1], data.post, data.post_values).reshape(size)
        return jacobian.T @ post_gradient, m.task_meta_gradient(theta, data)

    expected, loop = explicit(theta, data)
    np.testing.assert_allclose(loop.reshape(size), expected, rtol=1e-9, atol=1e-12)


def test_fomaml_meta_gradient_is_the_post_update_gradient(tabular):
    theta, data = tabular
    m = maml.MAML(dataclasses.replace(TABULAR, inner_estimator="fomaml"))

    @jax.jit
    def both(theta, data):
        adapted, _ = m.adapt(theta, data)
        return jax.grad(m.outer_surrogate)(adapted, data.post, data.post_values), m.task_meta_gradient(theta, data)

    expected, loop = both(theta, data)
    np.testing.assert_allclose(loop, expected, rtol=1e-12, atol=1e-14)
    # … and it differs from the second-order meta-gradient on the same batches (the test can fail).
    second_order = jax.jit(maml.MAML(TABULAR).task_meta_gradient)(theta, data)
    assert np.linalg.norm(second_order - loop) > 1e-3 * np.linalg.norm(loop)


def test_emaml_adds_promps_exploration_term(tabular):
    """E-MAML (ProMP trpo_maml.py) = the MAML meta-gradient + mean_g mean(r̃'_g) · ∇ mean_{n,t} log π_θ(a|x) over D_0,g,
    r̃' the post-update rewards standardised over the whole meta-batch (tests/test_maml_reference.py checks the
    ProMP form against NumPy; this is the paper form on tabular tasks)."""
    theta, data = tabular
    # Two tasks: D_0 of the fixture, and its D_1 used as a second D_0 with the post-update rewards doubled.
    first = _with_inner_steps(data, 1)
    second = data._replace(
        pre=data.pre[1:], pre_values=data.pre_values[1:], pre_log_probs=data.pre_log_probs[1:],
        post=data.post._replace(rewards=2.0 * data.post.rewards + 0.5),
    )
    batch = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), first, second)
    config = dataclasses.replace(TABULAR, inner_steps=1)
    emaml = maml.MAML(dataclasses.replace(config, inner_estimator="emaml"))
    plain = maml.MAML(dataclasses.replace(config, inner_estimator="maml"))

    def mean_score(theta, d0):  # ∇ mean_{n,t} log π_θ(a_t|x_t) over the valid steps of D_0
        mean_log_likelihood = lambda t: jnp.sum(  # noqa: E731
            plain.policy.log_prob(t, d0.observations[:, :-1], d0.actions) * d0.mask()) / jnp.sum(d0.mask())
        return jax.grad(mean_log_likelihood)(theta)

    rewards = [np.asarray(d.post.rewards) for d in (first, second)]
    masks = [np.asarray(d.post.mask()) for d in (first, second)]
    pooled = np.concatenate([r[m > 0] for r, m in zip(rewards, masks)])
    weights = [float(((r - pooled.mean()) / (pooled.std() + 1e-8))[m > 0].mean()) for r, m in zip(rewards, masks)]

    @jax.jit
    def both(theta, batch):
        term = (mean_score(theta, first.pre[0]) * weights[0] + mean_score(theta, second.pre[0]) * weights[1]) / 2
        maml_gradient = plain.meta_gradient(theta, batch)
        return maml_gradient, maml_gradient + term, emaml.meta_gradient(theta, batch)

    maml_gradient, expected, loop = both(theta, batch)
    np.testing.assert_allclose(loop, expected, rtol=1e-9, atol=1e-12)
    assert np.linalg.norm(loop - maml_gradient) > 1e-3 * np.linalg.norm(loop)  # the term is not negligible


def test_critics_linear_baseline_exact_values_and_no_gradient():
    """Linear: ridge least squares (ridge 1e-5) of the returns-to-go on φ(x, t) over the valid steps (padding ignored),
    V(x_T) = 0. Exact: V^π of the sampling policy. None: 0. No critic passes a gradient."""
    rng = np.random.default_rng(0)
    n, t, gamma = 4, 6, 0.9
    obs = jnp.asarray(rng.normal(size=(n, t + 1, 2)))
    rewards = jnp.asarray(rng.normal(size=(n, t)))
    terminated = jnp.zeros((n, t), bool).at[0, 2].set(True)  # trajectory 0 ends at step 2: steps 3.. are padding
    batch = Trajectories(obs, jnp.zeros((n, t, 2)), rewards, jnp.zeros((n, t)), terminated)
    linear = jax.jit(critics_lib.make_critic("linear"), static_argnums=1)
    values = np.asarray(linear(batch, gamma))

    # Reference: NumPy least squares on the stacked ridge system.
    r, o, valid = np.asarray(rewards), np.clip(np.asarray(obs), -10, 10), np.asarray(batch.mask()).astype(bool)
    disc = gamma * (1 - np.asarray(batch.done()))
    returns = np.zeros((n, t))
    for i in range(n):
        g = 0.0
        for s in reversed(range(t)):
            g = r[i, s] + disc[i, s] * g
            returns[i, s] = g
    steps = np.broadcast_to((np.arange(t + 1) / 100.0)[None, :, None], (n, t + 1, 1))
    phi = np.concatenate([o, o**2, steps, steps**2, steps**3, np.ones_like(steps)], axis=-1)
    x, y = phi[:, :-1][valid], returns[valid]
    ridge = 1e-5  # ProMP's absolute reg_coeff (baselines/linear_baseline.py; test_maml_masks.py has its fit)
    w = np.linalg.lstsq(np.vstack([x, np.sqrt(ridge) * np.eye(x.shape[1])]),
                        np.concatenate([y, np.zeros(x.shape[1])]), rcond=None)[0]
    expected = phi @ w
    expected[:, -1] = 0.0
    np.testing.assert_allclose(values, expected, rtol=1e-7, atol=1e-9)
    # Padding does not enter the fit: changing rewards after termination leaves every value unchanged.
    padded = batch._replace(rewards=rewards.at[0, 3:].set(100.0))
    np.testing.assert_allclose(linear(padded, gamma), values, rtol=1e-12, atol=1e-12)
    # Stop-gradient: no path from the batch's rewards into the values.
    grad = jax.grad(lambda scale: jnp.sum(linear(batch._replace(rewards=scale * rewards), gamma)))(1.0)
    assert float(grad) == 0.0
    np.testing.assert_array_equal(critics_lib.make_critic("none")(batch, gamma), np.zeros((n, t + 1)))

    # Exact critic: V^π(x_t) of π = softmax(θ), indexed by state, and no gradient into θ.
    config = maml.MAMLConfig(env="tabular", num_states=3, num_actions=2, horizon=t, gamma=0.8)
    task = jax.tree_util.tree_map(lambda a: a[0], maml.sample_tasks(config, jax.random.PRNGKey(0), 1))
    states = jnp.asarray(rng.integers(0, 3, size=(n, t + 1)))
    tab = Trajectories(states, jnp.zeros((n, t), jnp.int32), jnp.zeros((n, t)), jnp.zeros((n, t)))
    theta = jnp.asarray(rng.normal(size=(3, 2)))
    exact_critic = critics_lib.make_critic("exact")
    v, _ = mdp.policy_evaluation(task, jax.nn.softmax(theta, axis=-1))
    np.testing.assert_allclose(exact_critic(tab, 0.8, task=task, params=theta), np.asarray(v)[np.asarray(states)],
                               rtol=1e-12)
    grad = jax.grad(lambda th: jnp.sum(exact_critic(tab, 0.8, task=task, params=th)))(theta)
    np.testing.assert_array_equal(grad, np.zeros_like(theta))
    with pytest.raises(ValueError, match="Unknown critic"):
        critics_lib.make_critic("learned")


def test_meta_gradients_approach_the_exact_one_with_the_exact_critic():
    """Large batches, exact critic: TayPO-2 / DR point along the exact meta-gradient; the MAML surrogate less.

    On-policy, TayPO-2, DR and the MAML surrogate share the inner gradient, so one collection serves all
    three and only their Hessians differ. The bound: mean correlation minus 3 standard errors over seeds.
    """
    eta, seeds = 2.0, 4
    config = maml.MAMLConfig(
        env="tabular", num_states=6, num_actions=3, num_tasks=4, num_trajectories=1000, horizon=25, gamma=0.8,
        inner_step_size=eta, inner_estimator="taypo2",
    )
    models = {name: maml.MAML(dataclasses.replace(config, inner_estimator=name)) for name in ("taypo2", "dr", "maml")}
    theta = 0.5 * jax.random.normal(jax.random.PRNGKey(7), (6, 3))

    @jax.jit
    def estimates(key):
        k_tasks, k_data = jax.random.split(key)
        tasks = maml.sample_tasks(config, k_tasks, config.num_tasks)
        data = jax.vmap(models["taypo2"].collect, in_axes=(None, 0, 0))(
            theta, tasks, jax.random.split(k_data, config.num_tasks)
        )
        truth = exact.maml_gradient(tasks, theta, eta, 1)
        return {name: m.meta_gradient(theta, data) for name, m in models.items()}, truth

    correlations = {name: [] for name in models}
    for seed in range(seeds):
        grads, truth = estimates(jax.random.PRNGKey(seed))
        for name, g in grads.items():
            correlations[name].append(np.corrcoef(np.ravel(g), np.ravel(truth))[0, 1])
    mean = {k: np.mean(v) for k, v in correlations.items()}
    se = {k: np.std(v, ddof=1) / np.sqrt(seeds) for k, v in correlations.items()}
    for name in ("taypo2", "dr"):
        assert mean[name] - 3 * se[name] > 0.98, (name, mean, se)
        # Paired over seeds (same data): the MAML surrogate's biased Hessian costs correlation on every seed,
        # and its mean lies outside TayPO-2's / DR's 3-standard-error band.
        assert np.all(np.asarray(correlations[name]) > np.asarray(correlations["maml"])), correlations
        assert mean["maml"] < mean[name] - 3 * se[name], (mean, se)


def _nav_config(**kw):
    base = dict(env="navigation", hidden_sizes=(4,), num_tasks=2, num_trajectories=2, horizon=5, num_iterations=4,
                checkpoint_every=2, inner_estimator="maml", outer="pg", promp_steps=2, cg_iterations=3,
                backtrack_steps=3)
    base.update(kw)
    return maml.MAMLConfig(**base)


@pytest.mark.parametrize("outer", maml.OUTERS)
def test_checkpoint_resume_is_bit_identical(tmp_path, outer):
    config = _nav_config(outer=outer)
    key = jax.random.PRNGKey(3)
    full_params, full_history = maml.train(config, key, progress=False)
    directory = str(tmp_path / outer)
    maml.train(dataclasses.replace(config, num_iterations=2), key, checkpoint_dir=directory, progress=False)
    assert sorted(os.listdir(directory)) == ["checkpoint.json", "checkpoint.npz"]  # no temp files left over
    assert json.load(open(os.path.join(directory, "checkpoint.json")))["iteration"] == 2
    params, history = maml.train(config, key, checkpoint_dir=directory, resume=True, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(full_params)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ravel_pytree(full_params)[0], ravel_pytree(maml.MAML(config).init(key)[0])[0])
    for name in ("pre_return", "post_return", "meta_grad_norm"):
        np.testing.assert_array_equal(history[name], full_history[name])
    assert len(history["wall_time"]) == 4
    if outer != "pg":
        return
    with pytest.raises(ValueError, match="different key"):
        maml.train(config, jax.random.PRNGKey(4), checkpoint_dir=directory, resume=True, progress=False)
    with pytest.raises(ValueError, match="different config"):
        maml.train(dataclasses.replace(config, inner_step_size=0.2), key, checkpoint_dir=directory, resume=True,
                   progress=False)


def test_promp_first_step_gradient_is_the_meta_gradient(tabular):
    """At θ = θ_old the clipped ratio is 1 and the KL penalty is flat: ProMP's gradient is the PG meta-gradient."""
    theta, data = tabular
    data = jax.tree_util.tree_map(lambda x: x[None], data)  # a meta-batch of one task
    m = maml.MAML(dataclasses.replace(TABULAR, outer="promp", outer_estimator="taypo1"))

    @jax.jit
    def both(theta, data):
        return jax.grad(m._promp_objective)(theta, theta, data), m.meta_gradient(theta, data)

    promp, meta = both(theta, data)
    np.testing.assert_allclose(promp, meta, rtol=1e-8, atol=1e-12)
    assert np.linalg.norm(meta) > 1e-6


def test_conjugate_gradient_and_trpo_step_on_a_quadratic():
    """CG solves A x = b; the TRPO step lands on the KL boundary ½ sᵀ A s = δ and improves the objective."""
    a = jnp.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
    b = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(outer_lib.conjugate_gradient(lambda v: a @ v, b, 3), jnp.linalg.solve(a, b), rtol=1e-10)
    x0 = jnp.zeros(3)
    objective = lambda x: b @ x - 0.05 * x @ x  # noqa: E731
    kl = lambda x: 0.5 * (x - x0) @ a @ (x - x0)  # noqa: E731
    new, index = jax.jit(
        lambda x: outer_lib.trpo_step(x, b, lambda v: a @ v, lambda x: (objective(x), kl(x)), max_kl=0.01, damping=0.0,
                                      cg_iterations=3)
    )(x0)
    assert int(index) == 0
    np.testing.assert_allclose(kl(new), 0.01, rtol=1e-8)
    np.testing.assert_allclose(new / jnp.linalg.norm(new), jnp.linalg.solve(a, b) / jnp.linalg.norm(jnp.linalg.solve(a, b)), rtol=1e-8)
    # A step that cannot improve is rejected: the parameters stay put.
    same, index = outer_lib.trpo_step(x0, b, lambda v: a @ v, lambda x: (-jnp.sum(x**2), kl(x)), max_kl=0.01,
                                      backtrack_steps=3)
    assert int(index) == 3 and np.array_equal(same, x0)


SHARDED = textwrap.dedent(
    """
    import dataclasses, json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree
    from metagrad import maml
    config = maml.MAMLConfig(**json.loads(sys.argv[1]))
    assert len(jax.devices()) == 8, jax.devices()
    sharding = maml.task_sharding(config)
    m = maml.MAML(config)
    params = m.policy.init(jax.random.PRNGKey(0))

    def fn(p, k):
        data = m.sample_meta_batch(p, k, sharding=sharding)
        return m.meta_gradient(p, data), data.post.rewards

    grad, rewards = jax.jit(fn)(params, jax.random.PRNGKey(1))
    # One meta-iteration of train() (its jitted chunk shards the meta-batch the same way).
    trained, history = maml.train(dataclasses.replace(config, num_iterations=1), jax.random.PRNGKey(2), progress=False)
    try:
        maml.task_sharding(maml.MAMLConfig(**{**json.loads(sys.argv[1]), "num_tasks": 12}))
        error = ""
    except ValueError as e:
        error = str(e)
    print(json.dumps({"grad": ravel_pytree(grad)[0].tolist(), "sharded": sharding is not None, "error": error,
                      "devices_of_batch": len(rewards.sharding.device_set), "trained": ravel_pytree(trained)[0].tolist(),
                      "post_return": history["post_return"].tolist()}))
    """
)


def test_sharded_meta_gradient_matches_single_device():
    """8 fake CPU devices (subprocess): the meta-batch is split over all 8, and the meta-gradient and one
    iteration of train() agree with one device; a task count not divisible by 8 is a ValueError."""
    config = _nav_config(num_tasks=8)
    fields = {k: v for k, v in config.to_json().items()}
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"  # keeps conftest's flags
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", SHARDED, json.dumps(fields)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sharded"] and result["devices_of_batch"] == 8
    assert "divisible by the number of devices (8)" in result["error"]
    assert len(jax.devices()) == 1 and maml.task_sharding(config) is None
    m = maml.MAML(config)
    params = m.policy.init(jax.random.PRNGKey(0))
    single = jax.jit(lambda p, k: m.meta_gradient(p, m.sample_meta_batch(p, k)))(params, jax.random.PRNGKey(1))
    np.testing.assert_allclose(result["grad"], ravel_pytree(single)[0], rtol=1e-8, atol=1e-10)
    trained, history = maml.train(dataclasses.replace(config, num_iterations=1), jax.random.PRNGKey(2), progress=False)
    np.testing.assert_allclose(result["trained"], ravel_pytree(trained)[0], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result["post_return"], history["post_return"], rtol=1e-8)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(inner_estimator="nope"), "Unknown inner estimator 'nope'; valid estimators are"),
        (dict(outer_estimator="nope"), "Unknown outer estimator"),
        (dict(env="mujoco"), "Unknown env 'mujoco'"),
        (dict(outer="adam"), "Unknown outer optimiser"),
        (dict(inner_step_size=0.0), "inner_step_size"),
        (dict(outer_lr=-1e-3), "outer_lr"),
        (dict(num_trajectories=0), "num_trajectories"),
        (dict(num_tasks=-2), "num_tasks"),
        (dict(horizon=2.5), "horizon"),
        (dict(inner_steps=-1), "inner_steps"),
        (dict(gamma=1.0), "gamma"),
        (dict(critic="exact"), "needs env='tabular'"),
        (dict(critic="learned"), "Unknown critic"),
        (dict(outer="trpo", cg_subsample=0.0), "`cg_subsample` must be a fraction in (0, 1]"),
        (dict(outer="trpo", cg_subsample=1.5), "`cg_subsample` must be a fraction in (0, 1]"),
        (dict(outer="pg", cg_subsample=0.5), "`cg_subsample` = 0.5 is used only by outer='trpo'"),
    ],
)
def test_config_errors(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _nav_config(**change)


def test_inner_steps_zero_is_plain_policy_gradient(tabular):
    theta, data = tabular
    config = dataclasses.replace(TABULAR, inner_steps=0)
    m = maml.MAML(config)
    data = _with_inner_steps(data, 0)
    assert data.pre == ()
    expected, loop = jax.jit(lambda t, d: (jax.grad(m.outer_surrogate)(t, d.post, d.post_values), m.task_meta_gradient(t, d)))(
        theta, data
    )
    np.testing.assert_allclose(loop, expected, rtol=1e-12)
    assert ravel_pytree(expected)[0].shape == (6,)
    # collect() with K = 0 samples only D'.
    task = jax.tree_util.tree_map(lambda x: x[0], maml.sample_tasks(config, jax.random.PRNGKey(0), 1))
    assert jax.jit(m.collect)(theta, task, jax.random.PRNGKey(100)).pre == ()
