"""Tests of metagrad.estimators: the registry, the batch surrogate and tabular_derivatives (validation,
batch mean before differentiation, off-policy behaviour, jit and vmap, the pitfalls of paper-notes §6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import estimators, mdp as mdp_lib, ope
from metagrad.rollout import Trajectories, sample, tabular_softmax_policy

S, A, N, T, GAMMA = 4, 3, 5, 4, 0.8


@pytest.fixture(scope="module")
def setting():
    mdp = mdp_lib.random_mdp(jax.random.PRNGKey(0), S, A, gamma=GAMMA, dirichlet=1.0, start_state=None)
    logits = jax.random.normal(jax.random.PRNGKey(1), (S, A))
    batch = sample(jax.random.PRNGKey(2), mdp, tabular_softmax_policy, logits, N, T)
    critic = jnp.array([0.5, -1.0, 2.0, 0.3])
    return dict(logits=logits, batch=batch, critic=critic, behaviour=jnp.zeros((S, A)))


def log_prob(params, states, actions):
    return jax.nn.log_softmax(params, axis=-1)[states, actions]


# --------------------------------------------------------------------------------------------- registry
def test_registry_names_and_unknown_names():
    names = estimators.valid_names()
    for name in ["is", "dr", "vtrace", "taypo1", "taypo2", "taypo3", "taypo", "maml", "dice", "loaded_dice", "lvc", "fomaml"]:
        assert name in names
    assert estimators.get("fomaml").first_order_only and not estimators.get("maml").first_order_only
    with pytest.raises(ValueError, match="Unknown estimator 'taypo_2'; valid names are: is, dr"):
        estimators.get("taypo_2")
    for bad in ("taypo0", "TAYPO2", None):
        with pytest.raises(ValueError, match="Unknown estimator"):
            estimators.get(bad)
    assert estimators.get("taypo7").name == "taypo7"


def test_options_are_checked():
    lp, r, v = jnp.log(jnp.full(T, 0.3)), jnp.ones(T), jnp.zeros(T + 1)
    with pytest.raises(ValueError, match="'dr' got unknown option\\(s\\) \\['lam'\\]"):
        estimators.trajectory_objective("dr", lp, lp, r, v, GAMMA, lam=0.5)
    with pytest.raises(ValueError, match="'taypo' needs the option\\(s\\) \\['order'\\]"):
        estimators.trajectory_objective("taypo", lp, lp, r, v, GAMMA)
    with pytest.raises(ValueError, match="`log_mu` must have shape \\[T\\]"):
        estimators.trajectory_objective("dr", lp, lp[:-1], r, v, GAMMA)
    with pytest.raises(ValueError, match="`log_pi` must have shape \\[T\\]"):
        estimators.trajectory_objective("dr", lp[None], lp[None], r, v, GAMMA)


def test_trajectory_objective_is_the_ope_estimate_at_the_log_ratios():
    rng = np.random.default_rng(0)
    lp, lm = jnp.asarray(np.log(rng.uniform(0.1, 1, T))), jnp.asarray(np.log(rng.uniform(0.1, 1, T)))
    r, v = jnp.asarray(rng.uniform(size=T)), jnp.asarray(rng.normal(size=T + 1))
    cases = {
        "is": ope.step_importance_sampling(lp - lm, r, v, GAMMA),
        "dr": ope.doubly_robust(lp - lm, r, v, GAMMA),
        "taypo2": ope.taylor_expansion(lp - lm, r, v, GAMMA, order=2),
        "taypo3": ope.taylor_expansion(lp - lm, r, v, GAMMA, order=3),
    }
    for name, want in cases.items():
        np.testing.assert_allclose(estimators.trajectory_objective(name, lp, lm, r, v, GAMMA), want, rtol=1e-12)
    np.testing.assert_allclose(
        estimators.trajectory_objective("taypo", lp, lm, r, v, GAMMA, order=4),
        estimators.trajectory_objective("taypo4", lp, lm, r, v, GAMMA),
    )
    np.testing.assert_allclose(
        estimators.trajectory_objective("vtrace", lp, lm, r, v, GAMMA, rho_bar=1.5, c_bar=0.5),
        ope.vtrace(lp - lm, r, v, GAMMA, rho_bar=1.5, c_bar=0.5),
    )


# -------------------------------------------------------------------------------------------- surrogate
def test_surrogate_is_the_weighted_mean_of_trajectory_objectives(setting):
    batch, logits = setting["batch"], setting["logits"]
    values = setting["critic"][batch.observations]
    weights = jnp.arange(1.0, N + 1.0) / 15.0
    lp = log_prob(logits, batch.observations[:, :-1], batch.actions)
    per = [
        estimators.trajectory_objective("taypo2", lp[i], batch.log_probs[i], batch.rewards[i], values[i], GAMMA)
        for i in range(N)
    ]
    got = estimators.surrogate(
        "taypo2", log_prob, logits, batch, values, GAMMA, behaviour_log_probs=batch.log_probs, weights=weights
    )
    np.testing.assert_allclose(got, np.dot(weights, per), rtol=1e-12)
    uniform = estimators.surrogate("taypo2", log_prob, logits, batch, values, GAMMA, behaviour_log_probs=batch.log_probs)
    np.testing.assert_allclose(uniform, np.mean(per), rtol=1e-12)


def test_surrogate_derivatives_are_batch_means_of_per_trajectory_derivatives(setting):
    batch, logits, critic = setting["batch"], setting["logits"], setting["critic"]
    values = critic[batch.observations]
    hess = jax.hessian(estimators.surrogate, argnums=2)("dr", log_prob, logits, batch, values, GAMMA)

    def one(i):
        single = jax.tree_util.tree_map(lambda x: x[i : i + 1], batch)
        return jax.hessian(estimators.surrogate, argnums=2)("dr", log_prob, logits, single, values[i : i + 1], GAMMA)

    np.testing.assert_allclose(hess, np.mean([one(i) for i in range(N)], axis=0), rtol=1e-10, atol=1e-12)
    grad, tab_hess = estimators.tabular_derivatives("dr", logits, batch, critic, discount=GAMMA)
    np.testing.assert_allclose(tab_hess, hess, rtol=1e-12, atol=1e-14)


def test_surrogate_uses_termination_discounts(setting):
    """A trajectory terminated at step 1: nothing after it (rewards, padding log-probs) matters."""
    batch = setting["batch"]
    terminated = jnp.zeros((N, T), bool).at[:, 1].set(True)
    done = batch._replace(terminated=terminated)
    changed = done._replace(rewards=done.rewards.at[:, 2:].set(50.0), actions=done.actions.at[:, 2:].set(0))
    values = setting["critic"][batch.observations]
    for name in ["dr", "taypo2", "dice", "lvc"]:
        h1 = jax.hessian(estimators.surrogate, argnums=2)(name, log_prob, setting["logits"], done, values, GAMMA)
        h2 = jax.hessian(estimators.surrogate, argnums=2)(name, log_prob, setting["logits"], changed, values, GAMMA)
        np.testing.assert_allclose(h1, h2, rtol=1e-12, atol=1e-14, err_msg=name)


def test_surrogate_input_checks(setting):
    batch, logits = setting["batch"], setting["logits"]
    values = setting["critic"][batch.observations]
    with pytest.raises(ValueError, match="`values` must have shape \\[N, T\\+1\\]"):
        estimators.surrogate("dr", log_prob, logits, batch, values[:, :-1], GAMMA)
    with pytest.raises(ValueError, match="`behaviour_log_probs` must be None"):
        estimators.surrogate("dr", log_prob, logits, batch, values, GAMMA, behaviour_log_probs=batch.log_probs[:, :-1])
    with pytest.raises(ValueError, match="`weights` must be None"):
        estimators.surrogate("dr", log_prob, logits, batch, values, GAMMA, weights=jnp.ones(N + 1))
    with pytest.raises(ValueError, match="`gamma` must be a discount in \\[0, 1\\)"):
        estimators.surrogate("dr", log_prob, logits, batch, values, -0.5)
    with pytest.raises(ValueError, match="Unknown estimator"):
        estimators.surrogate("dr2", log_prob, logits, batch, values, GAMMA)


# --------------------------------------------------------------------------------- tabular_derivatives
def test_tabular_derivatives_shapes_and_orders(setting):
    out1 = estimators.tabular_derivatives("taypo2", setting["logits"], setting["batch"], setting["critic"], discount=GAMMA, order=1)
    out3 = estimators.tabular_derivatives("taypo2", setting["logits"], setting["batch"], setting["critic"], discount=GAMMA, order=3)
    assert len(out1) == 1 and len(out3) == 3
    assert [o.shape for o in out3] == [(S, A), (S, A) * 2, (S, A) * 3]
    np.testing.assert_allclose(out1[0], out3[0], rtol=1e-12)
    np.testing.assert_allclose(out3[1], np.transpose(out3[1], (2, 3, 0, 1)), rtol=1e-10, atol=1e-12)  # symmetric


def test_tabular_derivatives_off_policy_uses_the_behaviour(setting):
    batch, logits, critic = setting["batch"], setting["logits"], setting["critic"]
    behaviour = setting["behaviour"]
    got = estimators.tabular_derivatives("is", logits, batch, critic, discount=GAMMA, behaviour_logits=behaviour)
    log_mu = log_prob(behaviour, batch.observations[:, :-1], batch.actions)
    values = critic[batch.observations]
    want = jax.hessian(estimators.surrogate, argnums=2)(
        "is", log_prob, logits, batch, values, GAMMA, behaviour_log_probs=log_mu
    )
    np.testing.assert_allclose(got[1], want, rtol=1e-12, atol=1e-14)
    on = estimators.tabular_derivatives("is", logits, batch, critic, discount=GAMMA)
    assert np.max(np.abs(np.asarray(on[1] - got[1]))) > 1e-3


def test_tabular_derivatives_jit_and_vmap(setting):
    batch, logits, critic = setting["batch"], setting["logits"], setting["critic"]
    eager = estimators.tabular_derivatives("dr", logits, batch, critic, discount=GAMMA)
    jitted = jax.jit(estimators.tabular_derivatives, static_argnames=("name", "order"))(
        "dr", logits, batch, critic, discount=GAMMA
    )
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # vmap over a stack of logits (e.g. several policies) with name and order static
    stacked = jnp.stack([logits, 2 * logits])
    many = jax.vmap(lambda th: estimators.tabular_derivatives("dr", th, batch, critic, discount=GAMMA, order=1))(stacked)
    np.testing.assert_allclose(many[0][0], eager[0], rtol=1e-12)


def test_tabular_derivatives_index_the_critic_by_state(setting):
    """paper-notes §6: permuting the critic's entries over states changes the estimate (it is read by
    state), and a critic indexed by time would need a [T+1] table, which is refused."""
    batch, logits, critic = setting["batch"], setting["logits"], setting["critic"]
    a = estimators.tabular_derivatives("taypo2", logits, batch, critic, discount=GAMMA)
    manual = jax.hessian(estimators.surrogate, argnums=2)(
        "taypo2", log_prob, logits, batch, critic[batch.observations], GAMMA
    )
    np.testing.assert_allclose(a[1], manual, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="`critic` must be a state-value table of shape \\[S\\]"):
        estimators.tabular_derivatives("taypo2", logits, batch, jnp.zeros(T + 1), discount=GAMMA)


def bad_batches(batch):
    obs = batch.observations
    return [
        (batch._replace(observations=obs.at[0, 2].set(S)), "`trajectories.observations` must hold state indices in \\[0, 4\\)"),
        (batch._replace(observations=obs.at[1, 0].set(-1)), "state indices in \\[0, 4\\)"),
        (batch._replace(actions=batch.actions.at[0, 0].set(A)), "`trajectories.actions` must hold action indices in \\[0, 3\\)"),
        (batch._replace(observations=obs.astype(float)), "`trajectories.observations` must hold integer state indices"),
        (batch._replace(rewards=batch.rewards.at[0, 0].set(jnp.nan)), "`trajectories.rewards` must be finite"),
        (batch._replace(observations=obs[:, :-1]), "`trajectories.observations` must hold integer states of shape \\[N, T\\+1\\]"),
        (batch._replace(actions=batch.actions[:, :-1]), "`trajectories.actions` must have shape \\[N, T\\]"),
    ]


def test_tabular_derivatives_bad_input(setting):
    """Out-of-range indices raise instead of being clamped; every message names the argument and its form."""
    batch, logits, critic = setting["batch"], setting["logits"], setting["critic"]
    for bad, match in bad_batches(batch):
        with pytest.raises(ValueError, match=match):
            estimators.tabular_derivatives("dr", logits, bad, critic, discount=GAMMA)
    calls = [
        (dict(discount=-0.1), "`discount` must be a discount in \\[0, 1\\)"),
        (dict(discount=1.0), "`discount` must be a discount in \\[0, 1\\)"),
        (dict(discount=GAMMA, behaviour_logits=jnp.zeros((S, A + 1))), "`behaviour_logits` must be None"),
        (dict(discount=GAMMA, order=4), "`order` must be 1, 2 or 3"),
    ]
    for kwargs, match in calls:
        with pytest.raises(ValueError, match=match):
            estimators.tabular_derivatives("dr", logits, batch, critic, **kwargs)
    with pytest.raises(ValueError, match="`logits` must have shape \\[S, A\\]"):
        estimators.tabular_derivatives("dr", logits.ravel(), batch, critic, discount=GAMMA)
    with pytest.raises(ValueError, match="Unknown estimator 'ppo'"):
        estimators.tabular_derivatives("ppo", logits, batch, critic, discount=GAMMA)


def test_clamping_would_have_hidden_the_error(setting):
    """Why the checks matter: JAX clamps an out-of-range state silently, giving a finite wrong answer."""
    batch, logits, critic = setting["batch"], setting["logits"], setting["critic"]
    bad = batch._replace(observations=batch.observations.at[0, 2].set(S + 3))
    jitted = jax.jit(estimators.tabular_derivatives, static_argnames=("name", "order"))
    silent = jitted("dr", logits, bad, critic, discount=GAMMA, order=1)  # no check possible under jit
    assert np.all(np.isfinite(np.asarray(silent[0])))
    assert isinstance(bad, Trajectories)
