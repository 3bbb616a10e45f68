"""Bursts of one kind of log line summarised rather than logged line by line.

A client refused a thousand times a second must not write a thousand log
lines a second. `Bursts` lets the first `burst` lines per key (a caller)
through in each `window` seconds; the rest are counted, and once the window
is over one line says how many were not logged and what the last one was.
The summary is written by the next call after the window (from any key),
so the last burst of a quiet server is summarised late, not lost: at the
latest by `flush`. Safe from any thread; the clock is a parameter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger

BURST = 5
WINDOW = 10.0


@dataclass
class _Window:
    began: float
    logged: int = 0
    dropped: int = 0
    last: str = ""


class Bursts:
    """Decides which lines of one kind to log; logs the summaries itself."""

    def __init__(
        self,
        log: Logger,
        what: str,
        *,
        burst: int = BURST,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._what = what
        self._burst = burst
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def admit(self, key: str, line: str) -> bool:
        """Whether to log `line` (of `key`) now; if not, it is counted."""
        now = self._clock()
        with self._lock:
            over = self._close(lambda window: now - window.began >= self._window)
            window = self._windows.setdefault(key, _Window(now))
            admitted = window.logged < self._burst
            if admitted:
                window.logged += 1
            else:
                window.dropped += 1
                window.last = line
        self._summarise(over)
        return admitted

    def flush(self) -> None:
        """Summarise every window now (at shutdown)."""
        with self._lock:
            over = self._close(lambda window: True)
        self._summarise(over)

    def _close(self, done: Callable[[_Window], bool]) -> list[tuple[str, _Window]]:
        over = [(key, w) for key, w in self._windows.items() if done(w)]
        for key, _ in over:
            del self._windows[key]
        return [(key, w) for key, w in over if w.dropped]

    def _summarise(self, over: list[tuple[str, _Window]]) -> None:
        for key, window in over:
            self._log.info(
                "{key}: {count} more {what} within {seconds:g} s not logged one"
                " by one; the last: {last}",
                key=key,
                count=window.dropped,
                what=self._what,
                seconds=self._window,
                last=window.last,
            )
