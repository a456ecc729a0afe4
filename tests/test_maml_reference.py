"""Issue 12 §1: the Fig. 1d experiment matches ProMP's code and the paper, one test per departure.

Each test recomputes the quantity with a short independent NumPy implementation written here from the reference
formula (ProMP's code, jonasrothfuss/ProMP, or the paper), float64, and compares it with the library.
The policy is a linear Gaussian π_W(a|x) = N(W x, σ² I) with fixed σ, whose derivatives are known in closed form:
ℓ = −|a − Wx|²/(2σ²) + c, ∇_W ℓ = (a − Wx) xᵀ / σ², ∇²_W ℓ = −(x xᵀ ⊗ I)/σ², KL(W_a‖W_b) = |(W_a − W_b)x|²/(2σ²).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import maml
from metagrad.envs import Navigation2D
from metagrad.experiments import maml_experiments as mx
from metagrad.rollout import Trajectories

SIGMA = 0.7


class LinearGaussian:
    """π_W(a|x) = N(W x, σ² I), params ``{"W": [2, 2]}`` (σ fixed): the open-API policy protocol."""

    def init(self, key):
        return {"W": 0.3 * jax.random.normal(key, (2, 2))}

    def log_prob(self, params, obs, actions):
        z = (actions - obs @ params["W"].T) / SIGMA
        return jnp.sum(-0.5 * z**2 - math.log(SIGMA) - 0.5 * math.log(2 * math.pi), axis=-1)

    def sample(self, params, key, obs):
        noise = jax.random.normal(key, obs.shape[:-1] + (2,), obs.dtype)
        return obs @ params["W"].T + SIGMA * noise, jnp.sum(-0.5 * noise**2 - math.log(SIGMA) - 0.5 * math.log(2 * math.pi), -1)

    def kl(self, params_a, params_b, obs):
        diff = obs @ (params_a["W"] - params_b["W"]).T
        return jnp.sum(diff**2, axis=-1) / (2 * SIGMA**2)


# ------------------------------------------------------------------ the independent NumPy reference
def np_log_prob(W, obs, act):
    z = (act - obs @ W.T) / SIGMA
    return np.sum(-0.5 * z**2 - math.log(SIGMA) - 0.5 * math.log(2 * math.pi), axis=-1)


def np_grad_log_prob(W, obs, act):
    """∇_W ℓ per sample, flattened row-major: ``[..., 4]``."""
    resid = (act - obs @ W.T) / SIGMA**2  # [..., 2]
    return (resid[..., :, None] * obs[..., None, :]).reshape(obs.shape[:-1] + (4,))


def np_hess_log_prob(obs):
    """∇²_W ℓ per sample ``[..., 4, 4]``: −(e_i e_jᵀ)(x xᵀ) with W flattened row-major."""
    xx = obs[..., :, None] * obs[..., None, :]
    return -np.einsum("ij,...kl->...ikjl", np.eye(2), xx).reshape(obs.shape[:-1] + (4, 4)) / SIGMA**2


def np_normalized_advantages(rewards, values, gamma):
    """ProMP samplers/base.py: GAE λ = 1 with baseline (b(x_T) = 0), then (A − mean)/(std + 1e-8) over the batch."""
    n, t = rewards.shape
    returns = np.zeros_like(rewards)
    running = np.zeros(n)
    for s in reversed(range(t)):
        running = rewards[:, s] + gamma * running
        returns[:, s] = running
    adv = returns - values[:, :-1]
    return (adv - adv.mean()) / (adv.std() + 1e-8)


def _batch(key, n=5, t=6):
    k1, k2, k3 = jax.random.split(key, 3)
    obs = jax.random.normal(k1, (n, t + 1, 2))
    actions = jax.random.normal(k2, (n, t, 2))
    rewards = jax.random.normal(k3, (n, t))
    return Trajectories(obs, actions, rewards, jnp.zeros((n, t)), jnp.zeros((n, t), bool))


# ------------------------------------------------------------------ (a) TRPO-DiCE uses the DR Hessian
def test_trpo_dice_inner_hessian_is_the_doubly_robust_hessian():
    """Paper §5.2 + paper-notes §4.6: H_DR = mean_{n,t} Â_t [∇²ℓ_t + ∇ℓ_t∇ℓ_tᵀ + ∇ℓ_t S_{<t}ᵀ + S_{<t}∇ℓ_tᵀ]."""
    config = mx.nav_config("TRPO-DiCE", num_tasks=1, num_trajectories=5, horizon=6, inner_steps=1, iterations=1)
    assert (config.outer, config.inner_estimator, config.objective) == ("trpo", "dr", "promp")
    model = maml.MAML(config, policy=LinearGaussian())
    batch = _batch(jax.random.PRNGKey(0))
    values = jnp.concatenate([0.1 * batch.rewards, jnp.zeros((5, 1))], axis=1)
    W = np.array([[0.3, -0.2], [0.5, 0.1]])
    hess = jax.hessian(lambda w: model.inner_surrogate({"W": w}, batch, values))(jnp.asarray(W))
    hess = np.asarray(hess).reshape(4, 4)

    obs, act = np.asarray(batch.observations[:, :-1]), np.asarray(batch.actions)
    adv = np_normalized_advantages(np.asarray(batch.rewards), np.asarray(values), config.gamma)
    g, h = np_grad_log_prob(W, obs, act), np_hess_log_prob(obs)
    prefix = np.cumsum(g, axis=1) - g  # S_{<t}
    terms = h + np.einsum("nti,ntj->ntij", g, g) + np.einsum("nti,ntj->ntij", g, prefix) + np.einsum("nti,ntj->ntij", prefix, g)
    expected = np.mean(adv[..., None, None] * terms, axis=(0, 1))
    np.testing.assert_allclose(hess, expected, rtol=1e-10, atol=1e-12)
    # ... and not the LVC (TayPO-1) Hessian, which misses the cross terms
    lvc = np.mean(adv[..., None, None] * (h + np.einsum("nti,ntj->ntij", g, g)), axis=(0, 1))
    assert np.abs(hess - lvc).max() > 1e-2


# ------------------------------------------------------------------ (b) Navigation2D corners: ProMP's normalize
def np_promp_point_step(state, action, goal, scale=10.0):
    """normalized_env.py step + point_env_2d_corner.py step/reward (sparse, radius 0.5)."""
    lb, ub = -0.2 * np.ones(2), 0.2 * np.ones(2)
    scaled = np.clip(lb + (action + scale) * (ub - lb) / (2 * scale), lb, ub)
    new = state + np.clip(scaled, -0.2, 0.2)
    corners = [np.array(c, float) for c in ((-2, -2), (2, -2), (-2, 2), (2, 2))]
    goal_distance = np.linalg.norm(new - goal)
    if np.linalg.norm(new, ord=1) < 0.5:
        reward = 0.0
    elif goal_distance == min(np.linalg.norm(new - c) for c in corners):
        reward = np.linalg.norm(state - goal) - goal_distance
    else:
        reward = 0.0
    return new, reward


def test_corners_env_is_promps_normalized_point_env():
    env = Navigation2D("corners")
    assert env.action_scale == 10.0 and env.action_space.high[0] == np.float32(10.0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        state = rng.uniform(-2.5, 2.5, 2)
        action = rng.normal(0, 12, 2)  # includes actions beyond ±10 (clipped at 0.2)
        goal = np.array([(-2, -2), (2, -2), (-2, 2), (2, 2)][rng.integers(4)], float)
        new, reward = np_promp_point_step(state, action, goal)
        ours = env.transition(jnp.asarray(state), jnp.asarray(action), None, jnp.asarray(goal))
        np.testing.assert_allclose(ours, new, rtol=0, atol=1e-14)
        np.testing.assert_allclose(env.reward(jnp.asarray(state), jnp.asarray(action), ours, None, jnp.asarray(goal)),
                                   reward, rtol=0, atol=1e-13)


def test_square_env_keeps_pytorch_maml_rl_raw_clipping():
    env = Navigation2D("square")
    assert env.action_scale is None and env.action_space.high[0] == np.float32(0.1)
    state, action = jnp.array([0.1, -0.2]), jnp.array([0.05, -3.0])
    # pytorch-maml-rl navigation.py: action = np.clip(action, -0.1, 0.1); state = state + action
    np.testing.assert_allclose(env.transition(state, action, None, jnp.zeros(2)), [0.15, -0.3], atol=1e-15)


def test_corners_env_initial_policy_explores_like_promp():
    """With σ = 1 in normalised units the robot moves 0.02 σ per step: final spread ≈ 0.02·√100 per axis."""
    from metagrad.policies import GaussianMLP
    from metagrad.rollout import sample

    env, policy = Navigation2D("corners"), GaussianMLP(2, 2, (8,))
    params = policy.init(jax.random.PRNGKey(0))
    params["mean"] = jax.tree_util.tree_map(jnp.zeros_like, params["mean"])  # zero mean: pure N(0, 1) actions
    batch = sample(jax.random.PRNGKey(1), env, policy.sample, params, 2000, 100, task=jnp.array([2.0, 2.0]))
    displacement = np.asarray(batch.observations[:, -1] - batch.observations[:, 0])
    expected = 0.02 * 10.0  # std of a sum of 100 N(0, 0.02²) steps (|0.02 a| ≤ 0.2 clips a negligible 0 here)
    se = expected / np.sqrt(2 * 2000)
    assert abs(displacement.std() - expected) < 5 * se


# ------------------------------------------------------------------ shared data for (c) and (d)
@pytest.fixture(scope="module")
def corner_data():
    """Three tasks, two inner steps, collected with the linear Gaussian policy (ProMP form).

    The square task's dense reward (−distance) makes every reward, advantage and E-MAML weight non-zero (the
    corners' sparse reward is 0 everywhere in 8 steps from the start region, which would make the checks vacuous).
    """
    config = mx.nav_config("TRPO-EMAML", env="navigation", num_tasks=3, num_trajectories=4, horizon=8, inner_steps=2,
                           iterations=1)
    model = maml.MAML(config, policy=LinearGaussian())
    params = {"W": jnp.array([[0.4, -0.1], [0.2, 0.3]])}
    tasks = jnp.array([[0.4, 0.3], [-0.2, 0.45], [0.1, -0.4]])
    data = jax.vmap(model.collect, in_axes=(None, 0, 0))(params, tasks, jax.random.split(jax.random.PRNGKey(3), 3))
    return config, model, params, data


def np_adapt(config, W, data, g, off_policy, inner_type="likelihood_ratio"):
    """ProMP inner steps θ_{k+1} = θ_k + η ∇ mean_{n,t} f Â; returns θ_0..θ_K.

    ``likelihood_ratio`` (pro_mp.py): f = e^{ℓ−μ}, ∇f = ratio·∇ℓ; ``log_likelihood`` (trpo_maml.py, the
    inner_type of ProMP's E-MAML run script): f = ℓ, ∇f = ∇ℓ.
    """
    thetas = [W]
    for k in range(len(data.pre)):
        batch = data.pre[k]
        obs, act = np.asarray(batch.observations[g, :, :-1]), np.asarray(batch.actions[g])
        adv = np_normalized_advantages(np.asarray(batch.rewards[g]), np.asarray(data.pre_values[k][g]), config.gamma)
        log_pi = np_log_prob(thetas[-1], obs, act)
        mu = np.asarray(data.pre_log_probs[k][g]) if off_policy else log_pi
        ratio = np.exp(log_pi - mu) if inner_type == "likelihood_ratio" else np.ones_like(log_pi)
        grad = np.mean((adv * ratio)[..., None] * np_grad_log_prob(thetas[-1], obs, act), axis=(0, 1))
        thetas.append(thetas[-1] + config.inner_step_size * grad.reshape(2, 2))
    return thetas


# ------------------------------------------------------------------ (c) E-MAML as ProMP's TRPO-MAML
def test_emaml_term_is_promps_and_in_the_line_search_objective(corner_data):
    config, model, params, data = corner_data
    W_old = np.asarray(params["W"])
    W = W_old + np.array([[0.05, -0.02], [0.01, 0.03]])
    M = 3
    # meta_sample_processor.py: adj = (r − mean r)/(std r + 1e-8) over every post-update reward of the meta-batch
    rewards = np.asarray(data.post.rewards)
    adj = (rewards - rewards.mean()) / (rewards.std() + 1e-8)
    # trpo_maml.py: surr_obj += −reduce_mean(adj_g) · reduce_mean(log π_θ(step-0 batch of g))  (a loss; negate)
    def emaml(Wc):
        return np.mean([adj[g].mean() * np_log_prob(Wc, np.asarray(data.pre[0].observations[g, :, :-1]),
                                                     np.asarray(data.pre[0].actions[g])).mean() for g in range(M)])

    def emaml_grad(Wc):
        return np.mean([adj[g].mean() * np_grad_log_prob(Wc, np.asarray(data.pre[0].observations[g, :, :-1]),
                                                          np.asarray(data.pre[0].actions[g])).mean((0, 1))
                        for g in range(M)], axis=0).reshape(2, 2)

    # trpo_maml.py: −reduce_mean(likelihood_ratio · adv) on the post-update batch at θ'(θ), off-policy
    def surrogate(Wc):
        out = []
        for g in range(M):
            Wp = np_adapt(config, Wc, data, g, off_policy=True, inner_type="log_likelihood")[-1]
            obs, act = np.asarray(data.post.observations[g, :, :-1]), np.asarray(data.post.actions[g])
            adv = np_normalized_advantages(rewards[g], np.asarray(data.post_values[g]), config.gamma)
            out.append(np.mean(np.exp(np_log_prob(Wp, obs, act) - np.asarray(data.post_log_probs[g])) * adv))
        return np.mean(out)

    term = model.emaml_term({"W": jnp.asarray(W)}, data)
    np.testing.assert_allclose(term, emaml(W), rtol=1e-10)
    np.testing.assert_allclose(jax.grad(lambda w: model.emaml_term({"W": w}, data))(jnp.asarray(W)), emaml_grad(W),
                               rtol=1e-9, atol=1e-12)
    # The TRPO line-search objective (evaluated at candidates θ ≠ θ_old) is ProMP's whole loss, E-MAML included.
    np.testing.assert_allclose(model.trpo_objective({"W": jnp.asarray(W)}, data), surrogate(W) + emaml(W), rtol=1e-9)
    # At θ_old the line-search objective's gradient is the meta-gradient the CG step uses.
    g_line = jax.grad(lambda w: model.trpo_objective({"W": w}, data))(params["W"])
    np.testing.assert_allclose(g_line, model.meta_gradient(params, data)["W"], rtol=1e-9, atol=1e-12)
    assert np.abs(adj.mean(axis=(1, 2))).min() > 1e-3 and np.linalg.norm(emaml_grad(W)) > 1e-3  # not vacuous


# ------------------------------------------------------------------ (d) ProMP's objective
def test_promp_objective_is_promps_reduce_mean_with_averaged_kl(corner_data):
    config, _, params, data = corner_data
    config = mx.nav_config("ProMP", env="navigation", num_tasks=3, num_trajectories=4, horizon=8, inner_steps=2,
                           iterations=1)
    assert (config.objective, config.inner_step_size, config.kl_coef, config.clip_eps) == ("promp", 0.1, 5e-4, 0.3)
    model = maml.MAML(config, policy=LinearGaussian())
    W_old = np.asarray(params["W"])
    W = W_old + np.array([[0.3, -0.2], [0.1, 0.25]])  # far enough that clipping and the KL matter

    per_task = []
    for g in range(3):
        thetas = np_adapt(config, W, data, g, off_policy=True)
        old = np_adapt(config, W_old, data, g, off_policy=False)
        obs, act = np.asarray(data.post.observations[g, :, :-1]), np.asarray(data.post.actions[g])
        adv = np_normalized_advantages(np.asarray(data.post.rewards[g]), np.asarray(data.post_values[g]), config.gamma)
        ratio = np.exp(np_log_prob(thetas[-1], obs, act) - np.asarray(data.post_log_probs[g]))
        clipped = np.mean(np.minimum(ratio * adv, np.clip(ratio, 0.7, 1.3) * adv))  # pro_mp.py, clip_eps 0.3
        kls = []
        for k in range(2):  # KL(π_old,k ‖ π_θ,k) on the step-k batch, mean over its samples
            x = np.asarray(data.pre[k].observations[g, :, :-1])
            kls.append(np.mean(np.sum((x @ (old[k] - thetas[k]).T) ** 2, -1) / (2 * SIGMA**2)))
        per_task.append((clipped, kls))
    clip_mean = np.mean([c for c, _ in per_task])
    # pro_mp.py: inner_kl_penalty = reduce_mean(β_k · mean_g KL_k): averaged over the inner steps
    kl_mean_per_step = np.mean([k for _, k in per_task], axis=0)
    expected = clip_mean - config.kl_coef * np.mean(kl_mean_per_step)
    ours = model._promp_objective({"W": jnp.asarray(W)}, params, data)
    np.testing.assert_allclose(ours, expected, rtol=1e-10)
    assert np.mean(kl_mean_per_step) > 1e-3  # the KL term is exercised


def test_every_nav_default_has_a_source(capsys):
    from metagrad import cli

    for name, (value, source) in mx.NAV_DEFAULTS.items():
        assert source and ("paper" in source or "ProMP" in source or "our" in source or "issue" in source), name
    with pytest.raises(SystemExit):
        cli.main(["maml-nav2d", "--help"])
    text = capsys.readouterr().out
    for name in mx.NAV_DEFAULTS:
        assert name in text
    assert "pro-mp_run_point_mass.py" in text
