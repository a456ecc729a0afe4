"""Outer-loop building blocks of the meta-RL families of Tang et al. (2021), Fig. 1d.

* [`advantages`][metagrad.outer.advantages] — Â_t = G_t − V(x_t) per trajectory (stop-gradient: a weight, never a path for θ).
* [`ppo_clip_objective`][metagrad.outer.ppo_clip_objective] — PPO's clipped surrogate (Schulman et al. 2017) of the post-update
  likelihood ratio, the outer objective of ProMP (Rothfuss et al. 2019):
  J^CLIP = mean_n Σ_t Γ_t min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t), r_t = π_θ'(a_t|x_t) / π_θ'_old(a_t|x_t).
  At θ' = θ'_old its gradient is the policy gradient Σ_t Γ_t Â_t ∇ℓ_t.
* [`conjugate_gradient`][metagrad.outer.conjugate_gradient] and [`trpo_step`][metagrad.outer.trpo_step] — TRPO (Schulman et al. 2015) as MAML used it
  (Finn et al. 2017): solve F x = g by conjugate gradient with only Fisher-vector products, scale the
  step to the KL radius δ, x ← x √(2δ / xᵀFx), and backtrack until the surrogate improves within the
  KL constraint.

All functions work on flat parameter vectors (`jax.flatten_util.ravel_pytree`) and are jittable.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from metagrad.critics import discounted_returns
from metagrad.rollout import Trajectories


def advantages(trajectories: Trajectories, values: jax.Array, gamma) -> jax.Array:
    """Â_{n,t} = G_{n,t} − V(x_{n,t}) with G_T = V(x_T), `[N, T]`, zero on padding steps, stop-gradient."""
    discounts = trajectories.discounts(gamma)
    returns = jax.vmap(discounted_returns)(trajectories.rewards, discounts, values[:, -1])
    return jax.lax.stop_gradient((returns - values[:, :-1]) * trajectories.mask())


def cumulative_discounts(trajectories: Trajectories, gamma) -> jax.Array:
    """Γ_t = Π_{s<t} γ_s, `[N, T]` (1 at t = 0)."""
    discounts = trajectories.discounts(gamma)
    ones = jnp.ones_like(discounts[:, :1])
    return jnp.cumprod(jnp.concatenate([ones, discounts[:, :-1]], axis=1), axis=1)


def ppo_clip_objective(log_pi, old_log_pi, advantage, weights, clip_eps: float) -> jax.Array:
    """mean_n Σ_t w_t min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t) with r_t = exp(ℓ_t − ℓ^old_t); inputs `[N, T]`."""
    ratio = jnp.exp(log_pi - jax.lax.stop_gradient(old_log_pi))
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_step = jnp.minimum(ratio * advantage, clipped * advantage)
    return jnp.mean(jnp.sum(weights * per_step, axis=-1))


def conjugate_gradient(
    matvec: Callable[[jax.Array], jax.Array], b: jax.Array, iterations: int = 10, *, return_product: bool = False
):
    """x ≈ A⁻¹ b for a symmetric positive-definite A given only `matvec(v) = A v` (`iterations` CG steps).

    Fixed iteration count (a `lax.fori_loop`), so it is jittable; a tiny residual stops further updates.
    `return_product=True` returns `(x, A x)`: A x is tracked alongside x from the products the iterations
    already form (A x_{k+1} = A x_k + α_k A p_k), so it costs no extra `matvec` and equals `matvec(x)` up to
    rounding.
    """

    def body(_, carry):
        x, ax, r, p, rr = carry
        ap = matvec(p)
        alpha = rr / jnp.maximum(jnp.vdot(p, ap), 1e-30)
        active = rr > 1e-20
        x = jnp.where(active, x + alpha * p, x)
        ax = jnp.where(active, ax + alpha * ap, ax)
        r_new = jnp.where(active, r - alpha * ap, r)
        rr_new = jnp.vdot(r_new, r_new)
        p = jnp.where(active, r_new + (rr_new / jnp.maximum(rr, 1e-30)) * p, p)
        return x, ax, r_new, p, rr_new

    x0 = jnp.zeros_like(b)
    x, ax, *_ = jax.lax.fori_loop(0, int(iterations), body, (x0, x0, b, b, jnp.vdot(b, b)))
    return (x, ax) if return_product else x


def trpo_step(
    params: jax.Array,
    gradient: jax.Array,
    fisher_vector_product: Callable[[jax.Array], jax.Array],
    objective_and_kl: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    *,
    max_kl: float,
    cg_iterations: int = 10,
    damping: float = 1e-5,
    backtrack_steps: int = 15,
    backtrack_ratio: float = 0.8,
    base: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One TRPO ascent step on flat `params`; returns `(new_params, accepted_step_index)`.

    x = CG((F + damping I), g); full step s = √(2δ / xᵀFx) x with xᵀFx = xᵀ(F + damping I)x from the product CG
    tracks (`cg_iterations` Fisher-vector products in all, none extra); try params + βⁱ s for i = 0, 1, … and keep
    the first one with objective > objective(params) and kl ≤ δ (up to 1e-6 relative); if none qualifies the parameters are
    unchanged and the index equals `backtrack_steps`. `objective_and_kl(params) -> (objective, kl)` evaluates both
    at a candidate (one call, so that the work they share, e.g. MAML's adaptation, is done once). `base`: the
    objective at `params` when the caller has it already (else one more `objective_and_kl` call computes it).
    """
    matvec = lambda v: fisher_vector_product(v) + damping * v  # noqa: E731
    direction, product = conjugate_gradient(matvec, gradient, cg_iterations, return_product=True)
    shs = jnp.vdot(direction, product)
    full_step = jnp.sqrt(2.0 * max_kl / jnp.maximum(shs, 1e-30)) * direction
    if base is None:
        base = objective_and_kl(params)[0]

    def acceptable(i):
        value, divergence = objective_and_kl(params + backtrack_ratio**i * full_step)
        # A relative slack of 1e-6 so the full step, which sits on the boundary ½ sᵀFs = δ, is not lost to rounding.
        return jnp.isfinite(value) & (value > base) & (divergence <= max_kl * (1 + 1e-6))

    def cond(i):
        return (i < backtrack_steps) & jnp.logical_not(acceptable(i))

    index = jax.lax.while_loop(cond, lambda i: i + 1, jnp.asarray(0))
    new = jnp.where(index < backtrack_steps, params + backtrack_ratio**index * full_step, params)
    return new, index


# ------------------------------------------------------------------ ProMP's objective form (Rothfuss et al. 2019)
#: Inner/outer estimators that have a ProMP-form per-step factor (:func:`promp_factor`).
PROMP_FORM_ESTIMATORS = ("lvc", "taypo1", "taypo2", "dr", "maml", "fomaml")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ mask·x / Σ mask: TensorFlow's `reduce_mean` over the stacked valid samples, as ProMP computes it."""
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def normalized_advantages(trajectories: Trajectories, values: jax.Array, gamma) -> jax.Array:
    """ProMP's sample-processor advantages, `[N, T]`, stop-gradient, zero on padding.

    A_t = G_t − b(x_t) (GAE with λ = 1: `meta_policy_search/samplers/base.py` `_compute_advantages`,
    baseline bootstrap b(x_T) = 0 as the linear critic gives), then `normalize_advantages` over all valid
    (n, t) samples of the task's batch: (A − mean A) / (std A + 1e-8), population std (`np.std`).
    """
    raw = advantages(trajectories, values, gamma)
    mask = trajectories.mask()
    mean = masked_mean(raw, mask)
    std = jnp.sqrt(masked_mean((raw - mean) ** 2, mask))
    return jax.lax.stop_gradient((raw - mean) / (std + 1e-8) * mask)


def promp_factor(name: str, log_pi: jax.Array, log_mu: jax.Array, mask: jax.Array) -> jax.Array:
    """The per-step factor f_t(θ) of ProMP's form mean_{n,t} f_t Â_t (`[N, T]` in, `[N, T]` out).

    λ_t = (ℓ_t − log μ_t)·mask, d_t = e^{λ_t} − 1 (θ enters through ℓ_t only):

    * `lvc`/`taypo1` — e^{λ_t}, ProMP's `likelihood_ratio_sym` (pro_mp.py `_adapt_objective_sym`);
    * `taypo2` — d_t (1 + Σ_{s<t} d_s) (TayPO-2, Tang et al. 2021 Eq. 6, without γ^t);
    * `dr` — e^{Σ_{s≤t} λ_s} − e^{Σ_{s<t} λ_s} (doubly robust = Loaded DiCE λ = 1 with a state critic;
      the paper's TRPO-DiCE, §5.2: its Hessian has the cross terms ∇ℓ_t S_{<t}ᵀ + S_{<t}∇ℓ_tᵀ);
    * `maml`/`fomaml` — ℓ_t, ProMP's `log_likelihood` inner type (trpo_maml.py; Finn et al.'s surrogate).
    """
    lam = (log_pi - log_mu) * mask
    if name in ("lvc", "taypo1"):
        return jnp.exp(lam)
    if name == "taypo2":
        d = jnp.expm1(lam)
        before = jnp.cumsum(d, axis=-1) - d
        return d * (1.0 + before)
    if name == "dr":
        upto = jnp.cumsum(lam, axis=-1)
        return jnp.exp(upto) - jnp.exp(upto - lam)
    if name in ("maml", "fomaml"):
        return log_pi
    raise ValueError(f"Estimator {name!r} has no ProMP-form surrogate; valid ones are {list(PROMP_FORM_ESTIMATORS)}.")


def promp_surrogate(name, log_prob_fn, params, trajectories: Trajectories, advantage, behaviour_log_probs=None):
    """mean_{n,t} f_t(θ) Â_t over the valid samples (ProMP: `-tf.reduce_mean(likelihood_ratio * adv)` negated).

    `advantage` `[N, T]` (normally [`normalized_advantages`][metagrad.outer.normalized_advantages]); μ = stop_gradient(π_θ) when
    `behaviour_log_probs` is None (on-policy), else the recorded log μ. No γ^t weights.
    """
    observations = jax.tree_util.tree_map(lambda o: o[:, :-1], trajectories.observations)
    log_pi = log_prob_fn(params, observations, trajectories.actions)
    log_mu = jax.lax.stop_gradient(log_pi) if behaviour_log_probs is None else behaviour_log_probs
    mask = trajectories.mask()
    return masked_mean(promp_factor(name, log_pi, log_mu, mask) * advantage, mask)


def promp_clip_objective(log_pi, old_log_pi, advantage, mask, clip_eps: float) -> jax.Array:
    """ProMP's outer objective (pro_mp.py): mean_{n,t} min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t), r_t = e^{ℓ_t − ℓ^old_t}."""
    ratio = jnp.exp(log_pi - jax.lax.stop_gradient(old_log_pi))
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return masked_mean(jnp.minimum(ratio * advantage, clipped * advantage), mask)
