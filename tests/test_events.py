"""Tests for jobworker.job.events: the hook the manager calls, and its log lines."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import cast

from twisted.internet.defer import CancelledError
from twisted.internet.error import ProcessTerminated
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from jobworker.errors import ExecutableNotFound, InvalidRequest
from jobworker.job.events import JobEvents, LoggingJobEvents, outcome_for_log
from jobworker.job.manager import JobManager
from jobworker.limits import limits_for_log
from jobworker.model import JobState, JobStatus, Limits
from tests.jobfakes import FakeManagerTestCase


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

    def test_restored_jobs_are_counted_and_each_lost_one_said(self) -> None:
        statuses = [
            _status(id="a", exit_code=0),
            _status(id="b", state=JobState.LOST, stop_requested=True),
        ]
        LoggingJobEvents().restored(statuses, 2)
        self.assertEqual(
            self.lines,
            [
                "restored 2 job(s) of an earlier run, 1 lost",
                "job b of alice: lost: the server stopped while it ran, being"
                " stopped; how it ended is not known",
                "removed 2 job directory(ies) without a journal record",
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


class RecordedEvents(JobEvents):
    """A `JobEvents` that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[object, ...]] = []

    def started(self, status: JobStatus) -> None:
        self.told.append(("started", status.id, status.state))

    def readopted(self, status: JobStatus) -> None:
        self.told.append(("readopted", status.id, status.state))

    def start_refused(
        self, owner: str, command: Sequence[bytes], error: BaseException
    ) -> None:
        self.told.append(("start refused", owner, tuple(command), type(error)))

    def stop_requested(self, status: JobStatus, grace: float | None) -> None:
        self.told.append(("stop requested", status.id, grace))

    def ended(self, status: JobStatus) -> None:
        self.told.append(("ended", status.id, status.state, status.signal))

    def shutdown_requested(self, running: int) -> None:
        self.told.append(("shutdown requested", running))

    def cleanup_failed(self, job_id: str) -> None:
        self.told.append(("cleanup failed", job_id))


class JobEventsTests(FakeManagerTestCase):
    """The manager tells its `JobEvents` what happens, before its callers."""

    def setUp(self) -> None:
        self.events = self.recorded = RecordedEvents()
        super().setUp()

    def test_start_stop_and_end_are_told_in_order(self) -> None:
        starting = self.manager.start("bob", [b"prog"])
        self.assertEqual(self.recorded.told, [])  # not exec'd yet
        self.protocol.childConnectionLost(3)
        job = self.successResultOf(starting)
        stopped = self.manager.stop(job.id, grace=10)
        self.protocol.processExited(Failure(ProcessTerminated(signal=signal.SIGTERM)))
        for fd in (1, 2):
            self.protocol.childConnectionLost(fd)
        self.assertNoResult(stopped)
        self.assertEqual(len(self.recorded.told), 2)  # ends once clean-up is done
        self.driver.cgroups[0].removing.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(
            self.recorded.told,
            [
                ("started", job.id, JobState.RUNNING),
                ("stop requested", job.id, 10),
                ("ended", job.id, JobState.KILLED, signal.SIGTERM),
            ],
        )

    def test_failed_start_is_refused_once(self) -> None:
        starting = self.manager.start("bob", [b"prog"])
        self.protocol.childDataReceived(3, b"enoent No such file or directory\n")
        self.protocol.childConnectionLost(3)
        self.protocol.processExited(Failure(ProcessTerminated(exitCode=127)))
        for fd in (1, 2):
            self.protocol.childConnectionLost(fd)
        self.driver.cgroups[0].removing.callback(None)
        self.failureResultOf(starting, ExecutableNotFound)
        self.assertEqual(
            self.recorded.told,
            [("start refused", "bob", (b"prog",), ExecutableNotFound)],
        )

    def test_invalid_start_is_refused(self) -> None:
        self.failureResultOf(self.manager.start("bob", [b""]), InvalidRequest)
        self.assertEqual(
            self.recorded.told, [("start refused", "bob", (b"",), InvalidRequest)]
        )

    def test_cancelled_start_is_not_refused_and_its_job_is_told(self) -> None:
        # The caller stopped waiting; the job still starts, is listed and ends.
        starting = self.manager.start("bob", [b"prog"])
        starting.cancel()
        self.failureResultOf(starting, CancelledError)
        self.protocol.childConnectionLost(3)
        [job] = self.manager.list()
        self.assertEqual(self.recorded.told, [("started", job.id, JobState.RUNNING)])

    def test_a_cgroup_that_cannot_be_removed_is_told(self) -> None:
        starting = self.manager.start("bob", [b"prog"])
        self.protocol.childConnectionLost(3)
        job = self.successResultOf(starting)
        self.protocol.processExited(Failure(ProcessTerminated(exitCode=0)))
        for fd in (1, 2):
            self.protocol.childConnectionLost(fd)
        self.driver.cgroups[0].removing.errback(PermissionError("not allowed"))
        self.assertEqual(self.recorded.told[1], ("cleanup failed", job.id))
        self.assertEqual(self.recorded.told[2][:2], ("ended", job.id))
        self.assertEqual(len(self.flushLoggedErrors(PermissionError)), 1)

    def test_refused_stop_is_not_told(self) -> None:
        starting = self.manager.start("bob", [b"prog"])
        self.protocol.childConnectionLost(3)
        job = self.successResultOf(starting)
        self.failureResultOf(self.manager.stop(job.id, grace=-1), InvalidRequest)
        self.assertEqual(self.recorded.told, [("started", job.id, JobState.RUNNING)])

    def test_shutdown_is_told_with_the_running_jobs(self) -> None:
        self.manager.start("bob", [b"prog"])
        self.protocol.childConnectionLost(3)
        self.manager.shutdown()
        self.assertEqual(self.recorded.told[-1], ("shutdown requested", 1))
