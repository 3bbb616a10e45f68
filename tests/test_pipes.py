"""Tests for jobworker.job.process.pipes: a job's output read in large
pieces, for real."""

from __future__ import annotations

import fcntl
import os
import shutil
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest

from jobworker.job.process.pipes import PIPE_BYTES, JobProcess

reactor: Any = _reactor
SH = shutil.which("sh") or "/bin/sh"


class Recorder(ProcessProtocol):
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.exited: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.sizes.append(len(data))

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 1:
            self.closed.callback(None)

    def processExited(self, reason: Failure) -> None:
        self.exited.callback(None)


class ClosingRecorder(Recorder):
    """Closes the stdout pipe on its first data, as a job past its cap does."""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        super().childDataReceived(childFD, data)
        if childFD == 1:
            assert self.transport is not None
            self.transport.closeChildFD(1)


class JobProcessTests(unittest.TestCase):
    timeout = 30

    def spawn(
        self, script: str, recorder: Recorder | None = None
    ) -> tuple[JobProcess, Recorder]:
        recorder = recorder or Recorder()
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.addCleanup(os.close, devnull)
        process = JobProcess(
            reactor,
            SH,
            [SH, "-c", script],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            None,
            recorder,
            None,
            None,
            {0: devnull, 1: "r", 2: "r"},
        )
        return process, recorder

    async def test_a_full_pipe_is_taken_in_one_read(self) -> None:
        # 200 KiB does not fit the kernel's default 64 KiB pipe: the writer
        # can only exit, while nobody reads, if the pipe was enlarged.
        size = 200 * 1024
        process, recorder = self.spawn(f"head -c {size} /dev/zero")
        reader = process.pipes[1]
        reader.stopReading()
        self.assertEqual(fcntl.fcntl(reader.fileno(), fcntl.F_GETPIPE_SZ), PIPE_BYTES)
        await recorder.exited
        reader.startReading()
        await recorder.closed
        self.assertEqual(recorder.sizes, [size])

    async def test_closing_on_data_read_with_the_eof_closes_the_pipe_once(
        self,
    ) -> None:
        process, recorder = self.spawn("echo hi", ClosingRecorder())
        reader = process.pipes[1]
        reader.stopReading()
        await recorder.exited  # data and EOF wait in the pipe: one read
        reader.startReading()
        await recorder.closed
        await deferLater(reactor, 0, lambda: None)  # a second close comes now
        self.assertNotIn(1, process.pipes)
        self.assertEqual(recorder.sizes, [3])

    async def test_a_closed_pipe_loses_its_reader_at_once(self) -> None:
        # Before the reactor turns: a writer's next write fails with EPIPE.
        process, recorder = self.spawn("exec sleep 30")
        reader = process.pipes[2]
        reader.stopReading()  # epoll watched the pipe dup2 replaces below
        pipe_r, pipe_w = os.pipe()
        self.addCleanup(os.close, pipe_w)
        os.dup2(pipe_r, reader.fileno())  # a pipe we hold the writing end of
        os.close(pipe_r)
        process.closeChildFD(2)
        with self.assertRaises(BrokenPipeError):
            os.write(pipe_w, b"x")
        process.signalProcess("KILL")
        await recorder.exited
        await recorder.closed
        await deferLater(reactor, 0, lambda: None)  # stderr's close comes now
        self.assertEqual(process.pipes, {})
