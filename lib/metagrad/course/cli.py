"""``metagrad course build | check | grade`` (registered by :mod:`metagrad.cli`)."""

from __future__ import annotations

import sys
from pathlib import Path


def _cmd_build(args) -> int:
    from metagrad.course.build import BuildError, build, execute_solutions

    try:
        if getattr(args, "execute", False):
            for path in execute_solutions(Path(args.solutions)):
                print(f"executed {path} (outputs changed)")
        touched = build(Path(args.solutions), Path(args.course))
    except BuildError as err:
        print(f"metagrad course build: {err}", file=sys.stderr)
        return 1
    for path in touched:
        print(f"wrote {path}" if path.exists() else f"removed {path}")
    if not touched:
        print(f"{args.course}/ is up to date.")
    return 0


def _cmd_check(args) -> int:
    from metagrad.course.build import BuildError, stale

    try:
        problems = stale(Path(args.solutions), Path(args.course))
    except BuildError as err:
        print(f"metagrad course check: {err}", file=sys.stderr)
        return 1
    if problems:
        print("metagrad course check: the student notebooks are stale:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        print("Run `metagrad course build` and commit the result.", file=sys.stderr)
        return 1
    print(f"{args.course}/ is up to date with {args.solutions}/.")
    return 0


def _cmd_grade(args) -> int:
    from metagrad.course.grade import grade

    rows = grade([Path(p) for p in args.submissions], Path(args.out), cell_timeout=args.cell_timeout,
                 kernel_name=args.kernel)
    for row in rows:
        passed = sum(row["passed"].values())
        print(f"{row['file']}: {passed}/{len(row['expected'])} checks passed ({row['status']})")
    print(f"wrote {args.out}")
    return 0


def register(subparsers) -> None:
    course = subparsers.add_parser("course", help="build, check and grade the course notebooks")
    sub = course.add_subparsers(dest="course_command", metavar="ACTION", required=True)
    for name, func, text in (
        ("build", _cmd_build, "write course/ (student notebooks) from solutions/"),
        ("check", _cmd_check, "exit non-zero if course/ differs from what `build` would write"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--solutions", default="solutions", help="solution notebooks (default: solutions)")
        p.add_argument("--course", default="course", help="student notebooks (default: course)")
        if name == "build":
            p.add_argument(
                "--execute",
                action="store_true",
                help="first re-run every solution notebook in a fresh kernel and store its outputs",
            )
        p.set_defaults(func=func)
    p = sub.add_parser(
        "grade",
        help="run student notebooks and tabulate which exercise checks pass",
        description="Run each submission in a fresh kernel and write one CSV row per submission.",
    )
    p.add_argument("submissions", nargs="+", help="student notebooks (.ipynb)")
    p.add_argument("--out", default="grades.csv", help="CSV file to write (default: grades.csv)")
    p.add_argument("--cell-timeout", type=int, default=120, help="seconds per cell before interrupting (default: 120)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    p.set_defaults(func=_cmd_grade)
