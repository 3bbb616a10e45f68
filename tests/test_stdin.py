"""Tests for jobworker.job.stdin: the server's end of a job's stdin pipe."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IPushProducer
from twisted.trial import unittest

from jobworker.errors import InputClosed, InputTooLarge
from jobworker.job.stdin import JobInput


class FakePipe:
    """Records what `JobInput` does to the process transport."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed: list[int] = []
        self.producer: IPushProducer | None = None

    def writeToChild(self, childFD: int, data: bytes) -> None:
        assert childFD == 0
        self.written.append(data)

    def closeChildFD(self, childFD: int) -> None:
        self.closed.append(childFD)

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        assert streaming
        self.producer = producer


class JobInputTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pipe = FakePipe()
        self.input = JobInput(self.pipe, cap=10)

    def test_it_is_the_pipes_push_producer(self) -> None:
        self.assertIs(self.pipe.producer, self.input)

    def test_writes_go_to_the_pipe_and_fire_while_it_has_room(self) -> None:
        self.assertTrue(self.successResultOf(self.input.write(b"abc")))
        self.assertEqual(self.pipe.written, [b"abc"])

    def test_a_full_pipe_holds_the_writer_until_it_drains(self) -> None:
        self.input.pauseProducing()
        waiting = self.input.write(b"abc")
        self.assertNoResult(waiting)
        self.input.resumeProducing()
        self.assertTrue(self.successResultOf(waiting))

    def test_a_cancelled_write_is_forgotten(self) -> None:
        self.input.pauseProducing()
        waiting = self.input.write(b"abc")
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.input.resumeProducing()  # nothing left to fire

    def test_one_writer_ever(self) -> None:
        self.input.claim()
        self.assertRaises(InputClosed, self.input.claim)
        self.input.close()
        self.assertEqual(self.pipe.closed, [0])
        self.failureResultOf(self.input.write(b"x"), InputClosed)

    def test_close_is_the_jobs_eof_even_for_a_waiting_write(self) -> None:
        self.input.pauseProducing()
        waiting = self.input.write(b"abc")
        self.input.close()
        self.assertFalse(self.successResultOf(waiting))
        self.input.stopProducing()  # the writer's end, after our close
        self.assertFalse(self.input.closed_by_job)

    def test_the_job_closing_its_end_ends_the_writes(self) -> None:
        self.input.pauseProducing()
        waiting = self.input.write(b"abc")
        self.input.stopProducing()
        self.assertFalse(self.successResultOf(waiting))
        self.assertTrue(self.input.closed_by_job)
        self.assertFalse(self.successResultOf(self.input.write(b"more")))
        self.assertRaises(InputClosed, self.input.claim)

    def test_input_past_the_cap_is_refused(self) -> None:
        self.successResultOf(self.input.write(b"123456"))
        self.failureResultOf(self.input.write(b"12345"), InputTooLarge)
        self.successResultOf(self.input.write(b"1234"))
        self.assertEqual(self.input.written, 10)
