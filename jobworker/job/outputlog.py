"""A job's output: an append-only log of stdout/stderr records on disk.

The log is a sequence of records, each a 5-byte header `>BI` (kind, data
length) followed by the data: kind 1 or 2 is output of stdout or stderr,
kind 3 (`TIME`) a time mark, the 8-byte `>q` nanoseconds since the epoch
at which the server read the output records after it (written before a
read's records when the clock's millisecond has changed; a log without
marks, as older servers wrote them, has no times). Offsets are log-file
offsets of record starts: an opaque cursor, 0 being the first record. The
writer (`OutputLog`, reactor thread only) writes each record to the OS
before it advertises the new size, so a `LogReader` (or `read_chunks`, one
read on a reader of its own) can read up to an advertised size from any
thread with its own file handle. Data is never kept in memory and a reader
waiting for more holds only its own Deferred until it fires or is
cancelled; what grows with the output is its sparse index
(`outputindex.LogIndex`, one entry per 256 KiB), for reading from the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from jobworker.errors import InvalidRequest
from jobworker.job.outputindex import LogIndex
from jobworker.job.process.records import (
    HEADER,
    MAX_RECORD,
    TIME,
    TIME_DATA,
    frame,
    write_all,
)
from jobworker.model import OutputChunk, OutputState, Stream
from jobworker.reactors import or_global

# Read beyond the data budget by this much, for the headers of its records.
_HEADER_ROOM = 4096
__all__ = ["HEADER", "MAX_RECORD", "TIME", "TIME_DATA", "LogReader", "OutputLog"]
_log = Logger()


class StorageRoom(Protocol):
    """What else bounds a log: its owner's quota, the free disk."""

    def room(self) -> tuple[int, str]:
        """How many more bytes may be stored, and the cap that limits them."""

    def stored(self, count: int) -> None:
        """`count` more bytes were stored."""


@dataclass(frozen=True)
class OutputSource:
    """A job's output log for a `LogReader`: its path, index and state then."""

    path: str
    index: LogIndex
    state: OutputState


class OutputLog:
    """The writing side of one job's output log, plus its waiting readers."""

    def __init__(
        self,
        path: str,
        cap: int,
        clock: IReactorTime | None = None,
        storage: StorageRoom | None = None,
        *,
        external: bool = False,
        start: ScannedLog | None = None,
    ) -> None:
        """Create the log file at `path` (it must not exist yet).

        At most `cap` bytes of output data are stored, and no more than
        `storage` (the owner's quota, the free disk) has room for; the rest
        is dropped, `truncated` becomes true and `truncated_by` names the
        cap. A write the filesystem refuses (ENOSPC) truncates the log
        too, at its last whole record. `clock` times the records.

        With `external`, another process (the job's helper, under live
        restore) writes the log and this one `follow`s it: from `start`
        (an existing log, as `scan` found it), else from a new empty file.
        """
        if cap < 0:
            raise InvalidRequest(f"output cap must not be negative, got {cap}")
        self.path = path
        self.cap = cap
        self.size = 0 if start is None else start.size
        self.data_bytes = 0 if start is None else start.data_bytes
        self.truncated = False
        self.truncated_by = ""
        """Why output was dropped: the cap's option, or the write's error."""
        self._storage = storage
        self.complete = False
        self._fd: int | None = None
        if start is None:
            self._fd = os.open(
                path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                0o600,
            )
        self._follower: LogReader | None = None
        if external:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._follower = LogReader(path, start.index if start else None)
        self._clock = IReactorTime(or_global(clock))
        self._mark = -1  # the last time mark written, in ns (-1: none yet)
        self.index = self._follower.index if self._follower else LogIndex()
        if self._follower is not None and start is not None:
            self._mark = self._follower.time_at(start.size)
        """Where records start, every so often: for readers on any thread."""
        self._waiters: set[Deferred[OutputState]] = set()
        self.before_wake: Callable[[], None] | None = None
        """Called after each change, before the waiters hear of it."""

    def state(self) -> OutputState:
        """How far the log may be read, and whether it is final."""
        return OutputState(size=self.size, complete=self.complete)

    def source(self) -> OutputSource:
        """What a reader on another thread needs: the file, its index, its state."""
        return OutputSource(self.path, self.index, self.state())

    def append(self, stream: Stream, data: bytes) -> None:
        """Store `data` from `stream` (within the cap) and wake the waiters."""
        if self._fd is None or self.truncated:
            return
        room, cap = self._room()
        if len(data) > room:
            data = data[: max(room, 0)]
            self.truncated, self.truncated_by = True, cap
            if not data:
                self._changed()  # nothing to read, but the flag is news
                return
        now = round(self._clock.seconds() * 1e9)
        parts, starts, at, mark = frame(stream, data, self.size, self._mark, now)
        try:
            write_all(self._fd, parts)
        except OSError as error:
            self._write_failed(self._fd, error)
            return
        for offset, in_force in starts:
            self.index.record_at(offset, in_force)
        self._mark = mark
        self.size = at
        self.data_bytes += len(data)
        if self._storage is not None:
            self._storage.stored(len(data))
        self._wake()

    def _room(self) -> tuple[int, str]:
        """Bytes that may still be stored, and the cap that limits them."""
        room, cap = self.cap - self.data_bytes, "output-cap"
        if self._storage is not None:
            shared, shared_cap = self._storage.room()
            if shared < room:
                room, cap = shared, shared_cap
        return room, cap

    def _write_failed(self, fd: int, error: OSError) -> None:
        """Cut a partly written record off, and store nothing more.

        The file ends at the last whole record, as advertised: readers never
        see half a record, and the log stays readable after a full disk.
        """
        try:
            os.ftruncate(fd, self.size)
        except OSError as cut:
            # The advertised size is still what readers read up to.
            _log.warn(
                "{path}: cannot cut back to {size}: {e}",
                path=self.path,
                size=self.size,
                e=cut,
            )
        _log.warn("{path}: output truncated: {e}", path=self.path, e=error)
        self.truncated = True
        self.truncated_by = error.strerror or type(error).__name__
        self._changed()  # nothing more to read, but the flag is news

    def follow(self, size: int) -> None:
        """The external writer has written the log up to `size`: take it in.

        Its new records are indexed and their data counted (against the
        owner's storage too), then the waiters are woken. A record that
        makes no sense ends the following: the log is served up to there.
        """
        reader = self._follower
        if reader is None or size <= self.size or self.complete:
            return
        data = 0
        at = self.size
        try:
            # Headers only: the data is the helper's, read by followers.
            for at, kind, length, mark in reader.headers(self.size, size):
                self.index.record_at(at, self._mark)
                if kind == TIME:
                    self._mark = mark
                else:
                    data += length
        except InvalidRequest as error:
            _log.warn(
                "{path}: not followed past {at}: {e}", path=self.path, at=at, e=error
            )
            self.mark_truncated("a damaged record")
            return
        self.size = size
        self.data_bytes += data
        if self._storage is not None:
            self._storage.stored(data)
        self._wake()

    def exhausted(self) -> str | None:
        """The cap that leaves no room for more output, if one does."""
        room, cap = self._room()
        return cap if room <= 0 else None

    def mark_truncated(self, why: str) -> None:
        """The external writer stores no more output, because of `why`."""
        if not self.truncated:
            self.truncated, self.truncated_by = True, why
            self._changed()

    def finish(self) -> None:
        """No more output will come: close the file and wake every waiter."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._follower is not None:
            self._follower.close()
        self.complete = True
        self._wake()

    def wait(self, offset: int) -> Deferred[OutputState]:
        """Fire once the log is longer than `offset` or complete.

        Cancelling the Deferred forgets it at once.
        """
        check_offset(offset, self.size)
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


def check_offset(offset: int, size: int) -> None:
    """Raise `InvalidRequest` unless `offset` is within a log of `size` bytes."""
    if not 0 <= offset <= size:
        raise InvalidRequest(f"offset {offset} is outside the output (0 to {size})")


@dataclass
class Run:
    """The records of one chunk as read: views of the log, not yet joined.

    `time_ns` is when the server read its first byte (None in a log
    without time marks).
    """

    stream: Stream
    offset: int
    next_offset: int
    pieces: list[memoryview]
    time_ns: int | None = None

    def chunk(self) -> OutputChunk:
        """The chunk, its data joined (copied) into one `bytes`."""
        data = b"".join(self.pieces)
        time = None if self.time_ns is None else self.time_ns / 1e9
        return OutputChunk(self.stream, self.offset, self.next_offset, data, time)


class LogReader:
    """A reader of one job's output log, with its own file handle.

    Thread-safe and independent of the writer: it reads only below an
    `end` the writer has advertised, with `pread`, so any number of readers
    (each a follower's thread) can share or hold their own. It remembers
    where its last read ended and the time there; a read from elsewhere
    finds the time from the log's `index` (from its start without one).
    Close it when done; it is also a context manager.
    """

    def __init__(self, path: str, index: LogIndex | None = None) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.index = index if index is not None else LogIndex()
        self._resume = (0, -1)  # an offset, and the time mark in force there

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

    def read_runs(
        self,
        offset: int,
        end: int,
        max_bytes: int,
        *,
        by_time: bool = False,
        skip: int = 0,
    ) -> list[Run]:
        """`read`, with each chunk's data left as views of what was read.

        With `by_time`, a run also ends where the time of its records
        changes, so that all its data was read at its `time_ns`. `skip`
        leaves out the first bytes of the first record's data (a tail that
        starts inside a record). One `pread` covers a whole batch unless it
        holds many small records. The views stay valid as long as the runs
        are kept.
        """
        if max_bytes <= 0:
            raise InvalidRequest(f"max_bytes must be positive, got {max_bytes}")
        if not 0 <= offset <= end:
            raise InvalidRequest(f"offset {offset} is outside the output (0 to {end})")
        mark = self.time_at(offset)
        runs: list[Run] = []
        taken = 0
        pending = offset  # where the records of the next run begin
        for at, kind, record in self.records(offset, end, max_bytes):
            if kind == TIME:
                mark = TIME_DATA.unpack(record)[0]
                continue
            record_end = at + HEADER.size + len(record)
            data, skip = record[skip:], 0
            length = len(data)
            if runs and taken + length > max_bytes:
                break
            time_ns = None if mark < 0 else mark
            last = runs[-1] if runs else None
            if (
                last is None
                or last.stream != kind
                or (by_time and last.time_ns != time_ns)
            ):
                last = Run(Stream(kind), pending, pending, [], time_ns)
                runs.append(last)
            last.pieces.append(data)
            taken += length
            pending = last.next_offset = record_end
            self._resume = (pending, mark)
        return runs

    def records(
        self, offset: int, end: int, budget: int = 0
    ) -> Iterator[tuple[int, int, memoryview]]:
        """Each record from `offset` to `end`: its offset, kind and data.

        Read `budget` bytes of data at a time (and some headers), or more
        for a larger record; `InvalidRequest` at a bad record start.
        """
        first = offset
        buffer = memoryview(b"")
        at = offset  # where `buffer` starts in the log
        while offset < end:
            if offset + HEADER.size > at + len(buffer):
                buffer, at = self._window(offset, end, budget), offset
            kind, length = _parse_header(buffer, offset - at, offset, end, first)
            begin = offset - at + HEADER.size
            if begin + length > len(buffer):
                buffer, at = self._window(offset, end, HEADER.size + length), offset
                begin = HEADER.size
            yield offset, kind, buffer[begin : begin + length]
            offset += HEADER.size + length

    def headers(self, offset: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """Each record from `offset` to `end`: its offset, kind and length,
        and its time for a time mark (else -1): headers only, no data read.

        `InvalidRequest` at a bad record start.
        """
        first = offset
        want = HEADER.size + TIME_DATA.size
        while offset < end:
            view = memoryview(os.pread(self._fd, min(want, end - offset), offset))
            kind, length = _parse_header(view, 0, offset, end, first)
            mark = -1
            if kind == TIME:
                mark = TIME_DATA.unpack_from(view, HEADER.size)[0]
            yield offset, kind, length, mark
            offset += HEADER.size + length

    def time_at(self, offset: int) -> int:
        """The time mark in force at record start `offset` (-1: none)."""
        if offset == self._resume[0]:
            return self._resume[1]
        start, mark = self.index.before(offset)
        try:
            for _, kind, data in self.records(start, offset, 64 * 1024):
                if kind == TIME:
                    mark = TIME_DATA.unpack(data)[0]
        except InvalidRequest:  # a record runs past `offset`
            raise InvalidRequest(f"offset {offset} is not a record start") from None
        return mark

    def _window(self, offset: int, end: int, want: int) -> memoryview:
        """The log from `offset`: `want` bytes plus room for some headers."""
        size = min(end - offset, max(want, 0) + _HEADER_ROOM)
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise InvalidRequest(f"the output log is shorter than {end} bytes")
        return memoryview(data)


def read_chunks(
    path: str, offset: int, end: int, max_bytes: int, index: LogIndex | None = None
) -> list[OutputChunk]:
    """`LogReader.read` on a reader of its own: one call, any thread."""
    with LogReader(path, index) as reader:
        return reader.read(offset, end, max_bytes)


def _parse_header(
    view: memoryview, at: int, offset: int, end: int, first: int
) -> tuple[int, int]:
    if at + HEADER.size > len(view):
        raise InvalidRequest(f"offset {first} is not a record start")
    kind, length = HEADER.unpack_from(view, at)
    valid = kind in (Stream.STDOUT, Stream.STDERR) or (
        kind == TIME and length == TIME_DATA.size
    )
    if not valid or offset + HEADER.size + length > end:
        raise InvalidRequest(f"offset {first} is not a record start")
    return kind, length


@dataclass(frozen=True)
class ScannedLog:
    """What `scan` found in a log: its readable length, output and index."""

    size: int
    data_bytes: int
    index: LogIndex


def scan(path: str, limit: int | None = None) -> ScannedLog:
    """The whole records a log starts with (up to `limit` bytes), and their index.

    For the log of a job of an earlier run: reading stops before a record
    cut short by a crash, or one that makes no sense. The index is the one
    the writer kept. A missing log is empty.
    """
    index = LogIndex()
    size = data = 0
    mark = -1
    try:
        log = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return ScannedLog(0, 0, index)
    with log:
        total = os.fstat(log.fileno()).st_size
        total = total if limit is None else min(total, limit)
        while size + HEADER.size <= total:
            kind, length = HEADER.unpack(log.read(HEADER.size))
            if size + HEADER.size + length > total:
                break
            if kind == TIME and length == TIME_DATA.size:
                index.record_at(size, mark)
                (mark,) = TIME_DATA.unpack(log.read(length))
            elif kind in (Stream.STDOUT, Stream.STDERR) and length > 0:
                index.record_at(size, mark)
                log.seek(length, os.SEEK_CUR)
                data += length
            else:
                break
            size += HEADER.size + length
    return ScannedLog(size, data, index)
