"""Where to start reading a job's output log: its last lines, or since a time.

Both run on a reader's thread, on its `LogReader`, and read only a bounded
part of the log thanks to its index (`outputindex.LogIndex`): `tail_start`
reads the log backwards a segment (an index entry's span) at a time until
it has seen enough lines, `since_start` reads the one segment in which the
time is passed. Lines are counted over stdout and stderr together, in the
order the server read them, as a terminal showed them.
"""

from __future__ import annotations

import bisect

from jobworker.job.outputindex import INDEX_EVERY
from jobworker.job.outputlog import HEADER, TIME, TIME_DATA, LogReader


def tail_start(reader: LogReader, end: int, lines: int) -> tuple[int, int]:
    """Where the last `lines` lines of the log up to `end` begin.

    A record start and how many bytes of its data to skip. A last line
    without a newline counts as a line; fewer lines than asked: the start.
    """
    if lines <= 0:
        return end, 0
    starts = [offset for offset, _ in reader.index.entries() if offset < end]
    wanted, last_byte = lines, True
    for start in reversed(starts):
        records = [
            (at, data.tobytes())
            for at, kind, data in reader.records(start, end, INDEX_EVERY)
            if kind != TIME
        ]
        for at, data in reversed(records):
            stop = len(data)
            if last_byte:  # a newline that ends the output ends its last line
                last_byte = False
                stop -= data.endswith(b"\n")
            while (newline := data.rfind(b"\n", 0, stop)) >= 0:
                wanted -= 1
                if wanted == 0:
                    if newline + 1 == len(data):
                        return at + HEADER.size + len(data), 0
                    return at, newline + 1
                stop = newline
        end = start
    return 0, 0


def since_start(reader: LogReader, end: int, since_ns: int) -> int:
    """The first record up to `end` read at `since_ns` or later (else `end`).

    In a log without time marks (an older server's) that is its start.
    """
    entries = [entry for entry in reader.index.entries() if entry[0] < end]
    if not entries:
        return end
    marks = [mark for _, mark in entries]
    # The last entry before `since_ns`: nothing before it is recent enough.
    start, mark = entries[max(bisect.bisect_left(marks, since_ns) - 1, 0)]
    for at, kind, data in reader.records(start, end, INDEX_EVERY):
        if kind == TIME:
            mark = TIME_DATA.unpack(data)[0]
            if mark >= since_ns:
                return at
        elif mark < 0 or mark >= since_ns:
            return at
    return end
