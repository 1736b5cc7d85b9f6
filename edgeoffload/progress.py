"""Progress of long work on stderr: a one-line bar with ETA on a terminal, sparse lines in logs.

On a terminal the bar redraws in place at most 10 times a second. On anything else (a CI
log, a batch job's output file) carriage returns would fill the log, so the bar either
stays silent or, when `log_every_s` is given, prints a plain line at most that often.
"""
from __future__ import annotations

import time
from typing import TextIO


def eta_text(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`: short enough for a status line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressBar:
    """`update(done, total, detail)` draws `[####------]  40.0 % detail, 12.3 s wall, ETA 18 s`."""

    def __init__(self, stream: TextIO, width: int = 30, log_every_s: float | None = None) -> None:
        self.stream = stream
        self.width = width
        self.terminal = stream.isatty()
        self.log_every_s = log_every_s
        self._started = time.perf_counter()
        self._drawn_at: float | None = None   # the first update always draws
        self._first: tuple[float, float] | None = None   # (time, done) of the first update: the ETA's base

    @property
    def enabled(self) -> bool:
        return self.terminal or self.log_every_s is not None

    def update(self, done: float, total: float, detail: str = "") -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, done)
        final = done >= total
        interval = 0.1 if self.terminal else self.log_every_s
        if interval is None or (self._drawn_at is not None and now - self._drawn_at < interval and not final):
            return
        self._drawn_at = now
        fraction = min(1.0, done / total) if total > 0 else 1.0
        filled = int(fraction * self.width)
        text = (f"[{'#' * filled}{'-' * (self.width - filled)}] {100 * fraction:5.1f} %" + (f" {detail}" if detail else "")
                + f", {now - self._started:,.1f} s wall")
        first_at, first_done = self._first
        if not final and done > first_done and now > first_at:
            # the pace since the first update: a slow start (a cluster starting) does not count
            text += f", ETA {eta_text((total - done) * (now - first_at) / (done - first_done))}"
        if self.terminal:
            self.stream.write(f"\r{text}\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


__all__ = ["ProgressBar", "eta_text"]
