"""MkDocs hook: the solution notebooks (``solutions/NN_*.ipynb``, with their outputs) as pages of the site.

The notebooks stay where the project keeps them; this adds them to the site's files as ``solutions/NN_*.ipynb``
(source folder: the repository root) so that mkdocs-jupyter renders them, without executing them, and the nav
and Markdown links can name them.
"""

from __future__ import annotations

from pathlib import Path

from markdown.extensions import Extension
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns the .ipynb files it finds into pages
def on_files(files, config):
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")):
        files.append(File(path.relative_to(ROOT).as_posix(), src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


class _PlainUnderscoresAndAngles(Extension):
    """Docstrings write maths in Unicode (``Γ_t = Π_{s<t} γ_s``, ``V̂_IS``): an underscore is a subscript, never
    emphasis, and ``<`` is "less than", never the start of an HTML tag. Emphasis with ``*`` is unaffected."""

    def extendMarkdown(self, md):  # noqa: N802 - Python-Markdown's name
        if "em_strong2" in md.inlinePatterns:  # Python-Markdown < 3.11: _emphasis_ has its own pattern
            md.inlinePatterns.deregister("em_strong2")
        else:  # 3.11: one delimiter processor for * and _; a new one knows * only
            from markdown.inlinepatterns import DelimiterProcessor

            md.inlinePatterns.register(DelimiterProcessor("*", "strong,em", md), "em_strong", 60)
        md.inlinePatterns.deregister("html", strict=False)  # inline raw HTML: `<` is escaped as text


@event_priority(100)  # before mkdocstrings reads the Markdown extensions for the docstrings
def on_config(config):
    config.markdown_extensions.append(_PlainUnderscoresAndAngles())
    return config
