"""Ctrl-C, `kill` and a closed terminal end a long-running command cleanly.

A command that starts child processes in their own sessions (the testbed, the broker) must
stop them itself: the default SIGTERM action would end Python at once and orphan them.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType


class StopOnSignals:
    """Turn SIGINT/SIGTERM/SIGHUP into a `stop` event (restoring the previous handlers after)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, what: str = "the testbed") -> None:
        self.what = what
        self.event = threading.Event()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> threading.Event:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self.event

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():  # second Ctrl-C: stop waiting politely
            raise KeyboardInterrupt
        print(f"\n{signal.Signals(signum).name}: stopping {self.what}...", file=sys.stderr)
        self.event.set()

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


__all__ = ["StopOnSignals"]
