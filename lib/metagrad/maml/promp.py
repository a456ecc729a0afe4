"""ProMP's outer step (Rothfuss et al. 2019, `meta_policy_search/meta_algos/pro_mp.py`): `promp_steps`
optimiser steps on the same meta-batch of the clipped post-update objective minus a fixed KL penalty β on the
inner-step policies. After the first step the inner surrogates are off-policy, μ = π_θk^old (their OPE form).

Every function takes the [`MAML`][metagrad.maml.loop.MAML] object of the run as `maml` and the meta-batch `data`
([`TaskData`][metagrad.maml.sampling.TaskData] with a leading task axis).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from metagrad import outer as outer_lib
from metagrad.maml.sampling import TaskData, observations


def promp_objective(maml, params, old_params, data: TaskData):
    """ProMP's outer objective at θ = `params` (to maximise): mean_g J^CLIP_g(θ'_g(θ)) − β · KL term.

    θ'_g(θ) adapted with the off-policy inner surrogates (μ = π_θk^old, recorded in `data`); the KL term compares
    each inner-step policy π_θk with π_θk^old (θ^old = `old_params`, stop-gradient) on the batch D_k.
    `objective="promp"`: `pro_mp.py`'s form — reduce_mean of the clipped ratio · normalised advantage and
    β · mean_k KL_k; `"paper"`: the PPO clip weighted by Γ_t Â_t and β · Σ_k KL_k Every KL_k is the mean over
    the valid steps of D_k (padding after a termination excluded).
    """
    config = maml.config

    def per_task(d):
        adapted, thetas = maml.adapt(params, d, off_policy=True)
        log_pi = maml.policy.log_prob(adapted, observations(d.post), d.post.actions)
        _, old_thetas = maml.adapt(old_params, d)
        if config.objective == "promp":
            # pro_mp.py: -reduce_mean(clipped) + reduce_mean(β_k · mean_g KL_k), KL over all valid samples.
            adv = outer_lib.normalized_advantages(d.post, d.post_values, config.gamma)
            clip = outer_lib.promp_clip_objective(log_pi, d.post_log_probs, adv, d.post.mask(), config.clip_eps)
            kls = [outer_lib.masked_mean(maml.policy.kl(jax.lax.stop_gradient(old), theta, observations(b)),
                                         b.mask()) for theta, old, b in zip(thetas, old_thetas, d.pre)]
            return clip - config.kl_coef * (jnp.mean(jnp.stack(kls)) if kls else 0.0)
        adv = outer_lib.advantages(d.post, d.post_values, config.gamma)
        weights = outer_lib.cumulative_discounts(d.post, config.gamma) * d.post.mask()
        if d.post.valid is not None:  # sampling="steps": mean over the valid episodes, not over the rows
            weights = weights * (d.post.rewards.shape[0] * d.post.weights())[:, None]
        clip = outer_lib.ppo_clip_objective(log_pi, d.post_log_probs, adv, weights, config.clip_eps)
        kl = 0.0
        for theta, old_theta, batch in zip(thetas, old_thetas, d.pre):
            kl_t = maml.policy.kl(jax.lax.stop_gradient(old_theta), theta, observations(batch))
            kl = kl + outer_lib.masked_mean(kl_t, batch.mask())
        return clip - config.kl_coef * kl

    return jnp.mean(jax.vmap(per_task)(data))


def promp_update(maml, params, opt_state, data: TaskData):
    """`maml.config.promp_steps` steps of `maml.optimizer` ascending [`promp_objective`][metagrad.maml.promp.promp_objective] from θ_old =
    `params`; returns `(params, opt_state, ‖g_0‖)` with g_0 the first step's gradient, taken at θ_old where the
    clipped objective's gradient is the meta-gradient."""
    old_params = params

    def step(carry, _):
        p, s = carry
        g = jax.grad(lambda q: promp_objective(maml, q, old_params, data))(p)
        updates, s = maml.optimizer.update(jax.tree_util.tree_map(jnp.negative, g), s, p)
        return (optax.apply_updates(p, updates), s), optax.tree.norm(g)

    (params, opt_state), norms = jax.lax.scan(step, (params, opt_state), None, length=maml.config.promp_steps)
    return params, opt_state, norms[0]
