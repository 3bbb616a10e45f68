"""Times in the output log, its index, and reading from its end or a time."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial import unittest

from jobworker.errors import InvalidRequest
from jobworker.job.outputindex import INDEX_EVERY
from jobworker.job.outputlog import (
    HEADER,
    MAX_RECORD,
    TIME_DATA,
    LogReader,
    OutputLog,
    read_chunks,
)
from jobworker.job.outputseek import since_start, tail_start
from jobworker.model import Stream

MARK = HEADER.size + TIME_DATA.size


class LogTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def make_log(self) -> OutputLog:
        log = OutputLog(self.mktemp(), 1 << 30, self.clock)
        self.addCleanup(log.finish)
        return log

    def reader(self, log: OutputLog) -> LogReader:
        reader = LogReader(log.path, log.index)
        self.addCleanup(reader.close)
        return reader

    def text_from(self, log: OutputLog, start: tuple[int, int]) -> bytes:
        reader = self.reader(log)
        runs = reader.read_runs(start[0], log.size, 1 << 30, skip=start[1])
        return b"".join(b"".join(run.pieces) for run in runs)

    def tail(self, log: OutputLog, lines: int) -> bytes:
        return self.text_from(log, tail_start(self.reader(log), log.size, lines))


class TimeMarkTests(LogTestCase):
    def test_chunks_carry_when_the_server_read_them(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"a")
        self.clock.advance(1.5)
        log.append(Stream.STDERR, b"b")
        chunks = read_chunks(log.path, 0, log.size, 100, log.index)
        self.assertEqual(
            [(c.data, c.time) for c in chunks],
            [(b"a", 1_700_000_000.0), (b"b", 1_700_000_001.5)],
        )

    def test_a_mark_is_written_only_when_the_millisecond_changes(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"a")
        log.append(Stream.STDOUT, b"b")
        self.clock.advance(0.0004)
        log.append(Stream.STDOUT, b"c")
        self.assertEqual(log.size, MARK + 3 * (HEADER.size + 1))
        self.clock.advance(0.001)
        log.append(Stream.STDOUT, b"d")
        self.assertEqual(log.size, 2 * MARK + 4 * (HEADER.size + 1))

    def test_coalesced_chunks_have_their_first_bytes_time(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"a")
        self.clock.advance(2)
        log.append(Stream.STDOUT, b"b")
        (chunk,) = read_chunks(log.path, 0, log.size, 100, log.index)
        self.assertEqual((chunk.data, chunk.time), (b"ab", 1_700_000_000.0))

    def test_by_time_splits_chunks_where_the_time_changes(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"a")
        log.append(Stream.STDOUT, b"b")
        self.clock.advance(2)
        log.append(Stream.STDOUT, b"c")
        runs = self.reader(log).read_runs(0, log.size, 100, by_time=True)
        self.assertEqual(
            [(b"".join(r.pieces), r.time_ns) for r in runs],
            [(b"ab", 1_700_000_000 * 10**9), (b"c", 1_700_000_002 * 10**9)],
        )
        self.assertEqual(runs[1].offset, runs[0].next_offset)

    def test_a_clock_set_back_never_makes_times_go_back(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"a")
        self.clock.rightNow -= 60
        log.append(Stream.STDOUT, b"b")
        runs = self.reader(log).read_runs(0, log.size, 100, by_time=True)
        self.assertEqual([r.time_ns for r in runs], [1_700_000_000 * 10**9])

    def test_a_fresh_reader_anywhere_knows_the_time_there(self) -> None:
        log = self.make_log()
        for i in range(40):
            self.clock.advance(1)
            log.append(Stream.STDOUT, bytes([i]) * (MAX_RECORD // 2))
        chunks, offset, reader = [], 0, self.reader(log)
        while offset < log.size:
            chunks += reader.read(offset, log.size, MAX_RECORD // 2)
            offset = chunks[-1].next_offset
        self.assertEqual(len(chunks), 40)
        for chunk in chunks[5::7]:
            (again,) = read_chunks(
                log.path, chunk.offset, log.size, MAX_RECORD // 2, log.index
            )
            self.assertEqual(again, chunk)
        self.assertRaises(
            InvalidRequest, read_chunks, log.path, chunks[9].offset + 1, log.size, 9
        )

    def test_a_log_without_marks_reads_without_times(self) -> None:
        # As older servers wrote it: records only.
        path = self.mktemp()
        with open(path, "wb") as file:
            for stream, data in ((1, b"one\ntwo\n"), (2, b"three\n")):
                file.write(HEADER.pack(stream, len(data)) + data)
        size = os.path.getsize(path)
        chunks = read_chunks(path, 0, size, 100)
        self.assertEqual([c.time for c in chunks], [None, None])
        with LogReader(path) as reader:
            self.assertEqual(since_start(reader, size, 1), 0)
            offset, skip = tail_start(reader, size, 2)
            runs = reader.read_runs(offset, size, 100, skip=skip)
        self.assertEqual(b"".join(b"".join(r.pieces) for r in runs), b"two\nthree\n")


class TailTests(LogTestCase):
    def test_the_last_lines_of_both_streams_together(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"1\n2\n3")
        log.append(Stream.STDERR, b"\n4\n")
        log.append(Stream.STDOUT, b"5\n")
        self.assertEqual(self.tail(log, 1), b"5\n")
        self.assertEqual(self.tail(log, 2), b"4\n5\n")
        self.assertEqual(self.tail(log, 3), b"3\n4\n5\n")
        self.assertEqual(self.tail(log, 5), b"1\n2\n3\n4\n5\n")
        self.assertEqual(self.tail(log, 99), b"1\n2\n3\n4\n5\n")
        self.assertEqual(self.tail(log, 0), b"")

    def test_a_last_line_without_a_newline_counts(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"a\nb\nc")
        self.assertEqual(self.tail(log, 1), b"c")
        self.assertEqual(self.tail(log, 2), b"b\nc")

    def test_empty_lines_count(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"a\n\n\n")
        self.assertEqual(self.tail(log, 2), b"\n\n")

    def test_an_empty_log_has_no_tail(self) -> None:
        log = self.make_log()
        self.assertEqual(tail_start(self.reader(log), 0, 5), (0, 0))

    def test_the_tail_of_a_large_log_is_read_from_its_end(self) -> None:
        log = self.make_log()
        line = b"x" * 99 + b"\n"
        for i in range(200):
            self.clock.advance(0.01)
            log.append(Stream.STDOUT if i % 3 else Stream.STDERR, line * 400)
        self.assertGreater(log.size, 30 * INDEX_EVERY)
        reader = self.reader(log)
        read: list[int] = []
        window = reader._window

        def counted(offset: int, end: int, want: int) -> memoryview:
            data = window(offset, end, want)
            read.append(len(data))
            return data

        reader._window = counted  # type: ignore[method-assign]
        offset, skip = tail_start(reader, log.size, 3000)
        self.assertLess(sum(read), 3 * INDEX_EVERY)
        self.assertEqual(self.text_from(log, (offset, skip)), line * 3000)


class SinceTests(LogTestCase):
    def test_output_since_a_time(self) -> None:
        log = self.make_log()
        for i in range(10):
            log.append(Stream.STDOUT, b"%d\n" % i)
            self.clock.advance(1)
        start = 1_700_000_000 * 10**9
        reader = self.reader(log)
        self.assertEqual(since_start(reader, log.size, 0), 0)
        self.assertEqual(since_start(reader, log.size, start), 0)
        found = since_start(reader, log.size, start + 6 * 10**9)
        self.assertEqual(self.text_from(log, (found, 0)), b"6\n7\n8\n9\n")
        found = since_start(reader, log.size, start + 5 * 10**9 + 1)
        self.assertEqual(self.text_from(log, (found, 0)), b"6\n7\n8\n9\n")
        self.assertEqual(since_start(reader, log.size, start + 10**11), log.size)

    def test_since_in_a_large_log_reads_one_segment(self) -> None:
        log = self.make_log()
        for i in range(100):
            self.clock.advance(1)
            log.append(Stream.STDOUT, b"%04d" % i + b"." * (INDEX_EVERY // 10))
        reader = self.reader(log)
        found = since_start(reader, log.size, (1_700_000_000 + 90) * 10**9)
        text = self.text_from(log, (found, 0))
        self.assertTrue(text.startswith(b"0089."), text[:10])
