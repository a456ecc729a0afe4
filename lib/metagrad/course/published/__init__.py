"""The committed results that notebooks 07 and 08 read, shipped inside the package.

A Colab or pip install has no `docs/figures/`; these are byte-identical copies of the JSON files there
(`tests/test_published.py` fails when they drift), read with `importlib.resources`, so the notebooks draw the
full-size results themselves wherever metagrad is installed. `SOURCES` names each original; the command that
made it is in the file (`settings`) or next to the original (`command.txt`).
"""

from __future__ import annotations

import json
from importlib import resources

#: Name -> the path of the original under docs/figures/, relative to the repository.
SOURCES = {
    "figure1": "docs/figures/reproduce/figure1.json",
    "maml_accuracy": "docs/figures/maml_accuracy/maml_accuracy.json",
    "maml_nav2d": "docs/figures/maml_nav2d/maml_nav2d.json",
}


def load(name: str) -> dict:
    """The parsed JSON of the committed result `name` (a key of `SOURCES`)."""
    if name not in SOURCES:
        raise ValueError(f"name must be one of {sorted(SOURCES)}, got {name!r}")
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))
