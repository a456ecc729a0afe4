"""Action distributions of a policy: a policy's ``apply(params, obs)`` returns one, and log-probabilities, entropy,
KL and samples all come from it (a policy never writes its own KL).

* :class:`Categorical` — π(a) = softmax(logits)[a] over the last axis of ``logits``;
* :class:`DiagGaussian` — a ~ N(mean, diag exp(2 log_std)) over the last ``event_ndim`` axes of ``mean`` (any
  action shape: ``event_ndim = len(action_space.shape)``); ``log_std`` broadcasts against ``mean`` (a learned
  state-independent vector, as in MAML/ProMP, or a full state-dependent array).

Both are pytrees (``jax.vmap``/``jit`` pass them through; ``event_ndim`` is static). Leading axes of the
parameters are batch axes: every method returns one value per batch element.

References:
  Rothfuss et al. ProMP, 2019: ``meta_policy_search/policies/distributions/diagonal_gaussian.py`` (the same
  log-likelihood and KL formulas).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["Categorical", "DiagGaussian"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@jax.tree_util.register_pytree_node_class
class Categorical:
    """π(a) = softmax(logits)[a]; ``logits [..., A]``, actions integer ``[...]``."""

    def __init__(self, logits):
        self.logits = logits

    def tree_flatten(self):
        return (self.logits,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def log_probs(self) -> jax.Array:
        """log softmax(logits), ``[..., A]``."""
        return jax.nn.log_softmax(self.logits, axis=-1)

    def log_prob(self, action) -> jax.Array:
        """log π(a), ``[...]``."""
        return jnp.take_along_axis(self.log_probs, jnp.asarray(action)[..., None], axis=-1)[..., 0]

    def sample_and_log_prob(self, key):
        """``(a, log π(a))`` with a ~ π (``jax.random.categorical``)."""
        log_pi = self.log_probs
        action = jax.random.categorical(key, log_pi)
        return action, jnp.take_along_axis(log_pi, action[..., None], axis=-1)[..., 0]

    def sample(self, key) -> jax.Array:
        return self.sample_and_log_prob(key)[0]

    def entropy(self) -> jax.Array:
        """H(π) = −Σ_a π(a) log π(a)."""
        log_pi = self.log_probs
        return -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)

    def kl(self, other: "Categorical") -> jax.Array:
        """KL(self ‖ other) = Σ_a π(a) (log π(a) − log π_other(a))."""
        log_a, log_b = self.log_probs, other.log_probs
        return jnp.sum(jnp.exp(log_a) * (log_a - log_b), axis=-1)


@jax.tree_util.register_pytree_node_class
class DiagGaussian:
    """a ~ N(mean, diag σ²), σ = exp(log_std); the last ``event_ndim`` axes of ``mean`` are the action's."""

    def __init__(self, mean, log_std, event_ndim: int = 1):
        self.mean, self.log_std, self.event_ndim = mean, log_std, int(event_ndim)

    def tree_flatten(self):
        return (self.mean, self.log_std), self.event_ndim

    @classmethod
    def tree_unflatten(cls, event_ndim, children):
        return cls(*children, event_ndim)

    def _sum_event(self, x) -> jax.Array:
        return jnp.sum(x, axis=tuple(range(-self.event_ndim, 0))) if self.event_ndim else x

    def log_prob(self, action) -> jax.Array:
        """log π(a) = Σ_i [−½ ((a_i − μ_i)/σ_i)² − log σ_i − ½ log 2π] over the event axes."""
        z = (action - self.mean) * jnp.exp(-self.log_std)
        return self._sum_event(-0.5 * z**2 - self.log_std - _HALF_LOG_2PI)

    def sample_and_log_prob(self, key):
        """``(a, log π(a))``, a = μ + σ ε with ε ~ N(0, I) (log π from ε directly)."""
        noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        action = self.mean + jnp.exp(self.log_std) * noise
        return action, self._sum_event(-0.5 * noise**2 - self.log_std - _HALF_LOG_2PI)

    def sample(self, key) -> jax.Array:
        return self.sample_and_log_prob(key)[0]

    def entropy(self) -> jax.Array:
        """H = Σ_i (log σ_i + ½ log 2πe)."""
        return self._sum_event(jnp.broadcast_to(self.log_std + 0.5 * math.log(2 * math.pi * math.e), self.mean.shape))

    def kl(self, other: "DiagGaussian") -> jax.Array:
        """KL(self ‖ other) = Σ_i log(σ_b/σ_a) + (σ_a² + (μ_a − μ_b)²)/(2σ_b²) − ½."""
        log_a, log_b = self.log_std, other.log_std
        var_ratio = jnp.exp(2 * (log_a - log_b))
        return self._sum_event(log_b - log_a + 0.5 * (var_ratio + (self.mean - other.mean) ** 2 * jnp.exp(-2 * log_b))
                               - 0.5)
