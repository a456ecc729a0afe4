"""Policies as pure functions of a parameter pytree (tabular softmax, Gaussian and categorical MLPs, your own
init/apply pair) and the action distributions they return.

Each policy is a small frozen (hashable) object that only holds the *static* sizes; the parameters are
plain pytrees of `jax.Array` (nested dicts and lists), so they work with `jax.grad`, `jax.vmap`
and optax unchanged. Every policy provides

* `init(key) -> params`,
* `apply(params, obs) -> distribution` ([`Categorical`][metagrad.policies.Categorical], [`DiagGaussian`][metagrad.policies.DiagGaussian]), from which the rest comes:
* `log_prob(params, obs, action) -> log π_θ(a|x)` (broadcast over any leading batch axes),
* `sample(params, key, obs) -> (action, log π_θ(a|x))` for *one* observation — exactly the
  `policy_fn(params, key, obs)` of [`metagrad.rollout.sample`][metagrad.rollout.sample],
* `entropy(params, obs) -> H(π_θ(·|x))`,
* `kl(params_a, params_b, obs) -> KL(π_a(·|x) ‖ π_b(·|x))` (per observation).

Policies:

* [`TabularSoftmax`][metagrad.policies.TabularSoftmax] — π_θ(a|x) = softmax(θ[x, :])[a], `params = logits [S, A]` (the setting of
  Tang et al. 2021, Sec. 5, and of [`metagrad.exact`][metagrad.exact]).
* [`GaussianMLP`][metagrad.policies.GaussianMLP] — a ~ N(μ_θ(x), diag σ²), μ_θ an MLP with tanh hidden layers and a linear output,
  log σ a learned state-independent vector (the policy of MAML/ProMP for continuous control;
  Finn et al. 2017, Rothfuss et al. 2019).
* [`CategoricalMLP`][metagrad.policies.CategoricalMLP] — π_θ(·|x) = softmax(MLP_θ(x)) over a finite action set.
* [`FunctionalPolicy`][metagrad.policies.FunctionalPolicy] — your own `init(key, observation_space, action_space) -> params` and
  `apply(params, obs) -> distribution` pair of pure functions (any network); [`default_policy`][metagrad.policies.default_policy] — the MLP
  policy of an environment's spaces (any action shape).

Action distributions (pytrees; a policy's `apply` returns one, and log-probabilities, entropy, KL and samples come
from it, so a policy never writes its own KL): [`Categorical`][metagrad.policies.Categorical] (softmax over the last axis of the logits) and
[`DiagGaussian`][metagrad.policies.DiagGaussian] (any action shape: the last `event_ndim` axes of the mean are the action's; `log_std`
broadcasts, a learned vector as in MAML/ProMP or a full state-dependent array; the log-likelihood and KL of ProMP's
`diagonal_gaussian.py`).

Examples:
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
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from metagrad._validation import check_finite, check_index_range

__all__ = ["Categorical", "DiagGaussian", "TabularSoftmax", "GaussianMLP", "CategoricalMLP", "FunctionalPolicy",
           "default_policy", "mlp_init", "mlp_apply", "as_policy_fn"]


# ------------------------------------------------------------------------------- action distributions
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@jax.tree_util.register_pytree_node_class
class Categorical:
    """π(a) = softmax(logits)[a]; `logits [..., A]`, actions integer `[...]`."""

    def __init__(self, logits):
        self.logits = logits

    def tree_flatten(self):
        return (self.logits,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def log_probs(self) -> jax.Array:
        """log softmax(logits), `[..., A]`."""
        return jax.nn.log_softmax(self.logits, axis=-1)

    def log_prob(self, action) -> jax.Array:
        """log π(a), `[...]`."""
        return jnp.take_along_axis(self.log_probs, jnp.asarray(action)[..., None], axis=-1)[..., 0]

    def sample_and_log_prob(self, key):
        """`(a, log π(a))` with a ~ π (`jax.random.categorical`)."""
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
    """a ~ N(mean, diag σ²), σ = exp(log_std); the last `event_ndim` axes of `mean` are the action's."""

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
        """`(a, log π(a))`, a = μ + σ ε with ε ~ N(0, I) (log π from ε directly)."""
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


# ------------------------------------------------------------------------------------------- policies
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
    """Layers `[{"w": [in, out], "b": [out]}, ...]` for the layer sizes `(in, h_1, …, out)`.

    Hidden layers use Glorot-uniform weights (as the MAML/ProMP code bases); the last layer is scaled by
    `output_scale` so the initial policy is nearly state independent. Biases start at zero.
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
    """h_{k+1} = tanh(h_k W_k + b_k) for hidden layers, a linear last layer; `x [..., in] -> [..., out]`."""
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


class _DistributionPolicy:
    """`log_prob`, `sample`, `entropy` and `kl` of a policy from its `apply(params, obs) -> distribution`
    ([`Categorical`][metagrad.policies.Categorical], [`DiagGaussian`][metagrad.policies.DiagGaussian]), broadcast over the leading batch axes of `obs`."""

    def log_prob(self, params, obs, action) -> jax.Array:
        return self.apply(params, obs).log_prob(action)

    def sample(self, params, key, obs):
        """`(a, log π_θ(a|x))` for one observation: `metagrad.rollout.PolicyFn`."""
        return self.apply(params, obs).sample_and_log_prob(key)

    def entropy(self, params, obs) -> jax.Array:
        return self.apply(params, obs).entropy()

    def kl(self, params_a, params_b, obs) -> jax.Array:
        """KL(π_a(·|x) ‖ π_b(·|x)) per observation (the distribution's KL)."""
        return self.apply(params_a, obs).kl(self.apply(params_b, obs))


class _Categorical(_DistributionPolicy):
    """A softmax policy from its `log_probs_all(params, obs) -> [..., A]` logits."""

    def apply(self, params, obs) -> Categorical:
        return Categorical(self.log_probs_all(params, obs))

    def log_prob(self, params, obs, action) -> jax.Array:
        """log π_θ(a|x) for integer `action` (shape of `obs` without its feature axis).

        A concrete `action` outside `[0, A)` raises `ValueError` (JAX would clamp or fill the index).
        """
        check_index_range("action", action, self.num_actions, "action")
        return super().log_prob(params, obs, action)


@dataclasses.dataclass(frozen=True)
class TabularSoftmax(_Categorical):
    """π_θ(a|x) = softmax(θ[x, :])[a] with `params = logits [S, A]`; observations are state indices."""

    num_states: int
    num_actions: int
    init_scale: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "num_states", _positive_int("num_states", self.num_states))
        object.__setattr__(self, "num_actions", _positive_int("num_actions", self.num_actions))

    def init(self, key: jax.Array) -> jax.Array:
        """Logits `init_scale · N(0, 1)` (all zeros, the uniform policy, by default)."""
        shape = (self.num_states, self.num_actions)
        return self.init_scale * jax.random.normal(key, shape, jnp.result_type(float))

    def log_probs_all(self, params, obs) -> jax.Array:
        """log softmax(θ[x]) over actions, `[..., A]` for integer `obs`.

        A concrete `obs` outside `[0, S)` raises `ValueError`: JAX clamps an out-of-range gather index,
        so state 7 of 3 would silently read state 2's logits. (Under `jit` the caller validates.)
        """
        check_index_range("obs", obs, self.num_states, "state")
        return jax.nn.log_softmax(params[obs], axis=-1)


@dataclasses.dataclass(frozen=True)
class GaussianMLP(_DistributionPolicy):
    """a ~ N(μ_θ(x), diag(exp(2 log σ))), μ_θ an MLP with tanh hidden layers, log σ a learned vector.

    `params = {"mean": [layers...], "log_std": [action_dim]}`. Defaults follow ProMP (two hidden
    layers of 64, initial σ = 1). `log_prob` sums over the action dimensions:
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

    def apply(self, params, obs) -> DiagGaussian:
        return DiagGaussian(self.mean(params, obs), params["log_std"])

    def log_prob(self, params, obs, action) -> jax.Array:
        check_finite("action", action)
        check_finite("obs", obs)
        return super().log_prob(params, obs, action)


@dataclasses.dataclass(frozen=True)
class CategoricalMLP(_Categorical):
    """π_θ(·|x) = softmax(MLP_θ(x)) over `num_actions` actions (tanh hidden layers); `params = [layers]`."""

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
        """log softmax(MLP_θ(x)) over actions, `[..., A]`."""
        return jax.nn.log_softmax(mlp_apply(params, obs), axis=-1)


def as_policy_fn(policy):
    """The `metagrad.rollout.PolicyFn` of a policy: `policy_fn(params, key, obs) -> (action, log_prob)`.

    It is the bound `policy.sample` (hashable, so jitted samplers are cached per policy).
    """
    return policy.sample


def _batched(fn, batch_ndim: int):
    """`fn(params, x)` for one observation, mapped over `batch_ndim` leading axes of `x` (`jax.vmap`)."""
    for _ in range(batch_ndim):
        fn = jax.vmap(fn, in_axes=(None, 0))
    return fn


@dataclasses.dataclass(frozen=True)
class FunctionalPolicy(_DistributionPolicy):
    """A policy given as two pure functions, bound to an environment's spaces (the open API of the MAML loop).

    * `init_fn(key, observation_space, action_space) -> params` (any pytree);
    * `apply_fn(params, obs) -> distribution` for **one** observation of `observation_space.shape`: a
      [`Categorical`][metagrad.policies.Categorical] or [`DiagGaussian`][metagrad.policies.DiagGaussian] (or any object
      with `log_prob`, `sample_and_log_prob`, `entropy`, `kl`). Leading batch axes are mapped with
      `jax.vmap`, so any network written for one input works (plain `jax.numpy`, Flax, Equinox).

    `log_prob`, `sample`, `entropy` and `kl` come from the distribution. Compares equal by the two
    functions and the two space shapes.
    """

    init_fn: Any
    apply_fn: Any
    observation_shape: tuple
    action_shape: tuple
    observation_space: Any = dataclasses.field(default=None, compare=False, repr=False)
    action_space: Any = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def bind(cls, init_fn, apply_fn, observation_space, action_space) -> "FunctionalPolicy":
        """The policy of `(init_fn, apply_fn)` on these spaces (each must have a `.shape`)."""
        for name, space in (("observation_space", observation_space), ("action_space", action_space)):
            if getattr(space, "shape", None) is None:
                raise TypeError(f"`{name}` must be a space with a `.shape` (e.g. gymnasium.spaces.Box); got {space!r}.")
        return cls(init_fn, apply_fn, tuple(observation_space.shape), tuple(action_space.shape), observation_space,
                   action_space)

    def init(self, key: jax.Array):
        return self.init_fn(key, self.observation_space, self.action_space)

    def apply(self, params, obs):
        batch_ndim = jnp.ndim(obs) - len(self.observation_shape)
        if batch_ndim < 0 or tuple(jnp.shape(obs)[batch_ndim:]) != self.observation_shape:
            raise ValueError(f"`obs` must have shape [..., {', '.join(map(str, self.observation_shape))}] (the "
                             f"observation space's); got {tuple(jnp.shape(obs))}.")
        return _batched(self.apply_fn, batch_ndim)(params, obs)


def default_policy(observation_space, action_space, hidden_sizes: tuple[int, ...] = (64, 64)):
    """The MLP policy of an environment's spaces: [`CategoricalMLP`][metagrad.policies.CategoricalMLP] for a `Discrete` action space, else a
    diagonal Gaussian over the `Box`'s shape ([`GaussianMLP`][metagrad.policies.GaussianMLP] for a vector action, a
    [`FunctionalPolicy`][metagrad.policies.FunctionalPolicy] with the same network and a flattened-and-reshaped head for any other shape).
    Observations must be vectors `[d]`."""
    obs_shape = tuple(getattr(observation_space, "shape", None) or ())
    if len(obs_shape) != 1:
        raise ValueError(f"The default policy needs vector observations [d]; the observation space has shape "
                         f"{obs_shape}. Pass `policy=` (an init/apply pair) for other observations.")
    n = getattr(action_space, "n", None)
    if n is not None:
        return CategoricalMLP(obs_shape[0], int(n), hidden_sizes)
    action_shape = tuple(action_space.shape)
    if len(action_shape) == 1:
        return GaussianMLP(obs_shape[0], action_shape[0], hidden_sizes)
    return FunctionalPolicy.bind(*_gaussian_mlp_functions(obs_shape[0], action_shape, tuple(hidden_sizes)),
                                 observation_space, action_space)


@functools.lru_cache(maxsize=None)
def _gaussian_mlp_functions(obs_dim: int, action_shape: tuple, hidden_sizes: tuple):
    """`(init_fn, apply_fn)` of a Gaussian MLP over actions of any shape (cached: equal sizes, equal functions)."""
    size = math.prod(action_shape)
    flat = GaussianMLP(obs_dim, size, hidden_sizes)

    def init_fn(key, observation_space=None, action_space=None):
        params = flat.init(key)
        return {"mean": params["mean"], "log_std": params["log_std"].reshape(action_shape)}

    def apply_fn(params, obs):
        return DiagGaussian(mlp_apply(params["mean"], obs).reshape(action_shape), params["log_std"], len(action_shape))

    return init_fn, apply_fn
