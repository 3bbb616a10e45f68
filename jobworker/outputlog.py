"""A job's output: an append-only log of stdout/stderr records on disk.

The log is a sequence of records, each a 5-byte header `>BI` (stream 1 or 2,
data length) followed by the data. Offsets are log-file offsets of record
starts: an opaque cursor, 0 being the first record. The writer (`OutputLog`,
reactor thread only) writes each record to the OS before it advertises the
new size, so `read_chunks` can read up to an advertised size from any thread
with its own file handle. Memory does not grow with the output's size or
with the number of readers: data is never kept in memory, and a reader
waiting for more holds only its own Deferred until it fires or is cancelled.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from twisted.internet.defer import Deferred, succeed

from jobworker.errors import InvalidRequest
from jobworker.model import OutputChunk, OutputState, Stream

HEADER = struct.Struct(">BI")
# Larger writes are split so that one record always fits a reader's budget.
MAX_RECORD = 64 * 1024
_READ_BUFFER = 64 * 1024


class OutputLog:
    """The writing side of one job's output log, plus its waiting readers."""

    def __init__(self, path: str, cap: int) -> None:
        """Create the log file at `path` (it must not exist yet).

        At most `cap` bytes of output data are stored; the rest is dropped
        and `truncated` becomes true.
        """
        if cap < 0:
            raise InvalidRequest(f"output cap must not be negative, got {cap}")
        self.path = path
        self.cap = cap
        self.size = 0
        self.data_bytes = 0
        self.truncated = False
        self.complete = False
        self._fd: int | None = os.open(
            path,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        self._waiters: set[Deferred[OutputState]] = set()

    def state(self) -> OutputState:
        """How far the log may be read, and whether it is final."""
        return OutputState(size=self.size, complete=self.complete)

    def append(self, stream: Stream, data: bytes) -> None:
        """Store `data` from `stream` (within the cap) and wake the waiters."""
        if self._fd is None:
            return
        room = self.cap - self.data_bytes
        if len(data) > room:
            self.truncated = True
            data = data[:room]
        if not data:
            return
        view = memoryview(data)
        for start in range(0, len(view), MAX_RECORD):
            piece = view[start : start + MAX_RECORD]
            _write_all(self._fd, HEADER.pack(stream, len(piece)) + piece)
            self.size += HEADER.size + len(piece)
        self.data_bytes += len(data)
        self._wake()

    def finish(self) -> None:
        """No more output will come: close the file and wake every waiter."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.complete = True
        self._wake()

    def wait(self, offset: int) -> Deferred[OutputState]:
        """Fire once the log is longer than `offset` or complete.

        Cancelling the Deferred forgets it at once.
        """
        if not 0 <= offset <= self.size:
            raise InvalidRequest(
                f"offset {offset} is outside the output (0 to {self.size})"
            )
        if offset < self.size or self.complete:
            return succeed(self.state())
        waiter: Deferred[OutputState] = Deferred(self._waiters.discard)
        self._waiters.add(waiter)
        return waiter

    @property
    def waiter_count(self) -> int:
        """How many readers are waiting for more output."""
        return len(self._waiters)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        state = self.state()
        for waiter in waiters:
            waiter.callback(state)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_chunks(path: str, offset: int, end: int, max_bytes: int) -> list[OutputChunk]:
    """Read the records between `offset` and `end` of the log at `path`.

    Consecutive records of one stream are joined into one chunk. Reading
    stops before the record that would take the data past `max_bytes`, but
    at least one record is returned when `offset < end`. Pure and
    thread-safe: it opens its own handle and reads only below `end`, a size
    the writer has advertised.
    """
    if max_bytes <= 0:
        raise InvalidRequest(f"max_bytes must be positive, got {max_bytes}")
    if not 0 <= offset <= end:
        raise InvalidRequest(f"offset {offset} is outside the output (0 to {end})")
    # (stream, start offset, data pieces) of each chunk, in order
    runs: list[tuple[Stream, int, list[bytes]]] = []
    taken = 0
    with open(path, "rb", buffering=_READ_BUFFER) as log:
        log.seek(offset)
        start = offset
        while offset < end:
            stream, length = _read_header(log, offset, end)
            if runs and taken + length > max_bytes:
                break
            data = log.read(length)
            if len(data) != length:
                raise InvalidRequest(f"offset {start} is not a record start")
            if not runs or runs[-1][0] != stream:
                runs.append((stream, offset, []))
            runs[-1][2].append(data)
            taken += length
            offset += HEADER.size + length
    ends = [run[1] for run in runs[1:]] + [offset] if runs else []
    return [
        OutputChunk(stream, begin, next_offset, b"".join(pieces))
        for (stream, begin, pieces), next_offset in zip(runs, ends, strict=True)
    ]


def _read_header(log: BinaryIO, offset: int, end: int) -> tuple[Stream, int]:
    header = log.read(HEADER.size)
    if len(header) != HEADER.size:
        raise InvalidRequest(f"offset {offset} is not a record start")
    stream, length = HEADER.unpack(header)
    if stream not in (Stream.STDOUT, Stream.STDERR) or (
        offset + HEADER.size + length > end
    ):
        raise InvalidRequest(f"offset {offset} is not a record start")
    return Stream(stream), length
