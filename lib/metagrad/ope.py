r"""Off-policy evaluation (OPE) estimates of V^π(x_0) from one trajectory, as explicit functions of θ.

Tang et al. (2021) obtain every derivative estimator of meta-RL by differentiating an OPE estimate
V̂^{π_θ} in θ. The functions here compute those estimates for **one trajectory**; batch them with
`jax.vmap`. θ enters only through the per-step **log-ratios**

$$
λ_t = \log  π_θ(a_t|x_t) - \log  μ(a_t|x_t), \qquad ρ_t = \exp (λ_t), \qquad d_t = ρ_t - 1 = \mathrm{expm1}(λ_t),
$$

so derivatives flow through log π_θ (never through a ratio π/(μ + ε)). At π = μ pass
`log_pi − stop_gradient(log_pi)`: ρ_t = 1 in value, not in derivatives (DiCE's "magic box").

Shapes and conventions (the same for every function; `rlax` style):

* `log_ratios [T]`, `rewards [T]` — steps t = 0 … T−1;
* `values [T+1]` — the critic at the **visited states**, V(x_0) … V(x_T), V(x_T) the bootstrap. The
  caller indexes its critic by state (`critic[observations]`), never by time: a time-indexed critic is
  a different (and biased) estimator (`tests/test_unbiasedness.py` shows the bias);
* `discounts` — a scalar γ or per-step discounts `[T]`, γ_t = γ·(1 − done_t): zero at and after
  termination, so a terminated trajectory is never bootstrapped;
* Γ_t = Π_{s<t} γ_s (= γ^t without termination); G_t = r_t + γ_t G_{t+1}, G_T = V(x_T); Â_t = G_t − V(x_t).

Backward recursions run as `lax.scan(..., reverse=True)`. Every function is pure and jittable; shape
and dtype checks always run, value checks (finite rewards, discounts in [0, 1]) only on concrete arrays.

References:
  - Tang, Kozuno, Rowland, Munos, Valko. Unifying gradient estimators for meta-reinforcement learning
    via off-policy evaluation. NeurIPS 2021 (arXiv:2106.13125).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metagrad._validation import check_finite, check_index_range, is_concrete

__all__ = [
    "step_importance_sampling",
    "doubly_robust",
    "doubly_robust_q",
    "vtrace",
    "taylor_expansion",
    "returns",
    "cumulative_discounts",
]


# ----------------------------------------------------------------------------------------- input checks
def _floating(name: str, x, form: str):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"`{name}` must be a floating-point array of shape {form}; got dtype {x.dtype}.")
    return x


def _check_inputs(log_ratios, rewards, values, discounts, *, values_name="values", values_form="[T+1]"):
    """Rank, length and dtype checks shared by the estimators; returns arrays with discounts as `[T]`."""
    log_ratios = _floating("log_ratios", log_ratios, "[T]")
    rewards = _floating("rewards", rewards, "[T]")
    values = _floating(values_name, values, values_form)
    if log_ratios.ndim != 1:
        raise ValueError(
            f"`log_ratios` must have shape [T] (one trajectory; vmap for batches); got shape {log_ratios.shape}."
        )
    horizon = log_ratios.shape[0]
    if rewards.shape != (horizon,):
        raise ValueError(
            f"`rewards` must have shape [T] = ({horizon},) like `log_ratios`; got shape {rewards.shape}."
        )
    if values.ndim < 1 or values.shape[0] != horizon + 1:
        raise ValueError(
            f"`{values_name}` must have shape {values_form} with T+1 = {horizon + 1} entries (the critic at x_0 … x_T, "
            f"x_T the bootstrap state); got shape {values.shape}."
        )
    discounts = jnp.asarray(discounts)
    if not jnp.issubdtype(discounts.dtype, jnp.floating):
        discounts = discounts.astype(rewards.dtype)
    if discounts.ndim == 0:
        discounts = jnp.broadcast_to(discounts, (horizon,))
    elif discounts.shape != (horizon,):
        raise ValueError(
            f"`discounts` must be a scalar γ or per-step discounts of shape [T] = ({horizon},); got shape "
            f"{discounts.shape}."
        )
    if is_concrete(log_ratios) and np.any(np.isnan(np.asarray(log_ratios)) | (np.asarray(log_ratios) == np.inf)):
        raise ValueError("`log_ratios` must be finite or −∞ (π(a|x) = 0); it contains NaN or +∞.")
    check_finite("rewards", rewards)
    check_finite(values_name, values)
    if is_concrete(discounts):
        d = np.asarray(discounts)
        if not np.all(np.isfinite(d)) or np.any(d < 0) or np.any(d > 1):
            raise ValueError(
                f"`discounts` must lie in [0, 1] (γ_t = γ·(1 − done_t)); got values in [{d.min()}, {d.max()}]."
            )
    dtype = jnp.result_type(log_ratios, rewards, values, discounts)
    return (log_ratios.astype(dtype), rewards.astype(dtype), values.astype(dtype), discounts.astype(dtype))


# ------------------------------------------------------------------------------------------ building blocks
def cumulative_discounts(discounts) -> jax.Array:
    """Γ_t = Π_{s<t} γ_s for t = 0 … T (`[T]` discounts -> `[T+1]`; Γ_0 = 1)."""
    discounts = jnp.asarray(discounts)
    return jnp.concatenate([jnp.ones((1,), discounts.dtype), jnp.cumprod(discounts)])


def returns(rewards, values, discounts) -> jax.Array:
    """Bootstrapped returns G_t = r_t + γ_t G_{t+1}, G_T = V(x_T); `[T]` (a backward `lax.scan`).

    `discounts` is γ_t `[T]`, or one scalar γ for every step (as the estimators below accept).
    """
    discounts = jnp.asarray(discounts, dtype=jnp.result_type(rewards, discounts))
    if discounts.ndim and discounts.shape != jnp.shape(rewards):
        raise ValueError(f"`discounts` must be a scalar γ or per-step discounts of shape [T] = {jnp.shape(rewards)} "
                         f"like `rewards`; got shape {discounts.shape}.")
    discounts = jnp.broadcast_to(discounts, jnp.shape(rewards))

    def step(g_next, inputs):
        r, gamma = inputs
        g = r + gamma * g_next
        return g, g

    _, g = jax.lax.scan(step, values[-1], (rewards, discounts), reverse=True)
    return g


# -------------------------------------------------------------------------------------------- estimators
def step_importance_sampling(log_ratios, rewards, values, discounts) -> jax.Array:
    r"""Step-wise (per-decision) importance sampling estimate of V^π(x_0).

    $$
    \hat{V}_{\mathrm{IS}} = \sum _t Γ_t (\prod _{s\le t} ρ_s) r_t + Γ_T (\prod _{s<T} ρ_s) V(x_T),
    $$

    computed by the backward recursion V̂_t = ρ_t (r_t + γ_t V̂_{t+1}), V̂_T = V(x_T). Only the bootstrap
    entry `values[T]` is used (pass zeros for a plain Monte Carlo estimate). For every π (all derivatives
    too, Prop. 3.1 of Tang et al.) it is unbiased for the bootstrapped T-step target
    E_π[Σ_t Γ_t r_t + Γ_T V(x_T)], which is V^π(x_0) only when V(x_T) = V^π(x_T) (or the episode ends at T).
    Its variance grows with the products of ratios; whether it is below trajectory-wise IS's is not a
    theorem (notebook 04 measures it lower on its MDPs). Differentiated at π = μ it is DiCE (Foerster et
    al. 2018).

    References:
      - Precup, Sutton, Singh. Eligibility traces for off-policy policy evaluation. ICML 2000.
      - Tang et al. NeurIPS 2021, Table 1.

    Args:
      log_ratios (array of shape [T]): log π_θ(a_t|x_t) − log μ(a_t|x_t).
      rewards (array of shape [T]): r_t.
      values (array of shape [T+1]): critic at the visited states (only V(x_T) is used; may be all zero).
      discounts: scalar γ or `[T]` per-step discounts γ_t.

    Returns:
      The scalar estimate.

    Examples:
      >>> step_importance_sampling(jnp.zeros(2), jnp.ones(2), jnp.zeros(3), 0.5)  # 1 + 0.5
      Array(1.5, dtype=float32)
    """
    log_ratios, rewards, values, discounts = _check_inputs(log_ratios, rewards, values, discounts)
    rho = jnp.exp(log_ratios)

    def step(v_next, inputs):
        rho_t, r, gamma = inputs
        return rho_t * (r + gamma * v_next), None

    v0, _ = jax.lax.scan(step, values[-1], (rho, rewards, discounts), reverse=True)
    return v0


def doubly_robust(log_ratios, rewards, values, discounts) -> jax.Array:
    r"""Doubly robust estimate of V^π(x_0) with a state-value critic.

    $$
    \hat{V}_t = V(x_t) + ρ_t (r_t + γ_t \hat{V}_{t+1} - V(x_t)), \qquad \hat{V}_T = V(x_T); \qquad \text{ returns } \hat{V}_0.
    $$

    This is Eq. 3 of Tang et al. with Q(x, a) ≡ V(x) (see [`doubly_robust_q`][metagrad.ope.doubly_robust_q] for the state-action
    form). For every π and every critic it is unbiased (so are all its derivatives) for the bootstrapped
    T-step target E_π[Σ_t Γ_t r_t + Γ_T V(x_T)]; that target is V^π(x_0) only when V(x_T) = V^π(x_T) (or
    the episode ends at T), otherwise the critic's error at x_T is a bias. The critic is a control variate
    that lowers the variance when V ≈ V^π. A zero critic (with V(x_T) kept) gives
    [`step_importance_sampling`][metagrad.ope.step_importance_sampling]. Differentiated at π = μ it is Loaded DiCE with λ = 1
    (Farquhar et al. 2019) and DiCE with the baseline of Mao et al. (2019).

    References:
      - Jiang, Li. Doubly robust off-policy value evaluation for reinforcement learning. ICML 2016.
      - Tang et al. NeurIPS 2021, Eq. 3 and Prop. 3.2.

    Args:
      log_ratios (array of shape [T]): log π_θ(a_t|x_t) − log μ(a_t|x_t).
      rewards (array of shape [T]):
      values (array of shape [T+1]): critic V(x_0) … V(x_T) at the visited states.
      discounts: scalar γ or `[T]`.

    Returns:
      The scalar estimate.

    Examples:
      >>> doubly_robust(jnp.zeros(2), jnp.ones(2), jnp.array([5.0, 5.0, 2.0]), 0.5)  # on-policy: G_0
      Array(2., dtype=float32)
    """
    log_ratios, rewards, values, discounts = _check_inputs(log_ratios, rewards, values, discounts)
    rho = jnp.exp(log_ratios)

    def step(v_next, inputs):
        rho_t, r, gamma, v = inputs
        return v + rho_t * (r + gamma * v_next - v), None

    v0, _ = jax.lax.scan(step, values[-1], (rho, rewards, discounts, values[:-1]), reverse=True)
    return v0


def doubly_robust_q(log_ratios, rewards, actions, q_values, target_probs, discounts) -> jax.Array:
    """Doubly robust estimate with a state-action critic (Eq. 3 of Tang et al.).

    V̂_t = Q(x_t, π_θ) + ρ_t (r_t + γ_t V̂_{t+1} − Q(x_t, a_t)),   V̂_T = Q(x_T, π_θ),
    Q(x, π_θ) = Σ_a π_θ(a|x) Q(x, a).

    θ enters through `log_ratios` and through `target_probs` (the expected critic Q(x, π_θ)): pass a
    differentiable π_θ(·|x_t) to get the derivatives of Eq. 3 (the control variate then also carries
    gradient, which is what makes this form lower-variance than the state-value one). With
    `q_values[t, a] = V(x_t)` for every a it reduces to [`doubly_robust`][metagrad.ope.doubly_robust].

    References:
      - Jiang, Li. ICML 2016. Tang et al. NeurIPS 2021, Eq. 3.

    Args:
      log_ratios (array of shape [T]):
      rewards (array of shape [T]):
      actions (array of shape [T]): integer actions a_t (checked to lie in [0, A) on concrete input).
      q_values (array of shape [T+1, A]): critic Q(x_t, ·) at the visited states (row T: the bootstrap state).
      target_probs (array of shape [T+1, A]): π_θ(·|x_t) at the visited states.
      discounts: scalar γ or `[T]`.

    Returns:
      The scalar estimate.
    """
    log_ratios, rewards, q_values, discounts = _check_inputs(
        log_ratios, rewards, q_values, discounts, values_name="q_values", values_form="[T+1, A]"
    )
    horizon = log_ratios.shape[0]
    if q_values.ndim != 2:
        raise ValueError(f"`q_values` must have shape [T+1, A]; got shape {q_values.shape}.")
    target_probs = _floating("target_probs", target_probs, "[T+1, A]")
    if target_probs.shape != q_values.shape:
        raise ValueError(
            f"`target_probs` must have shape [T+1, A] = {q_values.shape} like `q_values`; got {target_probs.shape}."
        )
    actions = jnp.asarray(actions)
    if actions.shape != (horizon,):
        raise ValueError(f"`actions` must have shape [T] = ({horizon},); got shape {actions.shape}.")
    check_index_range("actions", actions, q_values.shape[1], "action")
    expected = jnp.sum(target_probs * q_values, axis=-1)  # Q(x_t, π_θ), [T+1]
    q_taken = jnp.take_along_axis(q_values[:-1], actions[:, None], axis=-1)[:, 0]
    rho = jnp.exp(log_ratios)

    def step(v_next, inputs):
        rho_t, r, gamma, q_pi, q_a = inputs
        return q_pi + rho_t * (r + gamma * v_next - q_a), None

    v0, _ = jax.lax.scan(step, expected[-1], (rho, rewards, discounts, expected[:-1], q_taken), reverse=True)
    return v0


def _truncate(rho, level):
    """min(ρ, level) with the tie ρ = level sent to the untruncated branch (value `level`, derivative ∂ρ)."""
    return jnp.where(rho <= level, rho, level)


def vtrace(log_ratios, rewards, values, discounts, *, rho_bar=1.0, c_bar=1.0) -> jax.Array:
    """V-trace (truncated doubly robust) estimate of V^π(x_0).

    v_t = V(x_t) + ρ̄_t δ_t + γ_t c̄_t (v_{t+1} − V(x_{t+1})),   v_T = V(x_T),
    δ_t = r_t + γ_t V(x_{t+1}) − V(x_t),   ρ̄_t = min(ρ_t, ρ̄),   c̄_t = min(ρ_t, c̄).

    **Tie convention.** min(ρ, 1) has a kink exactly on-policy (ρ = 1). We take the untruncated branch
    at ties: `where(ρ <= ρ̄, ρ, ρ̄)`, so the value is ρ̄ and every derivative flows through ρ. With
    ρ̄ = c̄ = 1 the on-policy derivatives of V-trace then equal those of [`doubly_robust`][metagrad.ope.doubly_robust] (of all
    orders); `jnp.minimum` would instead split the derivative in half at the tie. Off-policy the
    truncation biases the estimate (it evaluates a policy between μ and π) but lowers its variance.

    References:
      - Espeholt et al. IMPALA: scalable distributed deep-RL with importance weighted actor-learner
        architectures. ICML 2018. Tang et al. NeurIPS 2021, Sec. 5 ("truncated DR").

    Args:
      log_ratios, rewards, values, discounts: as in [`doubly_robust`][metagrad.ope.doubly_robust].
      rho_bar: truncation level ρ̄ of the TD-error weights.
      c_bar: truncation level c̄ of the traces.

    Returns:
      The scalar estimate.
    """
    log_ratios, rewards, values, discounts = _check_inputs(log_ratios, rewards, values, discounts)
    for name, level in (("rho_bar", rho_bar), ("c_bar", c_bar)):
        if is_concrete(level) and not float(level) > 0:
            raise ValueError(f"`{name}` must be a positive truncation level; got {level}.")
    rho = jnp.exp(log_ratios)
    rho_t, c_t = _truncate(rho, rho_bar), _truncate(rho, c_bar)
    td = rewards + discounts * values[1:] - values[:-1]

    def step(correction_next, inputs):
        rho_i, c_i, delta, gamma = inputs
        correction = rho_i * delta + gamma * c_i * correction_next  # v_t − V(x_t)
        return correction, None

    correction0, _ = jax.lax.scan(step, jnp.zeros((), rho.dtype), (rho_t, c_t, td, discounts), reverse=True)
    return values[0] + correction0


def taylor_expansion(log_ratios, rewards, values, discounts, *, order: int) -> jax.Array:
    r"""TayPO-K: the K-th order Taylor expansion of V^π around μ (Eq. 6 of Tang et al.).

    $$
    \hat{V}_K = G_0 + \sum _{k=1}^{K} \hat{U}_k, \qquad \hat{U}_k = \sum _t Γ_t d_t \hat{A}_t e_{k-1}(d_0, \dots , d_{t-1}),
    $$

    with d_t = ρ_t − 1, Â_t = G_t − V(x_t) (`stop_gradient`: a weight, never a path for θ), and e_j the
    elementary symmetric polynomials of the prefix d_0 … d_{t−1}. They are computed exactly by the
    recursion e_j ← e_j + d_t e_{j−1} (e_0 = 1) in one pass: O(T·K) time, no sub-sampling of index tuples.

    * K = 1: G_0 + Σ_t Γ_t d_t Â_t (TayPO-1; its derivatives at π = μ are LVC's, Rothfuss et al. 2019).
    * K = 2: G_0 + Σ_t Γ_t d_t Â_t (1 + Σ_{s<t} d_s) (TayPO-2, the paper's second-order estimator).
    * K ≥ T: Σ_j e_j = Π_{s<t}(1 + d_s), so V̂_K equals [`doubly_robust`][metagrad.ope.doubly_robust] exactly.

    On-policy, the derivatives of order m ≤ K are unbiased (Eq. 10); order m > K are biased.
    Off-policy the estimate is biased (Eq. 9) and keeps products of at most K ratio terms where DR keeps
    all of them; whether that lowers the variance is not shown here (on-policy, d_t = 0 and TayPO-K equals
    DR, so their variances are equal there).
    G_0 stands for Û_0 = V^μ(x_0): it is constant in θ and does not affect any derivative.

    References:
      - Tang, Valko, Munos. Taylor expansion policy optimization. ICML 2020.
      - Kakade, Langford. Approximately optimal approximate reinforcement learning. ICML 2002 (K = 1).
      - Tang et al. NeurIPS 2021, Eq. 6.

    Args:
      log_ratios, rewards, values, discounts: as in [`doubly_robust`][metagrad.ope.doubly_robust].
      order: K ≥ 1, a Python int (static under `jit`).

    Returns:
      The scalar estimate.
    """
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"`order` must be a Python integer K >= 1 (the Taylor order); got {order!r}.")
    order = int(order)
    log_ratios, rewards, values, discounts = _check_inputs(log_ratios, rewards, values, discounts)
    d = jnp.expm1(log_ratios)
    g = returns(rewards, values, discounts)
    advantages = jax.lax.stop_gradient(g - values[:-1])  # Â_t: a weight, not a path for θ
    weights = cumulative_discounts(discounts)[:-1] * advantages  # Γ_t Â_t

    def step(e, d_t):
        # e[j] = e_j(d_0 … d_{t−1}) for j = 0 … K−1; the step's factor is Σ_{k=1..K} e_{k−1}.
        factor = jnp.sum(e)
        e = e + d_t * jnp.concatenate([jnp.zeros((1,), e.dtype), e[:-1]])
        return e, factor

    e0 = jnp.zeros((order,), d.dtype).at[0].set(1.0)
    _, factors = jax.lax.scan(step, e0, d)
    return jax.lax.stop_gradient(g[0]) + jnp.sum(weights * d * factors)
