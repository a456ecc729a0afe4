"""TRPO-MAML's Fisher-vector product and conjugate gradient against independent references (float64).

:meth:`MAML.fisher_vector_product` computes Jᵀ ∇²KL J v (∇²KL in the action distribution's parameters, J_outᵀ M
J_out, for the built-in policies; linearised in θ' for a policy without ``apply``). References written here: the
Gauss–Newton product with ``jax.jvp``/``jax.vjp`` of the adapted parameters, and the full ``jax.hessian`` of the
mean post-update KL as a function of the flat pre-update parameters at θ_old (equal there: ∇KL = 0 at the old point).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metagrad import maml as maml_lib
from metagrad import outer as outer_lib
from metagrad.maml import trpo as trpo_lib
from metagrad.policies import GaussianMLP


class NoApplyGaussian:
    """The Gaussian MLP behind the older policy interface (no ``apply``): the FVP's parameter-space fallback."""

    def __init__(self, hidden_sizes):
        self._policy = GaussianMLP(2, 2, hidden_sizes)

    def init(self, key):
        return self._policy.init(key)

    def log_prob(self, params, obs, action):
        return self._policy.log_prob(params, obs, action)

    def sample(self, params, key, obs):
        return self._policy.sample(params, key, obs)

    def kl(self, params_a, params_b, obs):
        return self._policy.kl(params_a, params_b, obs)


CASES = {
    "navigation-K1": dict(env="navigation", inner_steps=1),
    "navigation-K2": dict(env="navigation", inner_steps=2),
    "tabular-K1-dr": dict(env="tabular", inner_steps=1, inner_estimator="dr"),
    "tabular-K2-dr": dict(env="tabular", inner_steps=2, inner_estimator="dr"),
    "navigation-K2-fomaml": dict(env="navigation", inner_steps=2, inner_estimator="fomaml"),
    "tabular-K2-fomaml": dict(env="tabular", inner_steps=2, inner_estimator="fomaml"),
    "navigation-K2-promp-taypo2": dict(env="navigation", inner_steps=2, inner_estimator="taypo2", objective="promp"),
    "navigation-K2-no-apply": dict(env="navigation", inner_steps=2, policy=NoApplyGaussian),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fisher_vector_product_matches_gauss_newton_and_kl_hessian(case):
    fields = dict(CASES[case])
    policy = fields.pop("policy", None)
    config = maml_lib.MAMLConfig(outer="trpo", shard=False, num_tasks=3, num_trajectories=4, horizon=6,
                                 hidden_sizes=(6, 6), num_states=4, num_actions=3, inner_step_size=0.3, **fields)
    if policy is not None:  # the config's hidden sizes are for the default policy only
        config = maml_lib.MAMLConfig(**{**config.to_json(), "hidden_sizes": (64, 64), "inner_options": ()})
        policy = policy((6, 6))
    m = maml_lib.MAML(config, policy=policy)
    assert callable(getattr(m.policy, "apply", None)) == (policy is None)  # output space, or the fallback
    params, _ = m.init(jax.random.PRNGKey(0))
    data = m.sample_meta_batch(params, jax.random.PRNGKey(1))
    flat, unravel = ravel_pytree(params)
    assert flat.dtype == jnp.float64

    def adapted(f, off_policy):
        return jax.vmap(lambda d: m.adapt(unravel(f), d, off_policy)[0])(data)

    old = jax.lax.stop_gradient(adapted(flat, False))

    def mean_kl(a):  # written out here, independent of MAML._post_kl
        obs = data.post.observations[:, :, :-1]
        return jnp.mean(jax.vmap(lambda o, n, x: jnp.mean(m.policy.kl(o, n, x)))(old, a, obs))

    def gauss_newton(v):  # the old formula: jvp, KL HVP, vjp of θ'(θ)
        tangent = jax.jvp(lambda f: adapted(f, False), (flat,), (v,))[1]
        hv = jax.jvp(jax.grad(mean_kl), (old,), (tangent,))[1]
        return jax.vjp(lambda f: adapted(f, False), flat)[1](hv)[0]

    eye = jnp.eye(flat.size, dtype=flat.dtype)
    new = jax.jit(lambda e: jax.vmap(m.fisher_vector_product(params, data))(e))(eye)
    reference = jax.jit(lambda e: jax.vmap(gauss_newton)(e))(eye)
    hessian = jax.jit(jax.hessian(lambda f: mean_kl(adapted(f, True))))(flat)
    scale = np.linalg.norm(reference)
    assert scale > 1e-6
    np.testing.assert_allclose(new, reference, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(new, hessian, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(new, new.T, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize("case", ["navigation-K2-emaml", "tabular-K2-dr"])
def test_meta_gradient_from_the_linearised_inner_steps_is_the_autodiff_one(case):
    """TRPO's meta-gradient (1/M) Σ_g J_gᵀ ∇J_out(θ'_g) + ∇(E-MAML term), from the FVP's linearised inner steps,
    equals ``jax.grad`` of the meta-objective."""
    env, _, inner = case.split("-")
    config = maml_lib.MAMLConfig(outer="trpo", shard=False, env=env, num_tasks=3, num_trajectories=4, horizon=6,
                                 hidden_sizes=(6, 6), num_states=4, num_actions=3, inner_step_size=0.3, inner_steps=2,
                                 inner_estimator=inner)
    m = maml_lib.MAML(config)
    params, _ = m.init(jax.random.PRNGKey(0))
    data = m.sample_meta_batch(params, jax.random.PRNGKey(1))

    def linearised(p):
        _, old_adapted, transpose = trpo_lib.gauss_newton_fisher(m, p, data)
        return trpo_lib.meta_gradient(m, p, data, old_adapted, transpose)

    ours = ravel_pytree(jax.jit(linearised)(params))[0]
    reference = ravel_pytree(jax.jit(jax.grad(m.meta_objective))(params, data))[0]
    assert np.linalg.norm(reference) > 1e-6
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12 * np.linalg.norm(reference))


def test_subsampled_fisher_is_the_kl_hessian_of_the_chosen_tasks():
    """Opt-in `cg_subsample` = 1/2 of M = 4 tasks: the CG's product is the Hessian of the mean post-update KL over
    tasks 0 and 2 only (each still through its inner steps), written here with `jax.hessian`; a TRPO iteration with
    it keeps the line search's KL (over all tasks) within `max_kl`."""
    config = maml_lib.MAMLConfig(outer="trpo", shard=False, env="navigation", num_tasks=4, num_trajectories=4,
                                 horizon=6, hidden_sizes=(6, 6), inner_step_size=0.3, inner_steps=2, cg_subsample=0.5)
    m = maml_lib.MAML(config)
    params, opt_state = m.init(jax.random.PRNGKey(0))
    data = m.sample_meta_batch(params, jax.random.PRNGKey(1))
    flat, unravel = ravel_pytree(params)
    chosen = trpo_lib.cg_subset(data, config.cg_subsample)
    np.testing.assert_array_equal(chosen.post.rewards, data.post.rewards[np.array([0, 2])])

    def mean_kl(f):  # tasks 0 and 2, written out here
        def task_kl(d):
            old = m.adapt(params, d)[0]
            new = m.adapt(unravel(f), d, True)[0]
            return jnp.mean(m.policy.kl(old, new, d.post.observations[:, :-1]))
        return jnp.mean(jax.vmap(task_kl)(jax.tree_util.tree_map(lambda x: x[np.array([0, 2])], data)))

    eye = jnp.eye(flat.size, dtype=flat.dtype)
    ours = jax.jit(lambda e: jax.vmap(trpo_lib.gauss_newton_fisher(m, params, chosen)[0])(e))(eye)
    hessian = jax.jit(jax.hessian(mean_kl))(flat)
    scale = np.linalg.norm(hessian)
    assert scale > 1e-6
    np.testing.assert_allclose(ours, hessian, rtol=0, atol=1e-9 * scale)

    new, _, metrics = jax.jit(m.iteration)(params, opt_state, jax.random.PRNGKey(1))
    assert int(metrics["backtracks"]) < config.backtrack_steps  # a step was taken
    old_adapted = jax.vmap(lambda d: m.adapt(params, d)[0])(data)
    new_adapted = jax.vmap(lambda d: m.adapt(new, d, True)[0])(data)
    assert float(trpo_lib.post_kl(m, old_adapted, new_adapted, data)) <= config.max_kl * (1 + 1e-6)


def test_conjugate_gradient_tracks_the_product_and_solves_an_spd_system():
    a = jax.random.normal(jax.random.PRNGKey(0), (6, 6), jnp.float64)
    a = a @ a.T + 0.5 * jnp.eye(6)
    b = jax.random.normal(jax.random.PRNGKey(1), (6,), jnp.float64)
    matvec = lambda v: a @ v  # noqa: E731
    for iterations in (3, 6, 12):  # 12 > n: the residual vanishes and the masked updates stop
        x, ax = jax.jit(lambda b: outer_lib.conjugate_gradient(matvec, b, iterations, return_product=True))(b)
        np.testing.assert_allclose(ax, a @ x, rtol=0, atol=1e-12 * np.linalg.norm(a @ x))
        np.testing.assert_allclose(x, outer_lib.conjugate_gradient(matvec, b, iterations), rtol=1e-12)
    np.testing.assert_allclose(x, jnp.linalg.solve(a, b), rtol=1e-9)
