"""``metagrad reproduce`` end to end on a miniature protocol, and its command-line validation.

The miniature run (3 trials, N ≤ 300, ε ∈ {0, 0.5}) checks the claims that hold exactly or with a wide
margin at that size: the on-policy identities (paper-notes §4: every unbiased-gradient estimator gives the
same gradient at π = μ; DR and TayPO-2 give the same Hessian at π = μ and different ones off-policy), the
variance reduction of a critic (DR's gradient beats step-wise IS on every trial), determinism, and the
written files.
"""

import contextlib
import io
import json
import os

import numpy as np
import pytest

from metagrad.cli import main
from metagrad.experiments import reproduce

MINI = [
    "reproduce", "--trials", "3", "--epsilons", "0,0.5", "--num-trajectories", "300", "--sweep", "10,300",
    "--estimators", "is,dr,taypo1,taypo2",
]


STDERR = io.StringIO()  # the mini run's progress line: not a terminal, as in CI logs


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    with contextlib.redirect_stderr(STDERR):
        assert main([*MINI, "--out", str(out)]) == 0
    return out, json.loads((out / "figure1.json").read_text())


def _panel(results, panel, name, metric="correlation"):
    return np.asarray(results["panels"][panel]["estimators"][name][metric]["trials"])


def test_writes_figure_json_and_table(mini_run, capsys):
    out, results = mini_run
    for name in ("figure1.png", "beyond.png", "figure1.json"):
        assert (out / name).stat().st_size > 1000, name
    assert results["settings"]["trials"] == 3 and results["settings"]["epsilons"] == [0.0, 0.5]
    assert results["command"].startswith("metagrad reproduce --trials 3")
    assert results["environment"]["versions"]["jax"] and results["environment"]["devices"]
    assert set(results["panels"]) == {
        "a_gradient_vs_epsilon", "b_hessian_vs_epsilon", "c_hessian_vs_trajectories", "e_dr_vs_taypo2",
    }
    assert _panel(results, "c_hessian_vs_trajectories", "dr").shape == (3, 2)


def test_progress_says_it_compiles_then_counts_without_repeating_a_line(mini_run):
    lines = STDERR.getvalue().splitlines()
    # The suite runs without the compilation cache: nothing to load, so the first line says it compiles.
    assert "compiling the estimators (first run only" in lines[0] and " 0/5 " in lines[0], lines
    assert [line.split("] ")[1].split()[0] for line in lines] == [f"{k}/5" for k in range(6)], lines  # one line per unit
    assert len(set(lines)) == len(lines)


def test_output_files_get_the_users_permissions(mini_run):
    out, _ = mini_run
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("figure1.png", "beyond.png", "figure1.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_figures_have_no_empty_panel_and_say_what_they_draw(mini_run, tmp_path, monkeypatch):
    """Without ``--order 3`` there is no panel (d): ``beyond.png`` draws (e) and (f) only, and its title
    does not promise third derivatives."""
    import matplotlib.figure

    _, results = mini_run
    drawn = {}
    save = matplotlib.figure.Figure.savefig

    def record(fig, path, *args, **kwargs):
        drawn[os.path.basename(path)] = ([ax.get_title() for ax in fig.axes if ax.get_visible() and ax.has_data()],
                                         len(fig.axes), fig._suptitle.get_text())
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    reproduce.plot(results, str(tmp_path))
    titles, axes, suptitle = drawn["figure1.png"]
    assert axes == 3 and [t[:3] for t in titles] == ["(a)", "(b)", "(c)"]
    titles, axes, suptitle = drawn["beyond.png"]
    assert axes == 2 and [t[:3] for t in titles] == ["(e)", "(f)"], titles
    assert "third" not in suptitle and "DR = TayPO-2" in suptitle and "Hessian errors" in suptitle
    with_d = {**results, "panels": {**results["panels"], "d_third_vs_epsilon": results["panels"]["a_gradient_vs_epsilon"]},
              "settings": {**results["settings"], "third_order_trajectories": 300}}
    reproduce.plot(with_d, str(tmp_path))
    titles, axes, suptitle = drawn["beyond.png"]
    assert axes == 3 and [t[:3] for t in titles] == ["(d)", "(e)", "(f)"] and "third derivatives" in suptitle


def test_on_policy_identities(mini_run):
    _, results = mini_run
    grads = {n: _panel(results, "a_gradient_vs_epsilon", n)[:, 0] for n in ("dr", "taypo1", "taypo2")}
    # At π = μ the DR, TayPO-1 and TayPO-2 gradients are the same estimate (float32 estimates).
    np.testing.assert_allclose(grads["taypo1"], grads["dr"], atol=1e-5)
    np.testing.assert_allclose(grads["taypo2"], grads["dr"], atol=1e-5)
    # Hessians: DR = TayPO-2 on-policy (relative difference at float32 rounding), not off-policy.
    diff = _panel(results, "e_dr_vs_taypo2", "dr_vs_taypo2", "relative_difference")
    assert np.all(diff[:, 0] < 1e-4), diff[:, 0]
    assert np.all(diff[:, 1] > 0.05), diff[:, 1]
    # TayPO-1's Hessian drops terms, so it differs from DR's even on-policy.
    hess = {n: _panel(results, "b_hessian_vs_epsilon", n, "relative_error")[:, 0] for n in ("dr", "taypo1")}
    assert np.all(np.abs(hess["taypo1"] - hess["dr"]) > 1e-3)


def test_critic_reduces_gradient_variance(mini_run):
    _, results = mini_run
    corr_is = _panel(results, "a_gradient_vs_epsilon", "is")[:, 0]
    corr_dr = _panel(results, "a_gradient_vs_epsilon", "dr")[:, 0]
    assert np.all(corr_dr > corr_is), (corr_dr, corr_is)


def test_same_seed_same_numbers(mini_run):
    _, results = mini_run
    config = reproduce.ReproduceConfig(trials=3, epsilons=(0.0, 0.5), num_trajectories=300, sweep=(10, 300),
                                       estimators=("is", "dr", "taypo1", "taypo2"), progress=False)
    again = reproduce.run(config)
    for panel in ("a_gradient_vs_epsilon", "c_hessian_vs_trajectories"):
        np.testing.assert_array_equal(_panel(again, panel, "taypo2"), _panel(results, panel, "taypo2"))


@pytest.mark.parametrize(
    "options, message",
    [
        (["--estimators", "is,bogus"], "unknown estimator 'bogus'"),
        (["--epsilons", "0,1.0"], "must lie in [0, 1)"),
        (["--epsilons", "-0.1"], "must lie in [0, 1)"),
        (["--num-trajectories", "0"], "--num-trajectories must be a positive integer"),
        (["--sweep", "10,0"], "--sweep must be a positive integer"),
        (["--order", "4"], "--order must be 1, 2 or 3"),
    ],
)
def test_cli_rejects_bad_options(options, message, tmp_path, capsys):
    assert main(["reproduce", *options, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "figure1.json").exists()


def test_cli_rejects_non_numbers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--epsilons", "half"])
    assert exit_info.value.code == 2
    assert "comma-separated numbers" in capsys.readouterr().err


def test_first_order_maml_hessian_is_zero_not_mamls():
    """Issue 13: `reproduce --estimators maml,fomaml` printed the same Hessians for both. First-order MAML's
    Hessian is zero: relative error exactly 1, correlation undefined (null in JSON, "n/a" in the table)."""
    config = reproduce.ReproduceConfig(states=4, actions=2, horizon=5, trials=2, epsilons=(0.0, 0.5),
                                       num_trajectories=50, sweep=(10, 50), estimators=("maml", "fomaml"),
                                       progress=False)
    results = reproduce.run(config)
    hess = results["panels"]["b_hessian_vs_epsilon"]["estimators"]
    np.testing.assert_array_equal(hess["fomaml"]["relative_error"]["trials"], np.ones((2, 2)))
    assert hess["fomaml"]["correlation"]["mean"] == [None, None]
    assert np.all(np.asarray(hess["maml"]["relative_error"]["trials"]) != 1.0)
    grad = results["panels"]["a_gradient_vs_epsilon"]["estimators"]
    np.testing.assert_allclose(grad["fomaml"]["correlation"]["trials"], grad["maml"]["correlation"]["trials"])
    json.dumps(results, allow_nan=False)
    table = reproduce.format_table(results)
    b_rows = table.split("(b)")[1].split("(c)")[0].splitlines()
    fomaml_row = next(line for line in b_rows if line.strip().startswith("fomaml"))
    assert "n/a" in fomaml_row and "±" not in fomaml_row


def test_prepare_compiler_options_change_no_number(monkeypatch):
    """`prepare` is compiled with cheaper XLA options (PREPARE_COMPILER_OPTIONS): its outputs (MDPs,
    trajectories, critics, exact derivatives) are bit-identical to XLA's defaults; an option this XLA does not
    know falls back to the defaults instead of failing."""
    import jax

    config = reproduce.ReproduceConfig(trials=2, epsilons=(0.0, 0.5), num_trajectories=20, sweep=(10, 20),
                                       progress=False)
    programs = reproduce._programs(config)
    lowered = programs.prepare.lower(programs.keys)
    default = lowered.compile({"xla_backend_optimization_level": 2})  # XLA's default level (the suite uses 0)
    outputs = [jax.tree_util.tree_leaves(compiled(programs.keys)) for compiled in (reproduce.compile_prepare(lowered), default)]
    for tuned, default in zip(*outputs):
        np.testing.assert_array_equal(np.asarray(tuned), np.asarray(default))
    monkeypatch.setattr(reproduce, "PREPARE_COMPILER_OPTIONS", {"xla_no_such_option_anywhere": True})
    fallback = jax.tree_util.tree_leaves(reproduce.compile_prepare(lowered)(programs.keys))
    suite_default = jax.tree_util.tree_leaves(lowered.compile()(programs.keys))
    for got, expected in zip(fallback, suite_default):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
