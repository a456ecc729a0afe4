"""Every option of ``metagrad reproduce``, ``maml-accuracy`` and ``maml-nav2d`` is checked before any computation
(issue 13 §2): an error is one line naming the option, the exit status is 2, and no file is written.

The computations are replaced by a function that fails the test if it is ever called, so each case proves the
option was refused *before* the work started (and runs in milliseconds)."""

import json
import math
import os
import tempfile

import numpy as np
import pytest

from metagrad import cli, maml
from metagrad._validation import OptionError, check_device, write_json_atomic
from metagrad.experiments import maml_experiments, reproduce


class Started(Exception):
    """Raised by the stand-in computation: the command got past its option checks."""


@pytest.fixture(autouse=True)
def no_computation(monkeypatch):
    calls = []

    def started(*args, **kwargs):
        calls.append(kwargs)
        raise Started

    monkeypatch.setattr(reproduce, "run", started)
    monkeypatch.setattr(maml_experiments, "run_accuracy", started)
    monkeypatch.setattr(maml, "train", started)
    monkeypatch.setattr(maml, "train_seeds", started)
    return calls


def _refused(argv, capsys, option, out):
    """Run ``metagrad ARGV --out OUT`` and check: exit 2, one stderr line naming ``option``, nothing written."""
    before = sorted(os.listdir(out)) if os.path.isdir(out) else None
    try:
        code = cli.main([*argv, "--out", str(out)])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert option in lines[0] and "error:" in lines[0], lines[0]
    after = sorted(os.listdir(out)) if os.path.isdir(out) else None
    assert after == before, "a file was written"
    return lines[0]


REPRODUCE_BAD = [
    (["--estimators", "taypo"], "--estimators"),
    (["--estimators", "is,bogus"], "--estimators"),
    (["--estimators", ""], "--estimators"),
    (["--estimators", "is,is"], "--estimators"),
    (["--order", "3", "--third-order-estimators", ""], "--third-order-estimators"),
    (["--sweep", ""], "--sweep"),
    (["--epsilons", ""], "--epsilons"),
    (["--epsilons", "0.2,0.2"], "--epsilons"),
    (["--trials", "1"], "--trials"),
    (["--dirichlet", "inf"], "--dirichlet"),
    (["--dirichlet", "nan"], "--dirichlet"),
    (["--noise", "1e300"], "--noise"),
    (["--noise", "nan"], "--noise"),
    (["--gamma", "nan"], "--gamma"),
    (["--seed", str(2**64)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--states", "100000"], "GiB"),
    (["--epsilons", "half"], "--epsilons"),
]


@pytest.mark.parametrize("argv, option", REPRODUCE_BAD, ids=[" ".join(a) for a, _ in REPRODUCE_BAD])
def test_reproduce_refuses_bad_options_before_computing(argv, option, tmp_path, capsys):
    _refused(["reproduce", *argv, "--quiet"], capsys, option, tmp_path)


def test_reproduce_memory_refusal_states_the_estimate(tmp_path, capsys):
    line = _refused(["reproduce", "--states", "100000", "--quiet"], capsys, "--states", tmp_path)
    need = float(line.split("need at least ")[1].split(" GiB")[0])
    config = reproduce.ReproduceConfig(states=100000)
    assert need == pytest.approx(config.memory_estimate() / 2**30, rel=1e-2)
    # The paper's protocol passes (estimate far below a laptop's memory).
    assert reproduce.ReproduceConfig().memory_estimate() < 2 * 2**30


def test_out_that_is_a_file_or_unwritable_is_refused(tmp_path, capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    _refused(["reproduce", "--quiet"], capsys, "--out", a_file)
    assert a_file.read_text() == "keep me"
    _refused(["maml-accuracy", "--no-progress"], capsys, "--out", a_file / "sub")
    _refused(["maml-nav2d", "--no-progress"], capsys, "--out", a_file)
    try:
        with tempfile.TemporaryFile(dir="/sys/fs"):
            pytest.skip("/sys/fs is writable here")
    except OSError:
        pass
    _refused(["reproduce", "--quiet"], capsys, "--out", "/sys/fs/metagrad-test-out")


def test_device_gpu_without_a_gpu_is_one_line_and_restores_the_platform():
    import jax

    if jax.devices()[0].platform == "gpu":
        pytest.skip("a GPU is present")
    before = jax.config.jax_platforms
    with pytest.raises(OptionError, match="--device gpu is not available here") as err:
        check_device("--device", "gpu")
    assert "\n" not in str(err.value)
    assert jax.config.jax_platforms == before and jax.devices()[0].platform == "cpu"


ACCURACY_BAD = [
    (["--gamma", "1"], "--gamma"),
    (["--gamma", "nan"], "--gamma"),
    (["--estimators", ""], "--estimators"),
    (["--estimators", "magic"], "--estimators"),
    (["--estimators", "taypo"], "--estimators"),
    (["--estimators", "dr,dr"], "--estimators"),
    (["--step-size", "0"], "--step-size"),
    (["--step-size", "inf"], "--step-size"),
    (["--repeats", "1"], "--repeats"),
    (["--seeds", "1"], "--seeds"),
    (["--num-actions", "1"], "--num-actions"),
    (["--batch-sizes", "10,0"], "--batch-sizes"),
    (["--batch-sizes", ""], "--batch-sizes"),
    (["--seed", str(2**64)], "--seed"),
    (["--num-tasks", "100000", "--batch-sizes", "100000", "--horizon", "1000"], "GiB"),
]


@pytest.mark.parametrize("argv, option", ACCURACY_BAD, ids=[" ".join(a) for a, _ in ACCURACY_BAD])
def test_maml_accuracy_refuses_bad_options_before_computing(argv, option, tmp_path, capsys):
    _refused(["maml-accuracy", *argv, "--no-progress"], capsys, option, tmp_path)


NAV_BAD = [
    (["--methods", ""], "--methods"),
    (["--methods", "TRPO-Magic"], "--methods"),
    (["--methods", "ProMP,ProMP"], "--methods"),
    (["--seeds", "1"], "--seeds"),
    (["--seed", str(2**32)], "--seed"),  # without x64 a JAX key takes the seed mod 2**32: it would rerun seed 0
    (["--seed", "-5"], "--seed"),
    (["--num-tasks", "100000", "--num-trajectories", "10000"], "--num-tasks"),  # ~10⁴ GiB of trajectories
]


@pytest.mark.parametrize("argv, option", NAV_BAD, ids=[" ".join(a) for a, _ in NAV_BAD])
def test_maml_nav2d_refuses_bad_options_before_computing(argv, option, tmp_path, capsys):
    _refused(["maml-nav2d", *argv, "--no-progress"], capsys, option, tmp_path)


def test_quick_never_overrides_an_explicit_option(tmp_path, no_computation):
    out = str(tmp_path / "acc")
    with pytest.raises(Started):
        cli.main(["maml-accuracy", "--quick", "--batch-sizes", "20,40", "--seeds", "6", "--num-tasks", "7",
                  "--out", out, "--no-progress"])
    settings = no_computation[-1]
    assert (settings["batch_sizes"], settings["seeds"], settings["num_tasks"]) == ([20, 40], 6, 7)
    with pytest.raises(Started):
        cli.main(["maml-accuracy", "--quick", "--out", out, "--no-progress"])
    settings = no_computation[-1]
    assert (settings["batch_sizes"], settings["seeds"], settings["num_tasks"]) == ([10, 100, 1000], 3, 4)
    assert not os.path.exists(out)


def test_results_with_nan_are_never_written_as_json(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(ValueError):
        write_json_atomic(str(path), {"correlation": [0.5, math.nan]})
    assert os.listdir(tmp_path) == []  # neither the file nor a temporary one
    write_json_atomic(str(path), {"correlation": [0.5, None]})
    assert json.loads(path.read_text()) == {"correlation": [0.5, None]}


def test_reproduce_undefined_correlations_are_null_and_na():
    results = {"panels": {}}
    config = reproduce.ReproduceConfig(trials=2, epsilons=(0.0,), estimators=("fomaml",))
    ab = {"fomaml": {"grad_corr": np.array([[0.9], [0.8]]), "grad_rel": np.array([[0.1], [0.2]])}}
    results["panels"] = reproduce._summarise(config, ab, {}, {})
    json.dumps(results, allow_nan=False)
    with pytest.raises(FloatingPointError, match="relative_error"):
        reproduce._summarise(config, {"fomaml": {"grad_corr": ab["fomaml"]["grad_corr"],
                                                 "grad_rel": np.array([[np.nan], [0.2]])}}, {}, {})
