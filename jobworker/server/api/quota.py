"""Budgets for the calls that wait (Start, Stop), overall and per caller.

grpcio's synchronous server gives each call a thread for its whole life.
Start waits for the exec (up to 30 s) and Stop for the end of the job (up to
its grace), so without a budget one identity asking for many Stops of a job
that ignores SIGTERM would hold every thread and lock everyone else out. The
server sizes its thread pool for followers + WAITING_CALLS + headroom, so
quick calls (Status, List) always find a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from jobworker.errors import TooManyJobs

# Start/Stop calls in progress at once, over all callers and for one caller.
WAITING_CALLS = 64
WAITING_CALLS_PER_CALLER = 16


class WaitingCalls:
    """Counts Start/Stop calls in progress, in all and per identity."""

    def __init__(
        self, total: int = WAITING_CALLS, per_caller: int = WAITING_CALLS_PER_CALLER
    ) -> None:
        self.total = total
        self.per_caller = per_caller
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._all = 0

    @contextmanager
    def hold(self, identity: str) -> Iterator[None]:
        """Hold one slot for `identity`; TooManyJobs when its share is used."""
        with self._lock:
            held = self._held.get(identity, 0)
            if held >= self.per_caller:
                raise TooManyJobs(
                    f"{identity} has {held} Start/Stop calls in progress, the most"
                    " the server allows one caller; retry when one has returned"
                )
            if self._all >= self.total:
                raise TooManyJobs(
                    f"the server has {self._all} Start/Stop calls in progress, its"
                    " limit; retry shortly"
                )
            self._held[identity] = held + 1
            self._all += 1
        try:
            yield
        finally:
            with self._lock:
                self._all -= 1
                left = self._held[identity] - 1
                if left:
                    self._held[identity] = left
                else:
                    del self._held[identity]

    def held(self, identity: str | None = None) -> int:
        """Calls in progress: `identity`'s, or everyone's."""
        with self._lock:
            return self._all if identity is None else self._held.get(identity, 0)
