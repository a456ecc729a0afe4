"""Tests of the ``metagrad`` command line, as a subprocess (the installed entry point) and in-process."""

import subprocess
import sys

import metagrad
from metagrad import cli


def run(*args):
    return subprocess.run([sys.executable, "-m", "metagrad.cli", *args], capture_output=True, text=True, timeout=120)


def test_version_subprocess():
    out = run("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"metagrad {metagrad.__version__}"


def test_info_subprocess():
    out = run("info")
    assert out.returncode == 0, out.stderr
    for name in ("metagrad", "jax", "gymnasium", "numpy", "backend", "devices"):
        assert name in out.stdout


def test_main_in_process(capsys):
    assert cli.main(["info"]) == 0
    printed = capsys.readouterr().out
    assert "backend" in printed and "cpu" in printed.lower()
    assert cli.main([]) == 0  # no command: help
    assert "usage: metagrad" in capsys.readouterr().out
    try:
        cli.main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert metagrad.__version__ in capsys.readouterr().out
    info = cli.environment_info()
    assert set(info) >= {"versions", "backend", "devices", "x64"}
