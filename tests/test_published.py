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


@pytest.mark.parametrize("name", ["07_bias_variance.ipynb", "08_maml_end_to_end.ipynb"])
def test_notebooks_read_no_file_of_the_repository(name):
    """On Colab only the installed package exists: the code of 07 and 08 opens nothing under docs/ (issue 22 §4)."""
    import nbformat

    nb = nbformat.read(ROOT / "solutions" / name, as_version=4)
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "published.load(" in code
    for needle in ("docs/", "Path(", "open(", "Image(filename"):
        assert needle not in code, f"{name} reads a repository file ({needle!r}); ship it in metagrad.course.published"
