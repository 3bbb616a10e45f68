"""The record format of a job's output log, shared by the server and the helper.

Stdlib only: the helper (`helper.py`, run with `python -I -S`) loads this
file by path under `--live-restore`, where it writes the log itself, and
`jobworker.job.outputlog` imports it, so both write exactly the same
bytes. A record is a 5-byte header `>BI` (kind, data length) and its data:
kind 1 or 2 is output of stdout or stderr, kind 3 (`TIME`) a time mark,
the 8-byte `>q` nanoseconds since the epoch at which the writer read the
output records after it.
"""

from __future__ import annotations

import os
import struct

FORMAT = 1
"""The log format's version; a helper and a server must agree on it."""
HEADER = struct.Struct(">BI")
STDOUT, STDERR, TIME = 1, 2, 3
TIME_DATA = struct.Struct(">q")
# A new time mark is written when the clock has moved on by this much.
MARK_NS = 1_000_000
# Larger writes are split so that one record always fits a reader's budget.
MAX_RECORD = 64 * 1024
_IOV_MAX = os.sysconf("SC_IOV_MAX")


def frame(
    stream: int, data: bytes, at: int, mark: int, now: int
) -> tuple[list[bytes | memoryview], list[tuple[int, int]], int, int]:
    """The records of `data` from `stream`, to be written at log offset `at`.

    `mark` is the last time mark written (-1: none), `now` the time in ns.
    Returns the parts to write, (offset, mark in force) of each record, the
    log's new size and the new last mark. (Annotations are never evaluated:
    the helper loads no `typing`.)
    """
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    starts: list[tuple[int, int]] = []
    # Never backwards: a clock set back repeats the last mark's time.
    now = max(mark, now, 0)
    if mark < 0 or now // MARK_NS != mark // MARK_NS:
        starts.append((at, mark))
        parts += (HEADER.pack(TIME, TIME_DATA.size), TIME_DATA.pack(now))
        at += HEADER.size + TIME_DATA.size
        mark = now
    for start in range(0, len(view), MAX_RECORD):
        piece = view[start : start + MAX_RECORD]
        starts.append((at, mark))
        parts += (HEADER.pack(stream, len(piece)), piece)
        at += HEADER.size + len(piece)
    return parts, starts, at, mark


def write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write `parts` in order with as few system calls as the OS allows."""
    views = [memoryview(part) for part in parts]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]
