"""``metagrad maml-locomotion`` (Fig. 2): every task trains at a tiny size, the CLI refuses bad options by name,
a resumed run equals an uninterrupted one, and the JSON and figure are written.

Compiling an MJX meta-iteration dominates (minutes on a shared CPU), so each of the four tasks compiles once
at one tiny size (2 tasks × 2 trajectories × 10 steps, an 8×8 policy, 2 iterations; ``TINY``): the command's
runs on HalfCheetah use the same config as its training test and reuse that compiled program
(``metagrad.maml.make_train``'s cache, in this process).
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="needs the optional extra: pip install -e '.[locomotion]' -c constraints.txt")

from metagrad import cli, plotting  # noqa: E402
from metagrad.experiments import maml_locomotion as ml  # noqa: E402

TINY = dict(num_tasks=2, num_trajectories=2, horizon=10, hidden_sizes=(8, 8), num_iterations=2)
TINY_ARGS = ["--num-tasks", "2", "--num-trajectories", "2", "--horizon", "10", "--hidden-sizes", "8,8"]
METHOD = "promp-taypo2"  # the method every task trains with here (ProMP differs only in its inner estimator)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "hopper-direction"], "unknown task 'hopper-direction' in --task"),
        (["--methods", "promp,trpo-maml"], "unknown method 'trpo-maml' in --methods"),
        (["--methods", "promp,promp"], "--methods lists 'promp' more than once"),
        (["--seeds", "1"], "--seeds must be at least 2"),
        (["--resume"], "--resume continues the checkpoints of --checkpoint-dir"),
    ],
)
def test_cli_refuses_by_name(argv, message, tmp_path, capsys):
    assert cli.main(["maml-locomotion", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["--num-tasks", "0"], ["--horizon", "-3"], ["--iterations", "x"],
                                  ["--hidden-sizes", "8,0"], ["--num-trajectories", "2.5"]])
def test_cli_refuses_bad_sizes(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["maml-locomotion", "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert f"argument {argv[0]}: expected" in capsys.readouterr().err


def _assert_trains(history, iterations=2):
    """Finite metrics of every iteration; the return changes between iterations; the parameters moved."""
    for name in ("post_return", "pre_return", "meta_grad_norm"):
        values = np.asarray(history[name])
        assert values.shape[-1] == iterations and np.all(np.isfinite(values)), name
    post = np.asarray(history["post_return"])
    assert np.all(post[..., 0] != post[..., 1])
    assert np.all(np.asarray(history["meta_grad_norm"]) > 0)


@pytest.mark.parametrize("task", ["ant-direction", "ant-goal", "walker2d-direction"])
def test_task_trains_at_a_tiny_size(task):
    config = ml.loco_config(task, METHOD, **TINY)
    assert config.sampling == ("steps" if task in ml.TERMINATING else "episodes")
    history = ml.run_seed(task, METHOD, config, ml.seed_key(0, 0), progress=False)
    _assert_trains(history)
    if config.sampling == "steps":
        assert np.all(np.asarray(history["dropped_steps"]) == 0)


def _run(tmp_path, out, *extra):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["maml-locomotion", "--task", "halfcheetah-direction", "--methods", METHOD, "--seeds", "2",
                         *TINY_ARGS, "--out", str(tmp_path / out), *extra]) == 0
    return json.load(open(tmp_path / out / "maml_locomotion.json")), err.getvalue()


@pytest.fixture(scope="module")
def halfcheetah_run(tmp_path_factory):
    """The command on HalfCheetah at the tiny size, 2 seeds, 2 iterations (the training test of that task)."""
    tmp_path = tmp_path_factory.mktemp("halfcheetah")
    data, log = _run(tmp_path, "full", "--iterations", "2")
    return tmp_path, data, log


def test_halfcheetah_command_trains_and_writes_outputs(halfcheetah_run):
    tmp_path, data, log = halfcheetah_run
    entry = data["results"]["halfcheetah-direction"]
    curves = {name: np.asarray(entry[name][METHOD]) for name in ("post_return", "pre_return")}
    assert curves["post_return"].shape == (2, 2)
    _assert_trains({**curves, "meta_grad_norm": np.ones((2, 2))})
    assert not np.array_equal(curves["post_return"][0], curves["post_return"][1])  # seeds differ
    # ProMP's budget per iteration: tasks × (inner steps + 1) × trajectories × horizon
    assert entry["env_steps"] == [2 * 2 * 2 * 10, 2 * 2 * 2 * 2 * 10]
    assert data["configs"]["halfcheetah-direction"][METHOD]["sampling"] == "episodes"
    assert data["settings"]["paper_protocol"] is False
    assert all(v["source"] for v in data["protocol_defaults"].values())
    last = data["summary"]["halfcheetah-direction"][METHOD]["last"]
    assert last[0] == pytest.approx(curves["post_return"].mean())  # window = both iterations
    assert last[1] == pytest.approx(curves["post_return"].mean(1).std(ddof=1) / np.sqrt(2))
    assert (tmp_path / "full" / "maml_locomotion.png").stat().st_size > 10_000
    assert "halfcheetah-direction promp-taypo2 iteration 2/2: post-adaptation return" in log
    assert "env steps/s" in log


def test_resume_equals_uninterrupted(halfcheetah_run, capsys):
    """A run checkpointed after 1 iteration and resumed to 2 gives the uninterrupted run's curves exactly; a folder
    that holds checkpoints is refused without --resume, and a resume to fewer iterations than done is refused."""
    tmp_path, full, _ = halfcheetah_run
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt")]
    _run(tmp_path, "part", "--iterations", "1", *ckpt)
    assert (tmp_path / "ckpt" / "halfcheetah-direction" / METHOD / "seed-1" / "checkpoint.npz").exists()
    assert cli.main(["maml-locomotion", "--out", str(tmp_path / "x"), "--methods", METHOD, "--seeds", "2", *ckpt]) == 2
    assert f"already holds a checkpoint of halfcheetah-direction {METHOD} seed 0" in capsys.readouterr().err
    resumed, _ = _run(tmp_path, "resumed", "--iterations", "2", "--resume", *ckpt)
    for name in ("post_return", "pre_return"):
        np.testing.assert_array_equal(resumed["results"]["halfcheetah-direction"][name][METHOD],
                                      full["results"]["halfcheetah-direction"][name][METHOD])
    shorter = ["maml-locomotion", "--out", str(tmp_path / "y"), "--methods", METHOD, "--seeds", "2", *TINY_ARGS,
               "--iterations", "1", "--resume", *ckpt]
    assert cli.main(shorter) == 2
    assert "--resume of halfcheetah-direction promp-taypo2 seed 0: The checkpoint is at iteration 2" in capsys.readouterr().err


def test_figure_panels_and_palette(tmp_path, monkeypatch):
    """One panel per task; each method drawn in the palette's colour of its Fig. 2 label, mean ± s.e. band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    monkeypatch.setattr(plt, "close", lambda fig: captured.setdefault("fig", fig))
    rng = np.random.default_rng(0)
    results = {task: {"env_steps": [10, 20, 30], "post_return": {m: rng.normal(size=(3, 3)).tolist()
                                                                  for m in ml.LOCO_METHODS}}
               for task in ("halfcheetah-direction", "ant-goal")}
    ml.plot(results, str(tmp_path / "fig.png"), "title")
    axes = captured["fig"].axes
    assert [ax.get_title() for ax in axes] == ["halfcheetah-direction", "ant-goal"]
    for ax in axes:
        lines = ax.get_lines()
        assert [line.get_color() for line in lines] == [plotting.style("ProMP")["color"],
                                                         plotting.style("ProMP-TayPO-2")["color"]]
        curves = results[ax.get_title()]["post_return"]["promp"]
        np.testing.assert_allclose(lines[0].get_ydata(), np.mean(curves, axis=0))
