"""TRPO-MAML's outer step (Finn et al. 2017; ProMP's ``trpo_maml.py`` with its conjugate-gradient optimiser):
the Gauss–Newton Fisher-vector product of the mean post-update KL through the inner steps, and the update
(conjugate gradient, step to the KL radius, backtracking line search, :func:`metagrad.outer.trpo_step`).

Every function takes the :class:`~metagrad.maml.MAML` object of the run as ``maml`` (its policy, inner step and
objectives) and the meta-batch ``data`` (:class:`~metagrad.maml.TaskData` with a leading task axis).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metagrad import outer as outer_lib
from metagrad.maml.sampling import TaskData, observations


def post_kl(maml, old_adapted, adapted, data: TaskData):
    """mean_g mean_{n,t} KL(π_θ'_g,old ‖ π_θ'_g) on the post-update batches (leading task axis everywhere)."""
    kls = jax.vmap(lambda old, new, d: jnp.mean(maml.policy.kl(old, new, observations(d.post))))(
        old_adapted, adapted, data
    )
    return jnp.mean(kls)


def gauss_newton_fisher(maml, params, data: TaskData):
    """``(fvp, θ'_old)``: see :func:`fisher_vector_product`; θ'_old the adapted parameters (leading task axis)."""
    num_tasks = data.post.rewards.shape[0]
    # θ_0 = θ for every task: a task axis on the parameters, so each J_k acts on a per-task vector.
    theta = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_tasks,) + x.shape), params)
    steps = []
    for k in range(len(data.pre)):
        def step(thetas, k=k):
            return jax.vmap(lambda p, d: maml.inner_step(p, d.pre[k], d.pre_values[k]))(thetas, data)

        theta, linear = jax.linearize(step, theta)  # θ_{k+1} and w ↦ J_k w, linearised once at θ_k
        steps.append(linear)
    old_adapted = jax.lax.stop_gradient(theta)

    def kl_hessian_vector_product(w):
        return jax.jvp(jax.grad(lambda a: post_kl(maml, old_adapted, a, data)), (old_adapted,), (w,))[1]

    _, unravel = ravel_pytree(params)

    def fvp(v):
        w = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_tasks,) + x.shape), unravel(v))
        for linear in steps:  # J v = J_K ⋯ J_1 v
            w = linear(w)
        u = kl_hessian_vector_product(w)
        for linear in reversed(steps):  # Jᵀ u = J_1ᵀ ⋯ J_Kᵀ u = J_1 ⋯ J_K u (J_k symmetric)
            u = linear(u)
        return ravel_pytree(jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), u))[0]

    return fvp, old_adapted


def fisher_vector_product(maml, params, data: TaskData):
    """``v ↦ F v``, TRPO-MAML's Gauss–Newton Fisher-vector product at θ = θ_old, on flat vectors ``[P]``.

    F v = Σ_g J_gᵀ ∇²KL J_g v with KL = mean_g mean KL(π_θ'_g,old ‖ π_θ'_g) over the post-update batches
    (its Hessian in θ at θ_old: ∇KL = 0 there, so the second-order term of θ'(θ) drops) and
    J_g = ∂θ'_g/∂θ = J_K ⋯ J_1, J_k = I + η ∇²V̂_in(θ_k) the Jacobian of the inner step k of task g
    (``data`` has a leading task axis of size M). Each J_k is symmetric — the inner step adds η times
    ``jax.grad`` of a scalar, with every ``stop_gradient`` a constant in all derivatives (the same
    linearisation for both products), and J_k = I for ``fomaml`` — for every inner estimator and both
    objective forms, so Jᵀ u = J_1 ⋯ J_K u: forward mode only, each J_k linearised once at θ_k
    (``jax.linearize``, per task under ``vmap``) and applied once in each direction. ∇²KL w is
    forward-over-reverse at θ'_old. Shapes: v and F v ``[P]`` (flat θ); the tangents between are parameter
    pytrees with a leading task axis ``[M, …]``, summed over tasks at the end (Σ_g J_gᵀ u_g). (A custom policy
    whose ``log_prob`` cannot be differentiated forward, e.g. a ``custom_vjp``, is not supported; it never
    was: J v was already forward mode.)
    """
    return gauss_newton_fisher(maml, params, data)[0]


def trpo_update(maml, params, data: TaskData):
    """One TRPO-MAML step from θ = ``params``: returns ``(θ_new, meta-gradient, backtracks)``.

    Direction F⁻¹g by conjugate gradient on :func:`fisher_vector_product`, g = ∇ of ``maml.meta_objective``; step
    to the KL radius ``max_kl``; backtracking line search on ``maml.trpo_objective`` (off-policy at θ_old, E-MAML
    term included) under the post-update KL of :func:`post_kl` (:func:`metagrad.outer.trpo_step`).
    """
    config = maml.config
    flat, unravel = ravel_pytree(params)

    def objective(flat_params):  # the line search sees the E-MAML term too: trpo_objective
        return maml.trpo_objective(unravel(flat_params), data)

    fisher_vector_product, old_adapted = gauss_newton_fisher(maml, params, data)

    def kl(flat_params):  # adapted off-policy, as in trpo_objective
        p = unravel(flat_params)
        return post_kl(maml, old_adapted, jax.vmap(lambda d: maml.adapt(p, d, True)[0])(data), data)

    gradient = jax.grad(lambda f: maml.meta_objective(unravel(f), data))(flat)
    new_flat, index = outer_lib.trpo_step(
        flat, gradient, fisher_vector_product, objective, kl,
        max_kl=config.max_kl, cg_iterations=config.cg_iterations, damping=config.cg_damping,
        backtrack_steps=config.backtrack_steps, backtrack_ratio=config.backtrack_ratio,
    )
    return unravel(new_flat), gradient, index
