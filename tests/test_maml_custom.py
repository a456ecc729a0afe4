"""Issue 12 §3: the MAML loop with a task family, critic and optimiser written outside the library."""

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
    config = maml.MAMLConfig(inner_steps=1, num_tasks=2, num_trajectories=4, horizon=1, num_iterations=2,
                             checkpoint_every=2)
    policy = GaussianMLP(1, 2, (4,))
    params, _ = maml.train(config, jax.random.PRNGKey(0), env=example.Bandit2D(), policy=policy,
                           critic=example.mean_reward_critic, optimizer=optax.sgd(0.0), progress=False)
    init = maml.make_train(config, env=example.Bandit2D(), policy=policy, critic=example.mean_reward_critic,
                           optimizer=optax.sgd(0.0))[0](jax.random.PRNGKey(0))["params"]
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(init)):
        np.testing.assert_array_equal(a, b)


def test_train_seeds_is_one_program_equal_to_separate_runs():
    config = maml.MAMLConfig(inner_steps=1, num_tasks=2, num_trajectories=4, horizon=1, num_iterations=3,
                             checkpoint_every=3, inner_estimator="dr", inner_step_size=0.5)
    kwargs = dict(env=example.Bandit2D(), policy=GaussianMLP(1, 2, (4,)), critic=example.mean_reward_critic,
                  progress=False)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    _, many = maml.train_seeds(config, keys, **kwargs)
    assert many["post_return"].shape == (2, 3)
    for s in range(2):
        _, one = maml.train(config, keys[s], **kwargs)
        np.testing.assert_allclose(many["post_return"][s], one["post_return"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(env=object()), "`env` must be a gymnasium FuncEnv"),
    (dict(policy=object()), "`policy` must have methods"),
    (dict(critic=3), "`critic` must be a function"),
    (dict(optimizer="adam"), "`optimizer` must be an optax.GradientTransformation"),
])
def test_custom_objects_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        maml.MAML(maml.MAMLConfig(), **kwargs)


def test_env_without_sample_tasks_is_rejected():
    class NoTasks(example.Bandit2D):
        sample_tasks = None

    with pytest.raises(ValueError, match="sample_tasks"):
        maml.MAML(maml.MAMLConfig(), env=NoTasks())
