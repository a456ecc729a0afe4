"""The results shipped as package data (for Colab) are the committed ones under docs/figures/."""

from pathlib import Path

import pytest

from metagrad.course import published

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(published.SOURCES))
def test_package_copy_equals_docs_figures(name):
    from importlib import resources

    shipped = resources.files(published.__name__).joinpath(f"{name}.json").read_bytes()
    assert shipped == (ROOT / published.SOURCES[name]).read_bytes(), (
        f"lib/metagrad/course/published/{name}.json differs from {published.SOURCES[name]}: copy the new result over"
    )
    assert published.load(name)  # parses


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="name must be one of"):
        published.load("figure2")
