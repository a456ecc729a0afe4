"""Checks for notebook 02 — Policy gradients."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.course.checks._diagnose import (
    _compare,
    _fail,
    _float,
    _register,
    _random_mdp,
)
from metagrad.course.checks.nb00 import _SHIFT, _refuse_inexact

__all__ = ['check_reward_to_go', 'check_reinforce_gradient', 'check_occupancy_policy_gradient']


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
    """`reward_to_go(rewards [T], gamma, bootstrap)` -> G [T] with G_t = r_t + γ G_{t+1}, G_T = bootstrap."""
    key = jax.random.PRNGKey(3)
    rewards = _float(jax.random.uniform(key, (7,)))
    cases = [
        ("7 random rewards, γ = 0.9, bootstrap 0", (rewards, 0.9, 0.0)),
        ("7 random rewards, γ = 0.5, bootstrap 2.0", (rewards, 0.5, 2.0)),
        ("a single step (T = 1), γ = 0.9, bootstrap 1.0", (_float([0.3]), 0.9, 1.0)),
        ("γ = 0 (G_t = r_t)", (rewards, 0.0, 5.0)),
        ("a long trajectory (T = 300, γ = 0.99, bootstrap 1.0)", (_float(jax.random.uniform(jax.random.PRNGKey(30), (300,))), 0.99, 1.0)),
    ]

    def capped(cap):
        def wrong(rewards, gamma, bootstrap):  # a window of `cap` rewards ahead, the bootstrap only within reach
            rewards = np.asarray(rewards, dtype=np.float64)
            horizon = len(rewards)
            out = np.zeros(horizon)
            for t in range(horizon):
                ahead = rewards[t : t + cap]
                out[t] = np.sum(gamma ** np.arange(len(ahead)) * ahead)
                if t + cap >= horizon:
                    out[t] += gamma ** (horizon - t) * bootstrap
            return out

        return wrong


    def skips_current(rewards, gamma, bootstrap):
        return reference_reward_to_go(rewards, gamma, bootstrap) - np.asarray(rewards)

    def next_step_return(rewards, gamma, bootstrap):
        return np.append(reference_reward_to_go(rewards, gamma, bootstrap)[1:], bootstrap)

    def undiscounted(rewards, gamma, bootstrap):
        return reference_reward_to_go(rewards, 1.0, bootstrap)

    def forward_sum(rewards, gamma, bootstrap):
        return np.cumsum(np.asarray(rewards) * gamma ** np.arange(len(rewards)))

    def whole_return(rewards, gamma, bootstrap):
        return np.full(len(rewards), reference_reward_to_go(rewards, gamma, bootstrap)[0])

    def no_bootstrap(rewards, gamma, bootstrap):
        return reference_reward_to_go(rewards, gamma, 0.0)

    def forward_scan(rewards, gamma, bootstrap):  # the recursion run from t = 0 forwards, started at the bootstrap
        out, carry = [], float(bootstrap)
        for r in np.asarray(rewards, dtype=np.float64):
            carry = r + gamma * carry
            out.append(carry)
        return np.array(out)

    def bootstrap_discounted_twice(rewards, gamma, bootstrap):
        return reference_reward_to_go(rewards, gamma, gamma * bootstrap)

    def bootstrap_one_step_short(rewards, gamma, bootstrap):  # γ^(T−1−t) · bootstrap
        horizon = len(rewards)
        return reference_reward_to_go(rewards, gamma, 0.0) + gamma ** (horizon - 1.0 - np.arange(horizon)) * bootstrap

    def discounted_from_start(rewards, gamma, bootstrap):  # Σ_{s≥t} γ^s r_s: the discount counted from t = 0
        return gamma ** np.arange(len(rewards)) * reference_reward_to_go(rewards, gamma, bootstrap)

    def discounted_current(rewards, gamma, bootstrap):  # G_t = γ r_t + G_{t+1}
        return gamma * reference_reward_to_go(rewards, 1.0, 0.0) + bootstrap

    mistakes = [
        (discounted_current, "It discounts the current reward instead of the future (G_t = γ r_t + G_{t+1}): r_t is "
                             "collected now, at full value; the γ multiplies G_{t+1}, everything that comes later."),
        (forward_scan, "It runs the recursion forwards in time: G_t = r_t + γ G_{t+1} needs G_{t+1} first, so scan backwards (lax.scan(..., reverse=True)) from G_T = bootstrap."),
        (bootstrap_discounted_twice, "It starts from G_T = γ · bootstrap: the bootstrap is G_T itself, and the recursion applies the γ."),
        (skips_current, "It misses r_t itself (off by one): G_t starts with the reward at time t."),
        (bootstrap_one_step_short, "It discounts the bootstrap by γ^(T−1−t), one factor short: the bootstrap comes one step "
                                   "after the last reward r_{T−1}."),
        (discounted_from_start, "It discounts from time 0 (γ^s r_s): G_t is the return seen from step t, so its first "
                                "reward r_t is not discounted."),
        (next_step_return, "It returns G_{t+1} at step t (off by one): G_t starts with the reward at time t."),
        (undiscounted, "It ignores γ: each step further away is worth one more factor of γ."),
        (whole_return, "It returns the whole return G_0 (from the first step) at every t: G_t counts only the rewards "
                       "from step t on, r_t + γ r_{t+1} + …, plus the discounted bootstrap."),
        (forward_sum, "It sums the past (r_0 … r_t) instead of the future (r_t … r_{T−1})."),
        (no_bootstrap, "It ignores `bootstrap`: the tail after the last step is worth γ^(T−t) · bootstrap."),
        (
            lambda rewards, gamma, bootstrap: no_bootstrap(rewards, gamma, bootstrap) + bootstrap,
            "It adds the bootstrap undiscounted at every step: seen from step t, the tail after the last step lies "
            "T − t steps ahead, so it is worth γ^(T−t) · bootstrap.",
        ),
        *[(capped(cap), f"It is right on short trajectories but wrong on T = 300: something caps the horizon at {cap} "
                        "steps (a fixed-size buffer or loop); scan over all the rewards.") for cap in (64, 100, 128, 200, 256)],
    ]
    _compare(
        "reward_to_go",
        reward_to_go,
        reference_reward_to_go,
        cases,
        expected_form="(one return per step)",
        mistakes=mistakes,
        jit=True,
        vmap_in_axes=(0, None, 0),  # reinforce_gradient vmaps it over trajectories
        non_finite_hints={"γ = 0 (G_t = r_t)": "a division by γ (a γ^−t factor, or discounts divided out) is undefined "
                                              "at γ = 0: run the recursion G_t = r_t + γ G_{t+1} backwards instead."},
    )
    return "matches G_t = r_t + γ G_{t+1} on 5 inputs (γ = 0.9, 0.5, 0 and 0.99, T = 1 and T = 300, with and without bootstrap), also under jax.jit and jax.vmap."


def _reinforce_reference(
    logits, trajectories, critic, gamma, *, time_indexed=False, discount_weights=True, baseline=True, bootstrap=True, mean=True,
    returns_from="t", policy_states="t",
):
    from metagrad.tabular import log_policy

    states, actions, rewards = trajectories.observations, trajectories.actions, trajectories.rewards
    horizon = rewards.shape[1]
    returns = jnp.stack(
        [
            _float(reference_reward_to_go(r, gamma, critic[s[-1]] if bootstrap else 0.0))
            for r, s in zip(np.asarray(rewards), np.asarray(states))
        ]
    )
    if returns_from == "t+1":  # G_{t+1} at step t (G_T = the bootstrap)
        last = critic[states[:, -1]] if bootstrap else jnp.zeros(states.shape[0], returns.dtype)
        returns = jnp.concatenate([returns[:, 1:], last[:, None]], axis=1)
    elif returns_from == "0":  # the whole return G_0 at every step
        returns = jnp.broadcast_to(returns[:, :1], returns.shape)
    elif returns_from == "r":  # the immediate reward r_t in place of G_t
        returns = rewards.astype(returns.dtype)
    if time_indexed == "next":  # the critic of the next state, critic[x_{t+1}]
        subtracted = critic[states[:, 1:]]
    else:
        subtracted = critic[jnp.arange(horizon)][None, :] if time_indexed else critic[states[:, :-1]]
    advantages = returns - subtracted if baseline else returns
    weights = gamma ** jnp.arange(horizon) if discount_weights else jnp.ones(horizon)

    acting = states[:, 1:] if policy_states == "next" else states[:, :-1]

    def surrogate(theta):
        log_pi = log_policy(theta, acting, actions)
        per_trajectory = jnp.sum(weights * advantages * log_pi, axis=1)
        return jnp.mean(per_trajectory) if mean else jnp.sum(per_trajectory)

    return jax.grad(surrogate)(logits)


@_register("02", "reinforce_gradient")
def check_reinforce_gradient(reinforce_gradient: Callable) -> str:
    """`reinforce_gradient(logits, trajectories, critic, gamma)` -> (1/N) Σ_i Σ_t γ^t Â_t ∇ℓ_t, shape [S, A]."""
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
            lambda *a: _reinforce_reference(*a, time_indexed="next"),
            "It subtracts the critic of the next state, critic[x_{t+1}] (off by one): the baseline of step t is critic[x_t], "
            "the state where a_t is chosen.",
        ),
        (
            lambda *a: _reinforce_reference(*a, discount_weights=False),
            "It is missing the γ^t weight in front of each term: the policy-gradient theorem discounts "
            "the time at which the action is taken.",
        ),
        (
            lambda *a: _reinforce_reference(*a, baseline=False),
            "It ignores the baseline: the weight is Â_t = G_t − critic[x_t], not the return G_t alone (right only for a zero critic).",
        ),
        (
            lambda *a: _reinforce_reference(*a, baseline=False, bootstrap=False),
            "It ignores the critic altogether: it enters twice, as the baseline (Â_t = G_t − critic[x_t]) and as the "
            "bootstrap that continues G_t after the last reward (γ^(T−t) · critic[x_T]).",
        ),
        (
            lambda *a: _reinforce_reference(*a, bootstrap=False),
            "It does not bootstrap: G_t must continue with γ^(T−t) · critic[x_T] after the last reward (right only for a zero critic).",
        ),
        (
            lambda *a: _reinforce_reference(*a, mean=False),
            "It sums over the trajectories instead of averaging: the estimate is the batch mean (right for one trajectory only).",
        ),
        (
            lambda *a: -_reinforce_reference(*a),
            "It has the wrong sign (it is minus the policy gradient): the estimate points uphill in J; check the sign "
            "of the advantage weights or of the surrogate you differentiate.",
        ),
        (
            lambda *a: _reinforce_reference(*a, returns_from="t+1"),
            "It weights step t by the return from step t + 1, G_{t+1} (off by one): the reward r_t that follows the "
            "action a_t belongs in its weight.",
        ),
        (
            lambda *a: _reinforce_reference(*a, returns_from="0"),
            "It weights every step by the whole return G_0: an action cannot change the rewards that came before it, so "
            "step t's weight should count only the rewards from t on.",
        ),
        *[
            (
                lambda *a, _b=b: _reinforce_reference(*a, returns_from="0", discount_weights=False, baseline=_b),
                "It weights every step by the whole return G_0 with no γ^t: step t's weight is γ^t (G_t − critic[x_t]), "
                "the discounted return from t on (an action cannot change earlier rewards).",
            )
            for b in (True, False)
        ],
        (
            lambda *a: a[3] * _reinforce_reference(*a),
            "It weights step t by γ^(t+1), one discount too many: the first action's term is not discounted, and step "
            "t's term carries the discount of the time t at which its action is taken.",
        ),
        (
            lambda *a: _reinforce_reference(*a) / a[1].rewards.shape[1],
            "It is T times too small (divided by the horizon): average over trajectories only; the steps of one "
            "trajectory are summed, Σ_t γ^t Â_t ∇ℓ_t.",
        ),
        *[
            (
                lambda *a, _t=t: _reinforce_reference(*a, policy_states="next", time_indexed=_t),
                "It scores a_t in the next state, ∇ log π(a_t|x_{t+1}) (observations[:, 1:], off by one): a_t is "
                "chosen in x_t, observations[:, :-1].",
            )
            for t in (False, "next")
        ],
        *[
            (
                lambda *a, _b=b: _reinforce_reference(*a, returns_from="r", baseline=_b),
                "It weights step t by the immediate reward r_t instead of the return G_t: the action a_t also changes "
                "every later reward, so its weight must count them (G_t = r_t + γ G_{t+1}).",
            )
            for b in (True, False)
        ],
    ]
    shifted = (logits + _SHIFT, batch, critic, 0.9)  # same π, same batch: softmax ignores a common shift of the logits
    _refuse_inexact(
        "reinforce_gradient", reinforce_gradient, _reinforce_reference, shifted,
        "the first batch with logits shifted by 10⁴ (the same π)", "the exact gradient",
    )
    _compare(
        "reinforce_gradient",
        reinforce_gradient,
        _reinforce_reference,
        cases,
        expected_form="(same as logits, [S, A])",
        mistakes=mistakes,
        jit=True,
    )
    return (
        "matches (1/N) Σ_i Σ_t γ^t (G_t − V(x_t)) ∇ log π(a_t|x_t) on 3 batches (incl. one trajectory and a zero critic), "
        "also under jax.jit, and exactly (not by finite differences) on logits shifted by 10⁴."
    )


@_register("02", "occupancy_policy_gradient")
def check_occupancy_policy_gradient(occupancy_policy_gradient: Callable) -> str:
    """`occupancy_policy_gradient(mdp, logits [S, A], occupancy [S])` -> the [S, A] policy-gradient field (∂J/∂θ for d^π)."""
    from metagrad import exact
    from metagrad import mdp as mdp_lib

    def pieces(mdp, logits):
        pi = jax.nn.softmax(logits, axis=-1)
        v, q = mdp_lib.policy_evaluation(mdp, pi)
        return pi, v, q

    @jax.jit
    def reference(mdp, logits, occupancy):
        pi, v, q = pieces(mdp, logits)
        return occupancy[:, None] * pi * (q - v[:, None])

    rng = np.random.default_rng(9)
    mdp_a = _random_mdp(rng, 4, 3, 0.8)
    mdp_b = _random_mdp(rng, 3, 2, 0.6)  # not 0.5: an extra factor γ and a factor (1 − γ) must differ
    mdp_b = type(mdp_b)(mdp_b.transitions, mdp_b.rewards, _float(rng.dirichlet(np.ones(3))), mdp_b.gamma)
    theta_a, theta_b = _float(rng.normal(size=(4, 3))), _float(rng.normal(size=(3, 2)))
    d_a = mdp_lib.discounted_occupancy(mdp_a, jax.nn.softmax(theta_a, -1))
    cases = [
        ("the discounted occupancy d^π of a 4-state MDP (γ = 0.8)", (mdp_a, theta_a, d_a)),
        ("an arbitrary occupancy vector", (mdp_a, theta_a, _float(rng.uniform(0.1, 3.0, size=4)))),
        (
            "a 3-state MDP with γ = 0.6, a random start distribution and its d^π",
            (mdp_b, theta_b, mdp_lib.discounted_occupancy(mdp_b, jax.nn.softmax(theta_b, -1))),
        ),
        ("an arbitrary occupancy vector on the 3-state MDP", (mdp_b, theta_b, _float(rng.uniform(0.1, 3.0, size=3)))),
    ]

    def variant(kind):
        def wrong(mdp, logits, occupancy):
            pi, v, q = pieces(mdp, logits)
            uniform_v, uniform_q = mdp_lib.policy_evaluation(mdp, jnp.full_like(pi, 1.0 / pi.shape[-1]))
            weight = {
                "q": q,
                "r": mdp.rewards - jnp.sum(pi * mdp.rewards, -1, keepdims=True),
                "r_raw": mdp.rewards,
                "mean_q": q - jnp.mean(q, -1, keepdims=True),
                "max_q": q - jnp.max(q, -1, keepdims=True),
                "uniform_policy": uniform_q - uniform_v[:, None],
            }.get(kind, q - v[:, None])
            occ = {
                "initial": mdp.initial,
                "norm": (1 - mdp.gamma) * occupancy,
                "sum_to_one": occupancy / jnp.sum(occupancy),
                "own": mdp_lib.discounted_occupancy(mdp, pi),
                "ones": jnp.ones_like(occupancy),
                "uniform": jnp.full_like(occupancy, 1.0 / occupancy.shape[0]),
            }.get(kind, occupancy)
            out = occ[:, None] * weight
            out = out if kind == "no_pi" else out * (1 - pi) if kind == "one_minus_pi" else out * pi
            if kind in ("diag_q", "diag_a"):
                out = occ[:, None] * pi * (1 - pi) * (q if kind == "diag_q" else q - v[:, None])
            return {"sign": -out, "gamma": mdp.gamma * out}.get(kind, out)

        return wrong

    mistakes = [
        (variant("q"), "It weights by Q^π(x, a) instead of an advantage: the softmax couples the actions of a state; "
                       "differentiate Σ_b π(b|x) Q(x, b) in θ[x, a] and see what is subtracted from Q(x, a)."),
        (variant("no_pi"), "The factor π(a|x) is missing: write out ∂π(b|x)/∂θ[x, a] for the softmax and see what multiplies every term."),
        (variant("sign"), "It has the wrong sign (it is minus the gradient of J): check the order of the subtraction in the advantage."),
        (variant("gamma"), "It is γ times the answer: an extra factor γ; the occupancy already carries every discount, "
                           "so the advantage is not discounted again."),
        *[(variant(kind), "It weights by the immediate reward r(x, a): an action also changes every later reward, so its "
                          "weight must count the value of what follows, not only the first reward.") for kind in ("r", "r_raw")],
        (variant("initial"), "It uses the start distribution instead of the `occupancy` argument."),
        (variant("sum_to_one"), "It normalises the occupancy to sum to 1: use the `occupancy` argument as given, "
                                "unnormalised (d^π sums to 1/(1 − γ))."),
        (variant("norm"), "It is (1 − γ) times the answer: use the occupancy as given, unnormalised."),
        (variant("mean_q"), "Its baseline is the uniform average of Q^π(x, ·) over actions: the advantage subtracts "
                            "V^π(x) = Σ_b π(b|x) Q^π(x, b), the average under the policy."),
        (variant("max_q"), "Its baseline is max_b Q^π(x, b): the advantage subtracts V^π(x) = Σ_b π(b|x) Q^π(x, b), the "
                           "average under the policy."),
        (variant("uniform_policy"), "Its Q and V are those of the uniform policy: evaluate the policy of `logits`, "
                                    "π = softmax(θ), whose gradient this is."),
        (
            variant("own"),
            "It ignores the `occupancy` argument and uses d^π of the policy instead: right only when the two "
            "coincide; weight each state by the occupancy it is given.",
        ),
        (
            variant("ones"),
            "It ignores the `occupancy` argument, counting every state with weight 1: each state's row is weighted by "
            "the occupancy it is given, occupancy[x].",
        ),
        (
            variant("uniform"),
            "It ignores the `occupancy` argument, weighting every state equally (1/S): each state's row is weighted by "
            "the occupancy it is given, occupancy[x].",
        ),
        (
            variant("one_minus_pi"),
            "It multiplies the advantage by 1 − π(a|x), the derivative of log π(a|x) in its own logit: the field is "
            "Σ_b Q(x, b) ∂π(b|x)/∂θ[x, a], a sum over every action b, not only b = a.",
        ),
        *[
            (
                variant(kind),
                "It uses π(a|x)(1 − π(a|x)), only the diagonal of the softmax Jacobian: ∂π(b|x)/∂θ[x, a] = −π(b|x)π(a|x) "
                "is not zero for b ≠ a, so the field is Σ_b Q(x, b) ∂π(b|x)/∂θ[x, a] over every action b.",
            )
            for kind in ("diag_q", "diag_a")
        ],
    ]
    _compare(
        "occupancy_policy_gradient",
        occupancy_policy_gradient,
        reference,
        cases,
        expected_form="(one entry per state and action, [S, A])",
        mistakes=mistakes,
        jit=True,
    )
    got = np.asarray(occupancy_policy_gradient(*cases[0][1]))
    if not np.allclose(got, np.asarray(exact.gradient(mdp_a, theta_a)), rtol=1e-6, atol=1e-9):
        _fail("occupancy_policy_gradient", "with occupancy = d^π it must equal exact.gradient (the policy-gradient theorem); it does not.")
    return "matches d(x) π(a|x) A^π(x, a) on 4 inputs (incl. two arbitrary occupancies and a random start), and equals exact.gradient with d^π."
