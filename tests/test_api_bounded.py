"""Hostile values cannot flood replies or the log: ids, argv, bursts of refusals."""

from __future__ import annotations

import grpc

from jobworker.job.events import LoggingJobEvents
from jobworker.logbursts import BURST
from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase


class BoundedTests(APITestCase):
    events_class = LoggingJobEvents

    def setUp(self) -> None:
        super().setUp()
        self.lines = self.capture_log()

    def logged(self) -> int:
        return sum(len(line) for line in self.lines)

    async def test_an_id_longer_than_an_id_is_invalid_and_never_echoed(self) -> None:
        huge = "f" * (3 << 20)
        requests = [
            ("Status", pb.StatusRequest(job_id=huge)),
            ("Stop", pb.StopRequest(job_id=huge)),
            ("Remove", pb.RemoveRequest(job_id=huge)),
        ]
        for method, request in requests:
            error = await self.error("bob", method, request)
            self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT, method)
            self.assertIn("at most 36 characters", error.details())
            self.assertLess(len(error.details() or ""), 200)
        stream = self.follow("bob", huge)
        try:
            await self.in_thread(list, stream)
        except grpc.RpcError as error:
            self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertNotIn("ffffffffff", error.details())
        else:
            self.fail("a 3 MiB id was followed")
        self.assertLess(self.logged(), 4000)

    async def test_an_unknown_id_is_shown_escaped(self) -> None:
        error = await self.error("bob", "Status", pb.StatusRequest(job_id="a\nb\x1b"))
        self.assertEqual(error.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(error.details(), "job 'a\\x0ab\\x1b' not found")
        self.assertFalse(any("\n" in line or "\x1b" in line for line in self.lines))

    async def test_a_burst_of_refusals_is_logged_a_few_lines_at_a_time(self) -> None:
        for _ in range(40):
            error = await self.error("bob", "Status", pb.StatusRequest(job_id="x"))
            self.assertEqual(error.code(), grpc.StatusCode.NOT_FOUND)
        refusals = [line for line in self.lines if "Status by bob" in line]
        self.assertEqual(len(refusals), BURST)
        error = await self.error("alice", "Status", pb.StatusRequest(job_id="y"))
        self.assertTrue(any("Status by alice" in line for line in self.lines))
        await self.stop_server()
        [summary] = [line for line in self.lines if "more refused calls" in line]
        self.assertTrue(summary.startswith(f"bob: {40 - BURST} more"), summary)

    async def test_a_start_logs_a_bounded_command(self) -> None:
        argv = [b"/bin/true", *([b"a" * 100_000] * 10)]
        await self.start_job("bob", argv)
        [line] = [line for line in self.lines if "started by bob" in line]
        self.assertLess(len(line), 400)
        self.assertIn("(11 arguments, 1000009 bytes)", line)
