"""Outer-loop building blocks of the meta-RL families of Tang et al. (2021), Fig. 1d.

* :func:`advantages` — Â_t = G_t − V(x_t) per trajectory (stop-gradient: a weight, never a path for θ).
* :func:`ppo_clip_objective` — PPO's clipped surrogate (Schulman et al. 2017) of the post-update
  likelihood ratio, the outer objective of ProMP (Rothfuss et al. 2019):
  J^CLIP = mean_n Σ_t Γ_t min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t), r_t = π_θ'(a_t|x_t) / π_θ'_old(a_t|x_t).
  At θ' = θ'_old its gradient is the policy gradient Σ_t Γ_t Â_t ∇ℓ_t.
* :func:`conjugate_gradient` and :func:`trpo_step` — TRPO (Schulman et al. 2015) as MAML used it
  (Finn et al. 2017): solve F x = g by conjugate gradient with only Fisher-vector products, scale the
  step to the KL radius δ, x ← x √(2δ / xᵀFx), and backtrack until the surrogate improves within the
  KL constraint.

All functions work on flat parameter vectors (``jax.flatten_util.ravel_pytree``) and are jittable.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from metagrad.critics import discounted_returns
from metagrad.rollout import Trajectories


def advantages(trajectories: Trajectories, values: jax.Array, gamma) -> jax.Array:
    """Â_{n,t} = G_{n,t} − V(x_{n,t}) with G_T = V(x_T), ``[N, T]``, zero on padding steps, stop-gradient."""
    discounts = trajectories.discounts(gamma)
    returns = jax.vmap(discounted_returns)(trajectories.rewards, discounts, values[:, -1])
    return jax.lax.stop_gradient((returns - values[:, :-1]) * trajectories.mask())


def cumulative_discounts(trajectories: Trajectories, gamma) -> jax.Array:
    """Γ_t = Π_{s<t} γ_s, ``[N, T]`` (1 at t = 0)."""
    discounts = trajectories.discounts(gamma)
    ones = jnp.ones_like(discounts[:, :1])
    return jnp.cumprod(jnp.concatenate([ones, discounts[:, :-1]], axis=1), axis=1)


def ppo_clip_objective(log_pi, old_log_pi, advantage, weights, clip_eps: float) -> jax.Array:
    """mean_n Σ_t w_t min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t) with r_t = exp(ℓ_t − ℓ^old_t); inputs ``[N, T]``."""
    ratio = jnp.exp(log_pi - jax.lax.stop_gradient(old_log_pi))
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_step = jnp.minimum(ratio * advantage, clipped * advantage)
    return jnp.mean(jnp.sum(weights * per_step, axis=-1))


def conjugate_gradient(matvec: Callable[[jax.Array], jax.Array], b: jax.Array, iterations: int = 10) -> jax.Array:
    """x ≈ A⁻¹ b for a symmetric positive-definite A given only ``matvec(v) = A v`` (``iterations`` CG steps).

    Fixed iteration count (a ``lax.fori_loop``), so it is jittable; a tiny residual stops further updates.
    """

    def body(_, carry):
        x, r, p, rr = carry
        ap = matvec(p)
        alpha = rr / jnp.maximum(jnp.vdot(p, ap), 1e-30)
        active = rr > 1e-20
        x = jnp.where(active, x + alpha * p, x)
        r_new = jnp.where(active, r - alpha * ap, r)
        rr_new = jnp.vdot(r_new, r_new)
        p = jnp.where(active, r_new + (rr_new / jnp.maximum(rr, 1e-30)) * p, p)
        return x, r_new, p, rr_new

    x0 = jnp.zeros_like(b)
    x, *_ = jax.lax.fori_loop(0, int(iterations), body, (x0, b, b, jnp.vdot(b, b)))
    return x


def trpo_step(
    params: jax.Array,
    gradient: jax.Array,
    fisher_vector_product: Callable[[jax.Array], jax.Array],
    objective: Callable[[jax.Array], jax.Array],
    kl: Callable[[jax.Array], jax.Array],
    *,
    max_kl: float,
    cg_iterations: int = 10,
    damping: float = 1e-5,
    backtrack_steps: int = 15,
    backtrack_ratio: float = 0.8,
) -> tuple[jax.Array, jax.Array]:
    """One TRPO ascent step on flat ``params``; returns ``(new_params, accepted_step_index)``.

    x = CG((F + damping I), g); full step s = √(2δ / xᵀFx) x; try params + βⁱ s for i = 0, 1, … and keep
    the first one with objective > objective(params) and kl ≤ δ (up to 1e-6 relative); if none qualifies the parameters are
    unchanged and the index equals ``backtrack_steps``.
    """
    matvec = lambda v: fisher_vector_product(v) + damping * v  # noqa: E731
    direction = conjugate_gradient(matvec, gradient, cg_iterations)
    shs = jnp.vdot(direction, matvec(direction))
    full_step = jnp.sqrt(2.0 * max_kl / jnp.maximum(shs, 1e-30)) * direction
    base = objective(params)

    def acceptable(i):
        candidate = params + backtrack_ratio**i * full_step
        value, divergence = objective(candidate), kl(candidate)
        # A relative slack of 1e-6 so the full step, which sits on the boundary ½ sᵀFs = δ, is not lost to rounding.
        return jnp.isfinite(value) & (value > base) & (divergence <= max_kl * (1 + 1e-6))

    def cond(i):
        return (i < backtrack_steps) & jnp.logical_not(acceptable(i))

    index = jax.lax.while_loop(cond, lambda i: i + 1, jnp.asarray(0))
    new = jnp.where(index < backtrack_steps, params + backtrack_ratio**index * full_step, params)
    return new, index
