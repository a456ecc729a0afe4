"""Policies as pure functions of a parameter pytree: tabular softmax, Gaussian MLP and categorical MLP.

Each policy is a small frozen (hashable) object that only holds the *static* sizes; the parameters are
plain pytrees of ``jax.Array`` (nested dicts and lists), so they work with ``jax.grad``, ``jax.vmap``
and optax unchanged. Every policy provides

* ``init(key) -> params``,
* ``log_prob(params, obs, action) -> log π_θ(a|x)`` (broadcast over any leading batch axes),
* ``sample(params, key, obs) -> (action, log π_θ(a|x))`` for *one* observation — exactly the
  ``policy_fn(params, key, obs)`` of :func:`metagrad.rollout.sample`,
* ``entropy(params, obs) -> H(π_θ(·|x))``,
* ``kl(params_a, params_b, obs) -> KL(π_a(·|x) ‖ π_b(·|x))`` (per observation).

Policies:

* :class:`TabularSoftmax` — π_θ(a|x) = softmax(θ[x, :])[a], ``params = logits [S, A]`` (the setting of
  Tang et al. 2021, Sec. 5, and of :mod:`metagrad.exact`).
* :class:`GaussianMLP` — a ~ N(μ_θ(x), diag σ²), μ_θ an MLP with tanh hidden layers and a linear output,
  log σ a learned state-independent vector (the policy of MAML/ProMP for continuous control;
  Finn et al. 2017, Rothfuss et al. 2019).
* :class:`CategoricalMLP` — π_θ(·|x) = softmax(MLP_θ(x)) over a finite action set.

Example:
  >>> import metagrad.envs, metagrad.rollout
  >>> policy = GaussianMLP(obs_dim=2, action_dim=2)
  >>> params = policy.init(jax.random.PRNGKey(0))
  >>> action, log_prob = policy.sample(params, jax.random.PRNGKey(1), jnp.zeros(2))
  >>> env = metagrad.envs.Navigation2D()
  >>> goal = env.sample_tasks(jax.random.PRNGKey(2), 1)[0]
  >>> batch = metagrad.rollout.sample(jax.random.PRNGKey(3), env, policy.sample, params, 20, 100, task=goal)
  >>> batch.rewards.shape
  (20, 100)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from metagrad._validation import check_finite, check_index_range

__all__ = ["TabularSoftmax", "GaussianMLP", "CategoricalMLP", "mlp_init", "mlp_apply", "as_policy_fn"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def _hidden(value) -> tuple[int, ...]:
    sizes = tuple(value)
    for size in sizes:
        _positive_int("hidden_sizes entries", size)
    return tuple(int(s) for s in sizes)


def mlp_init(key: jax.Array, sizes: tuple[int, ...], *, output_scale: float = 0.01) -> list[dict]:
    """Layers ``[{"w": [in, out], "b": [out]}, ...]`` for the layer sizes ``(in, h_1, …, out)``.

    Hidden layers use Glorot-uniform weights (as the MAML/ProMP code bases); the last layer is scaled by
    ``output_scale`` so the initial policy is nearly state independent. Biases start at zero.
    """
    dtype = jnp.result_type(float)
    layers = []
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        w = jax.random.uniform(k, (fan_in, fan_out), dtype, -limit, limit)
        if i == len(sizes) - 2:
            w = w * output_scale
        layers.append({"w": w, "b": jnp.zeros((fan_out,), dtype)})
    return layers


def mlp_apply(layers: list[dict], x: jax.Array) -> jax.Array:
    """h_{k+1} = tanh(h_k W_k + b_k) for hidden layers, a linear last layer; ``x [..., in] -> [..., out]``."""
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


class _Categorical:
    """log π, sampling, entropy and KL of a softmax policy, from its ``log_probs_all(params, obs) -> [..., A]``."""

    def log_prob(self, params, obs, action) -> jax.Array:
        """log π_θ(a|x) for integer ``action`` (shape of ``obs`` without its feature axis).

        A concrete ``action`` outside ``[0, A)`` raises ``ValueError`` (JAX would clamp or fill the index).
        """
        check_index_range("action", action, self.num_actions, "action")
        return jnp.take_along_axis(self.log_probs_all(params, obs), action[..., None], axis=-1)[..., 0]

    def sample(self, params, key, obs):
        log_pi = self.log_probs_all(params, obs)
        action = jax.random.categorical(key, log_pi)
        return action, log_pi[action]

    def entropy(self, params, obs) -> jax.Array:
        log_pi = self.log_probs_all(params, obs)
        return -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)

    def kl(self, params_a, params_b, obs) -> jax.Array:
        """Σ_a π_a(a|x) (log π_a(a|x) − log π_b(a|x))."""
        log_a, log_b = self.log_probs_all(params_a, obs), self.log_probs_all(params_b, obs)
        return jnp.sum(jnp.exp(log_a) * (log_a - log_b), axis=-1)


@dataclasses.dataclass(frozen=True)
class TabularSoftmax(_Categorical):
    """π_θ(a|x) = softmax(θ[x, :])[a] with ``params = logits [S, A]``; observations are state indices."""

    num_states: int
    num_actions: int
    init_scale: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "num_states", _positive_int("num_states", self.num_states))
        object.__setattr__(self, "num_actions", _positive_int("num_actions", self.num_actions))

    def init(self, key: jax.Array) -> jax.Array:
        """Logits ``init_scale · N(0, 1)`` (all zeros, the uniform policy, by default)."""
        shape = (self.num_states, self.num_actions)
        return self.init_scale * jax.random.normal(key, shape, jnp.result_type(float))

    def log_probs_all(self, params, obs) -> jax.Array:
        """log softmax(θ[x]) over actions, ``[..., A]`` for integer ``obs``.

        A concrete ``obs`` outside ``[0, S)`` raises ``ValueError``: JAX clamps an out-of-range gather index,
        so state 7 of 3 would silently read state 2's logits. (Under ``jit`` the caller validates.)
        """
        check_index_range("obs", obs, self.num_states, "state")
        return jax.nn.log_softmax(params[obs], axis=-1)


@dataclasses.dataclass(frozen=True)
class GaussianMLP:
    """a ~ N(μ_θ(x), diag(exp(2 log σ))), μ_θ an MLP with tanh hidden layers, log σ a learned vector.

    ``params = {"mean": [layers...], "log_std": [action_dim]}``. Defaults follow ProMP (two hidden
    layers of 64, initial σ = 1). ``log_prob`` sums over the action dimensions:
    log π(a|x) = −½ Σ_i ((a_i − μ_i)/σ_i)² − Σ_i log σ_i − (d/2) log 2π.
    """

    obs_dim: int
    action_dim: int
    hidden_sizes: tuple[int, ...] = (64, 64)
    init_log_std: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "obs_dim", _positive_int("obs_dim", self.obs_dim))
        object.__setattr__(self, "action_dim", _positive_int("action_dim", self.action_dim))
        object.__setattr__(self, "hidden_sizes", _hidden(self.hidden_sizes))

    def init(self, key: jax.Array) -> dict:
        sizes = (self.obs_dim, *self.hidden_sizes, self.action_dim)
        dtype = jnp.result_type(float)
        return {"mean": mlp_init(key, sizes), "log_std": jnp.full((self.action_dim,), self.init_log_std, dtype)}

    def mean(self, params, obs) -> jax.Array:
        return mlp_apply(params["mean"], obs)

    def log_prob(self, params, obs, action) -> jax.Array:
        check_finite("action", action)
        check_finite("obs", obs)
        mean, log_std = self.mean(params, obs), params["log_std"]
        z = (action - mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi), axis=-1)

    def sample(self, params, key, obs):
        mean, log_std = self.mean(params, obs), params["log_std"]
        noise = jax.random.normal(key, mean.shape, mean.dtype)
        action = mean + jnp.exp(log_std) * noise
        return action, jnp.sum(-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi), axis=-1)

    def entropy(self, params, obs) -> jax.Array:
        """Σ_i (log σ_i + ½ log 2πe), broadcast to the batch shape of ``obs``."""
        h = jnp.sum(params["log_std"] + 0.5 * math.log(2 * math.pi * math.e))
        return jnp.broadcast_to(h, jnp.shape(obs)[:-1])

    def kl(self, params_a, params_b, obs) -> jax.Array:
        """Σ_i log(σ_b/σ_a) + (σ_a² + (μ_a − μ_b)²) / (2σ_b²) − ½."""
        mean_a, mean_b = self.mean(params_a, obs), self.mean(params_b, obs)
        log_a, log_b = params_a["log_std"], params_b["log_std"]
        var_ratio = jnp.exp(2 * (log_a - log_b))
        return jnp.sum(log_b - log_a + 0.5 * (var_ratio + (mean_a - mean_b) ** 2 * jnp.exp(-2 * log_b)) - 0.5, -1)


@dataclasses.dataclass(frozen=True)
class CategoricalMLP(_Categorical):
    """π_θ(·|x) = softmax(MLP_θ(x)) over ``num_actions`` actions (tanh hidden layers); ``params = [layers]``."""

    obs_dim: int
    num_actions: int
    hidden_sizes: tuple[int, ...] = (64, 64)

    def __post_init__(self):
        object.__setattr__(self, "obs_dim", _positive_int("obs_dim", self.obs_dim))
        object.__setattr__(self, "num_actions", _positive_int("num_actions", self.num_actions))
        object.__setattr__(self, "hidden_sizes", _hidden(self.hidden_sizes))

    def init(self, key: jax.Array) -> list:
        return mlp_init(key, (self.obs_dim, *self.hidden_sizes, self.num_actions))

    def log_probs_all(self, params, obs) -> jax.Array:
        """log softmax(MLP_θ(x)) over actions, ``[..., A]``."""
        return jax.nn.log_softmax(mlp_apply(params, obs), axis=-1)


def as_policy_fn(policy):
    """The :data:`metagrad.rollout.PolicyFn` of a policy: ``policy_fn(params, key, obs) -> (action, log_prob)``.

    It is the bound ``policy.sample`` (hashable, so jitted samplers are cached per policy).
    """
    return policy.sample
