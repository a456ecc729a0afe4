"""Exact oracles: the value of a tabular softmax policy and its derivatives of any order.

J(θ) = Σ_x p_0(x) V^{π_θ}(x), π_θ(a|x) = softmax(θ[x, :])[a], with V^π from the linear solve of
[`metagrad.mdp.policy_evaluation`][metagrad.mdp.policy_evaluation]. Because J is an explicit differentiable function of θ, automatic
differentiation through the solve gives ∇J, ∇²J, ∇³J, … exactly (to floating-point precision); these
are the ground truth every estimator in the library is measured against (Tang et al. 2021, Sec. 5).

All functions take `logits [S, A]`; the K-th derivative has shape `[S, A] * K`. Run them in
float64 (`jax.config.update("jax_enable_x64", True)`) when they serve as an oracle. Matmuls and solves
run at the highest precision, so GPU results match CPU results.

The MAML objective (Finn et al. 2017) for a family of tasks g is
F(θ) = E_g[J_g(θ'_g)], θ'_g = θ + η ∇J_g(θ) (repeated `inner_steps` times), and its meta-gradient
∇F = E_g[(I + η ∇²J_g(θ)) ∇J_g(θ')] for one inner step; [`maml_gradient`][metagrad.exact.maml_gradient] differentiates F
exactly by autodiff through the inner steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metagrad.mdp import TabularMDP, policy_evaluation, softmax_policy

_PRECISION = "highest"


def _check_logits(mdp: TabularMDP, logits) -> None:
    if jnp.shape(logits) != jnp.shape(mdp.rewards)[-2:]:
        raise ValueError(
            f"`logits` must have shape [S, A] = {tuple(jnp.shape(mdp.rewards)[-2:])}; got {tuple(jnp.shape(logits))}."
        )


def value(mdp: TabularMDP, logits: jax.Array) -> jax.Array:
    """J(θ) = Σ_x p_0(x) V^{softmax(θ)}(x), a differentiable scalar.

    Args:
      mdp: a [`TabularMDP`][metagrad.mdp.TabularMDP].
      logits (array of shape [S, A]): softmax logits θ.
    """
    _check_logits(mdp, logits)
    with jax.default_matmul_precision(_PRECISION):
        v, _ = policy_evaluation(mdp, softmax_policy(logits))
        return jnp.dot(mdp.initial, v)


def derivative(mdp: TabularMDP, logits: jax.Array, order: int) -> jax.Array:
    """The exact `order`-th derivative ∇^K J(θ), shape `[S, A] * K` (K = 0 gives J itself).

    Reverse mode for the first derivative, forward-over-reverse for every further order.
    """
    if not isinstance(order, int) or order < 0:
        raise ValueError(f"`order` must be a non-negative integer; got {order!r}.")
    _check_logits(mdp, logits)
    fn = lambda theta: value(mdp, theta)  # noqa: E731
    if order >= 1:
        fn = jax.grad(fn)
    for _ in range(order - 1):
        fn = jax.jacfwd(fn)
    with jax.default_matmul_precision(_PRECISION):
        return fn(logits)


def gradient(mdp: TabularMDP, logits: jax.Array) -> jax.Array:
    """∇J(θ), shape `[S, A]`; equals d^π(x) π(a|x) A^π(x, a) (the policy-gradient theorem)."""
    return derivative(mdp, logits, 1)


def hessian(mdp: TabularMDP, logits: jax.Array) -> jax.Array:
    """∇²J(θ), shape `[S, A, S, A]` (symmetric under swapping the two (x, a) index pairs)."""
    return derivative(mdp, logits, 2)


def adapted_logits(mdp: TabularMDP, logits: jax.Array, step_size: float, inner_steps: int = 1) -> jax.Array:
    """θ' after `inner_steps` steps of exact gradient ascent θ ← θ + η ∇J(θ) (differentiable in θ)."""
    if not isinstance(inner_steps, int) or inner_steps < 0:
        raise ValueError(f"`inner_steps` must be a non-negative integer; got {inner_steps!r}.")
    for _ in range(inner_steps):
        logits = logits + step_size * jax.grad(value, argnums=1)(mdp, logits)
    return logits


def maml_objective(mdps: TabularMDP, logits: jax.Array, step_size: float, inner_steps: int = 1) -> jax.Array:
    """The exact MAML objective F(θ) = mean_g J_g(θ'_g) over a batch of tasks.

    Args:
      mdps: a batched [`TabularMDP`][metagrad.mdp.TabularMDP] whose leaves have a leading task axis
        (see [`metagrad.mdp.stack`][metagrad.mdp.stack]), or a single MDP.
      logits (array of shape [S, A]): shared initial logits θ.
      step_size: the inner learning rate η.
      inner_steps: number of exact inner gradient-ascent steps (0 gives mean_g J_g(θ)).

    Returns:
      A scalar, differentiable in `logits`.
    """
    if jnp.ndim(mdps.transitions) == 3:
        return value(mdps, adapted_logits(mdps, logits, step_size, inner_steps))
    per_task = jax.vmap(lambda m: value(m, adapted_logits(m, logits, step_size, inner_steps)))(mdps)
    return jnp.mean(per_task)


def maml_gradient(mdps: TabularMDP, logits: jax.Array, step_size: float, inner_steps: int = 1) -> jax.Array:
    """The exact meta-gradient ∇F(θ), shape `[S, A]`.

    For one inner step this is mean_g (I + η ∇²J_g(θ)) ∇J_g(θ'_g): the Hessian term is what every
    estimator in [`metagrad.estimators`][metagrad.estimators] has to get right.
    """
    with jax.default_matmul_precision(_PRECISION):
        return jax.grad(maml_objective, argnums=1)(mdps, logits, step_size, inner_steps)
