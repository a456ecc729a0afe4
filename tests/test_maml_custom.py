"""Issues 12 §3 and 20 §1: the MAML loop with a task family, policy, critic and optimiser written outside the library."""

import importlib.util
import os

import jax
import numpy as np
import optax
import pytest

from metagrad import maml
from metagrad.policies import GaussianMLP

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "maml_custom_bandit.py")
_spec = importlib.util.spec_from_file_location("maml_custom_bandit", _PATH)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)
_OWN = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "maml_bring_your_own.py")
_spec = importlib.util.spec_from_file_location("maml_bring_your_own", _OWN)
own = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(own)


def test_example_task_family_is_under_40_lines():
    source = open(_PATH).read().splitlines()
    start = next(i for i, line in enumerate(source) if line.startswith("class Bandit2D"))
    end = next(i for i, line in enumerate(source) if line.startswith("def mean_reward_critic"))
    assert end - start < 40


@pytest.fixture(scope="module")
def history():
    return example.train(iterations=40, seed=0)[1]


def test_custom_bandit_meta_learns(history):
    post, pre = history["post_return"], history["pre_return"]
    first, last = post[:10], post[-10:]
    se = np.sqrt(first.var(ddof=1) / 10 + last.var(ddof=1) / 10)
    assert last.mean() > first.mean() + 3 * se, (first.mean(), last.mean(), se)
    # adaptation helps: after meta-training the adapted policy beats the pre-update one
    diff = post[-10:] - pre[-10:]
    assert diff.mean() > 3 * diff.std(ddof=1) / np.sqrt(10), diff


def test_custom_optimizer_is_the_one_used():
    config = maml.MAMLConfig(env=None, inner_steps=1, num_tasks=2, num_trajectories=4, horizon=1, num_iterations=2,
                             checkpoint_every=2)
    policy = GaussianMLP(1, 2, (4,))
    params, _ = maml.train(config, jax.random.PRNGKey(0), env=example.Bandit2D(), policy=policy,
                           critic=example.mean_reward_critic, optimizer=optax.sgd(0.0), progress=False)
    init = maml.make_train(config, env=example.Bandit2D(), policy=policy, critic=example.mean_reward_critic,
                           optimizer=optax.sgd(0.0))[0](jax.random.PRNGKey(0))["params"]
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(init)):
        np.testing.assert_array_equal(a, b)


def test_train_seeds_equals_train_per_seed_on_a_custom_task():
    """Issue 20 §1 on the user task, policy and optimiser of examples/maml_bring_your_own.py (terminating episodes).

    Tolerance, not bit-equality: ``train_seeds`` ``vmap``s the seeds into one program, so XLA batches each
    seed's matrix products and reductions and may sum in another order. Measured after 4 iterations: parameters
    differ by ≤ 4e-16 in float64 (this suite) and ≤ 1.2e-7 in float32; the differences grow with iterations
    as training amplifies them, so compare short runs (or run ``train`` per seed for bit-equal results).
    """
    config = maml.MAMLConfig(env=None, inner_estimator="dr", inner_steps=1, inner_step_size=own.INNER_STEP_SIZE,
                             num_tasks=3, num_trajectories=4, horizon=own.HORIZON, num_iterations=3, checkpoint_every=3)
    kwargs = dict(env=own.Walk1D(), policy=(own.init, own.apply), optimizer=optax.adam(1e-2), progress=False)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    many_params, many = maml.train_seeds(config, keys, **kwargs)
    assert many["post_return"].shape == (2, 3)
    for s in range(2):
        params, one = maml.train(config, keys[s], **kwargs)
        np.testing.assert_allclose(many["post_return"][s], one["post_return"], rtol=1e-12, atol=1e-12)
        for a, b in zip(jax.tree_util.tree_leaves(many_params), jax.tree_util.tree_leaves(params)):
            np.testing.assert_allclose(a[s], b, rtol=1e-12, atol=1e-13)


def test_bring_your_own_example_trains_end_to_end():
    """The example's own task (a protocol class, terminating), policy (init/apply MLP) and optax optimiser."""
    params, history = own.train(iterations=12, seed=0)
    assert set(params) == {"w1", "b1", "w2", "b2", "log_std"}
    post, pre = history["post_return"], history["pre_return"]
    assert np.all(np.isfinite(post)) and np.all(np.isfinite(pre))
    diff = post - pre  # the user policy's inner step adapts it to each task
    assert diff.mean() > 3 * diff.std(ddof=1) / np.sqrt(len(diff)), diff


def test_a_custom_policy_of_any_action_shape_and_a_custom_sampler():
    """A [2, 3]-shaped action space, the default MLP policy built from the env's spaces, tasks from `sample_tasks=`."""
    import gymnasium
    import jax.numpy as jnp

    class Matrix:
        def reset(self, key, params):
            return jnp.zeros(2), jnp.zeros(2)

        def step(self, key, state, action, params):
            return state, state, -jnp.sum((action - params) ** 2), jnp.zeros((), bool), {}

        def observation_space(self, params):
            return gymnasium.spaces.Box(-1.0, 1.0, (2,))

        def action_space(self, params):
            return gymnasium.spaces.Box(-1.0, 1.0, (2, 3))

    config = maml.MAMLConfig(env=None, inner_steps=1, num_tasks=2, num_trajectories=3, horizon=2, hidden_sizes=(8,))
    model = maml.MAML(config, env=Matrix(), sample_tasks=lambda key, n: jax.random.normal(key, (n, 2, 3)))
    params, opt_state = model.init(jax.random.PRNGKey(0))
    assert params["log_std"].shape == (2, 3)
    params, _, metrics = jax.jit(model.iteration)(params, opt_state, jax.random.PRNGKey(1))
    assert np.isfinite(metrics["post_return"]) and np.isfinite(metrics["meta_grad_norm"])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(env=object()), TypeError, "missing `reset`, `step`, `observation_space`, `action_space`, `sample_tasks`"),
    (dict(policy=object()), TypeError, "`policy` must be an \\(init, apply\\) pair"),
    (dict(critic=3), ValueError, "`critic` must be a function"),
    (dict(optimizer="adam"), ValueError, "`optimizer` must be an optax.GradientTransformation"),
])
def test_custom_objects_are_validated(kwargs, error, message):
    with pytest.raises(error, match=message):
        maml.MAML(maml.MAMLConfig(env=None), **{"env": example.Bandit2D(), **kwargs})


def test_env_without_sample_tasks_is_rejected():
    class NoTasks(example.Bandit2D):
        sample_tasks = None

    with pytest.raises(TypeError, match="sample_tasks"):
        maml.MAML(maml.MAMLConfig(env=None), env=NoTasks())


@pytest.mark.parametrize("config, kwargs, message", [
    (dict(), dict(env="bandit"), r"`MAMLConfig.env` = 'navigation' would be unused"),
    (dict(env=None), dict(), "`MAMLConfig.env` is None"),
    (dict(env=None, outer="trpo"), dict(env="bandit", optimizer=optax.sgd(0.1)), "`optimizer` is unused by outer='trpo'"),
    (dict(env=None, outer_lr=0.5), dict(env="bandit", optimizer=optax.sgd(0.1)), "`outer_lr` = 0.5 would be unused"),
    (dict(env=None, hidden_sizes=(8,)), dict(env="bandit", policy=GaussianMLP(1, 2)), "`hidden_sizes` = \\(8,\\)"),
    (dict(), dict(sample_tasks=lambda k, n: None), "`sample_tasks` draws tasks of a custom `env`"),
    (dict(env=None, critic="none"), dict(env="bandit", critic=example.mean_reward_critic),
     "`MAMLConfig.critic` = 'none' would be unused"),
])
def test_config_fields_a_run_would_not_use_are_refused(config, kwargs, message):
    """Issue 20 §1: every config field is used or refused, naming the field."""
    if kwargs.get("env") == "bandit":
        kwargs["env"] = example.Bandit2D()
    with pytest.raises(ValueError, match=message):
        maml.MAML(maml.MAMLConfig(**config), **kwargs)


def test_trpo_refuses_an_outer_learning_rate():
    with pytest.raises(ValueError, match="`outer_lr` = 0.01 is unused by outer='trpo'"):
        maml.MAMLConfig(outer="trpo", outer_lr=1e-2)
