"""TRPO's conjugate gradient against an independent reference (float64)."""

import jax
import jax.numpy as jnp
import numpy as np

from metagrad import outer as outer_lib


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
