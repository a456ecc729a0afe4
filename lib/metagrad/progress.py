"""A minimal progress bar on stderr for long runs (no dependency; quiet when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "label") as bar: ... bar.update(k)`` prints ``label [####    ] 3/8 1.2s``.

    On a terminal the line is redrawn in place; otherwise (CI logs, notebooks capturing stderr) each
    update prints one line. ``enabled=False`` silences it.
    """

    def __init__(self, total: int, label: str, *, stream=None, enabled: bool = True, width: int = 24):
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.count = 0
        self.start = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self) -> "Progress":
        self._draw(final=False, force=True)
        return self

    def update(self, n: int = 1, note: str = "") -> None:
        self.count = min(self.count + n, self.total)
        self.note = note
        self._draw(final=False, force=True)

    def __exit__(self, *exc) -> None:
        self._draw(final=True, force=True)

    def _draw(self, final: bool, force: bool = False) -> None:
        if not self.enabled or not (self.tty or force):
            return
        filled = int(self.width * self.count / self.total)
        bar = "#" * filled + " " * (self.width - filled)
        note = getattr(self, "note", "")
        line = f"{self.label} [{bar}] {self.count}/{self.total} {time.perf_counter() - self.start:.1f}s {note}"
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line.ljust(79) + end)
        self.stream.flush()
