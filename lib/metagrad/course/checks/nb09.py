"""Checks for notebook 09 — Beyond."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks._diagnose import (
    _call,
    _close,
    _compare,
    _fail,
    _float,
    _register,
    _returns,
)
from metagrad.course.checks.nb06 import _long_case_with_hint, _long_trajectory, _taylor_cases
from metagrad.course.checks.nb08 import _inner_step_data, _jit_estimator, _reference_inner_step

__all__ = ['check_taypo_terms', 'check_maml_objective_hessian', 'check_off_policy_inner_step']


def _reference_taypo_terms(log_ratios, rewards, values, gamma, order):
    """[Û_1, …, Û_K] = differences of consecutive TayPO-k estimates (Û_0 = G_0)."""
    from metagrad import ope

    estimates = [_returns(rewards, values, gamma)[0]]
    estimates += [ope.taylor_expansion(log_ratios, rewards, values, gamma, order=k) for k in range(1, order + 1)]
    estimates = jnp.stack(estimates)
    return estimates[1:] - estimates[:-1]


@_register("09", "taypo_terms")
def check_taypo_terms(taypo_terms: Callable) -> str:
    """`taypo_terms(log_ratios [T], rewards [T], values [T+1], gamma, order)` -> [Û_1 … Û_K] and their Jacobian."""
    base = _taylor_cases()
    lr, r, v, g = base[0][1]
    cases = [
        ("K = 1 on a random trajectory of length 6", (lr, r, v, g, 1)),
        ("K = 4", (lr, r, v, g, 4)),
        ("K = 8 > T = 6 (the terms above T are 0)", (lr, r, v, g, 8)),
        ("K = 3 with large log-ratios and γ = 0.5", (*base[3][1], 3)),
        ("K = 2, a single step (T = 1)", (*base[2][1], 2)),
    ]
    long_case = ("K = 3 on a long trajectory (T = 300, small log-ratios)", (*_long_trajectory(), 0.99, 3))

    def with_jacobian(fn):
        @functools.partial(jax.jit, static_argnums=(4,))
        def both(lr, r, v, g, k):
            out = fn(lr, r, v, g, k)
            return jnp.concatenate([jnp.ravel(out), jax.jacobian(lambda x: fn(x, r, v, g, k))(lr).ravel()])

        return both

    def cumulative(lr, r, v, g, k):
        return jnp.cumsum(_reference_taypo_terms(lr, r, v, g, k)) + _returns(r, v, g)[0]

    def partial_sums(lr, r, v, g, k):
        return jnp.cumsum(_reference_taypo_terms(lr, r, v, g, k))

    def plus_g0(lr, r, v, g, k):
        return _reference_taypo_terms(lr, r, v, g, k) + _returns(r, v, g)[0]

    def g0_in_first(lr, r, v, g, k):  # [G_0 + Û_1, Û_2, …, Û_K]
        return _reference_taypo_terms(lr, r, v, g, k).at[0].add(_returns(r, v, g)[0])

    def from_zero(lr, r, v, g, k):
        terms = _reference_taypo_terms(lr, r, v, g, k)
        return jnp.concatenate([_returns(r, v, g)[:1], terms[:-1]])

    def loop(lr, r, v, g, k, inclusive=False, discounted=True, d_of=jnp.expm1, baseline=True):
        """Û_k = Σ_t γ^t d_t Â_t e_{k−1}(d_0 … d_{t−1}) by the recursion, and its variants (the keywords)."""
        d = d_of(lr)
        weights = (g ** jnp.arange(r.shape[0]) if discounted else 1.0) * (_returns(r, v, g) - (v[:-1] if baseline else 0.0))
        e = jnp.zeros(k, lr.dtype).at[0].set(1.0)
        terms = jnp.zeros(k, lr.dtype)
        for t in range(r.shape[0]):
            update = lambda e: e + d[t] * jnp.concatenate([jnp.zeros(1, lr.dtype), e[:-1]])  # noqa: E731
            e = update(e) if inclusive else e
            terms = terms + weights[t] * d[t] * e
            e = e if inclusive else update(e)
        return terms

    def no_bootstrap(lr, r, v, g, k):
        return _no_bootstrap_terms(lr, r, v, g, k)

    def shifted_in_zero(lr, r, v, g, k):  # [0, Û_1, …, Û_{K−1}]
        terms = _reference_taypo_terms(lr, r, v, g, k)
        return jnp.concatenate([jnp.zeros(1, terms.dtype), terms[:-1]])

    def reversed_order(lr, r, v, g, k):
        return _reference_taypo_terms(lr, r, v, g, k)[::-1]

    mistakes = [
        (no_bootstrap, "Its returns G_t stop at the last reward: they are bootstrapped, G_T = V(x_T), as in the advantages "
                       "Â_t = G_t − V(x_t)."),
        (functools.partial(loop, d_of=lambda x: x),
         "Its d_t is the log-ratio: the expansion is in d_t = ρ_t − 1 = exp(log ρ_t) − 1 (jnp.expm1)."),
        (shifted_in_zero, "It is shifted by one order, [0, Û_1, …, Û_{K−1}]: return [Û_1, …, Û_K]."),
        (functools.partial(loop, baseline=False), "It weights each term with the return G_t instead of the advantage Â_t = G_t − V(x_t): "
                                 "Û_k = Σ_t γ^t d_t Â_t e_{k−1}(d_0 … d_{t−1})."),
        (reversed_order, "It returns the terms in reverse order, [Û_K … Û_1]: return [Û_1, …, Û_K], lowest order first."),
        (g0_in_first, "It adds G_0 to the first term only, [G_0 + Û_1, Û_2, …, Û_K]: Û_0 = G_0 is not among the "
                      "returned terms; return Û_1 … Û_K alone."),
        (cumulative, "It returns the cumulative estimates V̂_k = G_0 + Û_1 + … + Û_k; return each order's term Û_k alone."),
        (partial_sums, "It returns the partial sums Û_1 + … + Û_k (TayPO-k minus G_0); return each order's term Û_k alone."),
        (plus_g0, "It adds G_0 to every term: Û_0 = G_0 is not among the returned terms; return Û_1 … Û_K alone."),
        (from_zero, "It is shifted by one order: [Û_0, …, Û_{K−1}] with Û_0 = G_0; return Û_1 … Û_K."),
        (functools.partial(loop, inclusive=True),
         "It updates e_j with d_t before using it (off by one): Û_k at step t needs e_{k−1}(d_0 … d_{t−1})."),
        (functools.partial(loop, discounted=False),
         "It leaves out the discount γ^t of step t: each term is γ^t d_t Â_t e_{k−1}(d_0 … d_{t−1})."),
        (functools.partial(loop, d_of=jnp.exp),
         "It uses the ratio ρ_t = exp(log_ratios[t]) where the expansion needs d_t = ρ_t − 1 (jnp.expm1), the "
         "deviation of the ratio from 1."),
    ]
    _compare(
        "taypo_terms",
        with_jacobian(taypo_terms),
        with_jacobian(_reference_taypo_terms),
        cases,
        expected_form="([K] terms, then their Jacobian in log_ratios)",
        mistakes=[(with_jacobian(m), hint) for m, hint in mistakes],
    )
    _long_case_with_hint("taypo_terms", lambda: _compare(
        "taypo_terms", with_jacobian(taypo_terms), with_jacobian(_reference_taypo_terms), [long_case],
        expected_form="([K] terms, then their Jacobian in log_ratios)"))
    return ("matches the differences of metagrad.ope.taylor_expansion for K = 1, 2, 3, 4 and K > T, in value and Jacobian "
            "(incl. T = 1 and T = 300).")


def reference_maml_objective_hessian(at_theta, at_adapted, step_size) -> jax.Array:
    """∇²F(θ) for F(θ) = V(θ + η∇V(θ)): (I + ηH)H′(I + ηH) + η∇³V(θ)[∇V(θ′)], with H = ∇²V(θ), H′ = ∇²V(θ′)."""
    _, hess, third = at_theta
    grad_adapted, hess_adapted, _ = at_adapted
    jacobian = jnp.eye(hess.shape[0]) + step_size * hess  # ∂θ′/∂θ, symmetric
    return jacobian @ hess_adapted @ jacobian + step_size * jnp.einsum("ijk,k->ij", third, grad_adapted)


def _symmetric_derivatives(rng, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(gradient [n], symmetric Hessian [n, n], fully symmetric third derivative [n, n, n]), random."""
    hess = rng.normal(size=(n, n))
    third = rng.normal(size=(n, n, n))
    third = sum(np.transpose(third, p) for p in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]) / 6
    return _float(rng.normal(size=n)), _float(hess + hess.T), _float(third)


def _maml_objective_hessian_mistakes() -> list[tuple[Callable, str]]:
    def variant(jacobian_at="theta", middle_at="adapted", third_at="theta", vector_at="adapted", eta_power=1.0,
                sign=1.0, left=True, right=True, left_at=None):
        def wrong(at_theta, at_adapted, step_size):
            points = {"theta": at_theta, "adapted": at_adapted}
            eye = jnp.eye(at_theta[1].shape[0])
            jacobian = eye + step_size * points[jacobian_at][1]
            left_jacobian = eye + step_size * points[left_at or jacobian_at][1]
            out = points[middle_at][1]
            out = (left_jacobian if left else eye) @ out @ (jacobian if right else eye)
            contraction = jnp.einsum("ijk,k->ij", points[third_at][2], points[vector_at][0])
            return out + sign * step_size**eta_power * contraction

        return wrong

    def jacobian_squared_first(at_theta, at_adapted, step_size):  # (I + ηH)² H′ instead of (I + ηH) H′ (I + ηH)
        jacobian = jnp.eye(at_theta[1].shape[0]) + step_size * at_theta[1]
        return (jacobian @ jacobian @ at_adapted[1]
                + step_size * jnp.einsum("ijk,k->ij", at_theta[2], at_adapted[0]))

    def hessians_only(at_theta, at_adapted, step_size):
        return variant()(at_theta, at_adapted, step_size) - step_size * jnp.einsum("ijk,k->ij", at_theta[2], at_adapted[0])

    return [
        (jacobian_squared_first, "It multiplies both factors I + ηH(θ) on the same side of H(θ′): the chain rule puts "
                                 "one on each side (the result is symmetric)."),
        (hessians_only, "It has only the Hessian terms (I + ηH)H(θ′)(I + ηH): differentiating the factor I + ηH(θ) of "
                        "∇F also gives a term, with the third derivative ∇³V(θ)."),
        (variant(third_at="adapted"), "Its third-derivative term is taken at θ′: it comes from differentiating H(θ) in "
                                      "the factor I + ηH(θ), so it is ∇³V at θ."),
        (variant(vector_at="theta"), "It contracts ∇³V(θ) with ∇V(θ): the vector it acts on is the one I + ηH(θ) "
                                     "multiplies in ∇F = (I + ηH(θ))∇V(θ′), the gradient at θ′."),
        (variant(right=False), "It has one factor I + ηH(θ) only: one comes from ∇F itself, and the chain rule through "
                               "∇V(θ′) brings a second (the result is symmetric)."),
        (variant(left=False), "It has one factor I + ηH(θ) only: one comes from ∇F itself, and the chain rule through "
                              "∇V(θ′) brings a second (the result is symmetric)."),
        (variant(eta_power=0.0), "Its third-derivative term lacks the factor η: it comes from differentiating ηH(θ)."),
        (variant(eta_power=2.0), "Its third-derivative term carries η²: differentiating I + ηH(θ) gives η∇³V once."),
        (variant(sign=-1.0), "Its third-derivative term has the wrong sign: the product rule adds both terms."),
        (variant(jacobian_at="adapted"), "Its factors are I + ηH(θ′): the Jacobian of the inner step ∂θ′/∂θ is "
                                         "I + ηH(θ), taken at θ."),
        (variant(left_at="adapted"), "One of its factors is I + ηH(θ′): both factors are the Jacobian of the inner step "
                                     "∂θ′/∂θ = I + ηH(θ), taken at θ (∇F = (I + ηH(θ))∇V(θ′), and ∇V(θ′) brings the second)."),
        (lambda at_theta, at_adapted, step_size: variant(left_at="adapted")(at_theta, at_adapted, step_size).T,
         "One of its factors is I + ηH(θ′): both factors are the Jacobian of the inner step ∂θ′/∂θ = I + ηH(θ), taken "
         "at θ (∇F = (I + ηH(θ))∇V(θ′), and ∇V(θ′) brings the second)."),
        (variant(middle_at="theta"), "Its middle Hessian is H(θ): the outer value is V at θ′, so the middle factor is "
                                     "H(θ′)."),
    ]


@_register("09", "maml_objective_hessian")
def check_maml_objective_hessian(maml_objective_hessian: Callable) -> str:
    """`maml_objective_hessian((g, H, T) at θ, (g′, H′, T′) at θ′, step_size)` -> ∇²F(θ) [n, n]."""
    rng = np.random.default_rng(90)
    cases = [
        ("random derivatives with n = 3, η = 0.37", (_symmetric_derivatives(rng, 3), _symmetric_derivatives(rng, 3), 0.37)),
        ("random derivatives with n = 4, η = 1.6", (_symmetric_derivatives(rng, 4), _symmetric_derivatives(rng, 4), 1.6)),
        ("n = 2, η = 0 (F = V, so ∇²F = H(θ′) as given)",
         (_symmetric_derivatives(rng, 2), _symmetric_derivatives(rng, 2), 0.0)),
    ]
    _compare("maml_objective_hessian", maml_objective_hessian, reference_maml_objective_hessian, cases,
             expected_form="(n × n)", mistakes=_maml_objective_hessian_mistakes(), jit=True)
    return ("matches (I + ηH)H(θ′)(I + ηH) + η∇³V(θ)[∇V(θ′)] on 3 inputs (incl. η = 0), also under jax.jit.")


def _reference_off_policy_inner_step(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
    from metagrad import estimators
    from metagrad.tabular import log_policy

    log_mu = log_policy(behaviour_logits, batch.observations[:, :-1], batch.actions)

    def inner(theta):
        return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], gamma,
                                    behaviour_log_probs=log_mu)

    return logits + step_size * jax.grad(inner)(logits)


_UNRECORDED = "θ ≠ μ on a batch that does not record log μ (its log_probs are NaN)"


@_register("09", "off_policy_inner_step")
def check_off_policy_inner_step(off_policy_inner_step: Callable) -> str:
    """`off_policy_inner_step(logits, batch, critic, behaviour_logits, gamma, step_size, estimator)` -> θ'."""
    behaviour, batch, critic = _inner_step_data()  # the batch was sampled with these logits: they are μ
    theta = behaviour + _float(0.4 * np.random.default_rng(90).normal(size=behaviour.shape))
    cases = [
        ("θ ≠ μ, estimator 'taypo2', η = 0.5", (theta, batch, critic, behaviour, 0.8, 0.5, "taypo2")),
        ("θ ≠ μ, estimator 'dr', η = 1.0", (theta, batch, critic, behaviour, 0.8, 1.0, "dr")),
        ("θ = μ (on-policy: the ordinary inner step)", (behaviour, batch, critic, behaviour, 0.8, 0.5, "taypo2")),
        # Logged data need not record log μ: the argument `behaviour_logits` is the behaviour policy, whatever the batch holds.
        (_UNRECORDED, (theta, batch._replace(log_probs=jnp.full_like(batch.log_probs, jnp.nan)), critic, behaviour, 0.8,
                       0.5, "taypo2")),
    ]

    def on_policy(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        return _reference_inner_step(logits, batch, critic, gamma, step_size, estimator)

    def trainable_behaviour(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        return logits  # log μ = log π_θ without stop_gradient: every ratio is the constant 1

    def swapped(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        moved = _reference_off_policy_inner_step(behaviour_logits, batch, critic, logits, gamma, step_size, estimator)
        return moved - behaviour_logits + logits

    def probabilities(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        from metagrad import estimators
        from metagrad.tabular import log_policy

        mu = jnp.exp(log_policy(behaviour_logits, batch.observations[:, :-1], batch.actions))

        def inner(theta):
            return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], gamma,
                                        behaviour_log_probs=mu)

        return logits + step_size * jax.grad(inner)(logits)

    def behaviour_from(log_mu_of):
        """The reference step with log μ = log_mu_of(behaviour_logits, batch) (a wrong log μ, for the mistakes)."""

        def step(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
            from metagrad import estimators
            from metagrad.tabular import log_policy

            def inner(theta):
                return estimators.surrogate(estimator, log_policy, theta, batch, critic[batch.observations], gamma,
                                            behaviour_log_probs=log_mu_of(behaviour_logits, batch))

            return logits + step_size * jax.grad(inner)(logits)

        return step

    def shifted(behaviour_logits, batch):  # μ(a_t | x_{t+1}): the next state's row
        from metagrad.tabular import log_policy

        return log_policy(behaviour_logits, batch.observations[:, 1:], batch.actions)

    def raw_logits(behaviour_logits, batch):  # the unnormalised logits, not log μ
        return behaviour_logits[batch.observations[:, :-1], batch.actions]

    def time_indexed(logits, batch, critic, behaviour_logits, gamma, step_size, estimator, wrap=False):
        steps = jnp.arange(batch.observations.shape[1])  # T + 1 > S here: clipped (JAX's gather) or wrapped around
        steps = steps % critic.shape[0] if wrap else jnp.minimum(steps, critic.shape[0] - 1)
        table = jnp.broadcast_to(critic[steps], batch.observations.shape)
        return _off_policy_step(logits, batch, table, behaviour_logits, gamma, step_size, estimator)

    def always_dr(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        return _reference_off_policy_inner_step(logits, batch, critic, behaviour_logits, gamma, step_size, "dr")

    def gradient_at_behaviour(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        return logits + _off_policy_step(behaviour_logits, batch, critic[batch.observations], behaviour_logits, gamma,
                                         step_size, estimator) - behaviour_logits

    def swapped_roles(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        from metagrad import estimators
        from metagrad.tabular import log_policy

        def inner(theta):
            return estimators.surrogate(estimator, log_policy, behaviour_logits, batch, critic[batch.observations], gamma,
                                        behaviour_log_probs=log_policy(theta, batch.observations[:, :-1], batch.actions))

        return logits + step_size * jax.grad(inner)(logits)

    def downhill(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        return 2 * logits - _reference_off_policy_inner_step(logits, batch, critic, behaviour_logits, gamma, step_size,
                                                             estimator)

    def no_step_size(logits, batch, critic, behaviour_logits, gamma, step_size, estimator):
        return _reference_off_policy_inner_step(logits, batch, critic, behaviour_logits, gamma, 1.0, estimator)

    mistakes = [
        (time_indexed, "It matches a critic indexed by time, critic[t]: index it by the visited state, "
                       "critic[observations]."),
        (functools.partial(time_indexed, wrap=True), "It matches a critic indexed by time, critic[t]: index it by the "
                                                     "visited state, critic[observations]."),
        (always_dr, "It gives DR's step whatever `estimator` says: pass `estimator` on to estimators.surrogate."),
        (gradient_at_behaviour, "It takes the gradient at behaviour_logits: the inner step differentiates the surrogate at "
                                "θ = logits, θ' = θ + η ∇V̂(θ; μ); μ enters only through its log-probabilities."),
        (swapped_roles, "It swaps the roles of π and μ: it evaluates the surrogate at behaviour_logits with log π_θ "
                        "as behaviour_log_probs; evaluate it at θ = logits with log μ from behaviour_logits."),
        (downhill, "It steps downhill: the inner step is gradient *ascent* on the estimated value, θ + η ∇V̂."),
        (no_step_size, "It leaves out the step size: θ' = θ + η ∇V̂(θ; μ), with η = step_size."),
        (behaviour_from(shifted), "It reads μ at the next state, x_{t+1}: the action a_t was taken in x_t, so log μ "
                                  "is log_policy(behaviour_logits, observations[:, :-1], actions)."),
        (behaviour_from(raw_logits), "It uses the raw behaviour logits as log μ: they are log-probabilities only after "
                                     "normalisation; use log_policy(behaviour_logits, …) (a log-softmax)."),
        (probabilities, "It passes the behaviour probabilities μ(a|x) where log-probabilities are expected: "
                        "behaviour_log_probs = log_policy(behaviour_logits, …), not its exp."),
        (on_policy, "It treats the data as on-policy (μ = stop_gradient(π_θ)): the data came from the behaviour policy, "
                    "so log μ must be log_policy(behaviour_logits, …)."),
        (trainable_behaviour, "It returns θ unchanged: if log μ is computed from θ itself every ratio π_θ/μ is the "
                              "constant 1 and all derivatives vanish; μ comes from behaviour_logits."),
        (swapped, "It swaps the roles of π and μ: the ratios are π_θ(a|x)/μ(a|x) with θ the argument being adapted."),
    ]
    _compare(
        "off_policy_inner_step",
        _jit_estimator(off_policy_inner_step, 6),
        _jit_estimator(_reference_off_policy_inner_step, 6),
        cases,
        expected_form="(same as logits, [S, A])",
        mistakes=mistakes,
        non_finite_hints={_UNRECORDED: "It reads log μ from batch.log_probs, which this batch does not record (NaN): the "
                                       "behaviour policy is the argument `behaviour_logits`; compute log μ(a_t|x_t) from it."},
    )

    # θ' must depend on θ through the inner gradient too: its Jacobian is I + η ∇²V̂(θ; μ), which the meta-gradient uses.
    def jacobian(fn, estimator):
        return jax.jacobian(lambda th: fn(th, batch, critic, behaviour, 0.8, 0.5, estimator))(theta)

    for estimator in ("taypo2", "dr"):
        expected = np.asarray(jax.jit(jacobian, static_argnums=(0, 1))(_reference_off_policy_inner_step, estimator))
        got = _call("off_policy_inner_step", jax.jit(jacobian, static_argnums=(0, 1)), (off_policy_inner_step, estimator),
                    f"the Jacobian of θ' in θ (θ ≠ μ, estimator {estimator!r})")
        got = np.asarray(got, dtype=np.float64)
        if _close(got, expected):
            continue
        if _close(got, np.eye(theta.size).reshape(expected.shape)):
            _fail("off_policy_inner_step", "θ' is right, but the adapted parameters do not depend on θ through the inner "
                                           "gradient: ∂θ'/∂θ is the identity, where it should be I + η ∇²V̂(θ; μ). Remove "
                                           "the stop_gradient (or NumPy conversion) around the inner gradient: the "
                                           "meta-gradient needs its Hessian.")
        _fail("off_policy_inner_step", f"θ' is right, but its Jacobian in θ is not (estimator {estimator!r}, largest "
                                       f"absolute error {float(np.max(np.abs(got - expected))):.3g}): keep the inner "
                                       "gradient differentiable in θ, with log μ a constant (it comes from "
                                       "behaviour_logits).")
    return ("matches θ + η ∇V̂(θ; μ) with the behaviour log-probabilities for 'taypo2' and 'dr', and the on-policy step at "
            "θ = μ, in value and in its Jacobian in θ.")


def _no_bootstrap_terms(log_ratios, rewards, values, gamma, order):
    """[Û_1 … Û_K] with returns that stop at the last reward (G_T = 0) and the baselines V(x_t), t < T, unchanged."""
    from metagrad import ope

    def estimate(k):
        return ope.taylor_expansion(log_ratios, rewards, values.at[-1].set(0.0), gamma, order=k)

    estimates = jnp.stack([_returns(rewards, values.at[-1].set(0.0), gamma)[0]] + [estimate(k) for k in range(1, order + 1)])
    return estimates[1:] - estimates[:-1]


def _off_policy_step(logits, batch, values, behaviour_logits, gamma, step_size, estimator):
    """θ + η ∇V̂(θ; μ) with the critic already looked up (`values` [B, T+1]): for the mistakes' variants."""
    from metagrad import estimators
    from metagrad.tabular import log_policy

    log_mu = log_policy(behaviour_logits, batch.observations[:, :-1], batch.actions)

    def inner(theta):
        return estimators.surrogate(estimator, log_policy, theta, batch, values, gamma, behaviour_log_probs=log_mu)

    return logits + step_size * jax.grad(inner)(logits)
