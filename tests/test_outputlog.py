"""Tests for jobworker.job.outputlog: the record log, its waiters and reader."""

from __future__ import annotations

import os
import threading

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial import unittest

from jobworker.errors import InvalidRequest
from jobworker.job.outputlog import (
    HEADER,
    MAX_RECORD,
    TIME_DATA,
    LogReader,
    OutputLog,
    read_chunks,
    scan,
)
from jobworker.model import OutputChunk, OutputState, Stream


class OutputLogTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def make_log(self, cap: int = 1 << 20) -> OutputLog:
        path = os.path.join(self.mktemp() + ".log")
        log = OutputLog(path, cap, self.clock)
        self.addCleanup(log.finish)
        return log

    def read_all(self, log: OutputLog, max_bytes: int = 1 << 20) -> list[OutputChunk]:
        return read_chunks(log.path, 0, log.size, max_bytes)

    def test_streams_stay_apart_in_write_order(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"a")
        log.append(Stream.STDERR, b"b")
        log.append(Stream.STDOUT, b"c")
        self.assertEqual(
            [(c.stream, c.data) for c in self.read_all(log)],
            [(Stream.STDOUT, b"a"), (Stream.STDERR, b"b"), (Stream.STDOUT, b"c")],
        )

    def test_consecutive_records_of_one_stream_are_coalesced(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"\x00\xff")
        log.append(Stream.STDOUT, b"no newline")
        (chunk,) = self.read_all(log)
        self.assertEqual(chunk.data, b"\x00\xffno newline")
        self.assertEqual((chunk.offset, chunk.next_offset), (0, log.size))

    def test_reading_continues_from_next_offset(self) -> None:
        log = self.make_log()
        for i in range(10):
            log.append(Stream.STDOUT, bytes([i]) * 10)
        offset, data = 0, b""
        while offset < log.size:
            chunks = read_chunks(log.path, offset, log.size, 25)
            self.assertLessEqual(sum(len(c.data) for c in chunks), 25)
            data += b"".join(c.data for c in chunks)
            offset = chunks[-1].next_offset
        self.assertEqual(data, b"".join(bytes([i]) * 10 for i in range(10)))

    def test_one_record_is_returned_even_if_larger_than_max_bytes(self) -> None:
        log = self.make_log()
        log.append(Stream.STDERR, b"x" * 100)
        (chunk,) = read_chunks(log.path, 0, log.size, 1)
        self.assertEqual(len(chunk.data), 100)

    def test_large_writes_are_split_into_bounded_records(self) -> None:
        log = self.make_log(cap=1 << 30)
        log.append(Stream.STDOUT, b"y" * (MAX_RECORD * 2 + 1))
        # Three records, after the time mark of the read they came from.
        mark = HEADER.size + TIME_DATA.size
        self.assertEqual(log.size, mark + MAX_RECORD * 2 + 1 + 3 * HEADER.size)
        first = read_chunks(log.path, 0, log.size, 1)
        self.assertEqual(len(first[0].data), MAX_RECORD)

    def test_reader_sees_nothing_past_end(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"first")
        end = log.size
        log.append(Stream.STDOUT, b"second")
        self.assertEqual(
            b"".join(c.data for c in read_chunks(log.path, 0, end, 100)), b"first"
        )
        self.assertEqual(read_chunks(log.path, end, end, 100), [])

    def test_bad_offsets_and_budgets_are_invalid_requests(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"hello")
        self.assertRaises(InvalidRequest, read_chunks, log.path, -1, log.size, 10)
        self.assertRaises(InvalidRequest, read_chunks, log.path, 99, log.size, 10)
        self.assertRaises(InvalidRequest, read_chunks, log.path, 2, log.size, 10)
        # Fewer bytes left than a record header.
        self.assertRaises(
            InvalidRequest, read_chunks, log.path, log.size - 2, log.size, 10
        )
        self.assertRaises(InvalidRequest, read_chunks, log.path, 0, log.size, 0)
        self.assertRaises(InvalidRequest, log.wait, log.size + 1)
        self.assertRaises(InvalidRequest, log.wait, -1)

    def test_many_small_records_are_read_past_the_first_window(self) -> None:
        # 3,000 one-byte records are 18,000 bytes of log for 3,000 of data:
        # more headers than one read window holds.
        log = self.make_log()
        for i in range(3000):
            log.append(Stream.STDOUT if i % 7 else Stream.STDERR, bytes([i % 256]))
        chunks = self.read_all(log)
        self.assertEqual(chunks[-1].next_offset, log.size)
        self.assertEqual(
            b"".join(c.data for c in chunks), bytes(i % 256 for i in range(3000))
        )
        self.assertEqual(
            [c.stream for c in chunks[:3]],
            [Stream.STDERR, Stream.STDOUT, Stream.STDERR],
        )

    def test_one_reader_reads_a_growing_log_call_after_call(self) -> None:
        log = self.make_log(cap=1 << 30)
        offset, data = 0, b""
        with LogReader(log.path) as reader:
            for i in range(20):
                log.append(Stream.STDOUT, bytes([i]) * (MAX_RECORD // 3))
                while offset < log.size:
                    chunks = reader.read(offset, log.size, MAX_RECORD)
                    data += b"".join(c.data for c in chunks)
                    offset = chunks[-1].next_offset
        self.assertEqual(
            data, b"".join(bytes([i]) * (MAX_RECORD // 3) for i in range(20))
        )

    def test_every_change_is_announced_before_waiters_are_woken(self) -> None:
        log = self.make_log(cap=3)
        events: list[str] = []
        log.before_wake = lambda: events.append(f"changed {log.truncated}")
        log.wait(0).addCallback(lambda _: events.append("woken"))
        log.append(Stream.STDOUT, b"abc")
        waiting = log.wait(log.size)
        log.append(Stream.STDOUT, b"d")  # only the truncated flag changes
        log.append(Stream.STDOUT, b"e")
        self.assertNoResult(waiting)  # no new data: nobody is woken
        log.finish()
        self.assertEqual(
            events, ["changed False", "woken", "changed True", "changed True"]
        )
        self.assertEqual(self.successResultOf(waiting).complete, True)

    def test_output_past_the_cap_is_dropped_and_flagged(self) -> None:
        log = self.make_log(cap=8)
        log.append(Stream.STDOUT, b"12345")
        log.append(Stream.STDERR, b"67890")
        log.append(Stream.STDOUT, b"more")
        self.assertTrue(log.truncated)
        self.assertEqual(log.data_bytes, 8)
        self.assertEqual([c.data for c in self.read_all(log)], [b"12345", b"678"])

    def test_waiter_fires_on_new_output(self) -> None:
        log = self.make_log()
        waiter = log.wait(0)
        self.assertNoResult(waiter)
        log.append(Stream.STDOUT, b"x")
        self.assertEqual(
            self.successResultOf(waiter), OutputState(size=log.size, complete=False)
        )

    def test_waiter_behind_the_end_fires_at_once(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"x")
        self.assertEqual(self.successResultOf(log.wait(0)).size, log.size)

    def test_finish_wakes_waiters_with_complete(self) -> None:
        log = self.make_log()
        waiters = [log.wait(0) for _ in range(3)]
        log.finish()
        for waiter in waiters:
            self.assertEqual(
                self.successResultOf(waiter), OutputState(size=0, complete=True)
            )
        self.assertTrue(self.successResultOf(log.wait(0)).complete)

    def test_cancelled_waiter_is_forgotten(self) -> None:
        log = self.make_log()
        waiter = log.wait(0)
        self.assertEqual(log.waiter_count, 1)
        waiter.cancel()
        self.failureResultOf(waiter, CancelledError)
        self.assertEqual(log.waiter_count, 0)
        log.append(Stream.STDOUT, b"x")

    def test_memory_does_not_grow_with_output(self) -> None:
        log = self.make_log(cap=1 << 30)
        for _ in range(200):
            log.append(Stream.STDOUT, b"z" * 4096)
        self.assertEqual(log.waiter_count, 0)
        self.assertEqual(os.path.getsize(log.path), log.size)

    def test_read_chunks_runs_in_a_thread_while_the_log_grows(self) -> None:
        log = self.make_log()
        log.append(Stream.STDOUT, b"a" * 1000)
        end = log.size
        result: list[list[OutputChunk]] = []
        reader = threading.Thread(
            target=lambda: result.append(read_chunks(log.path, 0, end, 4096))
        )
        reader.start()
        log.append(Stream.STDERR, b"b" * 1000)
        reader.join()
        self.assertEqual(result[0][0].data, b"a" * 1000)

    def test_appending_after_finish_is_ignored(self) -> None:
        log = self.make_log()
        log.finish()
        log.append(Stream.STDOUT, b"late")
        self.assertEqual(log.size, 0)

    def test_a_follower_of_another_writer_indexes_it_as_the_writer_did(self) -> None:
        # The helper writes under live restore; the server follows by headers.
        writer = self.make_log(cap=10 << 20)
        start = scan(writer.path)  # empty yet
        follower = OutputLog(
            writer.path, 10 << 20, self.clock, external=True, start=start
        )
        self.addCleanup(follower.finish)
        for i in range(40):
            stream = Stream.STDOUT if i % 3 else Stream.STDERR
            writer.append(stream, bytes([i]) * (i * 5000))
            self.clock.advance(0.002)  # a new time mark now and then
            if i % 7 == 0:
                follower.follow(writer.size)
        follower.follow(writer.size)
        self.assertEqual(
            (follower.size, follower.data_bytes), (writer.size, writer.data_bytes)
        )
        self.assertEqual(follower.index.entries(), writer.index.entries())
        with LogReader(writer.path) as reader:
            full = [
                (at, kind, len(data), -1 if kind != 3 else TIME_DATA.unpack(data)[0])
                for at, kind, data in reader.records(0, writer.size)
            ]
            self.assertEqual(list(reader.headers(0, writer.size)), full)
            self.assertRaises(InvalidRequest, list, reader.headers(1, writer.size))

    def test_negative_cap_is_invalid(self) -> None:
        self.assertRaises(InvalidRequest, OutputLog, self.mktemp(), -1)
