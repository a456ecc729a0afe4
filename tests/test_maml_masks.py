"""Issue 20 §2: every average over time steps of the MAML loop counts the valid steps only (padding after a
termination excluded), and the linear baseline is ProMP's fit. Each is compared with a short computation written
here over the valid steps only (Python loops), or shown blind to whatever the padding holds."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metagrad import critics, maml
from metagrad.maml import trpo
from metagrad.rollout import Trajectories

T = 6


class Countdown:
    """Terminates exactly at step ``params`` (an integer-valued float in [2, 5]); obs = (t, position)."""

    def reset(self, key, params):
        return jnp.zeros(2), jnp.zeros(2)

    def step(self, key, state, action, params):
        t, x = state[0] + 1.0, state[1] + jnp.clip(action[0], -1.0, 1.0)
        new = jnp.stack([t, x])
        return new, new, -(x - 0.5) ** 2, t >= params, {}

    def observation_space(self, params):
        return gymnasium.spaces.Box(-np.inf, np.inf, (2,))

    def action_space(self, params):
        return gymnasium.spaces.Box(-np.inf, np.inf, (1,))

    def sample_tasks(self, key, n):
        return jax.random.randint(key, (n,), 2, 6).astype(jnp.result_type(float))


def _model(**kw):
    fields = dict(env=None, num_tasks=3, num_trajectories=4, horizon=T, inner_steps=1, inner_step_size=0.05,
                  hidden_sizes=(8,), gamma=0.9, outer="trpo", inner_estimator="dr", cg_iterations=5)
    config = maml.MAMLConfig(**{**fields, **kw})
    return maml.MAML(config, env=Countdown())


def _data(model, seed=1):
    params, _ = model.init(jax.random.PRNGKey(0))
    data = model.sample_meta_batch(params, jax.random.PRNGKey(seed))
    assert 0 < float(jnp.mean(data.post.mask())) < 1  # some padding
    return params, data


def _garbage_batch(batch: Trajectories, key) -> Trajectories:
    """The batch with large random numbers in every padded (n, t) entry."""
    pad = batch.mask() == 0
    k1, k2, k3, k4 = jax.random.split(key, 4)

    def fill(x, k, scale):
        noise = scale * jax.random.normal(k, x.shape, x.dtype)
        where = pad.reshape(pad.shape + (1,) * (x.ndim - 2))
        return jnp.where(where, noise, x)

    obs = batch.observations
    obs = obs.at[:, :-1].set(fill(obs[:, :-1], k1, 50.0))
    return batch._replace(observations=obs, actions=fill(batch.actions, k2, 50.0),
                          rewards=fill(batch.rewards, k3, 50.0), log_probs=fill(batch.log_probs, k4, 50.0))


def _garbage(model, data, key):
    """TaskData with garbage in the padding of every batch, the critic values recomputed from the new batches."""
    keys = jax.random.split(key, len(data.pre) + 1)

    def redo(batch, k, tasks_axis=True):
        batch = jax.vmap(_garbage_batch)(batch, jax.random.split(k, batch.rewards.shape[0]))
        values = jax.vmap(lambda b: model.critic(b, model.config.gamma))(batch)
        return batch, values

    pre, pre_values = zip(*(redo(b, k) for b, k in zip(data.pre, keys))) if data.pre else ((), ())
    post, post_values = redo(data.post, keys[-1])
    junk = lambda lp, b: jnp.where(b.mask() == 0, 77.0, lp)  # noqa: E731
    return data._replace(pre=tuple(pre), pre_values=tuple(pre_values),
                         pre_log_probs=tuple(junk(lp, b) for lp, b in zip(data.pre_log_probs, pre)),
                         post=post, post_values=post_values, post_log_probs=junk(data.post_log_probs, post))


# --------------------------------------------------------------------------------------------- returns
def test_mean_return_sums_valid_rewards_only():
    rewards = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    batch = Trajectories(jnp.zeros((2, 4)), jnp.zeros((2, 3), int), rewards, jnp.zeros((2, 3)),
                         jnp.array([[False, True, False], [False, False, False]]))
    expected = np.mean([1.0 + 2.0, 4.0 + 5.0 + 6.0])  # trajectory 0 ends at step 1: its 3.0 is padding
    discounted = np.mean([1.0 + 0.5 * 2.0, 4.0 + 0.5 * 5.0 + 0.25 * 6.0])
    np.testing.assert_allclose(maml.mean_return(batch), expected)
    np.testing.assert_allclose(maml.mean_return(batch, 0.5), discounted)


# -------------------------------------------------------------------------------------------- baseline
def _promp_linear_baseline(paths, discount, reg_coeff=1e-5):
    """ProMP's LinearFeatureBaseline (meta_policy_search/baselines/linear_baseline.py), fit then predict."""
    def features(obs):
        o = np.clip(obs, -10, 10)
        t = np.arange(len(obs)).reshape(-1, 1) / 100.0
        return np.concatenate([o, o**2, t, t**2, t**3, np.ones((len(obs), 1))], axis=1)

    def returns(r):
        out, g = np.zeros(len(r)), 0.0
        for i in reversed(range(len(r))):
            g = r[i] + discount * g
            out[i] = g
        return out

    featmat = np.concatenate([features(p["observations"]) for p in paths])
    target = np.concatenate([returns(p["rewards"]) for p in paths])
    for _ in range(5):
        coeffs = np.linalg.lstsq(featmat.T @ featmat + reg_coeff * np.identity(featmat.shape[1]), featmat.T @ target,
                                 rcond=-1)[0]
        if not np.any(np.isnan(coeffs)):
            break
        reg_coeff *= 10
    return [features(p["observations"]) @ coeffs for p in paths]


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_linear_baseline_is_promps_fit_on_the_valid_steps(scale):
    """Large observations (scale 30, clipped at 10 as ProMP clips) are where the old scale-free ridge differed."""
    key = jax.random.PRNGKey(4)
    n, d = 5, 3
    obs = scale * jax.random.normal(key, (n, T + 1, d))
    rewards = jax.random.normal(jax.random.fold_in(key, 1), (n, T))
    lengths = [6, 2, 4, 1, 6]
    terminated = jnp.array([[t == length - 1 and length < T for t in range(T)] for length in lengths])
    batch = Trajectories(obs, jnp.zeros((n, T, 1)), rewards, jnp.zeros((n, T)), terminated)
    batch = _garbage_batch(batch, jax.random.fold_in(key, 2))
    ours = critics.linear_feature_baseline(batch, 0.9)
    paths = [{"observations": np.asarray(obs[i, :lengths[i]]), "rewards": np.asarray(batch.rewards[i, :lengths[i]])}
             for i in range(n)]
    for i, expected in enumerate(_promp_linear_baseline(paths, 0.9)):
        np.testing.assert_allclose(ours[i, :lengths[i]], expected, rtol=1e-7, atol=1e-8)
    np.testing.assert_array_equal(ours[:, -1], 0.0)


# ------------------------------------------------------------------------------------ surrogate, KL, FVP
def test_meta_gradient_is_the_policy_gradient_over_valid_steps():
    """K = 0: the TayPO-1 meta-gradient is mean_g (1/N) Σ_n Σ_{t valid} γ^t Â_t ∇ℓ_t, computed here step by step."""
    model = _model(inner_steps=0, outer="pg")
    params, data = _data(model)
    gamma = model.config.gamma
    flat, unravel = ravel_pytree(params)
    expected = np.zeros_like(flat)
    grad_log_pi = jax.jit(jax.grad(lambda f, o, a: model.policy.log_prob(unravel(f), o, a)))
    for g in range(3):
        post, values = jax.tree_util.tree_map(lambda x: x[g], (data.post, data.post_values))
        for n in range(4):
            length = int(np.sum(post.mask()[n]))
            terminated = bool(post.terminated[n, length - 1])
            for t in range(length):
                ret = sum(gamma ** (s - t) * float(post.rewards[n, s]) for s in range(t, length))
                if not terminated:
                    ret += gamma ** (length - t) * float(values[n, length])
                advantage = ret - float(values[n, t])
                expected += gamma**t * advantage * np.asarray(grad_log_pi(flat, post.observations[n, t],
                                                                            post.actions[n, t])) / (3 * 4)
    ours = ravel_pytree(jax.jit(model.meta_gradient)(params, data))[0]
    np.testing.assert_allclose(ours, expected, rtol=1e-8, atol=1e-10)


def test_trpo_kl_and_fisher_vector_product_average_valid_steps_only():
    """K = 0 (θ' = θ): the KL is mean_g of the mean KL over valid steps, and the FVP its Hessian, both from loops."""
    model = _model(inner_steps=0)
    params, data = _data(model)
    flat, unravel = ravel_pytree(params)
    new = flat + 0.1 * jax.random.normal(jax.random.PRNGKey(9), flat.shape)

    def valid_kl(f):
        per_task = []
        for g in range(3):
            post = jax.tree_util.tree_map(lambda x: x[g], data.post)
            terms = [model.policy.kl(params, unravel(f), post.observations[n, t])
                     for n in range(4) for t in range(int(np.sum(post.mask()[n])))]
            per_task.append(sum(terms) / len(terms))
        return sum(per_task) / 3

    tasks = lambda p: jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (3,) + x.shape), p)  # noqa: E731
    ours = trpo.post_kl(model, tasks(params), tasks(unravel(new)), data)
    np.testing.assert_allclose(ours, valid_kl(new), rtol=1e-10)
    fvp = jax.jit(jax.vmap(model.fisher_vector_product(params, data)))(jnp.eye(flat.size))
    np.testing.assert_allclose(fvp, jax.hessian(valid_kl)(flat), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("objective, outer", [("paper", "trpo"), ("promp", "trpo"), ("paper", "promp"),
                                              ("promp", "promp")])
def test_outer_steps_are_blind_to_the_padding(objective, outer):
    """Garbage in every padded step of every batch changes neither the meta-gradient, the FVP, the TRPO step (line
    search included) nor ProMP's objective: nothing averages over padding."""
    kw = dict(objective=objective, outer=outer, inner_estimator="lvc" if objective == "promp" else "dr",
              outer_estimator="taypo1")
    model = _model(**kw)
    params, data = _data(model)
    dirty = _garbage(model, data, jax.random.PRNGKey(5))
    assert not np.allclose(dirty.post.actions, data.post.actions)
    flat = ravel_pytree(params)[0]
    np.testing.assert_allclose(ravel_pytree(model.meta_gradient(params, dirty))[0],
                               ravel_pytree(model.meta_gradient(params, data))[0], rtol=1e-9, atol=1e-12)
    if outer == "trpo":
        probe = jax.random.normal(jax.random.PRNGKey(6), flat.shape)
        np.testing.assert_allclose(model.fisher_vector_product(params, dirty)(probe),
                                   model.fisher_vector_product(params, data)(probe), rtol=1e-9, atol=1e-12)
        step = jax.jit(lambda d: trpo.trpo_update(model, params, d))
        (a, _, i), (b, _, j) = step(dirty), step(data)
        assert int(i) == int(j) < model.config.backtrack_steps
        np.testing.assert_allclose(ravel_pytree(a)[0], ravel_pytree(b)[0], rtol=1e-8, atol=1e-11)
    else:
        moved = jax.tree_util.tree_map(lambda x: x + 0.05, params)
        np.testing.assert_allclose(model._promp_objective(moved, params, dirty),
                                   model._promp_objective(moved, params, data), rtol=1e-9)

