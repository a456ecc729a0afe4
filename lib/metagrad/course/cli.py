"""`metagrad course build | check | grade` (registered by [`metagrad.cli`][metagrad.cli])."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _readme(solutions: Path):
    """`(README path, the text it should have)` for the repository of `solutions`, or `None`."""
    from metagrad.course.build import repository_url, solution_notebooks, updated_readme

    readme = Path(solutions).resolve().parent / "README.md"
    notebooks = solution_notebooks(Path(solutions))
    if not readme.is_file() or not notebooks:
        return None
    text = updated_readme(readme.read_text(encoding="utf-8"), repository_url(solutions), notebooks[0].name)
    return None if text is None else (readme, text)


def _cmd_build(args) -> int:
    from metagrad.course.build import BuildError, build, execute_solutions

    try:
        if getattr(args, "execute", False):
            for path in execute_solutions(Path(args.solutions)):
                print(f"executed {path} (outputs changed)")
        touched = build(Path(args.solutions), Path(args.course))
        readme = _readme(Path(args.solutions))
        if readme is not None and readme[0].read_text(encoding="utf-8") != readme[1]:
            readme[0].write_text(readme[1], encoding="utf-8")
            touched.append(readme[0])
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
        readme = _readme(Path(args.solutions))
        if readme is not None and readme[0].read_text(encoding="utf-8") != readme[1]:
            problems.append(f"{readme[0]}: the badge block differs from [project.urls] Repository in pyproject.toml")
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
    from metagrad.course.grade import GradeError, grade

    def report(row):
        passed = sum(row["passed"].values())
        possible = len(row["expected"]) if row["notebook"] else "?"
        print(f"{row['file']}: {passed}/{possible} checks passed ({row['status']})", flush=True)

    try:
        grade(
            [Path(p) for p in args.submissions],
            Path(args.out),
            course=Path(args.course),
            jobs=args.jobs,
            cell_timeout=args.cell_timeout,
            notebook_timeout=args.notebook_timeout,
            memory_mb=args.memory_mb,
            tmpfs_mb=args.tmpfs_mb,
            kernel_name=args.kernel,
            config=Path(args.config) if args.config else None,
            feedback_dir=Path(args.feedback) if args.feedback else None,
            on_row=report,
            on_start=lambda line: print(line, flush=True),
        )
    except GradeError as err:
        print(f"metagrad course grade: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} and feedback files in {args.feedback or Path(args.out).parent / 'feedback'}")
    return 0


def _positive(kind):
    """argparse type: a positive `kind` (int or float); argparse names the option in its error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be positive and finite, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


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
        help="run student notebooks against the course's checks and tabulate the results",
        description=(
            "Grade each submission against the course notebook it belongs to: every cell other than the "
            "exercises comes from the course, the notebook runs in a fresh sandboxed kernel (bubblewrap when "
            "installed) under time and memory limits, and the grader runs each check in its own process on "
            "the outputs of the student's functions. Writes a grade book (one row per student and notebook, "
            "merged into an existing --out) and a feedback file per submission (Markdown and HTML). "
            "See docs/grading.md."
        ),
    )
    p.add_argument("submissions", nargs="+", help="student notebooks (.ipynb)")
    p.add_argument("--out", default="grades.csv",
                   help="grade book CSV; rows of an existing file are kept unless regraded (default: grades.csv)")
    p.add_argument("--config", default=None,
                   help="TOML file: [points] per exercise (default 1), [columns] names, [student] id pattern")
    p.add_argument("--feedback", default=None,
                   help="folder for the per-student feedback files (default: feedback/ next to --out)")
    p.add_argument("--course", default="course", help="the released course notebooks (default: course)")
    p.add_argument("--jobs", type=_positive(int), default=1, help="submissions graded in parallel (default: 1)")
    p.add_argument("--cell-timeout", type=_positive(float), default=120,
                   help="seconds per cell before the kernel is killed (default: 120)")
    p.add_argument("--notebook-timeout", type=_positive(float), default=900,
                   help="seconds per notebook before the kernel is killed (default: 900)")
    p.add_argument("--memory-mb", type=_positive(int), default=8192,
                   help="address-space limit of each kernel in MiB (RLIMIT_AS; default: 8192)")
    p.add_argument("--tmpfs-mb", type=_positive(int), default=256,
                   help="size of the sandbox's /tmp and of its /dev/shm in MiB each (default: 256)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    p.set_defaults(func=_cmd_grade)
