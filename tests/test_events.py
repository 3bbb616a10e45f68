"""Tests for jobworker.job.events: one log line per job event, with the owner."""

from __future__ import annotations

import os
from typing import cast

from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial import unittest

from jobworker.errors import ExecutableNotFound
from jobworker.job.events import LoggingJobEvents, outcome_for_log
from jobworker.job.manager import JobManager
from jobworker.limits import limits_for_log
from jobworker.model import JobState, JobStatus, Limits


def _status(**fields: object) -> JobStatus:
    values: dict[str, object] = {
        "id": "j",
        "owner": "alice",
        "command": (b"true",),
        "state": JobState.EXITED,
        "limits": Limits(),
        "started_at": 0.0,
    }
    values.update(fields)
    return JobStatus(**values)  # type: ignore[arg-type]


class FormatTests(unittest.TestCase):
    def test_outcome_says_how_the_job_ended(self) -> None:
        self.assertEqual(outcome_for_log(_status(exit_code=3)), "exited 3")
        self.assertEqual(
            outcome_for_log(_status(state=JobState.KILLED, signal=9, oom_killed=True)),
            "killed by signal 9, OOM killed",
        )
        self.assertEqual(
            outcome_for_log(
                _status(exit_code=0, stop_requested=True, output_truncated=True)
            ),
            "exited 0, stop requested, output truncated",
        )

    def test_limits_are_compact(self) -> None:
        limits = Limits(cpu=0.5, memory_bytes=256 << 20, io_write_bps=1 << 20, pids=64)
        self.assertEqual(
            limits_for_log(limits), "cpu=0.5 memory=256M io_write_bps=1M pids=64"
        )
        self.assertEqual(limits_for_log(Limits()), "none")


class LoggingJobEventsTests(unittest.TestCase):
    """The server's manager: a `JobManager` with the logging observer."""

    def setUp(self) -> None:
        self.lines: list[str] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_namespace") == "jobworker.job.events":
                self.lines.append(formatEvent(event))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        state_dir = self.mktemp()
        os.makedirs(state_dir)
        self.manager = JobManager(state_dir, job_user="root", events=LoggingJobEvents())
        self.addCleanup(self.manager.shutdown)

    async def test_start_stop_and_end_are_one_line_each(self) -> None:
        job = await self.manager.start("alice", [b"sleep", b"600"])
        await self.manager.stop(job.id, grace=5)
        self.assertEqual(
            self.lines,
            [
                f"job {job.id} started by alice: sleep 600 (none)",
                f"job {job.id} of alice: stop requested (grace 5s)",
                f"job {job.id} of alice ended: killed by signal 15, stop requested",
            ],
        )

    async def test_shutdown_says_how_many_jobs_it_stops(self) -> None:
        job = await self.manager.start("carol", [b"sleep", b"600"])
        await self.manager.shutdown()
        self.assertEqual(
            self.lines[1:],
            [
                "shutting down: stopping 1 running job(s)",
                f"job {job.id} of carol ended: killed by signal 15, stop requested",
            ],
        )

    async def test_refused_start_is_logged_with_the_owner(self) -> None:
        with self.assertRaises(ExecutableNotFound):
            await self.manager.start("bob", [b"/nonexistent/program"])
        self.assertEqual(len(self.lines), 1)
        self.assertTrue(
            self.lines[0].startswith(
                "job start refused for bob: /nonexistent/program:"
            ),
            self.lines,
        )
