"""Property-based tests (Hypothesis) of input validation: ``mdp``, ``ope``, ``estimators`` and the CLI parsers.

One property everywhere: **a bad input is refused with a ``ValueError`` naming it, and an accepted input gives
finite numbers** — never NaN, never a silently clamped index, never another exception. Hypothesis generates
the inputs (NaN, ±inf, huge and negative values, wrong lengths, out-of-range indices, odd option strings)
and shrinks any failure to a minimal case. Examples are few and derandomized (fixed seed), so CI is fast and
deterministic.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metagrad import cli, estimators, maml, mdp, ope
from metagrad.experiments import maml_experiments, reproduce
from metagrad.rollout import Trajectories

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
moderate = st.floats(-1e3, 1e3, allow_nan=False)


def _floats(n, elements=any_float):
    return st.lists(elements, min_size=n, max_size=n).map(lambda x: np.asarray(x, np.float64))


# ------------------------------------------------------------------------------------------------------- mdp
@FAST
@given(dirichlet=any_float, reward_scale=any_float, gamma=any_float)
def test_random_mdp_refuses_or_gives_a_valid_mdp(dirichlet, reward_scale, gamma):
    try:
        m = mdp.random_mdp(jax.random.PRNGKey(0), 3, 2, gamma=gamma, dirichlet=dirichlet, reward_scale=reward_scale)
    except ValueError as err:
        assert any(f"`{name}`" in str(err) for name in ("dirichlet", "reward_scale", "gamma")), err
        return
    transitions = np.asarray(m.transitions)
    assert np.all(np.isfinite(transitions)) and np.all(transitions >= 0)
    np.testing.assert_allclose(transitions.sum(-1), 1.0, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(m.rewards))) and 0 <= float(m.gamma) < 1


@FAST
@given(transitions=_floats(2 * 2 * 2, st.one_of(st.floats(0, 1), any_float)), rewards=_floats(4), gamma=any_float)
def test_tabular_mdp_refuses_or_holds_probabilities(transitions, rewards, gamma):
    transitions = transitions.reshape(2, 2, 2)
    try:
        m = mdp.TabularMDP(transitions, rewards.reshape(2, 2), np.array([1.0, 0.0]), gamma)
    except ValueError as err:
        assert any(f"`{name}`" in str(err) for name in ("transitions", "rewards", "gamma")), err
        return
    v, _ = mdp.policy_evaluation(m, jnp.full((2, 2), 0.5))
    assert np.all(np.isfinite(np.asarray(v)))


# ------------------------------------------------------------------------------------------------------- ope
OPE = [ope.step_importance_sampling, ope.doubly_robust, ope.vtrace,
       lambda *a: ope.taylor_expansion(*a, order=2)]


@FAST
@given(data=st.data(), horizon=st.integers(1, 6), which=st.integers(0, len(OPE) - 1))
def test_ope_refuses_bad_values_and_is_finite_otherwise(data, horizon, which):
    weird = st.one_of(moderate, any_float)
    log_ratios = data.draw(_floats(horizon, st.one_of(st.floats(-5, 5), weird)), "log_ratios")
    rewards = data.draw(_floats(horizon, weird), "rewards")
    values = data.draw(_floats(horizon + 1, weird), "values")
    discount = data.draw(st.one_of(st.floats(0, 1), any_float), "discount")
    try:
        out = OPE[which](log_ratios, rewards, values, discount)
    except ValueError as err:
        named = [n for n in ("log_ratios", "rewards", "values", "discounts") if f"`{n}`" in str(err)]
        assert named, err
        return
    # Accepted: finite inputs in range (|λ| ≤ 5, moderate rewards/values, γ ∈ [0, 1]) give a finite estimate.
    assert np.all(np.isfinite(log_ratios)) and np.all(np.isfinite(rewards)) and np.all(np.isfinite(values))
    assert 0 <= discount <= 1
    if np.all(np.abs(log_ratios) <= 5) and np.all(np.abs(rewards) <= 1e3) and np.all(np.abs(values) <= 1e3):
        assert math.isfinite(float(out))


@FAST
@given(horizon=st.integers(1, 5), values_len=st.integers(0, 7), rewards_len=st.integers(0, 7))
def test_ope_refuses_wrong_lengths(horizon, values_len, rewards_len):
    args = (np.zeros(horizon), np.zeros(rewards_len), np.zeros(values_len), 0.9)
    if rewards_len == horizon and values_len == horizon + 1:
        assert math.isfinite(float(ope.doubly_robust(*args)))
    else:
        with pytest.raises(ValueError, match="`rewards`|`values`"):
            ope.doubly_robust(*args)


# ------------------------------------------------------------------------------------------------ estimators
@FAST
@given(name=st.one_of(st.sampled_from(estimators.valid_names()), st.text(max_size=10),
                      st.from_regex(r"taypo-?[0-9]{0,3}", fullmatch=True)))
def test_estimator_names_resolve_or_list_the_valid_ones(name):
    try:
        estimator = estimators.get(name)
    except ValueError as err:
        assert "valid names are" in str(err)
        return
    assert name in estimators.valid_names() or (name.startswith("taypo") and int(name[5:]) >= 1)
    assert estimator.name == name


@FAST
@given(data=st.data())
def test_tabular_derivatives_refuse_out_of_range_indices_and_nan_inputs(data):
    num_states, num_actions, n, horizon = 3, 2, 2, 3
    observations = data.draw(st.lists(st.integers(-2, 5), min_size=n * (horizon + 1), max_size=n * (horizon + 1)))
    actions = data.draw(st.lists(st.integers(-1, 3), min_size=n * horizon, max_size=n * horizon))
    rewards = data.draw(_floats(n * horizon, st.one_of(st.floats(0, 1), any_float)))
    critic = data.draw(_floats(num_states, st.one_of(st.floats(-1, 1), any_float)))
    name = data.draw(st.sampled_from(["is", "dr", "taypo2", "maml", "fomaml", "dice", "lvc"]))
    batch = Trajectories(jnp.asarray(observations).reshape(n, horizon + 1), jnp.asarray(actions).reshape(n, horizon),
                         jnp.asarray(rewards).reshape(n, horizon), jnp.zeros((n, horizon)))
    try:
        grad, hess = estimators.tabular_derivatives(name, jnp.zeros((num_states, num_actions)), batch,
                                                    jnp.asarray(critic), discount=0.8)
    except ValueError as err:
        named = ("trajectories.observations", "trajectories.actions", "trajectories.rewards", "critic")
        assert any(f"`{n_}`" in str(err) for n_ in named), err
        return
    assert 0 <= min(observations) and max(observations) < num_states
    assert 0 <= min(actions) and max(actions) < num_actions
    assert np.all(np.isfinite(np.asarray(grad))) and np.all(np.isfinite(np.asarray(hess)))


# ------------------------------------------------------------------------------------------------------- CLI
class Started(Exception):
    pass


@pytest.fixture
def no_computation(monkeypatch):
    def started(*args, **kwargs):
        raise Started

    monkeypatch.setattr(reproduce, "run", started)
    monkeypatch.setattr(maml_experiments, "run_accuracy", started)
    monkeypatch.setattr(maml, "train", started)
    monkeypatch.setattr(maml, "train_seeds", started)


NUMBERS = st.one_of(
    st.sampled_from(["0", "1", "2", "-1", "nan", "inf", "-inf", "1e300", "0.5", "1.0", str(2**64), "", ",", "1,,2"]),
    st.integers(-10, 10**7).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.integers(-3, 10**6), max_size=4).map(lambda xs: ",".join(map(str, xs))),
    st.text(alphabet="abc,;-0123456789.e ", max_size=8),
)
OPTIONS = {
    "reproduce": ["--states", "--actions", "--horizon", "--gamma", "--dirichlet", "--epsilons", "--num-trajectories",
                  "--sweep", "--sweep-epsilon", "--trials", "--noise", "--seed", "--estimators", "--order",
                  "--third-order-estimators", "--third-order-trajectories", "--device"],
    "maml-accuracy": ["--seed", "--seeds", "--batch-sizes", "--estimators", "--num-tasks", "--num-states",
                      "--num-actions", "--horizon", "--gamma", "--step-size", "--repeats"],
    "maml-nav2d": ["--seed", "--seeds", "--methods", "--env", "--iterations", "--num-tasks", "--num-trajectories",
                   "--horizon", "--inner-steps"],
}
QUIET = {"reproduce": "--quiet", "maml-accuracy": "--no-progress", "maml-nav2d": "--no-progress"}


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cli_refuses_in_one_line_or_starts_cleanly(data, no_computation, tmp_path, capsys):
    command = data.draw(st.sampled_from(sorted(OPTIONS)), "command")
    chosen = data.draw(st.lists(st.sampled_from(OPTIONS[command]), min_size=1, max_size=3, unique=True), "options")
    argv = [command, QUIET[command], "--out", str(tmp_path / "out")]
    for option in chosen:
        argv += [option, data.draw(NUMBERS, option)]
    try:
        code = cli.main(argv)
    except Started:
        return  # accepted: the computation would start
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, code, err)
    assert len(err.splitlines()) == 1 and f"metagrad {command}: error:" in err, err
    assert not os.path.exists(tmp_path / "out"), "a refused command created its output folder"
