"""The `metagrad` command line: `metagrad --version`, `metagrad info` and the experiment subcommands."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from importlib.metadata import PackageNotFoundError, version


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("metagrad", "jax", "jaxlib", "optax", "gymnasium", "numpy", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment_info() -> dict:
    """Versions, the JAX backend and its devices (also stored in every results file)."""
    import jax

    return {
        "versions": _versions(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
        "platform": platform.platform(),
        "processor": platform.machine(),
    }


def _cmd_info(args) -> int:
    info = environment_info()
    for name, ver in info["versions"].items():
        print(f"{name:>11}: {ver}")
    print(f"{'backend':>11}: {info['backend']}")
    print(f"{'devices':>11}: {', '.join(info['devices'])}")
    print(f"{'platform':>11}: {info['platform']}")
    return 0


# Each module defines `register(subparsers)`, adding its subcommands with `set_defaults(func=...)`.
_SUBCOMMAND_MODULES = (
    "metagrad.experiments.reproduce",
    "metagrad.experiments.maml_experiments",
    "metagrad.experiments.maml_locomotion",
    "metagrad.course.cli",
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `metagrad COMMAND: error: MESSAGE` and exit status 2 (`--help` for usage).

    Subcommand parsers inherit the class (argparse's `add_subparsers` uses the parent's class)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    from metagrad import __version__

    parser = _Parser(
        prog="metagrad",
        description="Derivative estimators for meta-RL as differentiated off-policy evaluation (Tang et al. 2021).",
    )
    parser.add_argument("--version", action="version", version=f"metagrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print versions, the JAX backend and devices")
    info.set_defaults(func=_cmd_info)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded in the experiments' JSON (the command that made a figure)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from metagrad._validation import OptionError

    try:
        return args.func(args)
    except OptionError as err:  # a bad option found past parsing: the same one-line form as argparse's errors
        print(f"metagrad {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
