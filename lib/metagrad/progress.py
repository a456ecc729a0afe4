"""A minimal progress bar on stderr for long runs (no dependency)."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    """`with Progress(total, "label") as bar: ... bar.update(k)` prints `label [####    ] 3/8 1.2s note`.

    On a terminal the line is redrawn in place, and its clock every half second, so a long step (a
    compilation) does not look stuck; otherwise (CI logs, notebooks capturing stderr) each new state
    prints one line, never the same line twice. `note` says what happens before the first unit is
    counted; `enabled=False` silences it.

    Example:
        ```python
        with Progress(2, "work", note="compiling…") as bar:
            bar.update(1, "first part")
            bar.update(1, "second part")
        ```
    """

    def __init__(self, total: int, label: str, *, note: str = "", stream=None, enabled: bool = True,
                 width: int = 24):
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.count = 0
        self.note = note
        self.start = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = None  # (count, note) of the last line written without a terminal
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = None

    def __enter__(self) -> "Progress":
        self._draw(final=False)
        if self.enabled and self.tty:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
        return self

    def update(self, n: int = 1, note: str = "") -> None:
        """Count `n` units done; `note` names what was just done."""
        self.count = min(self.count + n, self.total)
        self.note = note
        self._draw(final=False)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._draw(final=True)

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        if not self.enabled:
            return
        with self._lock:
            if not self.tty:
                if (self.count, self.note) == self._last:
                    return  # the final line would repeat the last update's
                self._last = (self.count, self.note)
            filled = int(self.width * self.count / self.total)
            bar = "#" * filled + " " * (self.width - filled)
            line = f"{self.label} [{bar}] {self.count}/{self.total} {time.perf_counter() - self.start:.1f}s {self.note}"
            end = "\n" if final or not self.tty else ""
            self.stream.write(("\r" if self.tty else "") + line.ljust(79) + end)
            self.stream.flush()
