"""The helper process, with its output pipes read in large pieces.

Twisted's `ProcessReader` reads a pipe 8 KiB at a time, once per reactor
wake-up (`fdesc.readFromFD`): a job writing fast costs the reactor one
wake-up, one log record and one follower wake-up per 8 KiB, and the reactor
thread becomes the limit of the whole output path (doc/performance.md).
`JobProcess` is Twisted's own `Process` (same posix_spawnp path, same
transport methods) whose readers take up to `READ_BYTES` per wake-up, from
a pipe enlarged to `PIPE_BYTES` so that a writer can run ahead while the
reactor is busy elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from twisted.internet import process
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST

# What one wake-up takes from a pipe at most: a few pipefuls, so that one
# busy job cannot hold the reactor for long.
READ_BYTES = 1024 * 1024
# The kernel's pipe size for job output (the default is 64 KiB). The
# memory is charged to the server only while the pipe is full.
PIPE_BYTES = 256 * 1024


class LargeReadProcessReader(process.ProcessReader):
    """A `ProcessReader` that empties its pipe in large reads."""

    def __init__(
        self, reactor: IReactorFDSet, proc: process.Process, name: int, fileno: int
    ) -> None:
        # Not a pipe, or over the per-user pipe limit: keep the default size.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fileno, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        super().__init__(reactor, proc, name, fileno)  # type: ignore[no-untyped-call]  # Twisted: unannotated

    def doRead(self) -> object:
        """Read until the pipe is empty or `READ_BYTES` were read."""
        pieces: list[bytes] = []
        taken = 0
        result: object = None
        while taken < READ_BYTES:
            try:
                # A pipe never holds more than PIPE_BYTES: no larger buffer.
                piece = os.read(self.fd, min(PIPE_BYTES, READ_BYTES - taken))
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:  # as Twisted's readFromFD
                result = CONNECTION_LOST
                break
            if not piece:
                result = CONNECTION_DONE
                break
            pieces.append(piece)
            taken += len(piece)
        if pieces:
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self.dataReceived(data)  # type: ignore[no-untyped-call]  # Twisted: unannotated
            if self.disconnecting:
                # Closed while receiving it (the job's output cap):
                # loseConnection has scheduled the end; a second one,
                # for the EOF read with the data, would close the pipe twice.
                return None
        return result

    def loseConnection(self) -> None:
        """Stop reading and cut the pipe now, not on the next reactor turn.

        Twisted closes the fd a turn later, one pipe after the other, with
        work in between: a job past its cap whose stdout broke could still
        write to a stderr not yet closed (and end with exit 0 instead of
        SIGPIPE). Our read end is swapped for /dev/null at once, so every
        pipe closed together loses its reader together; the fd number stays
        ours until Twisted closes it.
        """
        cut = self.connected and not self.disconnecting
        super().loseConnection()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        if cut:
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.dup2(devnull, self.fd, inheritable=False)
            finally:
                os.close(devnull)


class JobProcess(process.Process):
    """Twisted's `Process`, reading its "r" child fds with large reads."""

    processReaderFactory = LargeReadProcessReader
