"""The chain-rule assembly (metagrad.tabular) equals autodiff of the batch surrogate, to float precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import estimators, tabular
from metagrad.mdp import random_mdp
from metagrad.rollout import Trajectories, sample, tabular_softmax_policy

S, A, T, N, GAMMA = 3, 2, 4, 16, 0.8


@pytest.fixture(scope="module")
def problem():
    key_mdp, key_logits, key_data, key_critic, key_mu = jax.random.split(jax.random.PRNGKey(7), 5)
    mdp = random_mdp(key_mdp, S, A, gamma=GAMMA, dirichlet=1.0)
    logits = jax.random.normal(key_logits, (S, A))
    behaviour = jax.random.normal(key_mu, (S, A))
    batch = sample(key_data, mdp, tabular_softmax_policy, behaviour, N, T)
    # Terminate a few trajectories early, so the termination masks are exercised too.
    terminated = jnp.zeros((N, T), bool).at[0, 1].set(True).at[3, 2].set(True)
    batch = batch._replace(terminated=terminated)
    critic = jax.random.normal(key_critic, (S,))  # differs per state
    return logits, batch, critic, behaviour


NAMES = ["is", "dr", "vtrace", "taypo1", "taypo2", "taypo3", "maml", "dice", "loaded_dice", "lvc", "fomaml"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("off_policy", [False, True])
def test_chain_rule_equals_autodiff(problem, name, off_policy):
    logits, batch, critic, behaviour = problem
    order = 2 if off_policy else 3  # third order off-policy adds compile time, not coverage of new code
    kwargs = dict(discount=GAMMA, behaviour_logits=behaviour if off_policy else None, order=order)
    fast = jax.jit(lambda th: estimators.tabular_derivatives(name, th, batch, critic, **kwargs))(logits)
    reference = jax.jit(lambda th: estimators.tabular_derivatives_autodiff(name, th, batch, critic, **kwargs))(logits)
    assert [d.shape for d in fast] == [(S, A), (S, A, S, A), (S, A, S, A, S, A)][:order]
    for k, (got, want) in enumerate(zip(fast, reference), start=1):
        scale = float(jnp.max(jnp.abs(want))) + 1e-12
        np.testing.assert_allclose(got, want, atol=1e-12 * scale + 1e-13, err_msg=f"{name}, order {k}")


def test_options_reach_the_estimator(problem):
    logits, batch, critic, _ = problem
    full = estimators.tabular_derivatives("loaded_dice", logits, batch, critic, discount=GAMMA, lam=1.0)
    short = estimators.tabular_derivatives("loaded_dice", logits, batch, critic, discount=GAMMA, lam=0.0)
    reference = estimators.tabular_derivatives_autodiff("loaded_dice", logits, batch, critic, discount=GAMMA, lam=0.0)
    np.testing.assert_allclose(short[1], reference[1], atol=1e-12)
    assert float(jnp.max(jnp.abs(full[1] - short[1]))) > 1e-3  # λ changes the Hessian


def test_prefix_weights_give_prefix_means(problem):
    """Several weightings of the same batch (as `metagrad reproduce` uses for its N-sweep)."""
    logits, batch, critic, _ = problem
    states, actions = batch.observations[:, :-1], batch.actions
    values = critic[batch.observations]

    def fn(log_pi, rewards, values):
        return estimators.trajectory_objective("taypo2", log_pi, jax.lax.stop_gradient(log_pi), rewards, values, GAMMA)

    weights = jnp.stack([jnp.where(jnp.arange(N) < n, 1.0 / n, 0.0) for n in (4, N)])
    grads, hessians = tabular.derivatives(fn, logits, states, actions, (batch.rewards, values), weights=weights)
    for row, n in enumerate((4, N)):
        prefix = Trajectories(batch.observations[:n], batch.actions[:n], batch.rewards[:n], batch.log_probs[:n])
        g, h = estimators.tabular_derivatives_autodiff("taypo2", logits, prefix, critic, discount=GAMMA)
        np.testing.assert_allclose(grads[row], g, atol=1e-12)
        np.testing.assert_allclose(hessians[row], h, atol=1e-12)


def test_jit_and_vmap(problem):
    logits, batch, critic, _ = problem
    fn = jax.jit(lambda th: estimators.tabular_derivatives("dr", th, batch, critic, discount=GAMMA))
    many = jax.vmap(fn)(jnp.stack([logits, 2 * logits]))
    np.testing.assert_allclose(many[1][0], fn(logits)[1], atol=1e-12)


def test_bad_order_is_rejected(problem):
    logits, batch, critic, _ = problem
    with pytest.raises(ValueError, match="order"):
        tabular.derivatives(lambda lp: lp.sum(), logits, batch.observations[:, :-1], batch.actions, order=4)
