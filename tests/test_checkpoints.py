"""Checkpoint safety of :func:`metagrad.maml.train` (issue 13 §2): a corrupt or foreign checkpoint gives one
clear sentence, two runs on one ``checkpoint_dir`` are detected by a lock that a killed run does not leave
behind, and ``resume=False`` never replaces an existing checkpoint unless told to ``overwrite``."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from metagrad import maml

CONFIG = maml.MAMLConfig(env="navigation", hidden_sizes=(4,), num_tasks=2, num_trajectories=2, horizon=5,
                         num_iterations=2, checkpoint_every=2, inner_estimator="maml", outer="pg", shard=False)
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    maml.train(CONFIG, KEY, checkpoint_dir=str(directory), progress=False)
    return directory


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip file at all", b"PK\x03\x04 truncated"],
    ids=["empty", "text", "truncated-zip"],
)
def test_corrupt_checkpoint_gives_one_clear_sentence(tmp_path, content):
    (tmp_path / "checkpoint.npz").write_bytes(content)
    with pytest.raises(ValueError) as err:
        maml.train(CONFIG, KEY, checkpoint_dir=str(tmp_path), resume=True, progress=False)
    message = str(err.value)
    assert "is not a readable metagrad MAML checkpoint" in message and "checkpoint.npz" in message
    assert "\n" not in message


def test_foreign_npz_and_foreign_config_give_one_clear_sentence(tmp_path, trained):
    np.savez(tmp_path / "checkpoint.npz", weights=np.zeros(3))  # another program's .npz
    with pytest.raises(ValueError, match="is not a readable metagrad MAML checkpoint") as err:
        maml.train(CONFIG, KEY, checkpoint_dir=str(tmp_path), resume=True, progress=False)
    assert "\n" not in str(err.value)
    # A checkpoint whose config has a field this version does not know.
    with np.load(trained / "checkpoint.npz") as data:
        arrays = dict(data)
    metadata = json.loads(str(arrays["metadata"]))
    metadata["config"]["warp_drive"] = True
    arrays["metadata"] = np.asarray(json.dumps(metadata))
    np.savez(tmp_path / "checkpoint.npz", **arrays)
    with pytest.raises(ValueError, match="holds a config this version of metagrad cannot read") as err:
        maml.train(CONFIG, KEY, checkpoint_dir=str(tmp_path), resume=True, progress=False)
    assert "\n" not in str(err.value)


def test_resume_false_refuses_an_existing_checkpoint_unless_overwrite(tmp_path):
    directory = str(tmp_path / "run")
    maml.train(CONFIG, KEY, checkpoint_dir=directory, progress=False)
    before = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    with pytest.raises(ValueError, match="already holds a checkpoint.*overwrite=True"):
        maml.train(CONFIG, jax.random.PRNGKey(1), checkpoint_dir=directory, progress=False)
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == before  # untouched
    maml.train(CONFIG, jax.random.PRNGKey(1), checkpoint_dir=directory, overwrite=True, progress=False)
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() != before
    assert sorted(os.listdir(directory)) == ["checkpoint.json", "checkpoint.npz"]  # the lock file is gone


def test_a_second_run_on_the_same_folder_is_detected(tmp_path):
    directory = str(tmp_path / "shared")
    with maml.checkpoint_lock(directory):
        with pytest.raises(RuntimeError, match="Another run is writing checkpoints to .*shared"):
            maml.train(CONFIG, KEY, checkpoint_dir=directory, progress=False)
        assert not os.path.exists(os.path.join(directory, "checkpoint.npz"))
    maml.train(CONFIG, KEY, checkpoint_dir=directory, progress=False)  # released: a run may now use it


def test_a_killed_run_does_not_leave_a_stale_lock(tmp_path):
    directory = str(tmp_path / "killed")
    code = (
        "import os, signal, sys\n"
        "from metagrad import maml\n"
        f"with maml.checkpoint_lock({directory!r}):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert out.returncode == -9, out.stderr
    assert os.path.exists(os.path.join(directory, "checkpoint.lock"))  # the file stays, the lock does not
    maml.train(CONFIG, KEY, checkpoint_dir=directory, progress=False)


def test_checkpoint_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="`checkpoint_dir` must be a folder"):
        maml.train(CONFIG, KEY, checkpoint_dir=str(path), progress=False)


@pytest.mark.parametrize("name", ["kl_coef", "cg_damping", "gamma"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_config_refuses_non_finite_coefficients(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        dataclasses.replace(CONFIG, **{name: value})
