"""Critics for the meta-RL loop: values V(x_t) for t = 0..T of a batch, always outside the θ-graph.

A critic here is a function `critic(trajectories, gamma, *, task, policy, params) -> values [N, T+1]`
(V(x_T) is the bootstrap value). Its output is wrapped in `jax.lax.stop_gradient`: a critic is a
weight in every estimator, never a path for θ (paper-notes §3). Three kinds (`CRITICS`):

* `"none"` — V ≡ 0 (the estimators then use Monte Carlo returns; IS / DiCE without baseline).
* `"linear"` — the LinearFeatureBaseline of rllab / MAML / ProMP, fitted per task by ridge regression
  of the discounted returns-to-go G_t on the features
  φ(x, t) = [clip(x, −10, 10), clip(x, −10, 10)², t/100, (t/100)², (t/100)³, 1],
  w = lstsq(ΦᵀΦ + c I, ΦᵀG) over the valid (n, t) steps with c = `reg_coeff` = 10⁻⁵, and c ← 10c (up to
  five tries) while w has a NaN — ProMP's `LinearBaseline.fit`
  (`meta_policy_search/baselines/linear_baseline.py`), fitted per task on the batch it then predicts.
  The horizon is part of the task (episodic), so V(x_T) = 0: no bootstrap.
* `"exact"` — for tabular tasks, the true values V^π(x) of the policy that sampled the batch
  ([`metagrad.mdp.policy_evaluation`][metagrad.mdp.policy_evaluation]), indexed by state; V(x_T) bootstraps the truncated tail.

References:
  - Duan et al. Benchmarking deep RL for continuous control (rllab's LinearFeatureBaseline), ICML 2016.
  - Rothfuss et al. ProMP: Proximal meta-policy search, ICLR 2019.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metagrad.mdp import TabularMDP, policy_evaluation
from metagrad.rollout import Trajectories

#: The critic kinds accepted by :func:`make_critic` and :class:`metagrad.maml.MAMLConfig`.
CRITICS = ("none", "linear", "exact")


def discounted_returns(rewards: jax.Array, discounts: jax.Array, bootstrap: jax.Array) -> jax.Array:
    """G_t = r_t + γ_t G_{t+1}, G_T = `bootstrap`; `rewards, discounts [T]`, `bootstrap []` → `[T]`.

    A backward `lax.scan` (batch it with `jax.vmap`).
    """

    def step(g_next, inputs):
        r, d = inputs
        g = r + d * g_next
        return g, g

    _, returns = jax.lax.scan(step, bootstrap, (rewards, discounts), reverse=True)
    return returns


def linear_features(observations: jax.Array) -> jax.Array:
    """φ(x_t, t) for `observations [N, T+1, D]` → `[N, T+1, 2D + 4]` (t = 0..T)."""
    obs = jnp.clip(observations, -10.0, 10.0)
    steps = observations.shape[1]
    t = (jnp.arange(steps, dtype=obs.dtype) / 100.0)[None, :, None]
    t = jnp.broadcast_to(t, obs.shape[:2] + (1,))
    return jnp.concatenate([obs, obs**2, t, t**2, t**3, jnp.ones_like(t)], axis=-1)


def linear_feature_baseline(trajectories: Trajectories, gamma, *, reg_coeff: float = 1e-5) -> jax.Array:
    """Fit the LinearFeatureBaseline on one task's batch and return its values `[N, T+1]` (V(x_T) = 0).

    ProMP's fit (`LinearBaseline.fit`): the features Φ of the valid (non-padding) steps and their discounted
    returns-to-go G (no bootstrap), w = lstsq(ΦᵀΦ + c I, ΦᵀG) (least squares with singular values below machine
    precision cut, numpy's `rcond=-1`) with c = `reg_coeff`; if w has a NaN, c ← 10 c and solve again, at most
    five solves in all. Padding steps are zero rows of Φ, so they add nothing to ΦᵀΦ or ΦᵀG (ProMP concatenates
    the valid steps of its paths). The ridge c is absolute, as in ProMP: it matters only when ΦᵀΦ is nearly
    singular.

    Args:
      trajectories: a batch with `observations [N, T+1, D]` (float) or state indices `[N, T+1]` for one task.
      gamma: the discount.
      reg_coeff: ProMP's `reg_coeff` (its default 1e-5).
    """
    obs = trajectories.observations
    if obs.ndim == 2:
        obs = obs[..., None].astype(trajectories.rewards.dtype)
    discounts = trajectories.discounts(gamma)
    returns = jax.vmap(discounted_returns)(
        trajectories.rewards, discounts, jnp.zeros(trajectories.rewards.shape[:1], trajectories.rewards.dtype)
    )
    features = linear_features(obs)
    mask = trajectories.mask()[..., None]
    phi = (features[:, :-1] * mask).reshape(-1, features.shape[-1])
    y = (returns * mask[..., 0]).reshape(-1)
    with jax.default_matmul_precision("highest"):
        gram, target = phi.T @ phi, phi.T @ y
        eye = jnp.eye(gram.shape[0], dtype=gram.dtype)
        rcond = jnp.finfo(gram.dtype).eps

        def solve(carry):
            tries, coeff, _ = carry
            return tries + 1, coeff * 10.0, jnp.linalg.lstsq(gram + coeff * eye, target, rcond=rcond)[0]

        def retry(carry):
            tries, _, w = carry
            return (tries == 0) | (jnp.any(jnp.isnan(w)) & (tries < 5))

        start = (jnp.asarray(0), jnp.asarray(reg_coeff, gram.dtype), jnp.zeros_like(target))
        w = jax.lax.while_loop(retry, solve, start)[2]
        values = features @ w
    values = values.at[:, -1].set(0.0)
    return jax.lax.stop_gradient(values)


def exact_values(trajectories: Trajectories, task: TabularMDP, probabilities: jax.Array) -> jax.Array:
    """V^π(x_t) for `observations [N, T+1]` (state indices) with π = `probabilities [S, A]`."""
    v, _ = policy_evaluation(task, jax.lax.stop_gradient(probabilities))
    return jax.lax.stop_gradient(v[trajectories.observations])


def make_critic(kind: str, *, reg_coeff: float = 1e-5):
    """`critic(trajectories, gamma, *, task, policy, params) -> values [N, T+1]` for a kind in `CRITICS`.

    `policy` and `params` (the policy that sampled the batch) are only used by `"exact"`, which needs a
    [`TabularSoftmax`][metagrad.policies.TabularSoftmax] policy and a [`TabularMDP`][metagrad.mdp.TabularMDP] task.
    """
    if kind not in CRITICS:
        raise ValueError(f"Unknown critic {kind!r}; valid critics are {list(CRITICS)}.")

    def critic(trajectories: Trajectories, gamma, *, task=None, policy=None, params=None) -> jax.Array:
        if kind == "none":
            shape = trajectories.rewards.shape[:1] + (trajectories.rewards.shape[1] + 1,)
            return jnp.zeros(shape, trajectories.rewards.dtype)
        if kind == "linear":
            return linear_feature_baseline(trajectories, gamma, reg_coeff=reg_coeff)
        if not isinstance(task, TabularMDP):
            raise ValueError("The 'exact' critic needs tabular tasks (a metagrad.mdp.TabularMDP).")
        probabilities = jax.nn.softmax(jax.lax.stop_gradient(params), axis=-1)
        return exact_values(trajectories, task, probabilities)

    return critic
