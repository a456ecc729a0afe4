"""Prior-work derivative estimators of meta-RL, written as their papers wrote them.

Each function is a per-trajectory **surrogate objective** in the log-probabilities ℓ_t = log π_θ(a_t|x_t)
whose derivatives in θ, at π = μ, are the estimator of the paper it comes from. Tang et al. (2021,
Table 1) show that each one is a differentiated off-policy evaluation estimate of [`metagrad.ope`][metagrad.ope]:

| function | paper | OPE form (same derivatives) |
|---|---|---|
| [`maml_surrogate`][metagrad.prior.maml_surrogate] | Finn et al. 2017 (MAML) | none (biased Hessian) |
| [`dice_objective`][metagrad.prior.dice_objective] | Foerster et al. 2018 (DiCE) | step-wise IS (DR with baseline) |
| [`loaded_dice_objective`][metagrad.prior.loaded_dice_objective] | Farquhar et al. 2019 (Loaded DiCE) | DR (λ = 1, τ = 1); TayPO-1 (λ = 0) |
| [`lvc_objective`][metagrad.prior.lvc_objective] | Rothfuss et al. 2019 (ProMP's LVC) | TayPO-1 |
| [`first_order`][metagrad.prior.first_order] | Finn et al. 2017, first-order MAML | gradient only |

Shapes: `log_pi [T]`, `rewards [T]`, `values [T+1]` (critic at the visited states, V(x_T) the
bootstrap), `discounts` a scalar γ or `[T]` per-step discounts γ_t (zero at and after termination);
Γ_t = Π_{s<t} γ_s; Â_t = G_t − V(x_t) with G_t = r_t + γ_t G_{t+1}, G_T = V(x_T), always a
`stop_gradient`-ed weight.

The "magic box" □(w) = exp(w − stop_gradient(w)) equals 1 but has derivative □(w)·∇w. The surrogates
accept an optional behaviour `log_mu [T]`: `None` (default) is the papers' on-policy form, which uses
the box; with `log_mu` given, □(Σ ℓ_s) becomes exp(Σ (ℓ_s − log μ_s)) — identical when
`log_mu = stop_gradient(log_pi)`, and the natural importance-weighted form otherwise (e.g. ProMP's
later inner steps with μ = π_old).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from metagrad.ope import _check_inputs, cumulative_discounts, returns

__all__ = [
    "magic_box",
    "maml_surrogate",
    "fomaml_surrogate",
    "first_order",
    "dice_objective",
    "loaded_dice_objective",
    "lvc_objective",
    "gae_advantages",
]


def magic_box(w) -> jax.Array:
    """□(w) = exp(w − stop_gradient(w)): 1 in value, ∇□(w) = □(w)∇w (Foerster et al. 2018)."""
    return jnp.exp(w - jax.lax.stop_gradient(w))


def _prepare(log_pi, rewards, values, discounts, log_mu):
    """Checked inputs and the per-step box exponents λ_t (ℓ_t − sg(ℓ_t), or ℓ_t − log μ_t)."""
    log_pi, rewards, values, discounts = _check_inputs(log_pi, rewards, values, discounts)
    if log_mu is None:
        exponents = log_pi - jax.lax.stop_gradient(log_pi)
    else:
        log_mu = jnp.asarray(log_mu, log_pi.dtype)
        if log_mu.shape != log_pi.shape:
            raise ValueError(f"`log_mu` must have shape [T] = {log_pi.shape} like `log_pi`; got {log_mu.shape}.")
        exponents = log_pi - log_mu
    return log_pi, rewards, values, discounts, exponents


def _advantages(rewards, values, discounts):
    """Â_t = G_t − V(x_t), a weight (`stop_gradient`)."""
    return jax.lax.stop_gradient(returns(rewards, values, discounts) - values[:-1])


def maml_surrogate(log_pi, rewards, values, discounts) -> jax.Array:
    """The original MAML policy-gradient surrogate: Σ_t Γ_t ℓ_t Â_t.

    Its gradient Σ_t Γ_t Â_t ∇ℓ_t is unbiased on-policy; differentiated twice it keeps only
    Σ_t Γ_t Â_t ∇²ℓ_t and misses the score-function terms ∇ℓ_t∇ℓ_sᵀ: its Hessian is **biased**
    (Tang et al. 2021, Sec. 3; Rothfuss et al. 2019).

    References:
      - Finn, Abbeel, Levine. Model-agnostic meta-learning for fast adaptation of deep networks. ICML 2017.

    Args:
      log_pi (array of shape [T]): ℓ_t (the path for θ).
      rewards, values, discounts: see the module docstring.

    Returns:
      The scalar surrogate (its value is not an estimate of V; only its derivatives matter).
    """
    log_pi, rewards, values, discounts = _check_inputs(log_pi, rewards, values, discounts)
    gammas = cumulative_discounts(discounts)[:-1]
    return jnp.sum(gammas * log_pi * _advantages(rewards, values, discounts))


def fomaml_surrogate(log_pi, rewards, values, discounts) -> jax.Array:
    """First-order MAML's per-trajectory surrogate: the [`maml_surrogate`][metagrad.prior.maml_surrogate] (same value and gradient).

    First-order MAML (Finn et al. 2017, Sec. 5.2) drops every second derivative of the inner objective.
    In θ that cannot be expressed through ℓ_t alone (∇²ℓ_t depends on the parametrisation), so it is
    applied at the parameter level by [`first_order`][metagrad.prior.first_order], which [`metagrad.estimators.surrogate`][metagrad.estimators.surrogate]
    and [`metagrad.estimators.tabular_derivatives`][metagrad.estimators.tabular_derivatives] use for the `"fomaml"` estimator.
    """
    return maml_surrogate(log_pi, rewards, values, discounts)


def first_order(fn: Callable) -> Callable:
    """Wrap `fn(params, *args)` so that its value and gradient are kept and all higher derivatives are zero.

    f̃(θ) = sg(f(θ)) + ⟨sg(∇f(θ)), θ − sg(θ)⟩: f̃ = f, ∇f̃ = ∇f, ∇²f̃ = 0 — the first-order
    approximation of MAML (Finn et al. 2017, Sec. 5.2; "FOMAML"), which treats the inner gradient as a
    constant. `params` may be any pytree of arrays.
    """

    def wrapped(params, *args, **kwargs):
        value, grad = jax.value_and_grad(fn)(params, *args, **kwargs)
        value, grad = jax.lax.stop_gradient(value), jax.lax.stop_gradient(grad)
        deltas = jax.tree_util.tree_map(lambda p: p - jax.lax.stop_gradient(p), params)
        terms = jax.tree_util.tree_map(lambda g, d: jnp.sum(g * d), grad, deltas)
        return value + sum(jax.tree_util.tree_leaves(terms))

    return wrapped


def dice_objective(log_pi, rewards, values, discounts, *, baseline: bool = False, log_mu=None) -> jax.Array:
    """DiCE, the infinitely differentiable Monte Carlo estimator.

    L = Σ_t Γ_t □(Σ_{s≤t} ℓ_s) r_t + Γ_T □(Σ_{s<T} ℓ_s) V(x_T)
        [+ Σ_t Γ_t (1 − □(ℓ_t)) □(Σ_{s<t} ℓ_s) V(x_t)   if `baseline`].

    Every derivative of L is an unbiased estimate of the derivative of V^π. The bootstrap term (absent in
    the paper, whose trajectories end) weights V(x_T) like step-wise IS does; pass `values[T] = 0` for the
    paper's form. The baseline term (Mao et al. 2019, the "DiCE baseline") is zero in value and in
    expectation; with it L has the derivatives of the doubly robust estimate — in fact L *is*
    [`metagrad.ope.doubly_robust`][metagrad.ope.doubly_robust] with ρ replaced by □. Without it, L is step-wise IS
    ([`metagrad.ope.step_importance_sampling`][metagrad.ope.step_importance_sampling], Tang et al. Table 1).

    References:
      - Foerster, Farquhar, Al-Shedivat, Rocktäschel, Xing, Whiteson. DiCE: the infinitely differentiable
        Monte Carlo estimator. ICML 2018.
      - Mao, Foerster, Rocktäschel, Al-Shedivat, Farquhar, Whiteson. A baseline for any order gradient
        estimation in stochastic computation graphs. ICML 2019.

    Args:
      log_pi, rewards, values, discounts: see the module docstring.
      baseline: add the baseline term with b_t = V(x_t).
      log_mu: optional `[T]` behaviour log-probabilities (see the module docstring).
    """
    _, rewards, values, discounts, exponents = _prepare(log_pi, rewards, values, discounts, log_mu)
    log_gammas = _log_cumulative_discounts(discounts)
    through_t = jnp.cumsum(exponents)  # Σ_{s≤t}
    before_t = through_t - exponents  # Σ_{s<t}
    # Γ_t □(·) = exp(log Γ_t + ·): the box products grow like ρ^t while Γ_t shrinks like γ^t, so their
    # product stays in range where the box alone overflows (float32, T = 66, ρ = 4.2, γ = 0.8).
    objective = jnp.sum(jnp.exp(log_gammas[:-1] + through_t) * rewards)
    objective = objective + jnp.exp(log_gammas[-1] + through_t[-1]) * values[-1]
    if baseline:
        b = jax.lax.stop_gradient(values[:-1])
        # Γ_t (1 − □(ℓ_t)) □(Σ_{s<t} ℓ_s) b_t, expanded into two boxes.
        boxes = jnp.exp(log_gammas[:-1] + before_t) - jnp.exp(log_gammas[:-1] + through_t)
        objective = objective + jnp.sum(boxes * b)
    return objective


def _log_cumulative_discounts(discounts) -> jax.Array:
    """log Γ_t for t = 0 … T (`[T+1]`; −∞ after a zero discount, so exp gives Γ_t = 0 exactly)."""
    return jnp.log(cumulative_discounts(discounts))


def gae_advantages(rewards, values, discounts, tau) -> jax.Array:
    """GAE(τ) advantages A_t = δ_t + γ_t τ A_{t+1}, A_T = 0, δ_t = r_t + γ_t V(x_{t+1}) − V(x_t); `[T]`.

    τ = 1 gives Â_t = G_t − V(x_t). (Schulman et al. 2016 call τ "λ"; here λ is Loaded DiCE's.)
    """
    deltas = rewards + discounts * values[1:] - values[:-1]

    def step(a_next, inputs):
        delta, gamma = inputs
        a = delta + gamma * tau * a_next
        return a, a

    _, advantages = jax.lax.scan(step, jnp.zeros((), deltas.dtype), (deltas, discounts), reverse=True)
    return advantages


def loaded_dice_objective(log_pi, rewards, values, discounts, *, lam=1.0, tau=1.0, log_mu=None) -> jax.Array:
    r"""Loaded DiCE: DiCE with GAE advantages and discounted distant dependencies.

    $$
    w_t = λ w_{t-1} + \ell _t (w_{-1} = 0), \qquad L = \sum _t A_t (\square (w_t) - \square (w_t - \ell _t)), \qquad A_t = Γ_t \cdot  \mathrm{GAE}_τ(t).
    $$

    λ = 1, τ = 1: the derivatives are those of the doubly robust estimate (all orders, unbiased).
    λ = 0: □(ℓ_t) − 1, the derivatives of TayPO-1 / LVC (Hessian biased even on-policy).
    0 < λ < 1 trades bias for variance by down-weighting the dependence of late rewards on early actions.
    The value of L is 0 on-policy (only the derivatives are estimates).

    References:
      - Farquhar, Whiteson, Foerster. Loaded DiCE: trading off bias and variance in any-order score
        function gradient estimators for reinforcement learning. NeurIPS 2019.
      - Schulman et al. High-dimensional continuous control using generalized advantage estimation. ICLR 2016.

    Args:
      log_pi, rewards, values, discounts: see the module docstring.
      lam: λ ∈ [0, 1], the discount of distant dependencies.
      tau: GAE τ ∈ [0, 1] for the advantages.
      log_mu: optional `[T]` behaviour log-probabilities (see the module docstring).
    """
    _, rewards, values, discounts, exponents = _prepare(log_pi, rewards, values, discounts, log_mu)
    gae = jax.lax.stop_gradient(gae_advantages(rewards, values, discounts, tau))
    log_gammas = _log_cumulative_discounts(discounts)[:-1]

    def step(w_prev, x):
        w = lam * w_prev + x
        return w, w

    _, w = jax.lax.scan(step, jnp.zeros((), exponents.dtype), exponents)
    # A_t □(w) = GAE_t exp(log Γ_t + w): Γ_t enters the exponent, so Γ_t □(w_t) stays finite where □(w_t) alone
    # overflows (off-policy, float32).
    return jnp.sum(gae * (jnp.exp(log_gammas + w) - jnp.exp(log_gammas + w - exponents)))


def lvc_objective(log_pi, rewards, values, discounts, *, log_mu=None) -> jax.Array:
    """ProMP's low-variance curvature (LVC) surrogate: Σ_t Γ_t (π_θ(a_t|x_t)/sg(π_θ(a_t|x_t))) Â_t.

    Its gradient is unbiased on-policy; its Hessian Σ_t Γ_t Â_t (∇²ℓ_t + ∇ℓ_t∇ℓ_tᵀ) misses the cross
    terms between steps (biased, lower variance). Its derivatives are TayPO-1's (Tang et al. Table 1).

    **Discounting.** ProMP writes the undiscounted reward-to-go; we weight step t by Γ_t (= γ^t) and use
    the discounted Â_t so that the surrogate's gradient estimates the gradient of the *discounted* value
    V^π(x_0) (the quantity every estimator here and the exact oracle target), and TayPO-1 = LVC exactly.

    References:
      - Rothfuss, Lee, Clavera, Asfour, Abbeel. ProMP: proximal meta-policy search. ICLR 2019.

    Args:
      log_pi, rewards, values, discounts: see the module docstring.
      log_mu: optional `[T]` behaviour log-probabilities: ρ_t = π/μ instead of π/sg(π).
    """
    _, rewards, values, discounts, exponents = _prepare(log_pi, rewards, values, discounts, log_mu)
    gammas = cumulative_discounts(discounts)[:-1]
    return jnp.sum(gammas * jnp.exp(exponents) * _advantages(rewards, values, discounts))
