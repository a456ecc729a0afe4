"""The claims inventory: every row of ``solutions/claims/NN.json`` names a guard that exists, and the build renders it.

A row says which cell makes a quantitative statement and which assertion (or seed loop, or citation) in that
cell guards it; nbval runs the cell, so a guard that is present is a guard that runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from metagrad.course import build

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
CLAIMS = build.load_claims(SOLUTIONS)
ROWS = [(number, i, row) for number, rows in CLAIMS.items() for i, row in enumerate(rows)]


def _cells(number: str) -> dict:
    (path,) = SOLUTIONS.glob(f"{number}_*.ipynb")
    nb = nbformat.read(path, as_version=4)
    by_id = {cell.get("id"): cell.source for cell in nb.cells}
    by_id.update({i: cell.source for i, cell in enumerate(nb.cells)})
    return by_id


@pytest.mark.parametrize("number,index,row", ROWS, ids=[f"{n}-{i}" for n, i, _ in ROWS])
def test_every_claim_names_a_guard_in_its_cell(number, index, row):
    cells = _cells(number)
    assert row["cell"] in cells, f"claims/{number}.json row {index}: no cell {row['cell']!r} in notebook {number}"
    assert row["guard"] in cells[row["cell"]], (
        f"claims/{number}.json row {index}: the guard {row['guard']!r} is not in cell {row['cell']}"
    )


def test_part_one_notebooks_have_claims():
    assert {"00", "01", "02", "03", "04"} <= set(CLAIMS)


def test_claims_markdown_lists_every_row_and_course_copy_is_current():
    text = build.claims_markdown(SOLUTIONS)
    assert text.count("\n| ") == len(ROWS) + len(CLAIMS)  # one header per notebook, one line per row
    assert (ROOT / build.COURSE_DIR / build.CLAIMS_FILE).read_text(encoding="utf-8") == text


def test_each_notebooks_claims_are_collapsed_until_opened():
    """CLAIMS.md is in the student folder and answers predictions: every table row sits in a closed <details> block."""
    text = build.claims_markdown(SOLUTIONS)
    blocks = text.split("<details><summary>")[1:]
    assert len(blocks) == len(CLAIMS) and "Spoilers" in text.split("<details>")[0]
    for number, block in zip(CLAIMS, blocks):
        summary, body = block.split("</summary>", 1)
        assert summary == f"Notebook {number} — open after you have finished it"
        assert body.startswith("\n\n| cell |"), "a blank line after <summary> lets the Markdown table render"
        table, after = body.split("</details>", 1)
        assert table.count("\n| ") == len(CLAIMS[number]) + 1 and table.endswith("\n\n")
        assert "\n| " not in after.split("<details>")[0]  # no row outside a block


@pytest.mark.parametrize(
    "content,problem",
    [
        ("not json", "not valid JSON"),
        ('{"cell": "x"}', "expected a list"),
        ('[{"cell": "00-003", "statement": "s", "guard": "g"}]', "exactly the fields"),
        ('[{"cell": "00-003", "statement": "", "guard": "g", "evidence": "e"}]', "non-empty strings"),
    ],
)
def test_malformed_claims_are_refused(tmp_path, content, problem):
    (tmp_path / build.CLAIMS_DIR).mkdir()
    (tmp_path / build.CLAIMS_DIR / "00.json").write_text(content, encoding="utf-8")
    with pytest.raises(build.BuildError, match=problem):
        build.load_claims(tmp_path)


def test_a_pipe_in_a_claim_does_not_break_the_table(tmp_path):
    (tmp_path / build.CLAIMS_DIR).mkdir()
    row = {"cell": "00-003", "statement": "‖a|b‖", "guard": "assert x | y", "evidence": "1 ± 0.1"}
    (tmp_path / build.CLAIMS_DIR / "00.json").write_text(json.dumps([row]), encoding="utf-8")
    line = [l for l in build.claims_markdown(tmp_path).splitlines() if l.startswith("| 00-003")][0]
    assert line.count(" | ") == 3 and "a\\|b" in line
