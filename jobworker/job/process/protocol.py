"""The thin `ProcessProtocol` of a job's helper process.

It holds no policy: it turns Twisted's process callbacks into calls on a
`ProcessEvents` (the job): output of fds 1 and 2, the status pipe on fd 3,
the end of its stdin pipe (fd 0, when it has one), and the helper's exit
with its real exit code or signal.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from jobworker.model import Stream

STATUS_FD = 3
# The helper's configuration (an in-memory file), read at once and closed.
CONFIG_FD = 4


class ProcessEvents(Protocol):
    """What a job hears from its helper process."""

    def output_received(self, stream: Stream, data: bytes) -> None:
        """The command wrote `data` to `stream`."""

    def output_closed(self, stream: Stream) -> None:
        """Nothing holds `stream` open any more."""

    def input_closed(self) -> None:
        """The job's stdin pipe is closed (by the job, or by us)."""

    def status_received(self, data: bytes) -> None:
        """The helper reported (part of) a start failure on the status pipe."""

    def status_closed(self) -> None:
        """The status pipe is closed: the command was exec'd, or failed to be."""

    def process_exited(self, exit_code: int | None, signal: int | None) -> None:
        """The helper exited with `exit_code`, or died by `signal`."""


class JobProcessProtocol(ProcessProtocol):
    """Hands the helper process's events to a `ProcessEvents`."""

    def __init__(self, events: ProcessEvents) -> None:
        self.events = events

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == STATUS_FD:
            self.events.status_received(data)
        elif childFD in (Stream.STDOUT, Stream.STDERR):
            self.events.output_received(Stream(childFD), data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == STATUS_FD:
            self.events.status_closed()
        elif childFD in (Stream.STDOUT, Stream.STDERR):
            self.events.output_closed(Stream(childFD))
        elif childFD == 0:
            self.events.input_closed()

    def processExited(self, reason: Failure) -> None:
        # ProcessDone or ProcessTerminated; both carry exitCode and signal.
        value = reason.value
        self.events.process_exited(
            getattr(value, "exitCode", None), getattr(value, "signal", None)
        )
