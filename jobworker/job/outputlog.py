"""A job's output: an append-only log of stdout/stderr records on disk.

The log is a sequence of records, each a 5-byte header `>BI` (stream 1 or 2,
data length) followed by the data. Offsets are log-file offsets of record
starts: an opaque cursor, 0 being the first record. The writer (`OutputLog`,
reactor thread only) writes each record to the OS before it advertises the
new size, so a `LogReader` (or `read_chunks`, one read on a reader of its
own) can read up to an advertised size from any thread with its own file
handle. Memory does not grow with the output's size or
with the number of readers: data is never kept in memory, and a reader
waiting for more holds only its own Deferred until it fires or is cancelled.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed

from jobworker.errors import InvalidRequest
from jobworker.model import OutputChunk, OutputState, Stream

HEADER = struct.Struct(">BI")
# Larger writes are split so that one record always fits a reader's budget.
MAX_RECORD = 64 * 1024
# Read beyond the data budget by this much, for the headers of its records.
_HEADER_ROOM = 4096
_IOV_MAX = os.sysconf("SC_IOV_MAX")


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
        self.before_wake: Callable[[], None] | None = None
        """Called after each change, before the waiters hear of it."""

    def state(self) -> OutputState:
        """How far the log may be read, and whether it is final."""
        return OutputState(size=self.size, complete=self.complete)

    def append(self, stream: Stream, data: bytes) -> None:
        """Store `data` from `stream` (within the cap) and wake the waiters."""
        if self._fd is None:
            return
        room = self.cap - self.data_bytes
        if len(data) > room:
            newly_truncated, self.truncated = not self.truncated, True
            data = data[:room]
            if not data and newly_truncated:
                self._changed()  # nothing to read, but the flag is news
        if not data:
            return
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        for start in range(0, len(view), MAX_RECORD):
            piece = view[start : start + MAX_RECORD]
            parts += (HEADER.pack(stream, len(piece)), piece)
        _write_all(self._fd, parts)
        self.size += len(parts) // 2 * HEADER.size + len(data)
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

    def _changed(self) -> None:
        if self.before_wake is not None:
            self.before_wake()

    def _wake(self) -> None:
        # A woken waiter may release another thread at once (a follower):
        # whatever goes with the change (the job's status) is made first.
        self._changed()
        waiters, self._waiters = self._waiters, set()
        state = self.state()
        for waiter in waiters:
            waiter.callback(state)


def _write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write `parts` in order with as few system calls as the OS allows."""
    views = [memoryview(part) for part in parts]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


@dataclass
class Run:
    """The records of one chunk as read: views of the log, not yet joined."""

    stream: Stream
    offset: int
    next_offset: int
    pieces: list[memoryview]

    def chunk(self) -> OutputChunk:
        """The chunk, its data joined (copied) into one `bytes`."""
        data = b"".join(self.pieces)
        return OutputChunk(self.stream, self.offset, self.next_offset, data)


class LogReader:
    """A reader of one job's output log, with its own file handle.

    Thread-safe and independent of the writer: it reads only below an
    `end` the writer has advertised, with `pread`, so any number of readers
    (each a follower's thread) can share or hold their own. Close it when
    done; it is also a context manager.
    """

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read(self, offset: int, end: int, max_bytes: int) -> list[OutputChunk]:
        """Read the records between `offset` and `end` of the log.

        Consecutive records of one stream are joined into one chunk. Reading
        stops before the record that would take the data past `max_bytes`,
        but at least one record is returned when `offset < end`.
        """
        return [run.chunk() for run in self.read_runs(offset, end, max_bytes)]

    def read_runs(self, offset: int, end: int, max_bytes: int) -> list[Run]:
        """`read`, with each chunk's data left as views of what was read.

        One `pread` covers a whole batch unless it holds many small
        records. The views stay valid as long as the runs are kept.
        """
        if max_bytes <= 0:
            raise InvalidRequest(f"max_bytes must be positive, got {max_bytes}")
        if not 0 <= offset <= end:
            raise InvalidRequest(f"offset {offset} is outside the output (0 to {end})")
        first = offset
        buffer = b""
        at = 0  # where `buffer` starts in the log
        runs: list[Run] = []
        taken = 0
        view = memoryview(buffer)
        while offset < end:
            if offset + HEADER.size > at + len(buffer):
                buffer, at = self._window(offset, end, max_bytes - taken), offset
                view = memoryview(buffer)
            stream, length = _parse_header(view, offset - at, offset, end, first)
            if runs and taken + length > max_bytes:
                break
            begin = offset - at + HEADER.size
            if begin + length > len(buffer):
                buffer, at = self._window(offset, end, HEADER.size + length), offset
                view, begin = memoryview(buffer), HEADER.size
            if not runs or runs[-1].stream != stream:
                runs.append(Run(stream, offset, offset, []))
            runs[-1].pieces.append(view[begin : begin + length])
            taken += length
            offset += HEADER.size + length
            runs[-1].next_offset = offset
        return runs

    def _window(self, offset: int, end: int, want: int) -> bytes:
        """The log from `offset`: `want` bytes plus room for some headers."""
        size = min(end - offset, max(want, 0) + _HEADER_ROOM)
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise InvalidRequest(f"the output log is shorter than {end} bytes")
        return data


def read_chunks(path: str, offset: int, end: int, max_bytes: int) -> list[OutputChunk]:
    """`LogReader.read` on a reader of its own: one call, any thread."""
    with LogReader(path) as reader:
        return reader.read(offset, end, max_bytes)


def _parse_header(
    view: memoryview, at: int, offset: int, end: int, first: int
) -> tuple[Stream, int]:
    if at + HEADER.size > len(view):
        raise InvalidRequest(f"offset {first} is not a record start")
    stream, length = HEADER.unpack_from(view, at)
    if stream not in (Stream.STDOUT, Stream.STDERR) or (
        offset + HEADER.size + length > end
    ):
        raise InvalidRequest(f"offset {first} is not a record start")
    return Stream(stream), length
