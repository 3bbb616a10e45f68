"""A job's stdin, when it has one: a pipe its owner writes to, bounded.

A job started with `stdin` gets a pipe as fd 0 instead of /dev/null.
`JobInput` is the server's end (reactor thread only): one writer may claim
it, ever; `write` hands data to Twisted's pipe writer and fires once the
writer's buffer has room again (it is the writer's push producer, paused
while the pipe is full), so input waits in the job's pipe, not in the
server's memory; `close` is the job's EOF. At most `cap` bytes are taken.
When the job closes its end (or ends), writes report that instead.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from jobworker.errors import InputClosed, InputTooLarge


class StdinPipe(Protocol):
    """What of a process transport `JobInput` uses: Twisted's `Process` has it
    (it is the consumer of its stdin pipe, not declared as `IConsumer`)."""

    def writeToChild(self, childFD: int, data: bytes) -> None: ...

    def closeChildFD(self, childFD: int) -> None: ...

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...


@implementer(IPushProducer)
class JobInput:
    """The server's end of a job's stdin pipe."""

    def __init__(self, transport: StdinPipe, cap: int) -> None:
        self._transport = transport
        self.cap = cap
        self.written = 0
        self.claimed = False
        self.closed = False
        self.closed_by_job = False
        self._paused = False
        self._waiting: list[Deferred[bool]] = []
        transport.registerProducer(self, True)

    def claim(self) -> None:
        """Take the stdin for one writer: the only one it ever has."""
        if self.closed_by_job:
            raise InputClosed("the job has closed its stdin")
        if self.closed:
            raise InputClosed("the job's stdin is closed (its input has ended)")
        if self.claimed:
            raise InputClosed("another call is writing the job's stdin")
        self.claimed = True

    def write(self, data: bytes) -> Deferred[bool]:
        """Write `data`; fire once more may be written.

        Fires with False, writing nothing, once the job has closed its end.
        """
        if self.closed_by_job:
            return succeed(False)
        if self.closed:
            return fail(InputClosed("the job's stdin is closed"))
        if self.written + len(data) > self.cap:
            return fail(
                InputTooLarge(f"more input than the server takes ({self.cap} bytes)")
            )
        self._transport.writeToChild(0, data)
        self.written += len(data)
        if not self._paused:
            return succeed(True)
        waiter: Deferred[bool] = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        return waiter

    def close(self) -> None:
        """The input has ended: the job reads EOF after what was written."""
        if not self.closed:
            self.closed = True
            self._transport.closeChildFD(0)
        self._release(False)

    def job_closed(self) -> None:
        """The job closed its end, or ended: nothing more can reach it."""
        if not self.closed:
            self.closed = self.closed_by_job = True
            self._transport.closeChildFD(0)
        self._release(False)

    def _release(self, more: bool) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(more)

    # IPushProducer, for the pipe writer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._release(True)

    def stopProducing(self) -> None:
        self.job_closed()
