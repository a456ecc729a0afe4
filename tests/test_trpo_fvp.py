"""TRPO-MAML's Fisher-vector product and conjugate gradient against independent references (float64).

:meth:`MAML.fisher_vector_product` computes Jᵀ ∇²KL J v. References written here: the Gauss–Newton product with
``jax.jvp``/``jax.vjp`` of the adapted parameters, and the full ``jax.hessian`` of the mean post-update KL as
a function of the flat pre-update parameters at θ_old (equal there: ∇KL = 0 at the old point).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metagrad import maml as maml_lib
from metagrad import outer as outer_lib

CASES = {
    "navigation-K1": dict(env="navigation", inner_steps=1),
    "navigation-K2": dict(env="navigation", inner_steps=2),
    "tabular-K1-dr": dict(env="tabular", inner_steps=1, inner_estimator="dr"),
    "tabular-K2-dr": dict(env="tabular", inner_steps=2, inner_estimator="dr"),
    "navigation-K2-fomaml": dict(env="navigation", inner_steps=2, inner_estimator="fomaml"),
    "tabular-K2-fomaml": dict(env="tabular", inner_steps=2, inner_estimator="fomaml"),
    "navigation-K2-promp-taypo2": dict(env="navigation", inner_steps=2, inner_estimator="taypo2", objective="promp"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fisher_vector_product_matches_gauss_newton_and_kl_hessian(case):
    config = maml_lib.MAMLConfig(outer="trpo", shard=False, num_tasks=3, num_trajectories=4, horizon=6,
                                 hidden_sizes=(6, 6), num_states=4, num_actions=3, inner_step_size=0.3,
                                 **CASES[case])
    m = maml_lib.MAML(config)
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
