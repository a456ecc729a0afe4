"""Generate the student notebooks (``course/``) from the solution notebooks (``solutions/``).

``solutions/NN_name.ipynb`` is the source of truth: it holds exercises *and* their solutions, with
outputs. The student version ``course/NN_name.ipynb`` is derived from it by three rules:

1. **Solution regions.** Every region between a line ``### BEGIN SOLUTION`` and a line
   ``### END SOLUTION`` (nbgrader's markers) is replaced, at the indentation of the ``BEGIN`` line, by::

       # YOUR CODE HERE
       raise NotImplementedError("Exercise: implement `<name>`")

   where ``<name>`` is the function whose body holds the region. Keep the ``def`` line (and the
   docstring) outside the region, so the stub stays valid Python.
2. **Outputs.** Outputs of every code cell *from the first exercise cell on* are cleared: everything
   after an exercise may depend on the student's code, while the outputs before it (set-up, first
   demonstrations) stay as a guide. Cells tagged ``clear-output`` are cleared wherever they are.
3. **Execution state.** Execution counts and the per-cell ``execution`` timing metadata are removed.

The build is deterministic: the same solutions give byte-identical course notebooks (nbformat's
sorted-key JSON with one-space indentation, UTF-8, a final newline). :func:`stale` lists what differs
between ``course/`` and what :func:`build` would write; ``metagrad course check`` and the tests use it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CLEAR_TAG = "clear-output"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"

_DEF = re.compile(r"^\s*def\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(")


class BuildError(ValueError):
    """A solution notebook is malformed (e.g. unmatched solution markers)."""


def strip_solutions(source: str, *, where: str = "cell") -> tuple[str, int]:
    """Replace each solution region of ``source`` by a ``NotImplementedError`` stub.

    Returns ``(new_source, number_of_regions)``. Raises :class:`BuildError` naming ``where`` when a
    ``BEGIN`` has no matching ``END`` (or the other way round), or when regions are nested.
    """
    lines = source.split("\n")
    out: list[str] = []
    regions = 0
    inside = False
    last_def = None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise BuildError(f"{where}, line {number}: nested `{BEGIN}`.")
            inside = True
            regions += 1
            indent = line[: len(line) - len(line.lstrip())]
            what = f"implement `{last_def}`" if last_def else "fill in this cell"
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f'{indent}raise NotImplementedError("Exercise: {what}")')
            continue
        if stripped == END:
            if not inside:
                raise BuildError(f"{where}, line {number}: `{END}` without a matching `{BEGIN}`.")
            inside = False
            continue
        if inside:
            continue
        match = _DEF.match(line)
        if match:
            last_def = match.group(1)
        out.append(line)
    if inside:
        raise BuildError(f"{where}: `{BEGIN}` without a matching `{END}`.")
    return "\n".join(out), regions


def student_notebook(nb: nbformat.NotebookNode, *, name: str = "notebook") -> nbformat.NotebookNode:
    """The student version of a solution notebook (see the module docstring for the rules)."""
    nb = copy.deepcopy(nb)
    seen_exercise = False
    for index, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        source, regions = strip_solutions(cell.source, where=f"{name}, cell {index}")
        if regions:
            seen_exercise = True
            cell.source = source
        if seen_exercise or CLEAR_TAG in cell.metadata.get("tags", []):
            cell.outputs = []
        cell.execution_count = None
    return nb


def exercise_names(nb: nbformat.NotebookNode) -> list[str]:
    """Names of the functions holding solution regions, in order."""
    names = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        last_def = None
        for line in cell.source.split("\n"):
            match = _DEF.match(line)
            if match:
                last_def = match.group(1)
            if line.strip() == BEGIN and last_def:
                names.append(last_def)
    return names


def render(nb: nbformat.NotebookNode) -> bytes:
    """Deterministic bytes of a notebook."""
    return (nbformat.writes(nb, version=4).rstrip("\n") + "\n").encode("utf-8")


def solution_notebooks(solutions: Path) -> list[Path]:
    return sorted(Path(solutions).glob(NOTEBOOK_GLOB))


def expected_outputs(solutions: Path) -> dict[str, bytes]:
    """File name -> bytes that :func:`build` writes for every notebook in ``solutions``."""
    out = {}
    for path in solution_notebooks(solutions):
        nb = nbformat.read(path, as_version=4)
        out[path.name] = render(student_notebook(nb, name=path.name))
    return out


def execute_solutions(solutions: Path, *, cell_timeout: int = 600, kernel_name: str = "python3") -> list[Path]:
    """Re-run every solution notebook top to bottom in a fresh kernel and store its new outputs.

    Use after changing a notebook or the library. Timing metadata are not recorded, so re-running
    unchanged code on the same library gives the same bytes. Raises on the first failing cell.
    """
    from nbclient import NotebookClient

    written = []
    for path in solution_notebooks(Path(solutions)):
        nb = nbformat.read(path, as_version=4)
        metadata = copy.deepcopy(nb.metadata)  # the kernel would add its version: keep files machine-independent
        NotebookClient(
            nb,
            timeout=cell_timeout,
            kernel_name=kernel_name,
            record_timing=False,
            resources={"metadata": {"path": str(path.parent.resolve())}},
        ).execute()
        nb.metadata = metadata
        data = render(nb)
        if path.read_bytes() != data:
            path.write_bytes(data)
            written.append(path)
    return written


def build(solutions: Path, course: Path) -> list[Path]:
    """Write ``course/NN_name.ipynb`` for every ``solutions/NN_name.ipynb``; remove stale course notebooks.

    Only files changed on disk are rewritten. Returns the paths written or removed.
    """
    solutions, course = Path(solutions), Path(course)
    expected = expected_outputs(solutions)
    if not expected:
        raise BuildError(f"no notebooks matching {NOTEBOOK_GLOB} in {solutions}.")
    course.mkdir(parents=True, exist_ok=True)
    touched = []
    for name, data in expected.items():
        target = course / name
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
            touched.append(target)
    for path in sorted(course.glob(NOTEBOOK_GLOB)):
        if path.name not in expected:
            path.unlink()
            touched.append(path)
    return touched


def stale(solutions: Path, course: Path) -> list[str]:
    """Human-readable problems: course notebooks missing, out of date, or without a solution notebook."""
    solutions, course = Path(solutions), Path(course)
    expected = expected_outputs(solutions)
    problems = []
    for name, data in expected.items():
        target = course / name
        if not target.exists():
            problems.append(f"{target} is missing")
        elif target.read_bytes() != data:
            problems.append(f"{target} differs from what `metagrad course build` writes from {solutions / name}")
    for path in sorted(course.glob(NOTEBOOK_GLOB)):
        if path.name not in expected:
            problems.append(f"{path} has no solution notebook in {solutions}")
    return problems
