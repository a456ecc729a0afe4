"""benchmarks/gpu.sh runs end to end at its smoke size on a CPU ; the full size is for a GPU."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.sh")


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_gpu_script_smoke_runs_end_to_end(tmp_path):
    results = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    before = open(results).read()
    # --skip-tests: the suite is not run from inside the suite (gpu.sh --smoke alone runs one oracle test file).
    proc = _run("--smoke", "--skip-tests", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("\t") for line in (tmp_path / "times.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == ["device", "reproduce", "nav2d", "maml_benchmark", "locomotion"]
    assert all(r[2] == "0" for r in rows), rows
    section = (tmp_path / "RESULTS.md").read_text()
    assert "## GPU run (benchmarks/gpu.sh)" in section and "SMOKE size" in section and "| ProMP |" in section
    assert (tmp_path / "maml_nav2d" / "maml_nav2d.png").stat().st_size > 0
    import json

    nav = json.loads((tmp_path / "maml_nav2d" / "maml_nav2d.json").read_text())
    assert nav["settings"]["paper_protocol"] is False  # size flags given: labelled as reduced
    assert nav["protocol_defaults"]["action_scale"]["source"].startswith("ProMP run_scripts/pro-mp_run_point_mass.py")
    assert nav["configs"]["ProMP"]["objective"] == "promp" and len(nav["curves"]["ProMP"]) == 2  # 2 seeds
    assert "task(s):" in (tmp_path / "maml_benchmark.log").read_text()
    assert open(results).read() == before  # the smoke never writes the repository's RESULTS.md


@pytest.mark.parametrize("args, message", [(["--bogus"], "unknown option '--bogus'"),
                                           (["--nav-iterations", "0"], "--nav-iterations must be a positive integer")])
def test_gpu_script_rejects_bad_options(args, message):
    proc = _run(*args, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr
