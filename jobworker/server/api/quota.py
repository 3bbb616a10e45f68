"""Budgets for the calls that wait (Start, Stop): turns taken fairly, in line.

grpcio's synchronous server gives each call a thread for its whole life.
Start waits for the exec (up to 30 s) and Stop for the end of the job (up to
its grace), so without a budget one identity asking for many Stops of a job
that ignores SIGTERM would hold every thread and lock everyone else out.

At most `total` such calls are in progress at once, `per_caller` of one
identity. A call beyond that waits its turn in line rather than being
refused: each identity has its own line (first come, first served), and a
freed turn goes to the next identity in a round (fair between callers, so
one caller's 200 Starts do not delay another's one by 200 turns). A wait
ends when the turn comes, when the call ends (deadline, client gone, server
closing: the `park` function raises) or after `max_wait` seconds, which is
a `ServerBusy` refusal that clients retry. The line itself is bounded
(`queued` in all, `queued_per_caller` per identity): a call past it is
refused at once with `ServerBusy`. A waiting call holds a grpc thread (an
idle one); the server sizes its pool for `total + queued` of them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from jobworker.errors import ServerBusy
from jobworker.untrusted import shown

# Start/Stop calls in progress at once, over all callers and for one caller.
WAITING_CALLS = 64
WAITING_CALLS_PER_CALLER = 16
# Start/Stop calls waiting for their turn, over all callers and for one; a
# caller's 200 concurrent Starts fit in its 16 turns and its line.
QUEUED_CALLS = 256
QUEUED_CALLS_PER_CALLER = 192
# The grpc threads Start/Stop calls may hold: in progress, and in line.
CALL_THREADS = WAITING_CALLS + QUEUED_CALLS
# The longest a call waits for its turn (its own deadline may end it first).
MAX_QUEUE_WAIT = 60.0

# Blocks until the event is set or the timeout has passed; raises when the
# call is over (`CallWaiter.park`).
Park = Callable[[threading.Event, float], None]


def _plain_park(ready: threading.Event, timeout: float) -> None:
    ready.wait(timeout)


@dataclass
class _Ticket:
    identity: str
    ready: threading.Event = field(default_factory=threading.Event)
    granted: bool = False


class WaitingCalls:
    """Turns for Start/Stop calls, in all and per identity, with fair lines."""

    def __init__(
        self,
        total: int = WAITING_CALLS,
        per_caller: int = WAITING_CALLS_PER_CALLER,
        *,
        queued: int = QUEUED_CALLS,
        queued_per_caller: int = QUEUED_CALLS_PER_CALLER,
        max_wait: float = MAX_QUEUE_WAIT,
    ) -> None:
        self.total = total
        self.per_caller = per_caller
        self.queued = queued
        self.queued_per_caller = queued_per_caller
        self.max_wait = max_wait
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._all = 0
        self._lines: dict[str, deque[_Ticket]] = {}
        self._round: deque[str] = deque()  # identities with a line, in turn
        self._waiting = 0

    @contextmanager
    def hold(
        self, identity: str, park: Park = _plain_park, timeout: float | None = None
    ) -> Iterator[None]:
        """Hold one turn of `identity` for the `with`, waiting in line for it.

        `timeout` (the call's remaining deadline) and `max_wait` bound the
        wait; `park` raises if the call ends while it waits.
        """
        ticket = self._enter(identity)
        if not ticket.granted:
            bound = self.max_wait if timeout is None else min(timeout, self.max_wait)
            self._wait(ticket, park, bound)
        try:
            yield
        finally:
            self._leave(identity)

    def _enter(self, identity: str) -> _Ticket:
        ticket = _Ticket(identity)
        with self._lock:
            held = self._held.get(identity, 0)
            line = self._lines.get(identity)
            if line is None and held < self.per_caller and self._all < self.total:
                self._take(ticket)
                return ticket
            waiting = len(line) if line is not None else 0
            if waiting >= self.queued_per_caller:
                raise ServerBusy(
                    f"server busy: {shown(identity)} has {held} Start/Stop/Remove"
                    f" calls in progress and {waiting} waiting, the most the server"
                    " lets one caller queue; retry when some have returned"
                )
            if self._waiting >= self.queued:
                raise ServerBusy(
                    f"server busy: {self._waiting} Start/Stop/Remove calls are waiting"
                    " their turn, the most the server queues; retry shortly"
                )
            if line is None:
                line = self._lines[identity] = deque()
                self._round.append(identity)
            line.append(ticket)
            self._waiting += 1
        return ticket

    def _wait(self, ticket: _Ticket, park: Park, bound: float) -> None:
        try:
            park(ticket.ready, bound)
        except BaseException:
            if self._withdraw(ticket):  # the turn came as the call ended
                self._leave(ticket.identity)
            raise
        if self._withdraw(ticket):
            return
        raise ServerBusy(
            "server busy: no Start/Stop/Remove turn for"
            f" {shown(ticket.identity)} within {bound:g} s; retry shortly"
        )

    def _withdraw(self, ticket: _Ticket) -> bool:
        """Whether `ticket` got its turn; if not, it leaves its line."""
        with self._lock:
            if ticket.granted:
                return True
            line = self._lines[ticket.identity]
            line.remove(ticket)
            self._waiting -= 1
            if not line:
                del self._lines[ticket.identity]
                self._round.remove(ticket.identity)
            return False

    def _take(self, ticket: _Ticket) -> None:
        self._held[ticket.identity] = self._held.get(ticket.identity, 0) + 1
        self._all += 1
        ticket.granted = True
        ticket.ready.set()

    def _leave(self, identity: str) -> None:
        with self._lock:
            self._all -= 1
            left = self._held[identity] - 1
            if left:
                self._held[identity] = left
            else:
                del self._held[identity]
            self._grant()

    def _grant(self) -> None:
        """Give free turns to the lines, one identity after another (locked)."""
        skipped = 0
        while self._round and self._all < self.total and skipped < len(self._round):
            identity = self._round[0]
            self._round.rotate(-1)
            if self._held.get(identity, 0) >= self.per_caller:
                skipped += 1
                continue
            line = self._lines[identity]
            ticket = line.popleft()
            self._waiting -= 1
            if not line:
                del self._lines[identity]
                self._round.remove(identity)
            self._take(ticket)
            skipped = 0

    def held(self, identity: str | None = None) -> int:
        """Calls in progress: `identity`'s, or everyone's."""
        with self._lock:
            return self._all if identity is None else self._held.get(identity, 0)

    def waiting(self, identity: str | None = None) -> int:
        """Calls waiting for their turn: `identity`'s, or everyone's."""
        with self._lock:
            if identity is None:
                return self._waiting
            return len(self._lines.get(identity, ()))
