"""Tests of the exact oracles in metagrad.exact against closed forms and finite differences.

Finite differences use central differences with step h in float64: the error is O(h²) for smooth J,
so with h = 1e-5 agreement to ~1e-7 relative is expected.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad import exact, mdp as mdp_lib

S, A = 4, 3
H = 1e-5

# The oracles are plain functions; jit them here so each test compiles once instead of dispatching
# every primitive of the nested derivatives eagerly.
derivative = jax.jit(exact.derivative, static_argnums=2)


def numpy_mdp(seed, num_states, num_actions, gamma=0.8):
    """A random MDP drawn with NumPy (fast, no compilation): Dirichlet(0.5) rows, U[0, 1) rewards.

    Dirichlet(0.5) keeps the value sensitive to every logit (the paper's 0.001 is near-deterministic).
    """
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.full(num_states, 0.5), size=(num_states, num_actions))
    return mdp_lib.TabularMDP(transitions, rng.uniform(size=(num_states, num_actions)), np.eye(num_states)[0], gamma)


@pytest.fixture(scope="module")
def setting():
    theta = jax.random.normal(jax.random.PRNGKey(0), (S, A))
    return numpy_mdp(0, S, A), theta


def central_difference(fn, theta, h=H):
    """∂fn/∂θ[x, a] ≈ (fn(θ + h e_xa) − fn(θ − h e_xa)) / 2h, one coordinate at a time; shape [S, A, *fn]."""
    theta, fn = np.asarray(theta), jax.jit(fn)
    out = []
    for x, a in itertools.product(range(theta.shape[0]), range(theta.shape[1])):
        e = np.zeros_like(theta)
        e[x, a] = h
        out.append((np.asarray(fn(jnp.asarray(theta + e))) - np.asarray(fn(jnp.asarray(theta - e)))) / (2 * h))
    out = np.stack(out)
    return out.reshape(theta.shape + out.shape[1:])


def test_value_matches_policy_evaluation(setting):
    mdp, theta = setting
    v, _ = mdp_lib.policy_evaluation(mdp, jax.nn.softmax(theta, axis=-1))
    np.testing.assert_allclose(exact.value(mdp, theta), v[0], rtol=1e-12)
    np.testing.assert_allclose(exact.derivative(mdp, theta, 0), v[0], rtol=1e-12)


def test_gradient_is_the_policy_gradient_theorem(setting):
    mdp, theta = setting
    policy = jax.nn.softmax(theta, axis=-1)
    v, q = mdp_lib.policy_evaluation(mdp, policy)
    d = mdp_lib.discounted_occupancy(mdp, policy)
    closed_form = d[:, None] * policy * (q - v[:, None])  # d(x) π(a|x) A(x, a)
    grad = exact.gradient(mdp, theta)
    assert grad.shape == (S, A)
    np.testing.assert_allclose(grad, closed_form, rtol=1e-10, atol=1e-12)
    # Softmax logits: shifting a row does not change π, so each row of ∇J sums to zero.
    np.testing.assert_allclose(jnp.sum(grad, axis=-1), 0.0, atol=1e-12)


def test_gradient_matches_finite_differences(setting):
    mdp, theta = setting
    fd = central_difference(lambda t: exact.value(mdp, t), theta)
    np.testing.assert_allclose(exact.gradient(mdp, theta), fd, rtol=1e-6, atol=1e-9)


def test_hessian_is_symmetric_and_matches_finite_differences(setting):
    mdp, theta = setting
    hess = derivative(mdp, theta, 2)
    np.testing.assert_allclose(exact.hessian(mdp, theta), hess, rtol=1e-12)
    assert hess.shape == (S, A, S, A)
    flat = np.asarray(hess).reshape(S * A, S * A)
    np.testing.assert_allclose(flat, flat.T, atol=1e-12)
    fd = central_difference(lambda t: derivative(mdp, t, 1), theta)
    np.testing.assert_allclose(hess, fd, rtol=1e-6, atol=1e-9)
    # A wrong answer is rejected: the first-order-only (no-cross-term) mistake Hessian ≠ this one.
    assert not np.allclose(hess, np.zeros_like(hess), atol=1e-3)


def test_third_derivative_symmetric_and_matches_finite_differences(setting):
    mdp, theta = setting
    third = np.asarray(derivative(mdp, theta, 3))
    assert third.shape == (S, A, S, A, S, A)
    flat = third.reshape(S * A, S * A, S * A)
    for perm in itertools.permutations(range(3)):
        np.testing.assert_allclose(flat, flat.transpose(perm), atol=1e-11)
    fd = central_difference(lambda t: derivative(mdp, t, 2), theta)
    np.testing.assert_allclose(third, fd, rtol=1e-5, atol=1e-8)


def test_derivative_argument_checks(setting):
    mdp, theta = setting
    with pytest.raises(ValueError, match="`order`"):
        exact.derivative(mdp, theta, -1)
    with pytest.raises(ValueError, match="`order`"):
        exact.derivative(mdp, theta, 1.0)
    with pytest.raises(ValueError, match="`logits`"):
        exact.gradient(mdp, theta[:, :2])
    with pytest.raises(ValueError, match="`inner_steps`"):
        exact.adapted_logits(mdp, theta, 0.1, -1)


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_maml_gradient_matches_finite_differences(inner_steps):
    tasks = mdp_lib.stack([numpy_mdp(seed, 3, 2, gamma=0.7) for seed in (1, 2, 3)])
    theta = jax.random.normal(jax.random.PRNGKey(2), (3, 2))
    step = 0.5
    meta_grad = jax.jit(exact.maml_gradient, static_argnums=3)(tasks, theta, step, inner_steps)
    fd = central_difference(lambda t: exact.maml_objective(tasks, t, step, inner_steps), theta)
    np.testing.assert_allclose(meta_grad, fd, rtol=1e-6, atol=1e-9)
    # The meta-gradient is not the plain gradient at θ (the Hessian term matters here).
    plain = jnp.mean(jax.jit(jax.vmap(lambda m: exact.gradient(m, theta)))(tasks), axis=0)
    assert not np.allclose(meta_grad, plain, rtol=1e-3)


def test_maml_one_step_formula():
    """∇F = (I + η ∇²J(θ)) ∇J(θ') for one task and one inner step (Finn et al. 2017)."""
    mdp = numpy_mdp(5, 3, 2)
    theta = jax.random.normal(jax.random.PRNGKey(6), (3, 2))
    step = 0.3

    @jax.jit
    def both_sides(theta):
        adapted = exact.adapted_logits(mdp, theta, step)
        hess = exact.hessian(mdp, theta).reshape(6, 6)
        expected = (jnp.eye(6) + step * hess) @ exact.gradient(mdp, adapted).ravel()
        return adapted, exact.gradient(mdp, theta), exact.maml_gradient(mdp, theta, step).ravel(), expected

    adapted, grad, meta_grad, expected = both_sides(theta)
    np.testing.assert_allclose(adapted, theta + step * grad, rtol=1e-12)
    np.testing.assert_allclose(meta_grad, expected, rtol=1e-10)
    # Zero inner steps: F = J.
    np.testing.assert_allclose(exact.maml_objective(mdp, theta, step, 0), exact.value(mdp, theta), rtol=1e-12)
