"""The sparse index of a job's output log: where records start, now and then.

The writer (`OutputLog`, reactor thread) notes a record start about every
`INDEX_EVERY` bytes of log, with the time mark in force there; readers on
other threads look entries up (`before`) or take a copy (`entries`), which
is safe while the writer appends (a list only grows, and CPython appends
and copies a list whole). It lets a reader start anywhere without reading
the log from its beginning: the time at an offset, the last lines
(`outputseek.tail_start`), output since a time (`outputseek.since_start`).
Its size is one entry per `INDEX_EVERY` of output.
"""

from __future__ import annotations

import bisect

INDEX_EVERY = 256 * 1024


class LogIndex:
    """(offset, time mark in force there, -1 for none) of some record starts."""

    def __init__(self) -> None:
        self._entries: list[tuple[int, int]] = []

    def record_at(self, offset: int, mark: int) -> None:
        """A record starts at `offset` (writer only): noted if far enough on."""
        if not self._entries or offset - self._entries[-1][0] >= INDEX_EVERY:
            self._entries.append((offset, mark))

    def entries(self) -> list[tuple[int, int]]:
        """A copy of the entries, oldest first (the first is offset 0)."""
        return self._entries[:] or [(0, -1)]

    def before(self, offset: int) -> tuple[int, int]:
        """The last entry at or before `offset` ((0, -1) if none)."""
        entries = self.entries()
        at = bisect.bisect_right(entries, (offset, 1 << 63)) - 1
        return entries[max(at, 0)]
