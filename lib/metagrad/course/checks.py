"""Automatic checks for the course exercises: one ``check_<exercise>(student_function)`` per exercise.

Each check calls the student's function on random and edge-case inputs and compares the result with a
reference: the library function where the library has one (``metagrad.mdp``, ``metagrad.exact``,
``metagrad.ope``), otherwise a short reference written here. On success it prints one line starting
with ``✓``. On failure it raises :class:`ExerciseCheckFailed`, whose message says in one or two sentences
what is wrong (not implemented yet, wrong shape, which input, how large the error is) and, when the
wrong answer matches a known mistake (a forgotten discount, an off-by-one, a time-indexed critic, a
missing ``stop_gradient``), which mistake. In Jupyter the exception is shown as that message only,
without a traceback (:meth:`ExerciseCheckFailed._render_traceback_`).

Every outcome is recorded in :func:`results` (exercise name -> passed), which
``metagrad course grade`` reads from the kernel after running a submission.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ExerciseCheckFailed",
    "CHECKS",
    "results",
    "reset_results",
    "check_hvp",
    "check_score_function_gradient",
    "check_magic_box",
    "check_policy_evaluation",
    "check_discounted_occupancy",
    "check_reward_to_go",
    "check_reinforce_gradient",
    "check_inner_step",
    "check_missing_hessian_terms",
    "check_step_importance_sampling",
    "check_doubly_robust",
]


class ExerciseCheckFailed(AssertionError):
    """A check found a wrong answer. ``str(err)`` is the friendly message; ``err.exercise`` its name."""

    def __init__(self, exercise: str, message: str):
        super().__init__(f"Exercise `{exercise}`: {message}")
        self.exercise = exercise
        self.message = message

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a traceback: the student needs the message, not our stack.
        return [f"✗ {self}"]


_RESULTS: dict[str, bool] = {}

#: Exercise name -> notebook number, in course order (the columns of ``metagrad course grade``).
CHECKS: dict[str, str] = {}


def results() -> dict[str, bool]:
    """The outcome of the last run of each check in this process (exercise name -> passed)."""
    return dict(_RESULTS)


def reset_results() -> None:
    """Forget all recorded outcomes."""
    _RESULTS.clear()


def _register(notebook: str, exercise: str) -> Callable:
    def wrap(fn):
        CHECKS[exercise] = notebook

        def check(student_fn):
            if not callable(student_fn):
                _fail(exercise, f"pass the function itself, e.g. `check_{exercise}({exercise})`; got {student_fn!r}.")
            try:
                summary = fn(student_fn)
            except ExerciseCheckFailed:
                _RESULTS[exercise] = False
                raise
            _RESULTS[exercise] = True
            print(f"✓ Exercise `{exercise}` passed: {summary}")

        check.__name__ = fn.__name__
        check.__qualname__ = fn.__qualname__
        check.__doc__ = fn.__doc__
        return check

    return wrap


def _fail(exercise: str, message: str):
    _RESULTS[exercise] = False
    raise ExerciseCheckFailed(exercise, message)


def _tolerance() -> tuple[float, float]:
    """(rtol, atol): tight in float64, looser when the student runs in float32."""
    if jnp.result_type(float) == jnp.float64:
        return 1e-7, 1e-9
    return 1e-4, 1e-5


def _close(a, b) -> bool:
    rtol, atol = _tolerance()
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _call(exercise: str, fn: Callable, args: Sequence, label: str):
    """Call the student's function; turn any exception into one friendly sentence."""
    try:
        return fn(*args)
    except NotImplementedError:
        _fail(
            exercise,
            "not implemented yet: replace the `raise NotImplementedError(...)` line with your code, "
            "run that cell, then run this check again.",
        )
    except ExerciseCheckFailed:
        raise
    except Exception as err:  # noqa: BLE001 — any error in student code becomes a message
        if "Tracer" in type(err).__name__ or "Concretization" in type(err).__name__:
            _fail(
                exercise,
                f"calling it on {label} failed because JAX cannot trace it ({type(err).__name__}): use jax.numpy "
                "(jnp) instead of NumPy, float() or Python `if` on array values inside the function.",
            )
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if len(detail) > 160:
            detail = detail[:157] + "..."
        _fail(exercise, f"calling it on {label} raised {type(err).__name__}{': ' + detail if detail else ''}.")


def _compare(
    exercise: str,
    student_fn: Callable,
    reference_fn: Callable,
    cases: Sequence[tuple[str, tuple]],
    *,
    expected_form: str,
    mistakes: Sequence[tuple[Callable, str]] = (),
) -> None:
    """Compare ``student_fn(*args)`` with ``reference_fn(*args)`` for each ``(label, args)`` case."""
    for label, args in cases:
        expected = np.asarray(reference_fn(*args), dtype=np.float64)
        got = _call(exercise, student_fn, args, label)
        try:
            got = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            _fail(exercise, f"on {label} it returned {type(got).__name__}; expected an array {expected_form}.")
        if got.shape != expected.shape:
            _fail(
                exercise,
                f"on {label} it returned shape {got.shape}; expected shape {expected.shape} {expected_form}.",
            )
        if not np.all(np.isfinite(got)):
            _fail(exercise, f"on {label} it returned NaN or infinite values.")
        if not _close(got, expected):
            error = float(np.max(np.abs(got - expected)))
            message = f"on {label} the result differs from the reference (largest absolute error {error:.3g})."
            for mistake, hint in mistakes:
                try:
                    if _close(got, mistake(*args)):
                        message += " " + hint
                        break
                except Exception:  # noqa: BLE001 — a diagnosis that cannot run is simply skipped
                    continue
            _fail(exercise, message)


def _float(x) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.result_type(float))


# --------------------------------------------------------------------------------------------------
# 00 — JAX for derivatives of expectations


def _hvp_functions():
    def cubic_sine(x):
        return jnp.sum(jnp.sin(x) * x**3)

    def log_partition(x):
        return jax.nn.logsumexp(x) + 0.5 * jnp.sum(x**2) * jnp.sum(x)

    return cubic_sine, log_partition


@_register("00", "hvp")
def check_hvp(hvp: Callable) -> str:
    """``hvp(f, x, v)`` must return ∇²f(x) v (same shape as x) for a scalar function f."""
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
        (lambda f, x, v: jax.grad(f)(x) * v, "It equals ∇f(x)·v elementwise: differentiate the gradient, not f."),
        (lambda f, x, v: jax.grad(f)(x), "It equals the gradient ∇f(x): the direction v is missing."),
    ]
    _compare("hvp", hvp, reference, cases, expected_form="(same as x)", mistakes=mistakes)
    return "matches jax.hessian(f)(x) @ v on 3 inputs (two random functions and points, v = 0)."


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


@_register("00", "score_function_gradient")
def check_score_function_gradient(score_function_gradient: Callable) -> str:
    """``score_function_gradient(logits [A], actions [N], rewards [N])`` -> (1/N) Σ_i r_i ∇ log π(a_i) [A]."""

    @jax.jit
    def reference(logits, actions, rewards):
        return jax.grad(lambda th: jnp.mean(rewards * jax.nn.log_softmax(th)[actions]))(logits)

    mistakes = [
        (
            lambda th, a, r: jax.grad(lambda t: jnp.mean(r * jax.nn.softmax(t)[a]))(th),
            "It equals the gradient of π(a) instead of log π(a): the score is ∇ log π = ∇π / π.",
        ),
        (
            lambda th, a, r: jax.grad(lambda t: jnp.sum(r * jax.nn.log_softmax(t)[a]))(th),
            "It is N times too large: average over the samples instead of summing.",
        ),
    ]
    _compare(
        "score_function_gradient",
        score_function_gradient,
        reference,
        _bandit_cases(),
        expected_form="(one entry per action)",
        mistakes=mistakes,
    )
    return "matches (1/N) Σ r_i ∇ log π(a_i) on 4 inputs (random batches, one sample, zero rewards, peaked logits)."


@_register("00", "magic_box")
def check_magic_box(magic_box: Callable) -> str:
    """``magic_box(x)`` = exp(x − stop_gradient(x)): value 1, derivatives those of exp at 0 times x's."""
    exercise = "magic_box"
    x = _float([0.3, -1.2, 2.0])
    value = np.asarray(_call(exercise, magic_box, (x,), "x = [0.3, -1.2, 2.0]"), dtype=np.float64)
    if value.shape != x.shape:
        _fail(exercise, f"on x of shape {x.shape} it returned shape {value.shape}; it must act elementwise.")
    if not _close(value, np.ones(3)):
        hint = " It equals exp(x): subtract stop_gradient(x) inside the exponential." if _close(value, np.exp(x)) else ""
        _fail(exercise, f"its value must be exactly 1 for every x; got {np.round(value, 4).tolist()}.{hint}")

    def w(theta):  # a log-probability-like function of θ
        return jnp.sin(theta) + theta**2

    theta = _float(0.7)
    first = _call(exercise, jax.grad(lambda t: magic_box(w(t))), (theta,), "θ = 0.7 (first derivative)")
    expected_first = jax.grad(w)(theta)
    if _close(first, 0.0):
        _fail(
            exercise,
            "the derivative of magic_box(w(θ)) is 0, but it must be w'(θ): without stop_gradient, "
            "x − x is the constant 0 for autodiff too.",
        )
    if not _close(first, expected_first):
        _fail(exercise, f"d/dθ magic_box(w(θ)) should be w'(θ) = {float(expected_first):.4f}; got {float(first):.4f}.")
    second = _call(exercise, jax.grad(jax.grad(lambda t: magic_box(w(t)))), (theta,), "θ = 0.7 (second derivative)")
    expected_second = jax.grad(jax.grad(w))(theta) + jax.grad(w)(theta) ** 2
    if not _close(second, expected_second):
        _fail(
            exercise,
            f"d²/dθ² magic_box(w(θ)) should be w'' + w'² = {float(expected_second):.4f}; got {float(second):.4f}.",
        )
    return "value 1 everywhere, first derivative w'(θ), second derivative w''(θ) + w'(θ)²."


# --------------------------------------------------------------------------------------------------
# 01 — MDPs and exact values


def _random_mdp(rng: np.random.Generator, num_states: int, num_actions: int, gamma: float, concentration: float = 1.0):
    """A random TabularMDP built with NumPy (no JAX compilation: checks must be quick)."""
    from metagrad.mdp import TabularMDP

    transitions = rng.dirichlet(np.full(num_states, concentration), size=(num_states, num_actions))
    transitions = np.maximum(transitions, 0.0)
    transitions /= transitions.sum(-1, keepdims=True)
    initial = np.zeros(num_states)
    initial[0] = 1.0
    return TabularMDP(_float(transitions), _float(rng.uniform(size=(num_states, num_actions))), _float(initial), gamma)


def _random_policy(rng: np.random.Generator, num_states: int, num_actions: int):
    logits = rng.normal(size=(num_states, num_actions))
    return _float(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))


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
    return cases


def _p_pi(mdp, policy):
    return jnp.einsum("sa,sat->st", policy, mdp.transitions), jnp.sum(policy * mdp.rewards, axis=-1)


@_register("01", "policy_evaluation")
def check_policy_evaluation(policy_evaluation: Callable) -> str:
    """``policy_evaluation(mdp, policy [S, A])`` -> V^π [S] = (I − γ P^π)⁻¹ r^π."""
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
        (one_step, "It equals r^π, the one-step reward: the future γ P^π V^π term is missing."),
        (rewards_of_next, "It counts rewards from the next state on: V^π(x) starts with the reward collected in x."),
    ]
    _compare(
        "policy_evaluation",
        policy_evaluation,
        reference,
        _mdp_cases(),
        expected_form="(one value per state)",
        mistakes=mistakes,
    )
    return "matches metagrad.mdp.policy_evaluation on 5 MDPs (random, near-deterministic, γ = 0, one state, deterministic policy)."


@_register("01", "discounted_occupancy")
def check_discounted_occupancy(discounted_occupancy: Callable) -> str:
    """``discounted_occupancy(mdp, policy)`` -> d^π [S] = Σ_t γ^t Pr(x_t = x), solving d = p₀ + γ (P^π)ᵀ d."""
    from metagrad import mdp as mdp_lib

    def not_transposed(mdp, policy):
        p, _ = _p_pi(mdp, policy)
        return jnp.linalg.solve(jnp.eye(p.shape[0]) - mdp.gamma * p, mdp.initial)

    def normalised(mdp, policy):
        return (1 - mdp.gamma) * mdp_lib.discounted_occupancy(mdp, policy)

    mistakes = [
        (not_transposed, "It matches solving with P^π instead of (P^π)ᵀ: probability flows from x to x', so transpose."),
        (normalised, "It is the normalised occupancy (1 − γ) d^π; here we want the unnormalised one, summing to 1/(1 − γ)."),
    ]
    _compare(
        "discounted_occupancy",
        discounted_occupancy,
        jax.jit(mdp_lib.discounted_occupancy),
        _mdp_cases(),
        expected_form="(one entry per state)",
        mistakes=mistakes,
    )
    return "matches metagrad.mdp.discounted_occupancy on 5 MDPs (random, near-deterministic, γ = 0, one state, deterministic policy)."


# --------------------------------------------------------------------------------------------------
# 02 — Policy gradients


def reference_reward_to_go(rewards, gamma, bootstrap=0.0) -> np.ndarray:
    """G_t = r_t + γ G_{t+1}, G_T = bootstrap, written as a plain loop (the readable reference)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(rewards)
    running = float(bootstrap)
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


@_register("02", "reward_to_go")
def check_reward_to_go(reward_to_go: Callable) -> str:
    """``reward_to_go(rewards [T], gamma, bootstrap)`` -> G [T] with G_t = r_t + γ G_{t+1}, G_T = bootstrap."""
    key = jax.random.PRNGKey(3)
    rewards = _float(jax.random.uniform(key, (7,)))
    cases = [
        ("7 random rewards, γ = 0.9, bootstrap 0", (rewards, 0.9, 0.0)),
        ("7 random rewards, γ = 0.5, bootstrap 2.0", (rewards, 0.5, 2.0)),
        ("a single step (T = 1), γ = 0.9, bootstrap 1.0", (_float([0.3]), 0.9, 1.0)),
        ("γ = 0 (G_t = r_t)", (rewards, 0.0, 5.0)),
    ]

    def skips_current(rewards, gamma, bootstrap):
        return reference_reward_to_go(rewards, gamma, bootstrap) - np.asarray(rewards)

    def next_step_return(rewards, gamma, bootstrap):
        return np.append(reference_reward_to_go(rewards, gamma, bootstrap)[1:], bootstrap)

    def undiscounted(rewards, gamma, bootstrap):
        return reference_reward_to_go(rewards, 1.0, bootstrap)

    def forward_sum(rewards, gamma, bootstrap):
        return np.cumsum(np.asarray(rewards) * gamma ** np.arange(len(rewards)))

    def no_bootstrap(rewards, gamma, bootstrap):
        return reference_reward_to_go(rewards, gamma, 0.0)

    mistakes = [
        (skips_current, "It misses r_t itself (off by one): G_t starts with the reward at time t."),
        (next_step_return, "It returns G_{t+1} at step t (off by one): G_t starts with the reward at time t."),
        (undiscounted, "It ignores γ: each step further away is worth one more factor of γ."),
        (forward_sum, "It sums the past (r_0 … r_t) instead of the future (r_t … r_{T−1})."),
        (no_bootstrap, "It ignores `bootstrap`: the tail after the last step is worth γ^(T−t) · bootstrap."),
    ]
    _compare("reward_to_go", reward_to_go, reference_reward_to_go, cases, expected_form="(one return per step)", mistakes=mistakes)
    return "matches G_t = r_t + γ G_{t+1} on 4 inputs (γ = 0.9, 0.5 and 0, T = 1, with and without bootstrap)."


def _reinforce_reference(logits, trajectories, critic, gamma, *, time_indexed=False, discount_weights=True):
    from metagrad.tabular import log_policy

    states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
    horizon = rewards.shape[1]
    returns = jnp.stack(
        [_float(reference_reward_to_go(r, gamma, critic[s[-1]])) for r, s in zip(np.asarray(rewards), np.asarray(states))]
    )
    baseline = critic[jnp.arange(horizon)][None, :] if time_indexed else critic[states[:, :-1]]
    advantages = returns - baseline
    weights = gamma ** jnp.arange(horizon) if discount_weights else jnp.ones(horizon)

    def surrogate(theta):
        log_pi = log_policy(theta, states[:, :-1], actions)
        return jnp.mean(jnp.sum(weights * advantages * log_pi, axis=1))

    return jax.grad(surrogate)(logits)


@_register("02", "reinforce_gradient")
def check_reinforce_gradient(reinforce_gradient: Callable) -> str:
    """``reinforce_gradient(logits, trajectories, critic, gamma)`` -> (1/N) Σ_i Σ_t γ^t Â_t ∇ℓ_t, shape [S, A]."""
    from metagrad.rollout import sample, tabular_softmax_policy

    rng = np.random.default_rng(4)
    mdp = _random_mdp(rng, 5, 3, 0.9)
    logits = _float(rng.normal(size=(5, 3)))
    batch = sample(jax.random.PRNGKey(4), mdp, tabular_softmax_policy, logits, 16, 6)
    # A critic whose entries differ per state, so indexing it by time instead of by state is caught.
    critic = _float(np.linspace(0.5, 2.0, 5))
    one = batch._replace(
        observations=batch.observations[:1, :5],
        actions=batch.actions[:1, :4],
        rewards=batch.rewards[:1, :4],
        log_probs=batch.log_probs[:1, :4],
        terminated=None,
    )
    cases = [
        ("16 trajectories of length 6 in a 5-state MDP, γ = 0.9", (logits, batch, critic, 0.9)),
        ("a single trajectory of length 4, γ = 0.5", (logits, one, critic, 0.5)),
    ]
    cases.append(("the same batch with a zero critic (plain REINFORCE)", (cases[0][1][0], cases[0][1][1], jnp.zeros(5), 0.9)))

    mistakes = [
        (
            lambda *a: _reinforce_reference(*a, time_indexed=True),
            "It matches a critic indexed by time, critic[t]: the baseline must be the value of the state, critic[x_t].",
        ),
        (
            lambda *a: _reinforce_reference(*a, discount_weights=False),
            "It is missing the γ^t weight in front of each term: the policy-gradient theorem discounts "
            "the time at which the action is taken.",
        ),
    ]
    _compare(
        "reinforce_gradient",
        reinforce_gradient,
        _reinforce_reference,
        cases,
        expected_form="(same as logits, [S, A])",
        mistakes=mistakes,
    )
    return "matches (1/N) Σ_i Σ_t γ^t (G_t − V(x_t)) ∇ log π(a_t|x_t) on 3 batches (incl. one trajectory and a zero critic)."


# --------------------------------------------------------------------------------------------------
# 03 — MAML and the Hessian problem


@_register("03", "inner_step")
def check_inner_step(inner_step: Callable) -> str:
    """``inner_step(mdp, logits, step_size)`` -> θ' = θ + η ∇J(θ), differentiable in θ."""
    from metagrad import exact

    rng = np.random.default_rng(5)
    mdp_a = _random_mdp(rng, 4, 3, 0.8)
    mdp_b = _random_mdp(rng, 4, 3, 0.5, 0.01)
    theta_a = _float(rng.normal(size=(4, 3)))
    theta_b = _float(rng.normal(size=(4, 3)))
    cases = [
        ("a random 4-state MDP with η = 0.5", (mdp_a, theta_a, 0.5)),
        ("a near-deterministic MDP with γ = 0.5 and η = 2.0", (mdp_b, theta_b, 2.0)),
        ("η = 0 (θ' = θ)", (mdp_a, theta_a, 0.0)),
    ]
    mistakes = [
        (
            lambda m, th, eta: th - eta * exact.gradient(m, th),
            "It steps downhill: MAML's inner step is gradient ascent on the value, θ + η ∇J.",
        ),
    ]
    _compare(
        "inner_step",
        inner_step,
        jax.jit(lambda m, th, eta: exact.adapted_logits(m, th, eta, 1)),
        cases,
        expected_form="(same as logits, [S, A])",
        mistakes=mistakes,
    )
    # The meta-gradient flows through the inner step: (I + η ∇²J) ∇J(θ').
    meta = _call(
        "inner_step",
        jax.jit(jax.grad(lambda th: exact.value(mdp_a, inner_step(mdp_a, th, 0.5)))),
        (theta_a,),
        "the meta-gradient",
    )
    expected = jax.jit(exact.maml_gradient, static_argnums=3)(mdp_a, theta_a, 0.5, 1)
    if not _close(meta, expected):
        first_order = exact.gradient(mdp_a, exact.adapted_logits(mdp_a, theta_a, 0.5, 1))
        hint = (
            " It equals the first-order MAML gradient ∇J(θ'): the inner gradient must stay differentiable "
            "(no stop_gradient, no NumPy conversion)."
            if _close(meta, first_order)
            else ""
        )
        _fail("inner_step", f"θ' is right, but differentiating J(θ'(θ)) does not give the exact meta-gradient.{hint}")
    return "matches metagrad.exact.adapted_logits on 3 inputs, and the meta-gradient through it is exact."


def reference_missing_hessian_terms(scores, advantages, gamma) -> np.ndarray:
    """Σ_t γ^t Â_t [g_t g_tᵀ + g_t S_{<t}ᵀ + S_{<t} g_tᵀ] with S_{<t} = Σ_{s<t} g_s, as a plain loop."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros((scores.shape[1], scores.shape[1]))
    past = np.zeros(scores.shape[1])
    for t, g in enumerate(scores):
        out += gamma**t * float(advantages[t]) * (np.outer(g, g) + np.outer(g, past) + np.outer(past, g))
        past = past + g
    return out


@_register("03", "missing_hessian_terms")
def check_missing_hessian_terms(missing_hessian_terms: Callable) -> str:
    """``missing_hessian_terms(scores [T, P], advantages [T], gamma)`` -> [P, P]."""
    keys = jax.random.split(jax.random.PRNGKey(6), 4)
    cases = [
        ("T = 5 random scores with P = 4", (_float(jax.random.normal(keys[0], (5, 4))), _float(jax.random.normal(keys[1], (5,))), 0.9)),
        ("a single step (T = 1)", (_float(jax.random.normal(keys[2], (1, 3))), _float([2.0]), 0.9)),
        ("γ = 0.5 and T = 3", (_float(jax.random.normal(keys[3], (3, 2))), _float([1.0, -1.0, 0.5]), 0.5)),
    ]

    def outer_only(scores, adv, gamma):
        scores = np.asarray(scores)
        return sum(gamma**t * float(adv[t]) * np.outer(g, g) for t, g in enumerate(scores))

    def inclusive_past(scores, adv, gamma):
        scores = np.asarray(scores)
        out, past = 0.0, np.zeros(scores.shape[1])
        for t, g in enumerate(scores):
            past = past + g
            out = out + gamma**t * float(adv[t]) * (np.outer(g, g) + np.outer(g, past) + np.outer(past, g))
        return out

    def one_sided(scores, adv, gamma):
        scores = np.asarray(scores)
        out, past = 0.0, np.zeros(scores.shape[1])
        for t, g in enumerate(scores):
            out = out + gamma**t * float(adv[t]) * (np.outer(g, g) + np.outer(g, past))
            past = past + g
        return out

    mistakes = [
        (outer_only, "It has only the g_t g_tᵀ terms (what LVC keeps): the cross terms with S_{<t} = Σ_{s<t} g_s are missing."),
        (inclusive_past, "Its past sum includes step t itself (off by one): S_{<t} runs over s < t only."),
        (one_sided, "It is not symmetric: add both g_t S_{<t}ᵀ and its transpose S_{<t} g_tᵀ."),
    ]
    _compare(
        "missing_hessian_terms",
        missing_hessian_terms,
        reference_missing_hessian_terms,
        cases,
        expected_form="(P × P, P = number of parameters)",
        mistakes=mistakes,
    )
    return "matches Σ_t γ^t Â_t [g_t g_tᵀ + g_t S_{<t}ᵀ + S_{<t} g_tᵀ] on 3 inputs (incl. T = 1)."


# --------------------------------------------------------------------------------------------------
# 04 — Off-policy evaluation


def _ope_cases():
    keys = jax.random.split(jax.random.PRNGKey(7), 6)
    horizon = 6
    log_ratios = _float(0.5 * jax.random.normal(keys[0], (horizon,)))
    rewards = _float(jax.random.uniform(keys[1], (horizon,)))
    values = _float(jax.random.uniform(keys[2], (horizon + 1,)) * 2.0)
    return [
        ("a random trajectory of length 6 (γ = 0.9)", (log_ratios, rewards, values, 0.9)),
        ("on-policy (all log-ratios 0)", (jnp.zeros(horizon, rewards.dtype), rewards, values, 0.9)),
        ("a zero critic", (log_ratios, rewards, jnp.zeros(horizon + 1, rewards.dtype), 0.8)),
        (
            "a single step (T = 1)",
            (_float([0.4]), _float([1.0]), _float([0.5, 3.0]), 0.9),
        ),
        (
            "large ratios and γ = 0.5",
            (_float(jax.random.normal(keys[3], (4,)) + 1.0), _float(jax.random.normal(keys[4], (4,))), _float(jax.random.normal(keys[5], (5,))), 0.5),
        ),
    ]


def _with_gradient(fn: Callable) -> Callable:
    """(value, d value / d log-ratios): an OPE estimate must be differentiable in the log-ratios."""

    def both(log_ratios, rewards, values, gamma):
        value, grad = jax.value_and_grad(lambda lr: fn(lr, rewards, values, gamma))(log_ratios)
        return jnp.concatenate([jnp.reshape(value, (1,)), grad])

    return both


def _check_ope(exercise: str, student_fn: Callable, reference: Callable, mistakes, name: str) -> str:
    # Values first (clearer messages), then values and gradients together (catches NumPy inside).
    _compare(exercise, student_fn, reference, _ope_cases(), expected_form="(a scalar)", mistakes=mistakes)
    cases = _ope_cases()[:2]
    _compare(
        exercise,
        _with_gradient(student_fn),
        _with_gradient(reference),
        [(f"{label}, differentiated in the log-ratios", args) for label, args in cases],
        expected_form="(the value followed by its gradient in the log-ratios)",
    )
    return f"matches {name} in value on 5 trajectories and in gradient on 2 (incl. on-policy, zero critic, T = 1)."


@_register("04", "step_importance_sampling")
def check_step_importance_sampling(step_importance_sampling: Callable) -> str:
    """``step_importance_sampling(log_ratios [T], rewards [T], values [T+1], gamma)`` -> scalar."""
    from metagrad import ope

    def trajectory_is(lr, r, v, gamma):
        t = jnp.arange(r.shape[0])
        w = jnp.exp(jnp.sum(lr))
        return w * (jnp.sum(gamma**t * r) + gamma ** r.shape[0] * v[-1])

    def shifted(lr, r, v, gamma):
        t = jnp.arange(r.shape[0])
        cum = jnp.exp(jnp.cumsum(lr) - lr)  # Π_{s<t} ρ_s
        return jnp.sum(gamma**t * cum * r) + gamma ** r.shape[0] * jnp.exp(jnp.sum(lr)) * v[-1]

    def no_bootstrap(lr, r, v, gamma):
        return ope.step_importance_sampling(lr, r, jnp.zeros_like(v), gamma)

    mistakes = [
        (trajectory_is, "It matches trajectory-wise IS (one product over all T steps): step-wise IS weights r_t by Π_{s≤t} ρ_s only."),
        (shifted, "It weights r_t by Π_{s<t} ρ_s (off by one): the action a_t that earned r_t needs its ratio too."),
        (no_bootstrap, "It ignores the bootstrap term γ^T (Π_{s<T} ρ_s) V(x_T)."),
    ]
    return _check_ope("step_importance_sampling", step_importance_sampling, ope.step_importance_sampling, mistakes, "metagrad.ope.step_importance_sampling")


@_register("04", "doubly_robust")
def check_doubly_robust(doubly_robust: Callable) -> str:
    """``doubly_robust(log_ratios [T], rewards [T], values [T+1], gamma)`` -> scalar."""
    from metagrad import ope

    def loop(lr, r, v, gamma, *, shift=False, rho_on_value=False, undiscounted=False):
        g = 1.0 if undiscounted else gamma
        est = v[-1]
        for t in reversed(range(r.shape[0])):
            rho = jnp.exp(lr[t])
            base = v[t + 1] if shift else v[t]
            est = rho * (r[t] + g * est) if rho_on_value else base + rho * (r[t] + g * est - base)
        return est

    mistakes = [
        (lambda *a: loop(*a, shift=True), "It uses V(x_{t+1}) as the control variate at step t (off by one): use V(x_t)."),
        (lambda *a: loop(*a, rho_on_value=True), "It matches step-wise IS: the critic terms V(x_t) − ρ_t V(x_t) are missing."),
        (lambda *a: loop(*a, undiscounted=True), "It ignores γ in the recursion V̂_t = V(x_t) + ρ_t (r_t + γ V̂_{t+1} − V(x_t))."),
    ]
    return _check_ope("doubly_robust", doubly_robust, ope.doubly_robust, mistakes, "metagrad.ope.doubly_robust")


def all_exercises() -> list[str]:
    """Every exercise registered so far (this module and any later part, e.g. ``checks_part2``), in course order."""
    return sorted(CHECKS, key=lambda name: (CHECKS[name], list(CHECKS).index(name)))


#: Names of the exercises of part I (notebooks 00–04), in course order.
EXERCISES: list[str] = all_exercises()


def describe() -> dict[str, Any]:
    """Exercise name -> notebook number (for tools)."""
    return {name: CHECKS[name] for name in EXERCISES}
