"""TRPO-MAML's outer step (Finn et al. 2017; ProMP's `trpo_maml.py` with its conjugate-gradient optimiser):
the Gauss–Newton Fisher-vector product of the mean post-update KL through the inner steps, and the update
(conjugate gradient, step to the KL radius, backtracking line search, [`metagrad.outer.trpo_step`][metagrad.outer.trpo_step]).

Every function takes the [`MAML`][metagrad.maml.loop.MAML] object of the run as `maml` (its policy, inner step and
objectives) and the meta-batch `data` ([`TaskData`][metagrad.maml.sampling.TaskData] with a leading task axis).

Cost. A TRPO step takes `cg_iterations` Fisher-vector products, so everything a product needs that does not
depend on the vector is computed once per step ([`gauss_newton_fisher`][metagrad.maml.trpo.gauss_newton_fisher]): the inner steps are linearised
(`jax.linearize`) and so is the map from θ' to the action distributions' parameters on the post-update batch
(policies whose `apply` returns a distribution of [`metagrad.policies`][metagrad.policies]) — each product is then linear passes
only, F v = Σ_g J_gᵀ J_out,gᵀ M J_out,g J_g v with M the Fisher of the action distribution in its own parameters.
The meta-gradient reuses the same linearised inner steps, and the line search takes its base objective from θ'_old
(one adaptation fewer). Measured (`benchmarks/maml.py`, docs/performance.md): the two inner-step products per CG
iteration dominate, and the step stays about 5× a PG meta-iteration — ten exact products over the whole meta-batch
cost that much. Applying Jᵀ with `jax.linear_transpose` of the linearised step instead of J (symmetric) was
measured 33 % slower per product, so it is not used. The opt-in `MAMLConfig.cg_subsample` (ProMP's
`subsample_factor`; default 1, exact) takes the CG's products on a fraction of the tasks
([`cg_subset`][metagrad.maml.trpo.cg_subset]).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from metagrad import outer as outer_lib
from metagrad.maml.sampling import TaskData, observations


def _mean_over_samples(per_sample, data: TaskData):
    """mean_g (Σ_{n,t} m_t x_t / Σ m_t) of a per-sample quantity x `[M, N, T]` over the valid post-update steps
    (m = `data.post.mask()`): the average the TRPO KL constraint takes."""
    return jnp.mean(jax.vmap(outer_lib.masked_mean)(per_sample, data.post.mask()))


def post_kl(maml, old_adapted, adapted, data: TaskData):
    """mean_g KL_g on the post-update batches (leading task axis everywhere), KL_g = Σ_{n,t} m_t KL_t / Σ m_t the mean
    of KL(π_θ'_g,old(·|x_t) ‖ π_θ'_g(·|x_t)) over the *valid* steps (m = `data.post.mask()`: padding after a
    termination excluded; ProMP's `reduce_mean` over its stacked paths). The Fisher-vector product and the line
    search's KL average the same way (`_mean_over_samples`), so both see the valid steps only."""
    kls = jax.vmap(lambda old, new, d: maml.policy.kl(old, new, observations(d.post)))(old_adapted, adapted, data)
    return _mean_over_samples(kls, data)


def _distribution_outputs(policy, params, obs):
    """`policy.apply(params, obs)` when it returns a distribution that is a pytree of arrays (the distributions of
    [`metagrad.policies`][metagrad.policies]), else `None` (a policy without `apply`, or an opaque distribution object)."""
    if not callable(getattr(policy, "apply", None)):
        return None
    try:
        jax.eval_shape(policy.apply, params, obs)
    except TypeError:  # the distribution is not a pytree
        return None
    return policy.apply


def _kl_hessian(maml, old_adapted, data: TaskData):
    """`w ↦ ∇²_θ' KL w` at θ'_old (tangents with a leading task axis), linearised once.

    Output space when the policy's `apply` returns a distribution pytree ([`metagrad.policies`][metagrad.policies]):
    ∇²KL = J_outᵀ M J_out exactly at θ'_old (the gradient of the KL in the distribution's parameters vanishes there,
    so the network's curvature drops), J_out the Jacobian of the post-batch distribution parameters in θ'
    (`jax.linearize`, transposed with `jax.linear_transpose`) and M the Hessian of the averaged KL in those
    parameters — the distribution's Fisher (diagonal Gaussian: 1/σ² on the mean, 2 on log σ), per valid sample
    and divided by the valid-sample count — from `jax.linearize` of the gradient of the distribution's own `kl`.
    Otherwise the gradient of the KL in θ' is linearised at θ'_old (forward-over-reverse, linearised once).
    """
    obs = jax.vmap(lambda d: observations(d.post))(data)
    first = jax.tree_util.tree_map(lambda x: x[0], (old_adapted, obs))
    apply = _distribution_outputs(maml.policy, *first)
    if apply is None:
        kl_gradient = jax.grad(lambda a: post_kl(maml, old_adapted, a, data))
        return jax.linearize(kl_gradient, old_adapted)[1]
    old_outputs, jacobian = jax.linearize(lambda a: jax.vmap(apply)(a, obs), old_adapted)
    jacobian_transpose = jax.linear_transpose(jacobian, old_adapted)
    reference = jax.lax.stop_gradient(old_outputs)
    kl_gradient = jax.grad(lambda out: _mean_over_samples(jax.vmap(lambda a, b: a.kl(b))(reference, out), data))
    fisher = jax.linearize(kl_gradient, old_outputs)[1]
    return lambda w: jacobian_transpose(fisher(jacobian(w)))[0]


def gauss_newton_fisher(maml, params, data: TaskData):
    """`(fvp, θ'_old, Jᵀ)`: see [`fisher_vector_product`][metagrad.maml.trpo.fisher_vector_product]; θ'_old the adapted parameters (leading task axis),
    Jᵀ the map from per-task tangents at θ'_old `[M, …]` to Σ_g J_gᵀ u_g (a parameter pytree)."""
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
    kl_hessian = _kl_hessian(maml, old_adapted, data)
    _, unravel = ravel_pytree(params)

    def transpose(u):  # Σ_g J_gᵀ u_g, J_gᵀ = J_1ᵀ ⋯ J_Kᵀ = J_1 ⋯ J_K (each J_k symmetric)
        for linear in reversed(steps):
            u = linear(u)
        return jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), u)

    def fvp(v):
        w = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_tasks,) + x.shape), unravel(v))
        for linear in steps:  # J v = J_K ⋯ J_1 v
            w = linear(w)
        return ravel_pytree(transpose(kl_hessian(w)))[0]

    return fvp, old_adapted, transpose


def cg_subset(data: TaskData, fraction: float) -> TaskData:
    """The ⌈`fraction`·M⌉ tasks at evenly spaced indices ⌊i·M/m⌋ of the meta-batch `data` (leading task axis M):
    the tasks of the opt-in subsampled Fisher-vector product (`MAMLConfig.cg_subsample`)."""
    num_tasks = data.post.rewards.shape[0]
    m = max(1, math.ceil(fraction * num_tasks - 1e-9))
    index = (np.arange(m) * num_tasks) // m
    return jax.tree_util.tree_map(lambda x: x[index], data)


def fisher_vector_product(maml, params, data: TaskData):
    """`v ↦ F v`, TRPO-MAML's Gauss–Newton Fisher-vector product at θ = θ_old, on flat vectors `[P]`.

    F v = Σ_g J_gᵀ ∇²KL J_g v with KL = mean_g mean KL(π_θ'_g,old ‖ π_θ'_g) over the post-update batches
    (its Hessian in θ at θ_old: ∇KL = 0 there, so the second-order term of θ'(θ) drops) and
    J_g = ∂θ'_g/∂θ = J_K ⋯ J_1, J_k = I + η ∇²V̂_in(θ_k) the Jacobian of the inner step k of task g
    (`data` has a leading task axis of size M). Each J_k is symmetric — the inner step adds η times
    `jax.grad` of a scalar, with every `stop_gradient` a constant in all derivatives (the same
    linearisation for both products), and J_k = I for `fomaml` — for every inner estimator and both
    objective forms, so Jᵀ u = J_1 ⋯ J_K u: forward mode only, each J_k linearised once at θ_k
    (`jax.linearize`, per task under `vmap`) and applied once in each direction. ∇²KL w is the output-space
    Gauss–Newton product J_outᵀ M J_out w (exact at θ'_old; a forward-over-reverse product linearised once for
    a policy without a distribution pytree), see `_kl_hessian`. Shapes: v and F v `[P]` (flat
    θ); the tangents between are parameter pytrees with a leading task axis `[M, …]`, summed over tasks at the
    end (Σ_g J_gᵀ u_g). (A custom policy whose `log_prob` cannot be differentiated forward, e.g. a
    `custom_vjp`, is not supported; it never was: J v was already forward mode.)
    """
    return gauss_newton_fisher(maml, params, data)[0]


def meta_gradient(maml, params, data: TaskData, old_adapted, transpose):
    """∇_θ of `maml.meta_objective` from the linearised inner steps: (1/M) Σ_g J_gᵀ ∇J_out(θ'_g) + ∇(E-MAML term).

    `old_adapted` and `transpose` from [`gauss_newton_fisher`][metagrad.maml.trpo.gauss_newton_fisher]; equals `jax.grad(maml.meta_objective)`
    up to rounding, without a second reverse pass through the inner steps.
    """
    num_tasks = data.post.rewards.shape[0]
    outer = jax.vmap(jax.grad(lambda a, d: maml.outer_surrogate(a, d.post, d.post_values)))(old_adapted, data)
    gradient = transpose(jax.tree_util.tree_map(lambda x: x / num_tasks, outer))
    extra = jax.grad(maml.emaml_term)(params, data)
    return jax.tree_util.tree_map(jnp.add, gradient, extra)


def trpo_update(maml, params, data: TaskData):
    """One TRPO-MAML step from θ = `params`: returns `(θ_new, meta-gradient, backtracks)`.

    Direction F⁻¹g by conjugate gradient on [`fisher_vector_product`][metagrad.maml.trpo.fisher_vector_product] (on the
    tasks of [`cg_subset`][metagrad.maml.trpo.cg_subset] when `cg_subsample` < 1), g = ∇ of `maml.meta_objective`
    ([`meta_gradient`][metagrad.maml.trpo.meta_gradient]); step to the KL radius `max_kl`; backtracking line search on `maml.trpo_objective`
    (off-policy at θ_old, E-MAML term included) under the post-update KL of [`post_kl`][metagrad.maml.trpo.post_kl], both from one
    adaptation per candidate ([`metagrad.outer.trpo_step`][metagrad.outer.trpo_step]).
    """
    config = maml.config
    flat, unravel = ravel_pytree(params)
    fisher_vector_product, old_adapted, transpose = gauss_newton_fisher(maml, params, data)
    if config.cg_subsample < 1:  # opt-in: the CG's Fisher on ⌈f·M⌉ evenly spaced tasks (MAMLConfig.cg_subsample)
        fisher_vector_product = gauss_newton_fisher(maml, params, cg_subset(data, config.cg_subsample))[0]

    def objective_and_kl(flat_params):  # adapted off-policy once, as in maml.trpo_objective
        p = unravel(flat_params)
        adapted = jax.vmap(lambda d: maml.adapt(p, d, True)[0])(data)
        per_task = jax.vmap(lambda a, d: maml.outer_surrogate(a, d.post, d.post_values, d.post_log_probs))(
            adapted, data)
        value = jnp.mean(per_task) + maml.emaml_term(p, data)
        return value, post_kl(maml, old_adapted, adapted, data)

    gradient = ravel_pytree(meta_gradient(maml, params, data, old_adapted, transpose))[0]
    # The objective at θ_old from θ'_old (its off-policy form equals the on-policy one there): no re-adaptation.
    base = jnp.mean(jax.vmap(lambda a, d: maml.outer_surrogate(a, d.post, d.post_values, d.post_log_probs))(
        old_adapted, data)) + maml.emaml_term(params, data)
    new_flat, index = outer_lib.trpo_step(
        flat, gradient, fisher_vector_product, objective_and_kl,
        max_kl=config.max_kl, cg_iterations=config.cg_iterations, damping=config.cg_damping,
        backtrack_steps=config.backtrack_steps, backtrack_ratio=config.backtrack_ratio, base=base,
    )
    return unravel(new_flat), unravel(gradient), index
