"""Tabular Markov decision processes and exact policy evaluation.

A tabular MDP is the pytree [`TabularMDP`][metagrad.mdp.TabularMDP] with

* `transitions [S, A, S]`: P(x' | x, a),
* `rewards [S, A]`: r(x, a),
* `initial [S]`: the start-state distribution p_0(x),
* `gamma []`: the discount γ ∈ [0, 1).

For a policy π given as a table `[S, A]` the exact values solve the Bellman equations
V^π = r^π + γ P^π V^π, i.e. V^π = (I − γ P^π)⁻¹ r^π, with P^π(x'|x) = Σ_a π(a|x) P(x'|x, a) and
r^π(x) = Σ_a π(a|x) r(x, a). This module provides that solve and the discounted occupancy; the
derivatives with respect to softmax logits live in [`metagrad.exact`][metagrad.exact].

The tabular setting of Tang et al. (2021), Sec. 5 (as in the authors' released code): 20 states,
5 actions, Dirichlet(0.001) transition rows, rewards U[0, 1), start state 0, γ = 0.8. The paper's
text says 10 states. [`random_mdp`][metagrad.mdp.random_mdp] reproduces both.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metagrad._validation import check_discount, check_finite, is_concrete

#: Absolute tolerance on the row sums of ``transitions`` and on the sum of ``initial``.
PROBABILITY_ATOL = 1e-5

# Precision for the linear solves: on GPUs JAX may otherwise use reduced-precision (TF32) matmuls.
_PRECISION = "highest"


@jax.tree_util.register_pytree_node_class
class TabularMDP:
    """A finite MDP as a JAX pytree (all four fields are leaves, so `jax.vmap` over tasks works).

    Calling `TabularMDP(transitions, rewards, initial, gamma)` validates concrete inputs and raises a
    `ValueError` naming the argument: shapes agree (`transitions [S, A, S]`, `rewards [S, A]`,
    `initial [S]`, scalar `gamma`); probabilities are non-negative and sum to 1 within
    `PROBABILITY_ATOL`; `0 <= gamma < 1`; rewards are finite. Value checks are skipped for
    traced arguments (inside `jit`/`vmap`); [`unchecked`][metagrad.mdp.TabularMDP.unchecked] skips all checks.

    Args:
      transitions (array of shape [S, A, S]): transition probabilities P(x'|x, a).
      rewards (array of shape [S, A]): expected rewards r(x, a).
      initial (array of shape [S]): start-state distribution.
      gamma: discount factor, a scalar in [0, 1).

    Examples:
      >>> mdp = TabularMDP(jnp.ones((2, 1, 2)) / 2, jnp.zeros((2, 1)), jnp.array([1.0, 0.0]), 0.9)
      >>> mdp.num_states, mdp.num_actions
      (2, 1)
    """

    __slots__ = ("transitions", "rewards", "initial", "gamma")

    def __init__(self, transitions, rewards, initial, gamma):
        transitions, rewards, initial, gamma = (
            _as_float(transitions),
            _as_float(rewards),
            _as_float(initial),
            _as_float(gamma),
        )
        _validate(transitions, rewards, initial, gamma)
        self._set(transitions, rewards, initial, gamma)

    def _set(self, transitions, rewards, initial, gamma):
        object.__setattr__(self, "transitions", transitions)
        object.__setattr__(self, "rewards", rewards)
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "gamma", gamma)

    def __setattr__(self, name, value):
        raise AttributeError("TabularMDP is immutable; use `_replace(...)`.")

    @classmethod
    def unchecked(cls, transitions, rewards, initial, gamma) -> "TabularMDP":
        """Build without any validation or conversion (for traced code and internal use)."""
        mdp = object.__new__(cls)
        mdp._set(transitions, rewards, initial, gamma)
        return mdp

    def _replace(self, **fields) -> "TabularMDP":
        """A copy with some fields replaced (validated like the constructor)."""
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(fields)
        return TabularMDP(**values)

    def tree_flatten(self):
        return (self.transitions, self.rewards, self.initial, self.gamma), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls.unchecked(*children)

    def __iter__(self):
        return iter((self.transitions, self.rewards, self.initial, self.gamma))

    @property
    def num_states(self) -> int:
        return self.rewards.shape[-2]

    @property
    def num_actions(self) -> int:
        return self.rewards.shape[-1]

    def __repr__(self) -> str:
        shape = getattr(self.transitions, "shape", None)
        return f"TabularMDP(transitions{list(shape) if shape else ''}, rewards, initial, gamma)"


def _as_float(x):
    if isinstance(x, jax.core.Tracer):
        return x
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _validate(transitions, rewards, initial, gamma) -> None:
    if jnp.ndim(transitions) != 3:
        raise ValueError(
            f"`transitions` must have shape [S, A, S] = P(x'|x, a); got shape {tuple(jnp.shape(transitions))}."
        )
    num_states, num_actions, next_states = transitions.shape
    if next_states != num_states:
        raise ValueError(
            f"`transitions` must have shape [S, A, S] with equal first and last axes; got {transitions.shape}."
        )
    if tuple(jnp.shape(rewards)) != (num_states, num_actions):
        raise ValueError(
            f"`rewards` must have shape [S, A] = {(num_states, num_actions)} to match `transitions`; "
            f"got {tuple(jnp.shape(rewards))}."
        )
    if tuple(jnp.shape(initial)) != (num_states,):
        raise ValueError(f"`initial` must have shape [S] = ({num_states},); got {tuple(jnp.shape(initial))}.")
    if jnp.ndim(gamma) != 0:
        raise ValueError(f"`gamma` must be a scalar; got shape {tuple(jnp.shape(gamma))}.")
    check_discount("gamma", gamma)
    check_finite("rewards", rewards)
    for name, probs in (("transitions", transitions), ("initial", initial)):
        if not is_concrete(probs):
            continue
        arr = np.asarray(probs, dtype=np.float64)
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"`{name}` must hold non-negative finite probabilities.")
        sums = arr.sum(axis=-1)
        worst = np.max(np.abs(sums - 1.0))
        if worst > PROBABILITY_ATOL:
            raise ValueError(
                f"`{name}` must sum to 1 over its last axis (tolerance {PROBABILITY_ATOL}); "
                f"the worst row sums to {1.0 + worst if np.any(sums > 1) else 1.0 - worst:.6g}."
            )


#: Smallest Dirichlet concentration :func:`random_mdp` accepts: its log-Gamma samples are about log(U)/α with
#: |log U| < 20, finite in float32 (max 3.4e38) with seven orders of magnitude to spare. The paper uses 0.001.
MIN_DIRICHLET = 1e-30


def random_mdp(
    key: jax.Array,
    num_states: int = 20,
    num_actions: int = 5,
    *,
    gamma: float = 0.8,
    dirichlet: float = 0.001,
    reward_scale: float = 1.0,
    start_state: int | None = 0,
) -> TabularMDP:
    """Sample a random tabular MDP as in Tang et al. (2021), Sec. 5.

    Transition rows P(·|x, a) ~ Dirichlet(`dirichlet` · 1_S); rewards r(x, a) ~ U[0, `reward_scale`);
    a deterministic start state `start_state` (or the uniform start distribution when `None`).
    Small `dirichlet` (the paper uses 0.001) gives near-deterministic transitions. Dirichlet samples
    are normalised in log space (`jax.random.loggamma`), so tiny concentrations never produce NaNs.

    The paper's released-code setting is the default: `random_mdp(key)` has 20 states, 5 actions,
    Dirichlet(0.001), γ = 0.8, start state 0; the paper's text uses `num_states=10`.

    Args:
      key: a `jax.random` key.
      num_states, num_actions: S and A (positive integers, static).
      gamma: discount in [0, 1).
      dirichlet: Dirichlet concentration of each transition row, in [`MIN_DIRICHLET`, ∞).
      reward_scale: rewards are uniform on [0, reward_scale).
      start_state: index of the start state, or `None` for a uniform start distribution.

    Returns:
      A [`TabularMDP`][metagrad.mdp.TabularMDP] (built without value checks, so this function can be `vmap`-ed over keys).
    """
    if int(num_states) < 1 or int(num_actions) < 1:
        raise ValueError(f"`num_states` and `num_actions` must be positive; got {num_states}, {num_actions}.")
    if is_concrete(dirichlet) and not (MIN_DIRICHLET <= float(dirichlet) and math.isfinite(float(dirichlet))):
        raise ValueError(
            f"`dirichlet` must be a finite concentration ≥ {MIN_DIRICHLET:g} (below, the log-Gamma samples "
            f"≈ log(U)/α overflow and every transition is NaN); got {dirichlet}."
        )
    if is_concrete(reward_scale) and not math.isfinite(float(reward_scale)):
        raise ValueError(f"`reward_scale` must be a finite number; got {reward_scale}.")
    if is_concrete(gamma):
        check_discount("gamma", gamma)
    if start_state is not None and not 0 <= int(start_state) < num_states:
        raise ValueError(f"`start_state` must be a state index in [0, {num_states}); got {start_state}.")
    k_trans, k_rew = jax.random.split(key)
    dtype = jnp.result_type(float)
    log_gammas = jax.random.loggamma(k_trans, jnp.asarray(dirichlet, dtype), (num_states, num_actions, num_states))
    transitions = jax.nn.softmax(log_gammas, axis=-1)
    rewards = reward_scale * jax.random.uniform(k_rew, (num_states, num_actions), dtype)
    if start_state is None:
        initial = jnp.full((num_states,), 1.0 / num_states, dtype)
    else:
        initial = jnp.zeros((num_states,), dtype).at[start_state].set(1.0)
    return TabularMDP.unchecked(transitions, rewards, initial, jnp.asarray(gamma, dtype))


def softmax_policy(logits: jax.Array) -> jax.Array:
    """π_θ(a|x) = exp θ[x, a] / Σ_b exp θ[x, b]; `logits [S, A] -> policy [S, A]`."""
    return jax.nn.softmax(logits, axis=-1)


def policy_transitions(mdp: TabularMDP, policy: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Markov chain of a policy: P^π [S, S] with P^π(x'|x) = Σ_a π(a|x) P(x'|x, a), and r^π [S]."""
    with jax.default_matmul_precision(_PRECISION):
        p_pi = jnp.einsum("sa,sat->st", policy, mdp.transitions)
        r_pi = jnp.sum(policy * mdp.rewards, axis=-1)
    return p_pi, r_pi


@jax.custom_jvp
def resolvent(a: jax.Array) -> jax.Array:
    """(I − a)⁻¹ for a square `a` with spectral radius below one (here a = γ P^π), shape `[S, S]`.

    Differentiable to any order by matrix products only: d(I − a)⁻¹ = (I − a)⁻¹ da (I − a)⁻¹. Autodiff
    through a linear solve would instead run one triangular solve per tangent direction; with the rule
    below a Hessian or third derivative of J(θ) costs one LU factorisation and matmuls.
    """
    with jax.default_matmul_precision(_PRECISION):
        return jnp.linalg.inv(jnp.eye(a.shape[-1], dtype=a.dtype) - a)


@resolvent.defjvp
def _resolvent_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    m = resolvent(a)
    with jax.default_matmul_precision(_PRECISION):
        return m, m @ da @ m


def policy_evaluation(mdp: TabularMDP, policy: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""Exact values of a tabular policy by one linear solve.

    $$
    V^π = (I - γ P^π)^{-1} r^π  \text{ and }  Q^π(x, a) = r(x, a) + γ \sum _x' P(x'|x, a) V^π(x').
    $$

    Differentiable in `policy` (and in the MDP). Computed at the highest matmul precision so GPU and
    CPU agree.

    Args:
      mdp: a [`TabularMDP`][metagrad.mdp.TabularMDP] with S states and A actions.
      policy (array of shape [S, A]): action probabilities π(a|x) (rows sum to one).

    Returns:
      `(v [S], q [S, A])`.
    """
    if jnp.shape(policy) != jnp.shape(mdp.rewards):
        raise ValueError(
            f"`policy` must have shape [S, A] = {tuple(jnp.shape(mdp.rewards))}; got {tuple(jnp.shape(policy))}."
        )
    p_pi, r_pi = policy_transitions(mdp, policy)
    with jax.default_matmul_precision(_PRECISION):
        v = resolvent(mdp.gamma * p_pi) @ r_pi
        q = mdp.rewards + mdp.gamma * jnp.einsum("sat,t->sa", mdp.transitions, v)
    return v, q


def discounted_occupancy(mdp: TabularMDP, policy: jax.Array) -> jax.Array:
    """Unnormalised discounted state occupancy d^π(x) = Σ_t γ^t Pr(x_t = x | x_0 ~ p_0, π).

    Solves d^π = p_0 + γ (P^π)ᵀ d^π; the entries sum to 1/(1 − γ). With it the policy-gradient theorem
    for softmax logits reads ∂J/∂θ[x, a] = d^π(x) π(a|x) A^π(x, a).

    Returns:
      `[S]`.
    """
    p_pi, _ = policy_transitions(mdp, policy)
    with jax.default_matmul_precision(_PRECISION):
        return mdp.initial @ resolvent(mdp.gamma * p_pi)


def state_action_occupancy(mdp: TabularMDP, policy: jax.Array) -> jax.Array:
    """Unnormalised discounted state-action occupancy d^π(x) π(a|x), shape `[S, A]`."""
    return discounted_occupancy(mdp, policy)[:, None] * policy


def stack(mdps: list[TabularMDP] | Any) -> TabularMDP:
    """Stack MDPs of equal size into one batched [`TabularMDP`][metagrad.mdp.TabularMDP] (leading task axis) for `vmap`."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *mdps)
