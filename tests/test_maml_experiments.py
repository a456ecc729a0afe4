"""MAML experiments: a short seeded Navigation2D run improves, and the CLI subcommands work and fail clearly."""

import json

import jax
import numpy as np
import pytest

from metagrad import cli, maml


def test_short_navigation_run_improves_post_adaptation_return():
    # The MAML surrogate (second-order, cheap to compile) keeps this test short; seeds 0–2 improve by 1.8–3.0.
    config = maml.MAMLConfig(
        env="navigation", hidden_sizes=(16, 16), num_tasks=4, num_trajectories=10, horizon=20, inner_steps=1,
        inner_estimator="maml", outer="pg", outer_lr=1e-2, inner_step_size=0.05, num_iterations=20,
        checkpoint_every=20,
    )
    _, history = maml.train(config, jax.random.PRNGKey(0), progress=False)
    post = history["post_return"]
    assert np.all(np.isfinite(post)) and len(post) == 20
    assert post[-5:].mean() > post[:5].mean() + 0.5, post
    assert post[-5:].mean() > history["pre_return"][-5:].mean(), history  # adaptation helps


def test_maml_accuracy_cli_writes_json_and_figure(tmp_path, capsys):
    out = tmp_path / "acc"
    argv = ["maml-accuracy", "--out", str(out), "--seeds", "2", "--batch-sizes", "10,40", "--estimators", "maml",
            "--num-tasks", "2", "--num-states", "3", "--num-actions", "2", "--horizon", "5", "--repeats", "2",
            "--no-progress"]
    assert cli.main(argv) == 0
    data = json.load(open(out / "maml_accuracy.json"))
    assert set(data["results"]["maml"]) == {"10", "40"}
    for result in data["results"]["maml"].values():
        assert -1 <= result["correlation"][0] <= 1 and result["relative_error"][0] > 0
        assert result["bias"] >= 0 and result["bias_noise"] > 0 and result["bias_resolved"] in (True, False)
    assert data["settings"]["command_line"] == "metagrad " + " ".join(argv)
    assert (out / "maml_accuracy.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "maml" in table and "correlation" in table


@pytest.mark.parametrize(
    "argv, message",
    [
        (["maml-accuracy", "--estimators", "magic"], "unknown estimator 'magic' in --estimators"),
        (["maml-accuracy", "--step-size", "0"], "--step-size must be a positive"),
        (["maml-accuracy", "--repeats", "1"], "--repeats must be at least 2"),
        (["maml-nav2d", "--methods", "TRPO-Magic"], "unknown method 'TRPO-Magic' in --methods"),
    ],
)
def test_cli_errors(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["maml-accuracy", "--batch-sizes", "10,0"], ["maml-nav2d", "--seeds", "0"]])
def test_cli_argument_errors(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "expected" in capsys.readouterr().err


def test_nav2d_checkpoints_resume_to_the_uninterrupted_run(tmp_path, capsys):
    """``maml-nav2d --checkpoint-dir``: a run stopped after 2 iterations and resumed to 4 (``--resume --iterations 4``)
    gives the curves of an uninterrupted 4-iteration run; without ``--resume`` the filled folder is refused."""
    base = ["maml-nav2d", "--quick", "--methods", "ProMP", "--seeds", "2", "--num-tasks", "2", "--num-trajectories",
            "2", "--horizon", "5", "--no-progress"]

    def run(out, checkpoints, iterations, *extra):
        argv = base + ["--out", str(tmp_path / out), "--checkpoint-dir", str(tmp_path / checkpoints),
                       "--iterations", str(iterations), *extra]
        assert cli.main(argv) == 0
        return json.load(open(tmp_path / out / "maml_nav2d.json"))

    full = run("full", "full-ckpt", 4)
    run("part", "ckpt", 2)
    assert (tmp_path / "ckpt" / "ProMP" / "seed-1" / "checkpoint.npz").exists()
    assert cli.main(base + ["--out", str(tmp_path / "again"), "--checkpoint-dir", str(tmp_path / "ckpt")]) == 2
    assert "already holds a checkpoint of ProMP seed 0; pass --resume" in capsys.readouterr().err
    resumed = run("resumed", "ckpt", 4, "--resume")
    assert np.asarray(resumed["curves"]["ProMP"]).shape == (2, 4)
    np.testing.assert_array_equal(resumed["curves"]["ProMP"], full["curves"]["ProMP"])
    np.testing.assert_array_equal(resumed["pre_curves"]["ProMP"], full["pre_curves"]["ProMP"])
    assert cli.main(base + ["--out", str(tmp_path / "x"), "--resume"]) == 2
    assert "--resume continues the checkpoints of --checkpoint-dir" in capsys.readouterr().err


def test_squared_bias_helpers_match_naive_loops():
    """`squared_bias` = the mean of (ĝ_i − g)·(ĝ_j − g) over pairs i ≠ j; the report's jackknife by a loop; the MSE choice."""
    import itertools

    from metagrad.experiments import maml_experiments as mx

    rng = np.random.default_rng(3)
    estimates, truth = rng.normal(0.3, 1.0, (7, 4)), rng.normal(size=4)
    errors = estimates - truth
    pairs = [errors[i] @ errors[j] for i, j in itertools.permutations(range(7), 2)]
    np.testing.assert_allclose(float(mx.squared_bias(estimates, truth)), np.mean(pairs), rtol=1e-12)
    b2, se, var = map(float, mx.squared_bias_report(estimates, truth))
    partial = [float(mx.squared_bias(np.delete(estimates, i, axis=0), truth)) for i in range(7)]
    np.testing.assert_allclose(se, np.sqrt(6 / 7 * np.sum((np.array(partial) - np.mean(partial)) ** 2)), rtol=1e-10)
    np.testing.assert_allclose(var, sum(np.var(estimates[:, d], ddof=1) for d in range(4)), rtol=1e-12)
    np.testing.assert_allclose(b2, np.mean(pairs), rtol=1e-12)
    # A negative (unresolved) squared bias counts as 0, not as a gain: b wins at N = 1 only through that rule.
    assert mx.choose_by_mse({"a": -5.0, "b": 1.0}, {"a": 3.0, "b": 1.0}, 1) == "b"
    assert mx.choose_by_mse({"a": -5.0, "b": 1.0}, {"a": 3.0, "b": 1.0}, 100) == "a"
    with pytest.raises(ValueError, match="num_samples"):
        mx.choose_by_mse({"a": 0.0}, {"a": 1.0}, 0)
    with pytest.raises(ValueError, match="same non-empty keys"):
        mx.choose_by_mse({"a": 0.0}, {"b": 1.0}, 1)
