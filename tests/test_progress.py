"""The progress line (``metagrad.progress.Progress``) on a terminal and in a log."""

import io
import time

from metagrad.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_gets_one_line_per_state_and_no_repeated_final_line():
    log = io.StringIO()
    with Progress(2, "job", note="compiling…", stream=log) as bar:
        bar.update(1, "first")
        bar.update(1, "second")
    lines = log.getvalue().splitlines()
    assert [line.split("] ")[1].split()[0] for line in lines] == ["0/2", "1/2", "2/2"], lines
    assert lines[0].rstrip().endswith("compiling…") and lines[2].rstrip().endswith("second")
    assert "\r" not in log.getvalue()


def test_terminal_line_is_redrawn_in_place_with_a_running_clock():
    term = Terminal()
    with Progress(1, "job", note="compiling…", stream=term) as bar:
        time.sleep(1.2)  # the clock is redrawn every 0.5 s while nothing is counted
        bar.update(1, "done")
    text = term.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one final line
    draws = text.rstrip("\n").split("\r")[1:]
    assert sum("compiling…" in d for d in draws) >= 3, draws  # drawn on entry, then at least twice by the clock
    assert "1/1" in draws[-1] and "done" in draws[-1]


def test_disabled_writes_nothing():
    log = io.StringIO()
    with Progress(3, "job", stream=log, enabled=False) as bar:
        bar.update(3)
    assert log.getvalue() == ""
