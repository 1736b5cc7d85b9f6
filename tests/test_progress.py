"""The progress bar: redrawn in place on a terminal, sparse plain lines in a log, ETA."""
from __future__ import annotations

import io

from edgeoffload import progress
from edgeoffload.progress import ProgressBar, eta_text


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eta_text() -> None:
    assert [eta_text(s) for s in (0.4, 42, 185, 3725)] == ["0 s", "42 s", "3 min 05 s", "1 h 02 min"]


def test_terminal_bar_has_an_eta_and_ends_with_a_newline(monkeypatch) -> None:
    clock = iter([0.0, 10.0, 10.05, 13.0, 20.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    terminal = FakeTerminal()
    bar = ProgressBar(terminal, width=4)       # started at t = 0 (say, a cluster starting until t = 10)
    bar.update(1, 4, "1/4 cells")              # t = 10: no pace known yet
    bar.update(2, 4, "2/4 cells")              # t = 10.05: too soon, skipped
    bar.update(3, 4, "3/4 cells")              # t = 13: two cells in 3 s since the first, one to go
    bar.update(4, 4, "4/4 cells")              # t = 20: the final state is always drawn
    assert terminal.getvalue() == ("\r[#---]  25.0 % 1/4 cells, 10.0 s wall\x1b[K"
                                   "\r[###-]  75.0 % 3/4 cells, 13.0 s wall, ETA 2 s\x1b[K"
                                   "\r[####] 100.0 % 4/4 cells, 20.0 s wall\x1b[K\n")


def test_a_log_gets_a_plain_line_at_most_every_interval(monkeypatch) -> None:
    clock = iter([0.0, 1.0, 20.0, 31.5, 40.0, 50.0, 50.0, 50.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    log = io.StringIO()
    bar = ProgressBar(log, width=2, log_every_s=30)
    for done in (1, 2, 3, 4):
        bar.update(done, 4)
    assert log.getvalue().splitlines() == ["[--]  25.0 %, 1.0 s wall", "[#-]  75.0 %, 31.5 s wall, ETA 15 s",
                                           "[##] 100.0 %, 40.0 s wall"]
    silent = io.StringIO()
    ProgressBar(silent).update(4, 4)
    assert silent.getvalue() == "" and not ProgressBar(silent).enabled
