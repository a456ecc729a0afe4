"""Grade student notebooks: run each in a fresh kernel and record which exercise checks passed.

Each submission is executed with nbclient in a new kernel (``allow_errors=True``, so a failing exercise
does not stop the later ones; a cell running past ``cell_timeout`` seconds is interrupted and counts as
an error). A final cell, appended by the grader, prints the outcomes recorded by
:mod:`metagrad.course.checks` in that kernel. A check that never ran (its cell was not reached, or the
student deleted it) counts as failed.

The result is one row per submission: the file, a status (``ok``, or the first error), one column per
exercise check of the course (1 passed, 0 failed or not run, empty when the notebook has no such
exercise), the number passed and the number possible.
"""

from __future__ import annotations

import csv
import importlib
import json
import pkgutil
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import metagrad.course
from metagrad.course import checks

_MARKER = "__METAGRAD_CHECK_RESULTS__"
_CHECK_CALL = re.compile(r"checks\.check_([A-Za-z0-9_]+)\s*\(")
_REPORT_CELL = (
    "import json as _json\n"
    "from metagrad.course import checks as _checks\n"
    f"print({_MARKER!r} + _json.dumps(_checks.results()))"
)


def course_exercises() -> list[str]:
    """Every exercise of the course, in order: imports every ``metagrad.course.checks*`` module."""
    for module in pkgutil.iter_modules(metagrad.course.__path__):
        if module.name.startswith("checks"):
            importlib.import_module(f"metagrad.course.{module.name}")
    return checks.all_exercises()


def expected_checks(nb: nbformat.NotebookNode) -> list[str]:
    """The exercise checks a notebook calls (from its code cells), in order."""
    known = course_exercises()
    names = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for name in _CHECK_CALL.findall(cell.source):
                if name in known and name not in names:
                    names.append(name)
    return names


def _first_error(nb: nbformat.NotebookNode) -> str:
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and output.get("ename") != "ExerciseCheckFailed":
                return f"cell {index}: {output.get('ename')}"
    return "ok"


def grade_notebook(path: Path, *, cell_timeout: int = 120, kernel_name: str = "python3") -> dict:
    """Run one submission; returns ``{"file", "status", "expected", "passed": {name: bool}}``."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    expected = expected_checks(nb)
    nb.cells.append(nbformat.v4.new_code_cell(_REPORT_CELL))
    client = NotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name=kernel_name,
        allow_errors=True,
        interrupt_on_timeout=True,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    try:
        client.execute()
        status = _first_error(nb)
    except Exception as err:  # noqa: BLE001 — a broken submission is a row, not a crash of the grader
        status = f"not run: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    recorded: dict[str, bool] = {}
    for output in nb.cells[-1].get("outputs", []):
        text = output.get("text", "")
        if _MARKER in text:
            recorded = json.loads(text.split(_MARKER, 1)[1].strip().splitlines()[0])
    passed = {name: bool(recorded.get(name, False)) for name in expected}
    return {"file": str(path), "status": status, "expected": expected, "passed": passed}


def grade(paths, out: Path, *, cell_timeout: int = 120, kernel_name: str = "python3") -> list[dict]:
    """Grade every submission in ``paths`` and write the CSV ``out``; returns the rows."""
    rows = [grade_notebook(p, cell_timeout=cell_timeout, kernel_name=kernel_name) for p in paths]
    exercises = course_exercises()
    columns = ["file", "status", *exercises, "total", "possible"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            record = {"file": row["file"], "status": row["status"]}
            for name in exercises:
                record[name] = int(row["passed"][name]) if name in row["passed"] else ""
            record["total"] = sum(row["passed"].values())
            record["possible"] = len(row["expected"])
            writer.writerow(record)
    return rows
