r"""Batch-mean derivative estimates for tabular softmax policies by the chain rule through log π.

Every estimator of the library is a per-trajectory function f(ℓ_0, …, ℓ_{T−1}) of the log-probabilities
ℓ_t = log π_θ(a_t|x_t) (everything else — rewards, critic values, behaviour log-probabilities — is constant
in θ). For a tabular softmax policy ℓ_t = θ[x_t, a_t] − logsumexp θ[x_t, :], so with P = S·A parameters

$$
\nabla _θ \ell _t \qquad = e_{k_t}^\top  M, \qquad k_t = (x_t, a_t),  M[(x,a),(y,b)] = [x = y]([a = b] - π(b|x)),
$$

$$
\nabla ^2_θ \ell _t  = -\nabla ^2 \mathrm{lse}(θ[x_t]), \qquad \nabla ^3_θ \ell _t = -\nabla ^3 \mathrm{lse}(θ[x_t])  (\text{ blocks on the state } x_t \mathrm{only}).
$$

By Faà di Bruno, with g = ∂f/∂ℓ, H = ∂²f/∂ℓ², T₃ = ∂³f/∂ℓ³ (per trajectory, by autodiff in ℓ — T inputs
instead of P) and the batch weights w_i,

$$
\nabla _θ F \qquad = M^\top  C_1, \qquad C_1 = \sum _i w_i \sum _t g_t e_{k_t}
$$

$$
\nabla ^2_θ F  = M^\top  C_2 M + \sum _x n_x \nabla ^2\ell _x, \qquad C_2 = \sum _i w_i \sum _{s,t} H[s,t] e_{k_s} e_{k_t}^\top ,  n_x = \sum _a C_1[x, a]
$$

$$
\nabla ^3_θ F  = C_3 \times _1M \times _2M \times _3M + \sum _{3 \mathrm{placements}} \sum _x \nabla ^2\ell _x \otimes  (B M)[x] + \sum _x n_x \nabla ^3\ell _x,
$$

$$
C_3 = \sum _i w_i \sum _{s,t,u} T_3[s,t,u] e_{k_s}\otimes e_{k_t}\otimes e_{k_u},  B[x] = \sum _i w_i \sum _{s,t} H[s,t] [x_s = x] e_{k_t}.
$$

This is exactly the derivative that `jax.hessian` of the batch-mean surrogate returns (the tests check it
to float precision), but it costs O(N·T²) scatter work plus two P×P matmuls instead of P forward passes
over the whole batch — the difference between seconds and milliseconds for the paper's Figure 1.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

#: A per-trajectory objective: ``fn(log_pi [T], *per_trajectory_args) -> scalar``.
TrajectoryFn = Callable[..., jax.Array]

_PRECISION = "highest"


def log_policy(logits: jax.Array, states: jax.Array, actions: jax.Array) -> jax.Array:
    """ℓ[n, t] = log softmax(θ[x_{n,t}])[a_{n,t}] for integer `states`/`actions` of equal shape."""
    return jax.nn.log_softmax(logits, axis=-1)[states, actions]


def _log_partition_derivatives(logits: jax.Array, order: int) -> list[jax.Array]:
    """Per-state derivatives of logsumexp: orders 2..`order`, shapes `[S, A, A]`, `[S, A, A, A]`."""
    lse = jax.nn.logsumexp
    out, fn = [], jax.grad(lse)
    for _ in range(order - 1):
        fn = jax.jacfwd(fn)
        out.append(jax.vmap(fn)(logits))
    return out


def _per_trajectory_derivatives(fn, log_pi, args, order):
    """Derivatives of fn in log_pi for each trajectory: `[N, T]`, `[N, T, T]`, `[N, T, T, T]`."""
    derivs, d = [], jax.grad(fn)
    derivs.append(d)
    for _ in range(order - 1):
        d = jax.jacfwd(d)
        derivs.append(d)
    return [jax.vmap(d)(log_pi, *args) for d in derivs]


def derivatives(
    fn: TrajectoryFn,
    logits: jax.Array,
    states: jax.Array,
    actions: jax.Array,
    args: tuple[Any, ...] = (),
    *,
    weights: jax.Array | None = None,
    order: int = 2,
) -> tuple[jax.Array, ...]:
    """∇^k_θ Σ_i w_i fn(ℓ_i, *args_i) for k = 1..`order` (≤ 3), tabular softmax logits θ.

    Args:
      fn: the per-trajectory objective `fn(log_pi [T], *args_i) -> scalar`; θ enters only through
        `log_pi` (stop-gradients inside `fn` are honoured, so on-policy estimators work).
      logits (array of shape [S, A]): softmax logits θ.
      states, actions: `[N, T]` integer indices of the visited state-action pairs (checked by the caller).
      args: per-trajectory arrays with leading axis N, passed to `fn` after `log_pi`.
      weights (array of shape [N]): batch weights (default 1/N: the batch mean), or `[K, N]` for K weightings of the
        same per-trajectory derivatives (e.g. batch means over prefixes of several sizes); the outputs
        then have a leading axis K.
      order: highest derivative order, 1, 2 or 3.

    Returns:
      `(gradient [S, A], hessian [S, A, S, A], third [S, A, S, A, S, A])` up to `order`.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"`order` must be 1, 2 or 3 for the chain-rule assembly; got {order!r}.")
    n = states.shape[0]
    if weights is None:
        weights = jnp.full((n,), 1.0 / n, logits.dtype)
    with jax.default_matmul_precision(_PRECISION):
        log_pi = log_policy(logits, states, actions)
        per_traj = _per_trajectory_derivatives(fn, log_pi, args, order)
        assemble = lambda w: assemble_derivatives(per_traj, logits, states, actions, w)  # noqa: E731
        if weights.ndim == 1:
            return assemble(weights)
        if weights.shape[0] == 1:  # one weighting: no vmap over rows (its batched scatters cost about a third more)
            return tuple(d[None] for d in assemble(weights[0]))
        return jax.vmap(assemble)(weights)


def assemble_derivatives(per_traj, logits, states, actions, weights) -> tuple[jax.Array, ...]:
    """The θ-space derivatives from per-trajectory derivatives in ℓ (see the module docstring).

    Args:
      per_traj: `[g [N, T], H [N, T, T], (T₃ [N, T, T, T])]`, derivatives of each trajectory's objective
        with respect to its log-probabilities ℓ_0..ℓ_{T−1}.
      logits, states, actions, weights: as in [`derivatives`][metagrad.tabular.derivatives] (`weights [N]`).
    """
    order = len(per_traj)
    num_states, num_actions = logits.shape
    num_params = num_states * num_actions
    dtype = logits.dtype
    with jax.default_matmul_precision(_PRECISION):
        pi = jax.nn.softmax(logits, axis=-1)
        k = states * num_actions + actions  # [N, T] flat parameter index of (x_t, a_t)
        # M[(x,a),(y,b)] = [x=y]([a=b] − π(b|x)); ∇_θ ℓ_t is row k_t of M.
        eye_s = jnp.eye(num_states, dtype=dtype)
        pi_rows = jnp.einsum("xy,yb,a->xayb", eye_s, pi, jnp.ones(num_actions, dtype))
        m = jnp.eye(num_params, dtype=dtype) - pi_rows.reshape(num_params, num_params)

        g = weights[:, None] * per_traj[0]
        c1 = jnp.zeros(num_params, dtype).at[k.ravel()].add(g.ravel())
        grad = (c1 @ m).reshape(num_states, num_actions)
        out = [grad]
        if order == 1:
            return tuple(out)

        lse_derivs = _log_partition_derivatives(logits, order)
        visits = c1.reshape(num_states, num_actions).sum(-1)  # n_x = Σ_i w_i Σ_{t: x_t = x} g_t
        h = weights[:, None, None] * per_traj[1]
        pair = k[:, :, None] * num_params + k[:, None, :]  # [N, T, T]
        c2 = jnp.zeros(num_params * num_params, dtype).at[pair.ravel()].add(h.ravel()).reshape(num_params, num_params)
        hess = m.T @ c2 @ m
        hess = hess.reshape(num_states, num_actions, num_states, num_actions)
        hess = hess - jnp.einsum("x,xy,xab->xayb", visits, eye_s, lse_derivs[0])
        out.append(hess)
        if order == 2:
            return tuple(out)

        t3 = weights[:, None, None, None] * per_traj[2]
        triple = (k[:, :, None, None] * num_params + k[:, None, :, None]) * num_params + k[:, None, None, :]
        c3 = jnp.zeros(num_params**3, dtype).at[triple.ravel()].add(t3.ravel()).reshape((num_params,) * 3)
        third = jnp.einsum("ijk,ia->ajk", c3, m)
        third = jnp.einsum("ajk,jb->abk", third, m)
        third = jnp.einsum("abk,kc->abc", third, m)
        shape6 = (num_states, num_actions) * 3
        third = third.reshape(shape6)
        # Σ_{s,t} H[s,t] ∇²ℓ_s ⊗ ∇ℓ_t, in its three index placements; ∇²ℓ_s = −∇²lse at x_s.
        state_pair = states[:, :, None] * num_params + k[:, None, :]  # [N, T, T]: (x_s, k_t)
        b = jnp.zeros(num_states * num_params, dtype).at[state_pair.ravel()].add(h.ravel())
        bm = (b.reshape(num_states, num_params) @ m).reshape(num_states, num_states, num_actions)  # [x, y, c]
        block = -jnp.einsum("xab,xyc->xabyc", lse_derivs[0], bm)  # (x,a),(x,b),(y,c)
        term = jnp.einsum("xz,xabyc->xazbyc", eye_s, block)  # place the block on the diagonal (x, x)
        third = third + term + jnp.transpose(term, (0, 1, 4, 5, 2, 3)) + jnp.transpose(term, (4, 5, 0, 1, 2, 3))
        diag3 = jnp.einsum("x,xy,xz->xyz", visits, eye_s, eye_s)
        third = third - jnp.einsum("xyz,xabc->xaybzc", diag3, lse_derivs[1])
        out.append(third)
        return tuple(out)
