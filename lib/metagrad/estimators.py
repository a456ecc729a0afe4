"""The estimator registry: every derivative estimator as a per-trajectory surrogate, batched and differentiated.

An estimator is a per-trajectory objective f(ℓ_0, …, ℓ_{T−1}) of the log-probabilities
ℓ_t = log π_θ(a_t|x_t); its K-th derivative in θ, averaged over a batch, is the estimator's estimate of
∇^K V^{π_θ}(x_0) (Tang et al. 2021: differentiate an off-policy evaluation estimate).

* [`trajectory_objective`][metagrad.estimators.trajectory_objective] — one trajectory, by registry name;
* [`surrogate`][metagrad.estimators.surrogate] — a batch of trajectories and any policy `log_prob_fn(params, obs, actions)`,
  reduced by a weighted mean **before** differentiation (so `jax.grad`/`jax.hessian` of it are the
  batch-mean estimates);
* [`tabular_derivatives`][metagrad.estimators.tabular_derivatives] — tabular softmax logits: the batch-mean gradient, Hessian and third
  derivative by autodiff of [`surrogate`][metagrad.estimators.surrogate] (the reference implementation).

Names (see [`valid_names`][metagrad.estimators.valid_names]; options are keyword arguments, static under `jit`):

| name | estimator | options |
|---|---|---|
| `is` | step-wise importance sampling (= DiCE) | — |
| `dr` | doubly robust, state-value critic (= Loaded DiCE λ=1) | — |
| `vtrace` | V-trace / truncated DR | `rho_bar`, `c_bar` (1.0) |
| `taypo1` | TayPO-1 (= LVC) | — |
| `taypo2` | TayPO-2, the paper's second-order estimator | — |
| `taypo3` | TayPO-3 | — |
| `taypo` | TayPO-K (also spelled `"taypo<K>"`, e.g. `taypo5`) | `order` (required) |
| `maml` | Finn et al.'s surrogate Σ Γ_t ℓ_t Â_t | — |
| `fomaml` | first-order MAML (derivatives above order 1 are zero) | — |
| `dice` | DiCE | `baseline` (False) |
| `loaded_dice` | Loaded DiCE | `lam` (1.0), `tau` (1.0) |
| `lvc` | ProMP's LVC | — |

References:
  - Tang, Kozuno, Rowland, Munos, Valko. Unifying gradient estimators for meta-reinforcement learning via
    off-policy evaluation. NeurIPS 2021 (arXiv:2106.13125).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from metagrad import ope, prior
from metagrad._validation import check_discount, check_finite, check_index_range

__all__ = [
    "Estimator",
    "ESTIMATORS",
    "valid_names",
    "get",
    "trajectory_objective",
    "surrogate",
    "tabular_derivatives",
    "tabular_derivatives_autodiff",
]

_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A registry entry.

    Attributes:
      name: the registry name.
      objective: `objective(log_pi, log_mu, rewards, values, discounts, **options) -> scalar`.
      options: keyword options with their defaults (`_REQUIRED` marks a required one).
      first_order_only: derivatives above order 1 are zero (first-order MAML).
      kind: `"ope"` (a differentiated OPE estimate, valid for any μ) or `"prior"` (a prior-work
        surrogate, defined at π = μ).
      description: one line, with the paper.
    """

    name: str
    objective: Callable[..., jax.Array]
    options: Mapping[str, Any]
    first_order_only: bool
    kind: str
    description: str

    def resolve(self, options: Mapping[str, Any]) -> dict:
        """The full option dict, or a `ValueError` naming unknown or missing options."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise ValueError(f"Estimator {self.name!r} got unknown option(s) {unknown}; its options are: {valid}.")
        out = {**self.options, **options}
        missing = [k for k, v in out.items() if v is _REQUIRED]
        if missing:
            raise ValueError(f"Estimator {self.name!r} needs the option(s) {missing} (e.g. order=4 for 'taypo').")
        return out


def _ope(fn: Callable, **fixed) -> Callable:
    """An OPE estimate as an objective: log-ratios λ_t = ℓ_t − log μ_t."""

    def objective(log_pi, log_mu, rewards, values, discounts, **options):
        return fn(log_pi - log_mu, rewards, values, discounts, **fixed, **options)

    return objective


def _prior(fn: Callable, uses_mu: bool = True) -> Callable:
    def objective(log_pi, log_mu, rewards, values, discounts, **options):
        if uses_mu:
            return fn(log_pi, rewards, values, discounts, log_mu=log_mu, **options)
        return fn(log_pi, rewards, values, discounts, **options)

    return objective


def _entry(name, objective, description, options=None, first_order_only=False, kind="ope"):
    return name, Estimator(name, objective, dict(options or {}), first_order_only, kind, description)


#: name -> :class:`Estimator`.
ESTIMATORS: dict[str, Estimator] = dict(
    [
        _entry("is", _ope(ope.step_importance_sampling), "step-wise importance sampling (Precup et al. 2000)"),
        _entry("dr", _ope(ope.doubly_robust), "doubly robust, state-value critic (Jiang & Li 2016)"),
        _entry(
            "vtrace",
            _ope(ope.vtrace),
            "V-trace / truncated DR (Espeholt et al. 2018)",
            {"rho_bar": 1.0, "c_bar": 1.0},
        ),
        _entry("taypo1", _ope(ope.taylor_expansion, order=1), "TayPO-1 (Kakade & Langford 2002; Tang et al. 2020)"),
        _entry("taypo2", _ope(ope.taylor_expansion, order=2), "TayPO-2, second order (Tang et al. 2020, 2021)"),
        _entry("taypo3", _ope(ope.taylor_expansion, order=3), "TayPO-3, third order (Tang et al. 2020)"),
        _entry("taypo", _ope(ope.taylor_expansion), "TayPO-K, any order K (Tang et al. 2020)", {"order": _REQUIRED}),
        _entry("maml", _prior(prior.maml_surrogate, False), "MAML surrogate (Finn et al. 2017)", kind="prior"),
        _entry(
            "fomaml",
            _prior(prior.fomaml_surrogate, False),
            "first-order MAML (Finn et al. 2017)",
            first_order_only=True,
            kind="prior",
        ),
        _entry("dice", _prior(prior.dice_objective), "DiCE (Foerster et al. 2018)", {"baseline": False}, kind="prior"),
        _entry(
            "loaded_dice",
            _prior(prior.loaded_dice_objective),
            "Loaded DiCE (Farquhar et al. 2019)",
            {"lam": 1.0, "tau": 1.0},
            kind="prior",
        ),
        _entry("lvc", _prior(prior.lvc_objective), "LVC of ProMP (Rothfuss et al. 2019)", kind="prior"),
    ]
)


def valid_names() -> list[str]:
    """The registry names, in registry order."""
    return list(ESTIMATORS)


def get(name: str) -> Estimator:
    """The [`Estimator`][metagrad.estimators.Estimator] called `name`; `ValueError` listing the valid names otherwise.

    Besides the registry names, `"taypo<K>"` for any integer K ≥ 1 (e.g. `"taypo7"`) is TayPO-K: the
    way to choose the Taylor order where the keyword `order` already means the derivative order
    ([`tabular_derivatives`][metagrad.estimators.tabular_derivatives]).
    """
    if isinstance(name, str) and name in ESTIMATORS:
        return ESTIMATORS[name]
    if isinstance(name, str) and name.startswith("taypo") and name[5:].isdigit() and int(name[5:]) >= 1:
        k = int(name[5:])
        return Estimator(name, _ope(ope.taylor_expansion, order=k), {}, False, "ope", f"TayPO-{k}")
    raise ValueError(
        f"Unknown estimator {name!r}; valid names are: {', '.join(ESTIMATORS)} (and 'taypo<K>' for any K >= 1)."
    )


def trajectory_objective(name: str, log_pi, log_mu, rewards, values, discounts, **options) -> jax.Array:
    """The per-trajectory surrogate of estimator `name`; its θ-derivatives are the estimates.

    θ enters **only** through `log_pi`. `log_mu` is used as given (no `stop_gradient` is applied
    here): pass `stop_gradient(log_pi)` for on-policy data. OPE names differentiate the estimate of
    [`metagrad.ope`][metagrad.ope] at log-ratios λ_t = ℓ_t − log μ_t; prior-work names evaluate the surrogates of
    [`metagrad.prior`][metagrad.prior] with the magic box □(Σ ℓ_s) replaced by exp(Σ (ℓ_s − log μ_s)) — identical at
    π = μ, which is where those papers define them (`maml`/`fomaml` do not use `log_mu`).

    Args:
      name: a registry name ([`valid_names`][metagrad.estimators.valid_names]); static.
      log_pi (array of shape [T]): ℓ_t = log π_θ(a_t|x_t).
      log_mu (array of shape [T]): behaviour log-probabilities log μ(a_t|x_t).
      rewards (array of shape [T]):
      values (array of shape [T+1]): critic at the visited states (V(x_T) the bootstrap).
      discounts: scalar γ or `[T]` per-step discounts.
      **options: the estimator's options (static), see the module docstring.

    Returns:
      A scalar.

    Examples:
      >>> lp = jnp.log(jnp.array([0.5, 0.5]))
      >>> jax.grad(trajectory_objective, argnums=1)("dr", lp, jax.lax.stop_gradient(lp), jnp.ones(2), jnp.zeros(3), 0.9)
      Array([1.9, 0.9], dtype=float32)
    """
    estimator = get(name)
    options = estimator.resolve(options)
    log_pi = jnp.asarray(log_pi)
    log_mu = jnp.asarray(log_mu)
    if log_pi.ndim != 1:
        raise ValueError(f"`log_pi` must have shape [T] (one trajectory; vmap for batches); got shape {log_pi.shape}.")
    if log_mu.shape != log_pi.shape:
        raise ValueError(f"`log_mu` must have shape [T] = {log_pi.shape} like `log_pi`; got shape {log_mu.shape}.")
    return estimator.objective(log_pi, log_mu, rewards, values, discounts, **options)


def surrogate(
    name: str,
    log_prob_fn: Callable,
    params,
    trajectories,
    values,
    gamma,
    *,
    behaviour_log_probs=None,
    weights=None,
    **options,
) -> jax.Array:
    """The batch surrogate Σ_i w_i f_name(ℓ_i; μ_i, r_i, V_i); its K-th derivative in `params` is the estimate.

    ℓ = `log_prob_fn(params, trajectories.observations[:, :-1], trajectories.actions)` (`[N, T]`);
    μ = `stop_gradient(ℓ)` (on-policy) unless `behaviour_log_probs` is given (e.g.
    `trajectories.log_probs`); discounts γ_t from `trajectories.discounts(gamma)` (zero at and after
    termination). The batch is reduced **before** differentiation, so `jax.grad(surrogate, argnums=2)`
    and `jax.hessian` are batch-mean estimates. For `"fomaml"` the surrogate is wrapped by
    [`metagrad.prior.first_order`][metagrad.prior.first_order] (same value and gradient, zero higher derivatives).

    Args:
      name: registry name (static).
      log_prob_fn: `log_prob_fn(params, observations [N, T, ...], actions [N, T, ...]) -> [N, T]`.
      params: the policy parameters (any pytree).
      trajectories: a [`metagrad.rollout.Trajectories`][metagrad.rollout.Trajectories] batch of N trajectories of horizon T.
      values (array of shape [N, T+1]): critic values at the visited states (x_0 … x_T of each trajectory).
      gamma: the discount γ.
      behaviour_log_probs: `None` or `[N, T]` log μ(a_t|x_t).
      weights: `None` (`trajectories.weights()`: uniform 1/N, or 1/(valid rows) on the valid rows of a
        [`metagrad.rollout.sample_steps`][metagrad.rollout.sample_steps] batch) or `[N]` batch weights.
      **options: the estimator's options (static).

    Returns:
      A scalar.
    """
    estimator = get(name)
    options = estimator.resolve(options)
    rewards = trajectories.rewards
    if rewards.ndim != 2:
        raise ValueError(f"`trajectories.rewards` must have shape [N, T]; got shape {rewards.shape}.")
    n, horizon = rewards.shape
    values = jnp.asarray(values)
    if values.shape != (n, horizon + 1):
        raise ValueError(
            f"`values` must have shape [N, T+1] = {(n, horizon + 1)} (critic at x_0 … x_T of each trajectory); "
            f"got {values.shape}."
        )
    if behaviour_log_probs is not None and jnp.shape(behaviour_log_probs) != (n, horizon):
        raise ValueError(
            f"`behaviour_log_probs` must be None (on-policy) or shape [N, T] = {(n, horizon)}; "
            f"got {jnp.shape(behaviour_log_probs)}."
        )
    if weights is None:
        weights = trajectories.weights() if hasattr(trajectories, "weights") else jnp.full((n,), 1.0 / n, rewards.dtype)
    elif jnp.shape(weights) != (n,):
        raise ValueError(f"`weights` must be None (uniform) or shape [N] = ({n},); got {jnp.shape(weights)}.")
    check_discount("gamma", gamma)
    check_finite("trajectories.rewards", rewards)
    check_finite("values", values)
    if behaviour_log_probs is not None:
        check_finite("behaviour_log_probs", behaviour_log_probs)
    check_finite("weights", weights)
    discounts = trajectories.discounts(gamma)
    observations = jax.tree_util.tree_map(lambda o: o[:, :-1], trajectories.observations)
    per_trajectory = jax.vmap(functools.partial(estimator.objective, **options))

    def batch_objective(p):
        log_pi = log_prob_fn(p, observations, trajectories.actions)
        if jnp.shape(log_pi) != (n, horizon):
            raise ValueError(f"`log_prob_fn` must return log-probabilities of shape [N, T] = {(n, horizon)}; "
                             f"got {jnp.shape(log_pi)}.")
        log_mu = jax.lax.stop_gradient(log_pi) if behaviour_log_probs is None else behaviour_log_probs
        return jnp.sum(weights * per_trajectory(log_pi, log_mu, rewards, values, discounts))

    if estimator.first_order_only:
        return prior.first_order(batch_objective)(params)
    return batch_objective(params)


def _tabular_log_prob(logits, states, actions):
    return jax.nn.log_softmax(logits, axis=-1)[states, actions]


def _validate_tabular(logits, trajectories, critic, discount, behaviour_logits, order):
    if order not in (1, 2, 3) or isinstance(order, bool):
        raise ValueError(f"`order` must be 1, 2 or 3 (gradient, Hessian, third derivative); got {order!r}.")
    logits = jnp.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape [S, A] (tabular softmax logits); got shape {logits.shape}.")
    num_states, num_actions = logits.shape
    obs, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
    if jnp.ndim(rewards) != 2:
        raise ValueError(f"`trajectories.rewards` must have shape [N, T]; got shape {jnp.shape(rewards)}.")
    n, horizon = rewards.shape
    if jnp.shape(obs) != (n, horizon + 1):
        raise ValueError(
            f"`trajectories.observations` must hold integer states of shape [N, T+1] = {(n, horizon + 1)}; "
            f"got {jnp.shape(obs)}."
        )
    if jnp.shape(actions) != (n, horizon):
        raise ValueError(f"`trajectories.actions` must have shape [N, T] = {(n, horizon)}; got {jnp.shape(actions)}.")
    check_index_range("trajectories.observations", obs, num_states, "state")
    check_index_range("trajectories.actions", actions, num_actions, "action")
    check_finite("trajectories.rewards", rewards)
    if jnp.shape(critic) != (num_states,):
        raise ValueError(
            f"`critic` must be a state-value table of shape [S] = ({num_states},), indexed by state; "
            f"got {jnp.shape(critic)}."
        )
    check_finite("critic", critic)
    if jnp.ndim(discount) != 0:
        raise ValueError(f"`discount` must be a scalar γ in [0, 1); got shape {jnp.shape(discount)}.")
    check_discount("discount", discount)
    if behaviour_logits is not None:
        if jnp.shape(behaviour_logits) != (num_states, num_actions):
            raise ValueError(
                f"`behaviour_logits` must be None (on-policy) or shape [S, A] = {(num_states, num_actions)}; "
                f"got {jnp.shape(behaviour_logits)}."
            )
        check_finite("behaviour_logits", behaviour_logits)
    check_finite("logits", logits)


def tabular_derivatives_autodiff(
    name: str,
    logits,
    trajectories,
    critic,
    *,
    discount,
    behaviour_logits=None,
    order: int = 2,
    **options,
) -> tuple[jax.Array, ...]:
    """Batch-mean derivative estimates for tabular softmax logits by autodiff of [`surrogate`][metagrad.estimators.surrogate].

    π_θ(a|x) = softmax(θ[x])[a]; values V(x_t) = `critic[x_t]` (indexed by **state**, bootstrap at x_T);
    μ = π_θ (on-policy, `stop_gradient`) or softmax(`behaviour_logits`). Returns the first `order`
    derivatives of the mean surrogate: `jax.grad`, then `jax.jacfwd` per further order (forward over
    reverse), sharing one evaluation per order through `has_aux`.

    Concrete inputs are validated (JAX would clamp out-of-range indices silently): integer observations in
    [0, S) and actions in [0, A), `critic [S]`, finite rewards, `discount` in [0, 1),
    `behaviour_logits [S, A]`. Under `jit`/`vmap` only the shape checks run. Jittable and vmappable
    with `name`, `order` and the options static.

    Args:
      name: registry name.
      logits (array of shape [S, A]): θ.
      trajectories: [`metagrad.rollout.Trajectories`][metagrad.rollout.Trajectories] with integer `observations [N, T+1]` and
        `actions [N, T]`.
      critic (array of shape [S]): state-value table.
      discount: γ ∈ [0, 1).
      behaviour_logits: `None` or `[S, A]`.
      order: 1, 2 or 3.
      **options: the estimator's options.

    Returns:
      `(gradient [S, A], hessian [S, A, S, A], third [S, A, S, A, S, A])` truncated to `order` entries.
    """
    _validate_tabular(logits, trajectories, critic, discount, behaviour_logits, order)
    logits = jnp.asarray(logits)
    values = jnp.asarray(critic, logits.dtype)[trajectories.observations]
    behaviour = None
    if behaviour_logits is not None:
        behaviour = _tabular_log_prob(jnp.asarray(behaviour_logits), trajectories.observations[:, :-1], trajectories.actions)
        behaviour = jax.lax.stop_gradient(behaviour)

    def objective(theta):
        return surrogate(
            name, _tabular_log_prob, theta, trajectories, values, discount, behaviour_log_probs=behaviour, **options
        )

    # Each level returns (its derivative, the tuple of the lower ones) so the lower orders come for free.
    fn = lambda theta: (jax.grad(objective)(theta), ())  # noqa: E731
    for _ in range(order - 1):
        fn = _next_order(fn)
    top, lower = fn(logits)
    return (*lower, top)


def _next_order(fn):
    def with_aux(theta):
        top, lower = fn(theta)
        return top, (*lower, top)

    return lambda theta: jax.jacfwd(with_aux, has_aux=True)(theta)


def tabular_derivatives(
    name: str,
    logits,
    trajectories,
    critic,
    *,
    discount,
    behaviour_logits=None,
    order: int = 2,
    **options,
) -> tuple[jax.Array, ...]:
    """Batch-mean estimates of ∇V, ∇²V (and ∇³V) for tabular softmax logits θ.

    The same numbers as [`tabular_derivatives_autodiff`][metagrad.estimators.tabular_derivatives_autodiff] (the tests check it to float precision), but
    computed by the chain rule through the log-probabilities ([`metagrad.tabular.derivatives`][metagrad.tabular.derivatives]): each
    trajectory's objective is differentiated in its T log-probabilities and the result is assembled in
    θ-space with the softmax Jacobian. For the Hessians of the paper's Figure 1 (N = 1000, T = 20, 20 × 5;
    `benchmarks/estimators.py`, RESULTS.md) that is 3–15× faster than differentiating the batch surrogate
    in θ for the OPE and DiCE-family estimators, as fast for LVC, and 5× slower for MAML's surrogate.

    π_θ(a|x) = softmax(θ[x])[a]; values V(x_t) = `critic[x_t]` (indexed by **state**, bootstrap at x_T);
    μ = π_θ (on-policy, `stop_gradient`) when `behaviour_logits` is `None`, else
    softmax(`behaviour_logits`). Concrete inputs are validated as in [`tabular_derivatives_autodiff`][metagrad.estimators.tabular_derivatives_autodiff].

    Args:
      name: registry name (see [`valid_names`][metagrad.estimators.valid_names]).
      logits (array of shape [S, A]): θ.
      trajectories: [`metagrad.rollout.Trajectories`][metagrad.rollout.Trajectories] with integer `observations [N, T+1]` and
        `actions [N, T]`; termination is honoured through `trajectories.discounts(discount)`.
      critic (array of shape [S]): state-value table.
      discount: γ ∈ [0, 1).
      behaviour_logits: `None` (on-policy) or `[S, A]`.
      order: 1, 2 or 3.
      **options: the estimator's options.

    Returns:
      `(gradient [S, A], hessian [S, A, S, A])` for `order=2`, plus `third [S, A, S, A, S, A]` for
      `order=3`, `(gradient,)` for `order=1`.
    """
    from metagrad.tabular import derivatives

    estimator = get(name)
    _validate_tabular(logits, trajectories, critic, discount, behaviour_logits, order)
    logits = jnp.asarray(logits)
    obs = trajectories.observations
    states, actions = obs[:, :-1], trajectories.actions
    args = (
        trajectories.rewards,
        jnp.asarray(critic, logits.dtype)[obs],
        trajectories.discounts(jnp.asarray(discount, logits.dtype)),
    )
    if behaviour_logits is None:

        def fn(log_pi, rewards, values, discounts):
            log_mu = jax.lax.stop_gradient(log_pi)
            return trajectory_objective(name, log_pi, log_mu, rewards, values, discounts, **options)

    else:
        args = (*args, _tabular_log_prob(jnp.asarray(behaviour_logits), states, actions))

        def fn(log_pi, rewards, values, discounts, log_mu):
            return trajectory_objective(name, log_pi, log_mu, rewards, values, discounts, **options)

    out = derivatives(fn, logits, states, actions, args, order=order)
    if estimator.first_order_only:
        out = (out[0], *(jnp.zeros_like(d) for d in out[1:]))
    return out
