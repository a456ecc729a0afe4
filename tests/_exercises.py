"""The exercises of the solution notebooks, as functions: solutions and the stubs `metagrad course build` makes.

Shared by ``test_checks.py`` (part I) and ``test_checks_part2.py`` (part II), with the assertion both make
about a wrong answer.
"""

from __future__ import annotations

import functools
from pathlib import Path

import nbformat
import pytest

from metagrad.course import checks
from metagrad.course.build import BEGIN, exercise_names, strip_solutions

SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"


@functools.lru_cache(maxsize=None)
def exercise_functions(notebook: str, stubs: bool) -> dict:
    """Execute a notebook's import cell and its exercise cells (solutions, or stubs); return the namespace."""
    nb = nbformat.read(SOLUTIONS / notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    namespace: dict = {}
    exec(compile(code[0].source, f"{notebook}:imports", "exec"), namespace)  # noqa: S102
    for cell in code:
        if BEGIN in cell.source:
            source = strip_solutions(cell.source)[0] if stubs else cell.source
            exec(compile(source, f"{notebook}:exercise", "exec"), namespace)  # noqa: S102
    return namespace


def exercises(imports_marker: str) -> list[tuple[str, str]]:
    """(notebook, exercise) for every solution notebook whose import cell contains ``imports_marker``."""
    out = []
    for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        imports = next(c for c in nb.cells if c.cell_type == "code").source + "\n"
        if imports_marker in imports:
            out.extend((path.name, name) for name in exercise_names(nb))
    return out


def assert_check_explains(check_module, name: str, wrong, explanation: str, *, on_every_input: bool = False) -> None:
    """``check_<name>`` fails ``wrong``, records the failure, and says ``explanation`` in one or two sentences.

    With ``on_every_input``, the named mistake must explain every wrong input (no "On … it matches a known mistake"
    that names it for some inputs only).
    """
    with pytest.raises(checks.ExerciseCheckFailed) as info:
        getattr(check_module, f"check_{name}")(wrong)
    message = str(info.value)
    assert explanation in message, message
    assert not on_every_input or "matches a known mistake" not in message, message
    assert len(message) < 400, "a check message should be one or two sentences"
    assert checks.results()[name] is False
