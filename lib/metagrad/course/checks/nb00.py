"""Checks for notebook 00 — JAX for derivatives of expectations."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks._diagnose import (
    FLOAT32_REMEDY,
    _call,
    _close,
    _compare,
    _equations,
    _fail,
    _float,
    _refuse_float32,
    _register,
)

__all__ = ['check_hvp', 'check_score_function_gradient', 'check_score_function_hessian', 'check_magic_box']


def _hvp_functions():
    def cubic_sine(x):
        return jnp.sum(jnp.sin(x) * x**3)

    def log_partition(x):
        return jax.nn.logsumexp(x) + 0.5 * jnp.sum(x**2) * jnp.sum(x)

    return cubic_sine, log_partition


@_register("00", "hvp")
def check_hvp(hvp: Callable) -> str:
    """`hvp(f, x, v)` must return ∇²f(x) v (same shape as x) for a scalar function f."""
    cubic_sine, log_partition = _hvp_functions()
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    cases = [
        ("f(x) = Σ sin(x)·x³ at a random x of size 4", (cubic_sine, jax.random.normal(k1, (4,)), jax.random.normal(k2, (4,)))),
        ("a non-quadratic f at a random x of size 6", (log_partition, jax.random.normal(k3, (6,)), jax.random.normal(k4, (6,)))),
        ("v = 0 (the product must be zero)", (cubic_sine, jnp.ones(3), jnp.zeros(3))),
    ]
    cases = [(label, (f, _float(x), _float(v))) for label, (f, x, v) in cases]

    @functools.partial(jax.jit, static_argnums=0)
    def reference(f, x, v):
        return jax.hessian(f)(x) @ v

    mistakes = [
        (lambda f, x, v: jax.grad(f)(x) * v, "It equals ∇f(x)·v elementwise, a first derivative: the product needs second derivatives of f."),
        (lambda f, x, v: jax.grad(f)(x), "It equals the gradient ∇f(x): the direction v is missing."),
        (
            lambda f, x, v: reference(f, x, jnp.ones_like(v)),
            "It equals ∇²f(x) 1, the product with a vector of ones: it ignores the argument v; multiply along v.",
        ),
        (
            lambda f, x, v: jnp.diag(jax.hessian(f)(x)) * v,
            "It uses only the diagonal of the Hessian: right for Σ sin(x)·x³ (diagonal Hessian) but not for a function "
            "with mixed derivatives ∂²f/∂x_i∂x_j ≠ 0: every entry of the Hessian contributes to the product.",
        ),
    ]
    mistakes.append((lambda f, x, v: -reference(f, x, v), "It is −∇²f(x) v: the sign is flipped."))
    mistakes += [
        (
            lambda f, x, v: jax.jvp(f, (x,), (v,))[1] * v,
            "It is (∇f(x)·v) v, the directional derivative of f times v: a first derivative; the product needs the "
            "derivative of the gradient ∇f along v.",
        ),
        (
            lambda f, x, v: jax.grad(f)(x) * jnp.dot(jax.grad(f)(x), v),
            "It is ∇f (∇f·v) = ∇f ∇fᵀ v, the Gauss–Newton-like outer product of the gradient with itself: the Hessian "
            "is the derivative of the gradient ∇f along v, not a product of two gradients.",
        ),
        (
            lambda f, x, v: reference(f, v, x),
            "It is ∇²f(v) x, with x and v swapped: the Hessian is taken at the point x and multiplies the direction v.",
        ),
        (
            lambda f, x, v: jax.jvp(f, (x,), (v,))[1] * jnp.ones_like(x),
            "It is the directional derivative ∇f(x)·v (one number, the jvp of f) broadcast to the shape of x: a first "
            "derivative; the product needs the derivative of the gradient ∇f along v, a different entry per coordinate.",
        ),
    ]
    mistakes += [(_finite_difference(h, central), _FINITE_DIFFERENCE_HINT) for h in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6) for central in (True, False)]
    _compare("hvp", hvp, reference, cases, expected_form="(same as x)", mistakes=mistakes, jit=True)
    _refuse_approximation(hvp, reference)
    _refuse_full_hessian(hvp, cubic_sine)
    return (
        "matches jax.hessian(f)(x) @ v on 3 inputs (two random functions at random points and directions, and "
        f"v = 0), also under jax.jit, exactly (to {_EXACT_RTOL:.0e} relative in float64, on a function where central "
        f"differences of gradients are off by 6e-9 or more), and builds no {_HESSIAN_PROBE}×{_HESSIAN_PROBE} array (no full Hessian)."
    )


_FINITE_DIFFERENCE_HINT = (
    "It matches a finite difference of gradients: finite differences are approximate; the exercise asks for the exact "
    "product that automatic differentiation gives: differentiate with JAX, not with a small step h."
)


def _finite_difference(h: float, central: bool) -> Callable:
    """A plausible mistake: (∇f(x + hv) − ∇f(x − hv)) / 2h (central) or (∇f(x + hv) − ∇f(x)) / h (forward)."""

    def approximate(f, x, v):
        grad = jax.grad(f)
        if central:
            return (grad(x + h * v) - grad(x - h * v)) / (2 * h)
        return (grad(x + h * v) - grad(x)) / h

    return approximate


_EXACT_RTOL = 1e-10  # autodiff in float64 meets it (~1e-16); central differences on `_exactness_case` miss it (≥ 6e-9)


def _exactness_case():
    """`(f, x, v, label)` on which finite differences of gradients are visibly inexact in float64."""

    def stiff(x):
        return jnp.sum(jnp.exp(2.0 * x)) + 1e6 * jnp.sum(x) + jnp.prod(jnp.cos(x))

    x, v = _float([0.5, -0.3, 1.1, 0.2]), _float([0.7, 1.3, -0.4, 0.9])
    return stiff, x, v, "f(x) = Σ exp(2x) + 10⁶·Σ x + Π cos(x) in float64"


def _refuse_approximation(hvp: Callable, reference: Callable) -> None:
    """Refuse a product that is only approximately ∇²f(x) v, such as central finite differences of gradients.

    The test function (`_exactness_case`) has a large gradient (a linear term 10⁶·Σx: rounding in
    ∇f(x ± hv) costs about ε·10⁶/h) and a large fourth derivative (exp(2x): truncation costs about h²·16/6),
    so no step h gets a central difference closer than 6e-9 relative (tests/test_checks.py scans h), while
    `jax.jvp` of `jax.grad`, `jax.grad` of ⟨∇f, v⟩ or `jax.hessian(f)(x) @ v` agree to ~1e-16. Runs only
    in float64 (the notebook's precision); a float32 result is named as such first.
    """
    if jnp.result_type(float) != jnp.float64:
        return
    stiff, x, v, label = _exactness_case()
    _refuse_float32("hvp", hvp, (stiff, x, v), label)
    got = np.asarray(_call("hvp", hvp, (stiff, x, v), label), dtype=np.float64)
    expected = np.asarray(reference(stiff, x, v), dtype=np.float64)
    if got.shape != expected.shape:
        _fail("hvp", f"on {label} it returned shape {got.shape}; expected {expected.shape} (same as x).")
    relative = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))
    if relative > _EXACT_RTOL:
        _fail(
            "hvp",
            f"on {label} it matches jax.hessian(f)(x) @ v only to ~{relative:.0e} (relative): finite differences "
            "are approximate; the exercise asks for the exact product that automatic differentiation gives "
            f"(to better than {_EXACT_RTOL:.0e} here): differentiate with JAX, not with a small step h.",
        )


_APPROXIMATE = 1e-4  # finite differences with any usable step h land between _EXACT_RTOL and this
_SHIFT = 1e4  # a common shift of the logits: π is unchanged, but a step h on top of 10⁴ is rounded to ~2e-12


def _refuse_inexact(exercise: str, student_fn: Callable, reference: Callable, args, label: str, what: str,
                    remedy: str = "autodiff is exact ({bound}): differentiate with JAX, not with a small step h",
                    cause: str = "the error of finite differences") -> None:
    """Refuse a result that is only approximately `reference`, such as finite differences instead of autodiff.

    `args` is an input on which every finite-difference step h misses by more than 1e-9 (relative; the inputs
    carry a large offset, so x ± h is rounded: tests/test_checks_trial_a3.py scans h), while autodiff, or a
    closed form, agrees to ~1e-15. Called before `_compare`, so that a step large enough to fail the ordinary
    inputs is still named; an error above `_APPROXIMATE` is another mistake, left to `_compare`. Runs only in
    float64 (the notebook's precision); float32 is named first, NaN or infinity (an overflowing exp) as such. A float32
    step inside a float64 result is told from `cause` by moving every float64 input by 1e-12 (relative), below
    float32's resolution: a result computed in float32 does not change at all.
    """
    if jnp.result_type(float) != jnp.float64:
        return
    _refuse_float32(exercise, student_fn, args, label)
    got = np.asarray(_call(exercise, student_fn, args, label), dtype=np.float64)
    expected = np.asarray(reference(*args), dtype=np.float64)
    if got.shape != expected.shape:
        return  # _compare names shape problems on the ordinary inputs
    if not np.all(np.isfinite(got)):
        _fail(
            exercise,
            f"on {label} it returned NaN or infinity: exp of large logits overflows (exp(710) = inf); "
            "jax.nn.log_softmax subtracts the largest logit first.",
        )
    relative = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))
    if _EXACT_RTOL < relative < _APPROXIMATE:  # close but not exact; a larger error is left to _compare's diagnosis
        nudged = jax.tree_util.tree_map(lambda a: a * (1 + 1e-12) if getattr(a, "dtype", None) == np.float64 else a, args)
        if np.array_equal(np.asarray(_call(exercise, student_fn, nudged, label), dtype=np.float64), got):
            _fail(exercise, f"on {label} it matches {what} only to ~{relative:.0e} (relative) and does not move when its "
                            f"inputs move by 1e-12 (relative), below float32's resolution: {FLOAT32_REMEDY}")
        _fail(exercise, f"on {label} it matches {what} only to ~{relative:.0e} (relative), {cause}; "
                        + remedy.format(bound=f"< {_EXACT_RTOL:.0e}") + ".")


_HESSIAN_PROBE = 257  # an input size at which no honest Hessian-vector product needs an n×n array


def _refuse_full_hessian(hvp: Callable, f: Callable) -> None:
    """Trace `hvp` at x of size n = 257 (nothing is computed) and refuse it when it forms an n×n array.

    `jax.hessian(f)(x) @ v`, `jax.jacfwd(jax.grad(f))(x) @ v` or n gradients stacked into a matrix all
    build the n×n Hessian (n² memory, n passes); forward-over-reverse (`jax.jvp` of `jax.grad`) or
    `jax.grad` of ⟨∇f, v⟩ never holds more than a few length-n vectors. The probe is a closure, so when
    grading it runs in the student's kernel (through `_call`) and returns only a count.
    """
    n = _HESSIAN_PROBE

    def count_square_arrays(x, v):
        """How many equations of the jaxpr of `hvp(f, x, v)` (sub-jaxprs included) output an n×n block."""
        jaxpr = jax.make_jaxpr(lambda x, v: hvp(f, x, v))(x, v).jaxpr
        return np.array(float(sum(sum(sum(d == n for d in getattr(var.aval, "shape", ())) >= 2 for var in eqn.outvars)
                                      for eqn in _equations(jaxpr))))

    x = _float(jnp.linspace(-1.0, 1.0, n))
    found = _call("hvp", count_square_arrays, (x, jnp.ones_like(x)), f"x of size n = {n} (traced, not run)")
    if float(np.asarray(found)) > 0:
        _fail(
            "hvp",
            f"its values are right, but at an input of size n = {n} it builds an n×n array: the full Hessian "
            "(e.g. jax.hessian(f)(x) @ v or jax.jacfwd(jax.grad(f))). The exercise asks for the product without "
            "it, in the memory and time of a few gradients: which transformation gives a Jacobian times a vector without "
            "forming the Jacobian?",
        )


def _bandit_cases():
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    logits = _float(jax.random.normal(keys[0], (4,)))
    actions = jax.random.randint(keys[1], (50,), 0, 4)
    rewards = _float(jax.random.normal(keys[2], (50,)) + 1.0)
    return [
        ("50 random actions and rewards with 4 actions", (logits, actions, rewards)),
        ("a single sample", (_float(jax.random.normal(keys[3], (3,))), jnp.array([2]), _float([1.5]))),
        ("all rewards zero (the estimate must be zero)", (logits, actions, jnp.zeros_like(rewards))),
        ("very unequal logits", (_float([5.0, -3.0, 0.0]), jnp.array([0, 1, 2, 1]), _float([1.0, -2.0, 0.5, 3.0]))),
    ]


_SHIFTED_LABEL = "logits shifted by 10⁴ (the same π)"


def _shifted_bandit_case():
    logits = _float([0.3, -1.0, 0.8, 0.1]) + _SHIFT
    return logits, jnp.array([0, 1, 2, 3, 1, 2]), _float([1.0, -2.0, 0.5, 3.0, 1.5, -0.7])


def _plug_in_rewards(logits, actions, rewards):
    """r̂(a): the mean reward of the samples with action a (0 for actions never sampled), [A]."""
    counts = jnp.zeros_like(logits).at[actions].add(1.0)
    return jnp.zeros_like(logits).at[actions].add(rewards) / jnp.maximum(counts, 1.0)


def _plug_in_gradient(logits, actions, rewards):
    """A plausible mistake: ∇ Σ_a π(a) r̂(a), the exact gradient with the empirical reward table plugged in."""
    table = _plug_in_rewards(logits, actions, rewards)
    return jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * table))(logits)


@_register("00", "score_function_gradient")
def check_score_function_gradient(score_function_gradient: Callable) -> str:
    """`score_function_gradient(logits [A], actions [N], rewards [N])` -> (1/N) Σ_i r_i ∇ log π(a_i) [A]."""

    @jax.jit
    def reference(logits, actions, rewards):
        return jax.grad(lambda th: jnp.mean(rewards * jax.nn.log_softmax(th)[actions]))(logits)

    mistakes = [
        (
            lambda th, a, r: jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * jnp.zeros_like(t).at[a].set(r)))(th),
            "It is the exact gradient of Σ_a π(a) r̂(a) with r̂(a) a reward seen for action a (a reward table filled "
            "from the samples): the exercise asks for the score-function estimate, one term r_i ∇ log π(a_i) per sample.",
        ),
        (
            lambda th, a, r: jax.grad(lambda t: jnp.mean(r * jax.nn.softmax(t)[a]))(th),
            "It equals the gradient of π(a) instead of log π(a): the score is ∇ log π = ∇π / π.",
        ),
        (
            _plug_in_gradient,
            "It is the exact gradient of Σ_a π(a) r̂(a) with r̂(a) the average reward seen for action a (a plug-in "
            "estimate): the exercise asks for the score-function estimate, one term per sample.",
        ),
        (
            lambda th, a, r: jax.grad(lambda t: jnp.sum(r * jax.nn.log_softmax(t)[a]))(th),
            "It is N times too large: average over the samples instead of summing.",
        ),
        (
            lambda th, a, r: jax.grad(lambda t: jnp.mean(r * t[a]))(th),
            "It differentiates the logit θ[a] instead of log softmax(θ)[a]: the normaliser log Σ_b exp θ_b depends "
            "on θ too (jax.nn.log_softmax includes it).",
        ),
        (lambda th, a, r: -reference(th, a, r), "The sign is flipped: we ascend J, so no minus."),
        (
            lambda th, a, r: jnp.mean(r) * jax.grad(lambda t: jnp.mean(jax.nn.log_softmax(t)[a]))(th),
            "It is mean(r) × mean(∇ log π): each reward must multiply the score of its own action, inside the average.",
        ),
        (
            lambda th, a, r: reference(th, a, r - jnp.mean(r)),
            "It subtracts the batch-mean reward (a baseline): that changes the estimate (and, with the sample's own "
            "mean, biases it slightly); the exercise asks for the plain estimate (1/N) Σ r_i ∇log π(a_i).",
        ),
        (
            lambda th, a, r: jax.grad(lambda t: jnp.mean(jax.nn.log_softmax(t)[a]))(th),
            "It ignores the rewards (it is the mean score, whose expectation is 0): weight each score by its reward r_i.",
        ),
    ]
    _refuse_inexact(
        "score_function_gradient", score_function_gradient, reference, _shifted_bandit_case(), _SHIFTED_LABEL,
        "the exact gradient",
    )
    _compare(
        "score_function_gradient",
        score_function_gradient,
        reference,
        _bandit_cases(),
        expected_form="(one entry per action)",
        mistakes=mistakes,
        jit=True,
        vmap_in_axes=(None, 0, 0),  # the next cell vmaps it over batches of samples
    )
    return (
        "matches (1/N) Σ r_i ∇ log π(a_i) on 4 inputs (random batches, one sample, zero rewards, peaked logits), "
        "also under jax.jit and jax.vmap, and exactly (not by finite differences) on logits shifted by 10⁴."
    )


@_register("00", "score_function_hessian")
def check_score_function_hessian(score_function_hessian: Callable) -> str:
    """`score_function_hessian(logits [A], actions [N], rewards [N])` -> an unbiased estimate of ∇²J, [A, A] (derived in notebook 00)."""

    def log_pi(th, a):
        return jax.nn.log_softmax(th)[a]

    def parts(th, a, r):
        scores = jax.vmap(jax.grad(log_pi), in_axes=(None, 0))(th, a)
        curvature = jax.vmap(jax.hessian(log_pi), in_axes=(None, 0))(th, a)
        outer = jnp.einsum("n,ni,nj->ij", r, scores, scores) / r.shape[0]
        return jnp.einsum("n,nij->ij", r, curvature) / r.shape[0], outer, scores

    @jax.jit
    def reference(th, a, r):
        curvature, outer, _ = parts(th, a, r)
        return curvature + outer

    def mean_score_outer(th, a, r):
        _, _, scores = parts(th, a, r)
        mean = jnp.einsum("n,ni->i", r, scores) / r.shape[0]
        return jnp.einsum("n,nij->ij", r, jax.vmap(jax.hessian(log_pi), in_axes=(None, 0))(th, a)) / r.shape[0] + jnp.outer(mean, mean)

    def probability_hessian(th, a, r):
        return jax.hessian(lambda t: jnp.mean(r * jax.nn.softmax(t)[a]))(th)

    def weighted(outer_factor, reward_power=1):
        def wrong(th, a, r):
            _, _, scores = parts(th, a, r)
            curvature = jax.vmap(jax.hessian(log_pi), in_axes=(None, 0))(th, a)
            outer = jnp.einsum("n,ni,nj->ij", r**reward_power, scores, scores) / r.shape[0]
            return jnp.einsum("n,nij->ij", r, curvature) / r.shape[0] + outer_factor * outer

        return wrong

    def batch_mean_score(curvature_weight):
        """mean(r) ḡ ḡᵀ with ḡ the batch-mean score, plus the reward-weighted (or no) ∇²ℓ term."""

        def wrong(th, a, r):
            curvature, _, scores = parts(th, a, r)
            mean = jnp.mean(scores, axis=0)
            return curvature_weight * curvature + jnp.mean(r) * jnp.outer(mean, mean)

        return wrong

    def plug_in_hessian(th, a, r):
        table = _plug_in_rewards(th, a, r)
        return jax.hessian(lambda t: jnp.sum(jax.nn.softmax(t) * table))(th)

    mistakes = [
        (
            lambda th, a, r: parts(th, a, r)[0],
            "It is the Hessian of the surrogate (1/N) Σ r_i log π(a_i) only: a term is missing, because the samples "
            "depend on θ too (differentiate π(a) ∇ log π(a), not only ∇ log π(a)).",
        ),
        (
            lambda th, a, r: parts(th, a, r)[1],
            "It has only the score outer products ∇ℓ ∇ℓᵀ: the other term of the product rule, from differentiating the "
            "score itself, is missing.",
        ),
        (
            lambda th, a, r: parts(th, a, r)[0] + parts(th, a, jnp.ones_like(r))[1],
            "Its score outer products are not weighted by the rewards: each sample's whole term, ∇²ℓ_i + ∇ℓ_i ∇ℓ_iᵀ, "
            "is multiplied by its r_i.",
        ),
        (
            lambda th, a, r: reference(th, a, jnp.ones_like(r)),
            "It ignores the rewards: it is the average of ∇²ℓ_i + ∇ℓ_i ∇ℓ_iᵀ, whose expectation is 0; each sample's "
            "term is weighted by its reward r_i.",
        ),
        (lambda th, a, r: reference(th, a, r) * r.shape[0], "It is N times too large: average over the samples instead of summing."),
        (mean_score_outer, "It uses the outer product of the averaged score: each sample needs its own ∇ℓ_i ∇ℓ_iᵀ."),
        (
            batch_mean_score(1.0),
            "Its score outer product is the mean reward times ḡ ḡᵀ, ḡ the batch-mean score: an average of products "
            "is not a product of averages; form each sample's product, with its reward, then average.",
        ),
        (
            batch_mean_score(0.0),
            "It is the mean reward times ḡ ḡᵀ, ḡ the batch-mean score: form each sample's score product, with its "
            "reward, then average; and the term from differentiating the score itself is missing.",
        ),
        (
            weighted(1.0, reward_power=2),
            "It weights the score outer product by r_i²: each sample's reward multiplies its whole term once.",
        ),
        (
            weighted(-1.0),
            "The score outer product has the wrong sign: redo the product rule on ∇π = π ∇ log π and check the sign "
            "of each term.",
        ),
        (
            weighted(2.0),
            "The score outer product is counted twice: redo the product rule on ∇π = π ∇ log π and count its terms.",
        ),
        (
            weighted(0.5),
            "The score outer product is weighted by ½: redo the product rule on ∇π = π ∇ log π and count its terms.",
        ),
        (
            probability_hessian,
            "It differentiates the sampled π(a_i) twice: without dividing by π(a_i) the samples are not weighted "
            "right; write ∇²π / π in terms of log π.",
        ),
        (
            plug_in_hessian,
            "It is the exact Hessian of Σ_a π(a) r̂(a) with r̂(a) the average reward seen for action a (a plug-in "
            "estimate): the exercise asks for the score-function estimate, one term per sample.",
        ),
    ]
    _refuse_inexact(
        "score_function_hessian", score_function_hessian, reference, _shifted_bandit_case(), _SHIFTED_LABEL,
        "the exact estimate (∇² log π by autodiff)",
    )
    _compare(
        "score_function_hessian",
        score_function_hessian,
        reference,
        _bandit_cases(),
        expected_form="(A × A, one row and column per action)",
        mistakes=mistakes,
        jit=True,
        vmap_in_axes=(None, 0, 0),
    )
    return (
        "matches (1/N) Σ r_i (∇² log π(a_i) + ∇ log π(a_i) ∇ log π(a_i)ᵀ) on 4 inputs, also under jax.jit and jax.vmap, "
        "and exactly (not by finite differences) on logits shifted by 10⁴."
    )


@_register("00", "magic_box")
def check_magic_box(magic_box: Callable) -> str:
    """`magic_box(x)`: value 1 elementwise, and ∇□(w) = □(w)∇w at every order (checked up to the third).

    Mistake classes: plain exp(x) (value not 1); no stop_gradient (derivative 0); flipped sign
    exp(sg(x) − x); a ratio x / sg(x) (derivative w′/w); right to first order only (1 + x − sg(x)); right to
    second order only (a truncated Taylor series); not jit-compatible. Messages hint, they do not give the form.
    """
    exercise = "magic_box"
    x = _float([0.3, -1.2, 2.0])
    value = np.asarray(_call(exercise, magic_box, (x,), "x = [0.3, -1.2, 2.0]"), dtype=np.float64)
    if value.shape != x.shape:
        _fail(exercise, f"on x of shape {x.shape} it returned shape {value.shape}; it must act elementwise.")
    if not _close(value, np.ones(3)):
        hint = ""
        if _close(value, np.exp(x)):
            hint = (
                " It equals exp(x): keep the exponential's derivatives but make its value 1 (does jax.lax.stop_gradient "
                "change a value or a derivative?)."
            )
        elif np.all(value > 0) and np.ptp(np.log(value) - np.asarray(x)) < 1e-6:
            hint = (
                " It equals exp(x − c) with one constant c shared by all entries (like stop_gradient(x.mean())): it must "
                "act elementwise, each entry against its own stop-gradient copy."
            )
        _fail(exercise, f"its value must be exactly 1 for every x; got {np.round(value, 4).tolist()}.{hint}")
    _refuse_float32(exercise, magic_box, (x,), "x = [0.3, -1.2, 2.0]")
    def w(theta):  # a log-probability-like function of θ
        return jnp.sin(theta) + theta**2

    theta = _float(0.7)

    def box(t):
        return magic_box(w(t))

    d1 = float(jax.grad(w)(theta))
    d2 = float(jax.grad(jax.grad(w))(theta))
    d3 = float(jax.grad(jax.grad(jax.grad(w)))(theta))
    first = _call(exercise, jax.grad(box), (theta,), "θ = 0.7 (first derivative)")
    if _close(first, 0.0):
        _fail(
            exercise,
            "the derivative of magic_box(w(θ)) is 0, but it must be w'(θ): the value 1 is right, but a constant "
            "(ones_like(x), or exp(x − x) without stop_gradient) carries no derivative; the derivative must still see x.",
        )
    if _close(first, -d1):
        _fail(exercise, "d/dθ magic_box(w(θ)) is −w'(θ): the sign is flipped; check which term of the exponent is differentiated.")
    if _close(first, d1 / float(w(theta))):
        _fail(
            exercise,
            f"d/dθ magic_box(w(θ)) is w'/w = {float(first):.4f} instead of w'(θ) = {d1:.4f}: it divides by the value "
            "(like x / stop_gradient(x)), whose derivative depends on x; the derivative of magic_box(x) must equal "
            "magic_box(x) itself at every x.",
        )
    if not _close(first, d1):
        _fail(exercise, f"d/dθ magic_box(w(θ)) should be w'(θ) = {d1:.4f}; got {float(first):.4f}.")
    second = _call(exercise, jax.grad(jax.grad(box)), (theta,), "θ = 0.7 (second derivative)")
    if not _close(second, d2 + d1**2):
        hint = ""
        if _close(second, d2):
            hint = (
                " It is right to first order only (like 1 + x − stop_gradient(x)): the w'² term needs a function "
                "that is its own derivative."
            )
        _fail(exercise, f"d²/dθ² magic_box(w(θ)) should be w'' + w'² = {d2 + d1**2:.4f}; got {float(second):.4f}.{hint}")
    third = _call(exercise, jax.grad(jax.grad(jax.grad(box))), (theta,), "θ = 0.7 (third derivative)")
    expected_third = d3 + 3 * d1 * d2 + d1**3
    if not _close(third, expected_third):
        hint = ""
        if _close(third, d3 + 3 * d1 * d2):
            hint = (
                " It is right to second order only (like the Taylor polynomial 1 + y + y²/2, y = x − stop_gradient(x)):"
                " DiCE needs every order: which function equals all of its own derivatives?"
            )
        _fail(
            exercise,
            "its first two derivatives are right, but the third derivative of magic_box(w(θ)) should be "
            f"w‴ + 3w′w″ + w′³ = {expected_third:.4f}; got {float(third):.4f}.{hint}",
        )
    big = _float([800.0, -800.0, 30.0])  # DiCE sums log-probabilities over whole trajectories: |x| can be large
    big_label = "x = [800, −800, 30] (a sum of many log-probabilities)"
    big_value = np.asarray(_call(exercise, magic_box, (big,), big_label), dtype=np.float64)
    big_grad = np.asarray(
        _call(exercise, jax.grad(lambda y: jnp.sum(magic_box(y))), (big,), big_label + ", its gradient"), dtype=np.float64
    )
    if not (np.all(np.isfinite(big_value)) and np.all(np.isfinite(big_grad))):
        _fail(
            exercise,
            f"on {big_label} its value or gradient is NaN or infinite: exp(800) overflows float64 (exp(710) = inf), "
            "and inf / inf or 0 · inf is NaN. Exponentiate only something that is 0 in value, so nothing large is "
            "ever formed.",
        )
    if not (_close(big_value, np.ones(3)) and _close(big_grad, np.ones(3))):
        _fail(
            exercise,
            f"on {big_label} its value is {np.round(big_value, 4).tolist()} and its gradient "
            f"{np.round(big_grad, 4).tolist()}; both must be 1 at every x, however large.",
        )

    jitted = _call(exercise, jax.jit(magic_box), (x,), "x = [0.3, -1.2, 2.0] under jax.jit")
    if not _close(jitted, np.ones(3)):
        _fail(exercise, "it is right when called directly but not under jax.jit: avoid NumPy and Python side effects inside.")
    return "value 1 everywhere (also under jax.jit); first, second and third derivatives w′, w″ + w′², w‴ + 3w′w″ + w′³."
