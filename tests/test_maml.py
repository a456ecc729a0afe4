"""The MAML loop: meta-gradients against explicit formulas and the exact oracle, checkpoints, devices, errors."""

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

from metagrad import exact, maml
from metagrad import outer as outer_lib

TABULAR = maml.MAMLConfig(
    env="tabular", num_states=3, num_actions=2, num_tasks=2, num_trajectories=8, horizon=5, gamma=0.8,
    inner_step_size=0.7, inner_estimator="taypo2",
)


def _collect(config, key=0, theta_key=1):
    m = maml.MAML(config)
    theta = 0.5 * jax.random.normal(jax.random.PRNGKey(theta_key), (config.num_states, config.num_actions))
    task = jax.tree_util.tree_map(lambda x: x[0], maml.sample_tasks(config, jax.random.PRNGKey(key), 1))
    return m, theta, task, jax.jit(m.collect)(theta, task, jax.random.PRNGKey(key + 100))


def test_task_meta_gradient_is_one_plus_eta_hessian_times_post_gradient():
    """∇_θ J_out(θ + η∇V̂_in(θ)) = (I + η Ĥ) ĝ' with Ĥ the inner estimator's own Hessian, formed explicitly."""
    _, theta, task, data = _collect(TABULAR)
    size, eta = theta.size, TABULAR.inner_step_size
    for estimator in ("taypo2", "maml"):
        m = maml.MAML(dataclasses.replace(TABULAR, inner_estimator=estimator))

        @jax.jit
        def explicit(theta, data):
            pre, values = data.pre[0], data.pre_values[0]
            hessian = jax.hessian(m.inner_surrogate)(theta, pre, values).reshape(size, size)
            adapted = theta + eta * jax.grad(m.inner_surrogate)(theta, pre, values)
            post_gradient = jax.grad(m.outer_surrogate)(adapted, data.post, data.post_values).reshape(size)
            return (jnp.eye(size) + eta * hessian) @ post_gradient, m.task_meta_gradient(theta, data)

        expected, loop = explicit(theta, data)
        np.testing.assert_allclose(loop.reshape(size), expected, rtol=1e-9, atol=1e-12, err_msg=estimator)


def test_two_inner_steps_chain_the_jacobians():
    config = dataclasses.replace(TABULAR, inner_steps=2)
    m, theta, task, data = _collect(config)
    size, eta = theta.size, config.inner_step_size
    thetas, jacobian = [theta], jnp.eye(size)
    for k in range(2):
        h = jax.hessian(m.inner_surrogate)(thetas[-1], data.pre[k], data.pre_values[k]).reshape(size, size)
        jacobian = (jnp.eye(size) + eta * h) @ jacobian
        thetas.append(thetas[-1] + eta * jax.grad(m.inner_surrogate)(thetas[-1], data.pre[k], data.pre_values[k]))
    post_gradient = jax.grad(m.outer_surrogate)(thetas[-1], data.post, data.post_values).reshape(size)
    expected = jacobian.T @ post_gradient
    np.testing.assert_allclose(m.task_meta_gradient(theta, data).reshape(size), expected, rtol=1e-9, atol=1e-12)


def test_fomaml_meta_gradient_is_the_post_update_gradient():
    config = dataclasses.replace(TABULAR, inner_estimator="fomaml", inner_steps=2)
    m, theta, task, data = _collect(config)
    adapted, _ = m.adapt(theta, data)
    expected = jax.grad(m.outer_surrogate)(adapted, data.post, data.post_values)
    np.testing.assert_allclose(m.task_meta_gradient(theta, data), expected, rtol=1e-12, atol=1e-14)


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
    base = dict(env="navigation", hidden_sizes=(8,), num_tasks=2, num_trajectories=4, horizon=10, num_iterations=4,
                checkpoint_every=2, inner_estimator="taypo2", outer="pg")
    base.update(kw)
    return maml.MAMLConfig(**base)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    outer = "pg"
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
    for name in ("pre_return", "post_return", "meta_grad_norm"):
        np.testing.assert_array_equal(history[name], full_history[name])
    assert len(history["wall_time"]) == 4
    with pytest.raises(ValueError, match="different key"):
        maml.train(config, jax.random.PRNGKey(4), checkpoint_dir=directory, resume=True, progress=False)
    with pytest.raises(ValueError, match="different config"):
        maml.train(dataclasses.replace(config, inner_step_size=0.2), key, checkpoint_dir=directory, resume=True,
                   progress=False)


def test_promp_first_step_gradient_is_the_meta_gradient():
    """At θ = θ_old the clipped ratio is 1 and the KL penalty is flat: ProMP's gradient is the PG meta-gradient."""
    config = dataclasses.replace(TABULAR, outer="promp", outer_estimator="taypo1")
    m = maml.MAML(config)
    theta = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (3, 2))

    @jax.jit
    def both(theta, key):
        data = m.sample_meta_batch(theta, key)
        return jax.grad(m._promp_objective)(theta, theta, data), m.meta_gradient(theta, data)

    promp, meta = both(theta, jax.random.PRNGKey(2))
    np.testing.assert_allclose(promp, meta, rtol=1e-8, atol=1e-12)


def test_conjugate_gradient_and_trpo_step_on_a_quadratic():
    """CG solves A x = b; the TRPO step lands on the KL boundary ½ sᵀ A s = δ and improves the objective."""
    a = jnp.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
    b = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(outer_lib.conjugate_gradient(lambda v: a @ v, b, 3), jnp.linalg.solve(a, b), rtol=1e-10)
    x0 = jnp.zeros(3)
    objective = lambda x: b @ x - 0.05 * x @ x  # noqa: E731
    kl = lambda x: 0.5 * (x - x0) @ a @ (x - x0)  # noqa: E731
    new, index = jax.jit(
        lambda x: outer_lib.trpo_step(x, b, lambda v: a @ v, objective, kl, max_kl=0.01, damping=0.0, cg_iterations=3)
    )(x0)
    assert int(index) == 0
    np.testing.assert_allclose(kl(new), 0.01, rtol=1e-8)
    np.testing.assert_allclose(new / jnp.linalg.norm(new), jnp.linalg.solve(a, b) / jnp.linalg.norm(jnp.linalg.solve(a, b)), rtol=1e-8)
    # A step that cannot improve is rejected: the parameters stay put.
    same, index = outer_lib.trpo_step(x0, b, lambda v: a @ v, lambda x: -jnp.sum(x**2), kl, max_kl=0.01, backtrack_steps=3)
    assert int(index) == 3 and np.array_equal(same, x0)


SHARDED = textwrap.dedent(
    """
    import json, sys
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
    fn = jax.jit(lambda p, k: m.meta_gradient(p, m.sample_meta_batch(p, k, sharding=sharding)))
    grad = fn(params, jax.random.PRNGKey(1))
    try:
        maml.task_sharding(maml.MAMLConfig(**{**json.loads(sys.argv[1]), "num_tasks": 12}))
        error = ""
    except ValueError as e:
        error = str(e)
    print(json.dumps({"grad": ravel_pytree(grad)[0].tolist(), "sharded": sharding is not None, "error": error}))
    """
)


def test_sharded_meta_gradient_matches_single_device():
    config = _nav_config(num_tasks=8)
    fields = {k: v for k, v in config.to_json().items()}
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", SHARDED, json.dumps(fields)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sharded"]
    assert "divisible by the number of devices (8)" in result["error"]
    m = maml.MAML(config)
    params = m.policy.init(jax.random.PRNGKey(0))
    single = jax.jit(lambda p, k: m.meta_gradient(p, m.sample_meta_batch(p, k)))(params, jax.random.PRNGKey(1))
    np.testing.assert_allclose(result["grad"], ravel_pytree(single)[0], rtol=1e-8, atol=1e-10)


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
    ],
)
def test_config_errors(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _nav_config(**change)


def test_inner_steps_zero_is_plain_policy_gradient():
    config = dataclasses.replace(TABULAR, inner_steps=0)
    m, theta, task, data = _collect(config)
    assert data.pre == ()
    expected = jax.grad(m.outer_surrogate)(theta, data.post, data.post_values)
    np.testing.assert_allclose(m.task_meta_gradient(theta, data), expected, rtol=1e-12)
    assert ravel_pytree(expected)[0].shape == (6,)
