"""Checks for notebook 01 — MDPs and exact values."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks._diagnose import (
    FIXED_GAMMAS,
    _compare,
    _refuse_loop,
    _float,
    _register,
    _random_mdp,
    _random_policy,
)

__all__ = ['check_policy_evaluation', 'check_discounted_occupancy', 'check_truncated_occupancy']


def _mdp_cases():
    from metagrad.mdp import TabularMDP

    rng = np.random.default_rng(2)
    cases = [
        ("a random 5-state, 3-action MDP with γ = 0.9", (_random_mdp(rng, 5, 3, 0.9), _random_policy(rng, 5, 3))),
        ("near-deterministic transitions (Dirichlet 0.01)", (_random_mdp(rng, 6, 2, 0.8, 0.01), _random_policy(rng, 6, 2))),
        ("γ = 0 (values equal immediate rewards)", (_random_mdp(rng, 4, 3, 0.0), _random_policy(rng, 4, 3))),
    ]
    one = TabularMDP(jnp.ones((1, 2, 1)), _float([[1.0, 3.0]]), _float([1.0]), 0.5)
    cases.append(("a single-state MDP", (one, _float([[0.25, 0.75]]))))
    deterministic = _float(np.eye(4)[rng.integers(0, 4, size=5)])
    cases.append(("a deterministic policy", (_random_mdp(rng, 5, 4, 0.95), deterministic)))
    spread = _random_mdp(rng, 4, 2, 0.7)
    spread = TabularMDP(spread.transitions, spread.rewards, _float(rng.dirichlet(np.ones(4))), spread.gamma)
    cases.append(("a random start distribution (γ = 0.7)", (spread, _random_policy(rng, 4, 2))))
    return cases


_NEAR_ONE = 0.9999  # an effective horizon of 10 000 steps: a few thousand iterations are far from converged


_LOOP_HINT = ("the exercise asks for one linear solve, no loop over time; iterating the Bellman recursion converges "
              "only after ~ln(10¹⁰)/(1 − γ) steps, about 230 000 at γ = 0.9999.")


def _near_one_case(label: str = "γ = 0.9999 (an effective horizon of 10 000 steps)"):
    """A 4-state MDP with γ = 0.9999: any fixed number K ≤ 20 000 of backups or loop steps misses ≥ γ^K ≈ 14 % of the sum."""
    rng = np.random.default_rng(21)
    gamma = _NEAR_ONE if jnp.result_type(float) == jnp.float64 else 0.999  # float32 cannot resolve 1 − 10⁻⁴ well
    return (label, (_random_mdp(rng, 4, 2, gamma), _random_policy(rng, 4, 2)))


def _iterates(start, step, cap=100_000):
    """The iterates start, step(start), … (NumPy, float64) up to `cap` steps, as one [cap + 1, S] array."""
    out = np.empty((cap + 1, start.shape[0]))
    out[0] = start
    for k in range(cap):
        out[k + 1] = step(out[k])
    return out


def _refuse_fixed_iterations(
    exercise: str, student_fn: Callable, reference: Callable, what: str, *, only_named: bool, skip=frozenset()
) -> None:
    """Fail with a named message when the student's result on the γ ≈ 1 case is a fixed number of iterations.

    `what` is "backup" (V ← r^π + γ P^π V from V = 0) or "occupancy" (d ← p_0 + γ (P^π)ᵀ d from d = 0). Any K up to
    100 000 is recognised. Run before the other cases with `only_named=True` (fails only when the result is such an
    iterate) and after them with `only_named=False` (any result wrong only here gets the same advice without a K).
    `skip` lists the K that the mistakes of `_compare` name on every input (0, 1: zero and r^π; the usual caps).
    """
    from metagrad.course.checks._diagnose import _call, _close, _fail

    label, (mdp, policy) = _near_one_case()
    raw = _call(exercise, student_fn, (mdp, policy), label)
    if getattr(raw, "dtype", None) == np.float32 and jnp.result_type(float) == jnp.float64:
        return  # a float32 result: _compare names the dtype
    got = np.asarray(raw, dtype=np.float64)
    expected = np.asarray(reference(mdp, policy), dtype=np.float64)
    if got.shape != expected.shape or not np.all(np.isfinite(got)) or _close(got, expected):
        return
    path = _iterates(*_update(what, mdp, policy))
    scale = np.max(np.abs(expected))
    distance = np.max(np.abs(path - got), axis=1) / scale
    k = int(np.argmin(distance))
    matched = distance[k] < 1e-6 and _iterates_elsewhere(exercise, student_fn, what, k)
    if only_named and (not matched or k in skip):
        return
    gamma = float(mdp.gamma)
    found = f"it matches {k} iterations of the fixed-point update from zero" if matched else (
        "it is wrong only at γ close to 1 (right at γ ≤ 0.99)")
    _fail(
        exercise,
        f"on {label}: {found} (largest relative error {np.max(np.abs(got - expected)) / scale:.2g}). After K "
        f"iterations the error shrinks only like γ^K: with γ = {gamma} a few thousand leave a large part of the sum "
        "out; solve the linear system once instead.",
    )


def _update(what: str, mdp, policy):
    """(start, step) of the fixed-point update from zero: V ← r^π + γ P^π V ("backup") or d ← p_0 + γ (P^π)ᵀ d."""
    p_pi, r_pi = (np.asarray(a, dtype=np.float64) for a in _p_pi(mdp, policy))
    gamma = float(mdp.gamma)
    if what == "backup":
        return np.zeros_like(r_pi), lambda v: r_pi + gamma * p_pi @ v
    p0 = np.asarray(mdp.initial, dtype=np.float64)
    return np.zeros_like(p0), lambda d: p0 + gamma * p_pi.T @ d


def _iterates_elsewhere(exercise: str, student_fn: Callable, what: str, k: int) -> bool:
    """Whether the student's result on the 5-state, γ = 0.9 case is also K = k iterations of the update.

    On the γ ≈ 1 case alone a wrong answer can sit within 10⁻⁶ of some iterate by accident (there V^π is nearly
    constant, so γ·V^π ≈ (γP^π)^K-truncated sums): a fixed iteration count must explain a second, mixing case too.
    """
    from metagrad.course.checks._diagnose import _call, _close

    label, (mdp, policy) = _mdp_cases()[0]
    got = np.asarray(_call(exercise, student_fn, (mdp, policy), label), dtype=np.float64)
    value = _iterates(*_update(what, mdp, policy), cap=k)[k]
    return got.shape == value.shape and _close(got, value)


def _p_pi(mdp, policy):
    return jnp.einsum("sa,sat->st", policy, mdp.transitions), jnp.sum(policy * mdp.rewards, axis=-1)


@_register("01", "policy_evaluation")
def check_policy_evaluation(policy_evaluation: Callable) -> str:
    """`policy_evaluation(mdp, policy [S, A])` -> V^π [S], the exact value of every state."""
    from metagrad import mdp as mdp_lib

    @jax.jit
    def reference(mdp, policy):
        return mdp_lib.policy_evaluation(mdp, policy)[0]

    def transposed(mdp, policy):
        p, r = _p_pi(mdp, policy)
        return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p.T, r)

    def one_step(mdp, policy):
        return _p_pi(mdp, policy)[1]

    def rewards_of_next(mdp, policy):
        p, r = _p_pi(mdp, policy)
        return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p, p @ r)

    mistakes = [
        (transposed, "It matches solving with (I − γ (P^π)ᵀ): P^π[x, x'] is the probability of x → x', no transpose here."),
        (one_step, "It equals r^π, the one-step reward: the discounted value of what follows x is missing."),
        (
            lambda mdp, policy: reference(mdp, policy) - one_step(mdp, policy),
            "It equals V^π − r^π, the value from the next step on: V^π(x) includes the reward collected in x itself.",
        ),
        (
            lambda mdp, policy: jnp.linalg.solve(jnp.eye(policy.shape[0]) - mdp.gamma * _p_pi(mdp, policy)[0], jnp.mean(mdp.rewards, axis=-1)),
            "It averages the rewards uniformly over actions: r^π(x) weights each action by the policy's π(a|x).",
        ),
        (
            lambda mdp, policy: jnp.linalg.solve(
                jnp.eye(policy.shape[0]) - mdp.gamma * jnp.einsum("sa,tas->st", policy, mdp.transitions),
                _p_pi(mdp, policy)[1],
            ),
            "Its P^π contracts the wrong axes of mdp.transitions[x, a, x']: the policy's π(a|x) must act on the "
            "state the transition leaves from.",
        ),
        *_capped_backups("It matches {K} Bellman backups from V = 0, a truncated sum: V^π is the fixed point of the "
                         "backup, the solution of a linear system."),
        (
            lambda mdp, policy: jnp.full(policy.shape[0], jnp.dot(mdp.initial, reference(mdp, policy))),
            "It returns the scalar J = p_0ᵀV^π copied into every state: policy_evaluation returns one value per state, "
            "V^π(x) for each start state x.",
        ),
        (rewards_of_next, "It counts rewards from the next state on: V^π(x) starts with the reward collected in x."),
        (
            lambda mdp, policy: mdp.gamma * reference(mdp, policy),
            "It is γ times the answer (γ·V^π, e.g. γ on the reward side, solve(I − γP^π, γ r^π)): V^π(x) starts "
            "with the undiscounted reward r^π(x) collected in x itself.",
        ),
        (
            lambda mdp, policy: (1 - mdp.gamma) * reference(mdp, policy),
            "It equals (1 − γ)·V^π, the normalised value: V^π is the plain discounted sum of rewards, no (1 − γ) factor.",
        ),
        (
            lambda mdp, policy: jnp.linalg.solve(jnp.eye(policy.shape[0]) + mdp.gamma * _p_pi(mdp, policy)[0], _p_pi(mdp, policy)[1]),
            "It solves (I + γ P^π) V = r^π: check the sign when you move the γ P^π V term of the Bellman equation "
            "to the other side.",
        ),
        (
            lambda mdp, policy: jnp.linalg.solve(jnp.eye(policy.shape[0]) - mdp.gamma * _p_pi(mdp, policy)[0], jnp.max(mdp.rewards, axis=-1)),
            "It uses the largest reward of each state, max_a r(x, a) (a greedy reward): r^π(x) = Σ_a π(a|x) r(x, a) "
            "averages over the policy's actions.",
        ),
        (
            lambda mdp, policy: jnp.linalg.solve(jnp.eye(policy.shape[0]) - mdp.gamma * _p_pi(mdp, policy)[0], mdp.rewards[:, 0]),
            "It uses the rewards of action 0 only: r^π(x) = Σ_a π(a|x) r(x, a) averages over the policy's actions.",
        ),
        *_fixed_gammas(reference),
    ]
    _refuse_fixed_iterations("policy_evaluation", policy_evaluation, reference, "backup", only_named=True,
                             skip={0, 1, *_BACKUP_CAPS})
    _compare(
        "policy_evaluation",
        policy_evaluation,
        reference,
        _mdp_cases(),
        expected_form="(one value per state)",
        mistakes=mistakes,
        jit=True,
        non_finite_hints={"a single-state MDP": _singular_hint("(I − γ P^π) V = r^π")},
    )
    _refuse_fixed_iterations("policy_evaluation", policy_evaluation, reference, "backup", only_named=False)
    label, args = _near_one_case()
    _refuse_loop("policy_evaluation", policy_evaluation, args, label, _LOOP_HINT)
    return (
        "matches metagrad.mdp.policy_evaluation on 7 MDPs (random, near-deterministic, γ = 0, one state, "
        "deterministic policy, random start, γ = 0.9999), also under jax.jit."
    )


@_register("01", "discounted_occupancy")
def check_discounted_occupancy(discounted_occupancy: Callable) -> str:
    """`discounted_occupancy(mdp, policy)` -> d^π [S] = Σ_t γ^t Pr(x_t = x), exactly (infinite horizon)."""
    from metagrad import mdp as mdp_lib

    def not_transposed(mdp, policy):
        p, _ = _p_pi(mdp, policy)
        return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p, mdp.initial)

    def normalised(mdp, policy):
        return (1 - mdp.gamma) * mdp_lib.discounted_occupancy(mdp, policy)

    mistakes = [
        (
            not_transposed,
            "It matches solving with P^π untransposed: P^π[x, x'] moves probability from x to x'; check which index "
            "the mass arriving in a state sums over (a transpose question).",
        ),
        (
            lambda mdp, policy: mdp_lib.discounted_occupancy(mdp, policy) - mdp.initial,
            "It is d^π − p_0, the visits from t = 1 on: the start distribution counts at t = 0.",
        ),
        (
            lambda mdp, policy: mdp.initial / (1 - mdp.gamma),
            "It is p_0/(1 − γ), as if the state never changed: the transitions move the visits after t = 0.",
        ),
        (
            lambda mdp, policy: jnp.linalg.solve(
                jnp.eye(policy.shape[0]) - mdp.gamma * _p_pi(mdp, policy)[0].T, jnp.full(policy.shape[0], 1.0 / policy.shape[0])
            ),
            "It starts from the uniform distribution: the visits start from the start distribution mdp.initial.",
        ),
        (
            lambda mdp, policy: jnp.linalg.solve(
                jnp.eye(policy.shape[0]) - mdp.gamma * _p_pi(mdp, policy)[0].T, _p_pi(mdp, policy)[0].T @ mdp.initial
            ),
            "It solves with p_1 = (P^π)ᵀ p_0 on the right-hand side, the visits from t = 1 on shifted back one step: "
            "the right-hand side is the t = 0 term, the start distribution p_0 itself.",
        ),
        (_stationary_over_one_minus_gamma, "It is the stationary distribution divided by (1 − γ), the long-run visits: "
                                           "d^π weights early steps most (γ^t), so it depends on where the chain starts, p_0."),
        (
            lambda mdp, policy: mdp.gamma * mdp_lib.discounted_occupancy(mdp, policy),
            "It is γ times the answer (γ·d^π, e.g. solving with γ p_0 on the right-hand side): the start "
            "distribution counts at t = 0 with weight γ⁰ = 1.",
        ),
        (normalised, "It is the normalised occupancy (1 − γ) d^π; here we want the unnormalised one, summing to 1/(1 − γ)."),
        (
            lambda mdp, policy: jnp.linalg.solve(jnp.eye(policy.shape[0]) - mdp.gamma * _p_pi(mdp, policy)[0].T, jnp.ones(policy.shape[0])),
            "It solves with a vector of ones on the right-hand side: the visits start from the start distribution mdp.initial.",
        ),
        *_capped_loops("It matches the sum stopped after {K} steps: d^π is the infinite sum, and with γ = 0.99 the "
                       "steps left out still carry visible mass; derive the linear equation d^π satisfies and solve it once."),
        *_fixed_gammas(mdp_lib.discounted_occupancy),
    ]
    _refuse_fixed_iterations("discounted_occupancy", discounted_occupancy, jax.jit(mdp_lib.discounted_occupancy), "occupancy",
                             only_named=True, skip={0, 1, *_LOOP_CAPS})
    cases = _mdp_cases()
    long_memory = _random_mdp(np.random.default_rng(12), 5, 3, 0.99)
    cases.append(("γ = 0.99 (an effective horizon of about 100 steps)", (long_memory, _random_policy(np.random.default_rng(13), 5, 3))))
    _compare(
        "discounted_occupancy",
        discounted_occupancy,
        jax.jit(mdp_lib.discounted_occupancy),
        cases,
        expected_form="(one entry per state)",
        mistakes=mistakes,
        jit=True,
        non_finite_hints={"a single-state MDP": _singular_hint("(I − γ (P^π)ᵀ) d = p_0")},
    )
    _refuse_fixed_iterations("discounted_occupancy", discounted_occupancy, jax.jit(mdp_lib.discounted_occupancy), "occupancy", only_named=False)
    label, args = _near_one_case()
    _refuse_loop("discounted_occupancy", discounted_occupancy, args, label, _LOOP_HINT)
    return (
        "matches metagrad.mdp.discounted_occupancy on 8 MDPs (random, near-deterministic, γ = 0, one state, "
        "deterministic policy, random start, γ = 0.99 and γ = 0.9999), also under jax.jit."
    )



def _fixed_gammas(reference: Callable):
    """Mistakes "γ hard-coded at g instead of mdp.gamma": `reference` run on the MDP with its discount replaced by g."""

    def fixed(g):
        def wrong(mdp, policy, *rest):
            return reference(mdp._replace(gamma=g), policy, *rest)

        return wrong

    return [
        (fixed(g), f"It matches the answer with γ = {g} whatever the MDP: γ is fixed at {g} instead of mdp.gamma; "
                   "use the discount of the MDP it is given.")
        for g in FIXED_GAMMAS
    ]


def _singular_hint(system: str) -> str:
    """The likely cause of NaN or infinity on the one-state MDP (γ = 0.5), whose answer is finite."""
    return (f"Its linear system is probably singular: is γ missing? I − P^π is singular (each row of P^π sums to 1); "
            f"the discounted system {system} is not, for γ < 1.")


def _stationary_over_one_minus_gamma(mdp, policy):
    """The stationary distribution of P^π (eigenvalue 1 of (P^π)ᵀ, normalised) divided by (1 − γ)."""
    p = np.asarray(_p_pi(mdp, policy)[0], dtype=np.float64)
    values, vectors = np.linalg.eig(p.T)
    stationary = np.real(vectors[:, int(np.argmin(np.abs(values - 1.0)))])
    return stationary / stationary.sum() / (1 - float(mdp.gamma))


def _full_occupancy(mdp, policy):
    from metagrad import mdp as mdp_lib

    return mdp_lib.discounted_occupancy(mdp, policy)


_BACKUP_CAPS = (10, 50, 100, 200, 500, 1000)
_LOOP_CAPS = (50, 64, 100, 128, 200, 256, 500, 1000)


def _capped_backups(hint: str, caps=_BACKUP_CAPS):
    """Mistakes "V ← r^π + γ P^π V repeated K times from V = 0" (value iteration stopped early), one per usual K."""

    def capped(cap):
        def wrong(mdp, policy):
            p_pi, r_pi = (np.asarray(a, dtype=np.float64) for a in _p_pi(mdp, policy))
            value = np.zeros_like(r_pi)
            for _ in range(cap):
                value = r_pi + float(mdp.gamma) * p_pi @ value
            return value

        return wrong

    return [(capped(cap), hint.format(K=cap)) for cap in caps]


def _capped_loops(hint: str, caps=_LOOP_CAPS):
    """Mistakes "the loop over time stops after K steps" (a fixed-size buffer or loop), one per usual K."""

    def capped(cap):
        def wrong(mdp, policy, horizon=None):
            return reference_truncated_occupancy(mdp, policy, cap if horizon is None else min(horizon, cap))

        return wrong

    return [(capped(cap), hint.format(K=cap)) for cap in caps]


def reference_truncated_occupancy(mdp, policy, horizon: int) -> np.ndarray:
    """Σ_{t<T} γ^t p_t with p_0 = initial, p_{t+1} = (P^π)ᵀ p_t, as a plain loop."""
    p_pi = np.asarray(_p_pi(mdp, policy)[0])
    p, out = np.asarray(mdp.initial, dtype=np.float64), 0.0
    for t in range(horizon):
        out = out + float(mdp.gamma) ** t * p
        p = p_pi.T @ p
    return out


@_register("01", "truncated_occupancy")
def check_truncated_occupancy(truncated_occupancy: Callable) -> str:
    """`truncated_occupancy(mdp, policy [S, A], horizon)` -> Σ_{t<T} γ^t p_t [S]."""
    cases = [(f"{label}, T = {T}", (m, pi, T)) for (label, (m, pi)), T in zip(_mdp_cases(), (7, 3, 2, 4, 5, 6))]
    cases.append(("T = 1 (only p_0)", (cases[0][1][0], cases[0][1][1], 1)))
    rng = np.random.default_rng(14)
    cases.append(("T = 400 with γ = 0.99", (_random_mdp(rng, 5, 3, 0.99), _random_policy(rng, 5, 3), 400)))

    def variant(kind):
        def wrong(mdp, policy, horizon):
            p_pi = np.asarray(_p_pi(mdp, policy)[0])
            gamma = 1.0 if kind == "undiscounted" else float(mdp.gamma)
            move = p_pi if kind == "no_transpose" else p_pi.T
            p = np.asarray(mdp.initial, dtype=np.float64)
            out = np.zeros_like(p)
            steps = {"inclusive": horizon + 1, "short": horizon - 1}.get(kind, horizon)
            for t in range(steps):
                if kind == "skip_first":
                    p = move @ p
                out = out + gamma**t * p
                if kind != "skip_first":
                    p = move @ p
            return out

        return wrong

    mistakes = [
        (variant("no_transpose"), "Probability flows forwards: p_{t+1} = (P^π)ᵀ p_t, with the transpose."),
        (variant("undiscounted"), "It ignores γ: visits at time t count γ^t."),
        (variant("inclusive"), "It sums T + 1 terms (off by one): t runs over 0, …, T − 1."),
        (variant("short"), "It sums T − 1 terms (off by one): t runs over 0, …, T − 1."),
        (variant("skip_first"), "It starts from p_1 instead of p_0 (off by one): the start distribution counts at t = 0."),
        (lambda m, pi, T: _full_occupancy(m, pi), "It is the full d^π: sum only the first `horizon` terms."),
        (
            lambda m, pi, T: (1 - float(m.gamma)) * reference_truncated_occupancy(m, pi, T),
            "It is (1 − γ) times the truncated sum, the normalised occupancy: here we want the plain Σ_{t<T} γ^t p_t, "
            "with no (1 − γ) factor.",
        ),
        (
            lambda m, pi, T: float(m.gamma) * reference_truncated_occupancy(m, pi, T),
            "It discounts the visits at time t by γ^(t+1), one factor too many: the start distribution counts with weight 1.",
        ),
        (
            lambda m, pi, T: (1 - float(m.gamma) ** T) * np.asarray(_full_occupancy(m, pi)),
            "It is (1 − γ^T)·d^π: that holds only if the state distribution never changed over time; sum the first "
            "`horizon` terms of the visits instead.",
        ),
        *_capped_loops("It is right for short horizons but stops after {K} steps on T = 400: a fixed-size array or "
                       "loop caps the horizon; run the loop (or lax.scan) `horizon` times."),
        (
            lambda m, pi, T: np.asarray(_full_occupancy(m, pi)) - float(m.gamma) ** T / (1 - float(m.gamma)) / pi.shape[0],
            "It is d^π minus the tail mass γ^T/(1 − γ) spread evenly over the states: the visits from T on are not "
            "uniform, they depend on where the chain is at T; sum the first `horizon` terms.",
        ),
        *_fixed_gammas(reference_truncated_occupancy),
    ]
    _compare(
        "truncated_occupancy",
        truncated_occupancy,
        reference_truncated_occupancy,
        cases,
        expected_form="(one entry per state)",
        mistakes=mistakes,
        jit=True,
    )
    return "matches Σ_{t<T} γ^t p_t on 8 inputs (T = 1 … 7 and T = 400, incl. a random start distribution), also under jax.jit."
