"""Tests for jobworker.job.retention: the reaper on a fake clock, no real time.

The reaper removes through a recorder standing for `JobManager.remove`
(it tells the reaper of each removal, as the manager's events do); the
last test drives a real manager, its restored jobs and its journal.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from jobworker.errors import JobNotFound
from jobworker.job.manager import JobManager
from jobworker.job.retention import SWEEP_GAP, Reaper, Retention
from jobworker.model import JobState, JobStatus, Limits

reactor: Any = _reactor
DAY = 86400.0


def ended(job_id: str, owner: str, at: float) -> JobStatus:
    return JobStatus(
        id=job_id,
        owner=owner,
        command=(b"true",),
        state=JobState.EXITED,
        limits=Limits(),
        started_at=at - 1,
        ended_at=at,
        exit_code=0,
    )


class Recorder:
    """`JobManager.remove` as the reaper sees it: records, then tells it."""

    def __init__(self) -> None:
        self.removed: list[tuple[str, str]] = []
        self.causes: list[str] = []
        self.reaper: Reaper | None = None
        self.statuses: dict[str, JobStatus] = {}
        self.hold: Deferred[None] | None = None

    def remove(self, job_id: str, reason: str, cause: str) -> Deferred[Any]:
        status = self.statuses.pop(job_id, None)
        if status is None:
            return fail(JobNotFound(job_id))
        self.removed.append((job_id, reason))
        self.causes.append(cause)
        assert self.reaper is not None
        self.reaper.removed(status, reason, cause)
        return self.hold if self.hold is not None else succeed(status)


class ReaperTests(unittest.TestCase):
    def make(
        self, age: float | None = 7 * DAY, count: int | None = 1000
    ) -> tuple[Reaper, Recorder, MemoryReactorClock]:
        clock = MemoryReactorClock()
        clock.advance(1000 * DAY)
        reaper = Reaper(Retention(age, count), reactor=clock)
        recorder = Recorder()
        recorder.reaper = reaper
        reaper.attach(recorder.remove)
        reaper.startService()
        self.addCleanup(reaper.stopService)
        return reaper, recorder, clock

    def end(self, reaper: Reaper, recorder: Recorder, status: JobStatus) -> None:
        recorder.statuses[status.id] = status
        reaper.ended(status)

    def removed(self, recorder: Recorder) -> list[str]:
        return [job_id for job_id, _ in recorder.removed]

    def test_a_job_is_removed_retain_after_it_ended(self) -> None:
        reaper, recorder, clock = self.make(age=3600)
        self.end(reaper, recorder, ended("a", "bob", clock.seconds()))
        clock.advance(3599)
        self.assertEqual(recorder.removed, [])
        clock.advance(1)
        clock.advance(0)  # removals run in a later reactor step
        self.assertEqual(self.removed(recorder), ["a"])
        self.assertIn("1h after it ended (retain)", recorder.removed[0][1])
        self.assertEqual(recorder.causes, ["retain"])
        self.assertEqual(reaper.kept, 0)

    def test_one_timer_for_many_jobs_and_no_sweep_without_an_expiry(self) -> None:
        reaper, recorder, clock = self.make(age=60)
        now = clock.seconds()
        for n in range(100):
            self.end(reaper, recorder, ended(f"j{n}", "bob", now + n * 0.01))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(60)
        # Not one sweep per job: the rest waits for the gap.
        clock.advance(0)
        self.assertEqual(self.removed(recorder), ["j0"])
        clock.advance(SWEEP_GAP)
        clock.advance(0)
        self.assertEqual(len(recorder.removed), 100)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_the_count_cap_keeps_each_owners_newest(self) -> None:
        reaper, recorder, clock = self.make(age=None, count=2)
        now = clock.seconds()
        for n, owner in enumerate(["bob", "bob", "carol", "bob", "carol", "bob"]):
            self.end(reaper, recorder, ended(f"{owner}{n}", owner, now + n))
        clock.advance(0)
        self.assertEqual(self.removed(recorder), ["bob0", "bob1"])
        self.assertIn(
            "bob's oldest ended jobs beyond the newest 2", recorder.removed[0][1]
        )
        self.assertEqual(recorder.causes, ["retain-jobs", "retain-jobs"])
        self.assertEqual(reaper.kept, 4)
        # No age cap: nothing is ever timed.
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(365 * DAY)
        self.assertEqual(len(recorder.removed), 2)

    def test_restored_jobs_are_capped_by_age_and_count_at_start(self) -> None:
        clock = MemoryReactorClock()
        clock.advance(1000 * DAY)
        now = clock.seconds()
        reaper = Reaper(Retention(7 * DAY, 2), reactor=clock)
        recorder = Recorder()
        recorder.reaper = reaper
        statuses = [
            ended("old", "bob", now - 8 * DAY),
            ended("b1", "bob", now - 3 * DAY),
            ended("b2", "bob", now - 2 * DAY),
            ended("b3", "bob", now - 1 * DAY),
            ended("c1", "carol", now - 6 * DAY),
        ]
        running = JobStatus(
            "run", "bob", (b"sleep",), JobState.RUNNING, Limits(), now - 9 * DAY
        )
        for status in statuses:
            recorder.statuses[status.id] = status
        # Heard while the manager is made: nothing is removed before start.
        reaper.restored([*reversed(statuses), running], 0)
        clock.advance(0)
        self.assertEqual(recorder.removed, [])
        reaper.attach(recorder.remove)
        reaper.startService()
        self.addCleanup(reaper.stopService)
        clock.advance(0)
        self.assertEqual(sorted(self.removed(recorder)), ["b1", "old"])
        clock.advance(1 * DAY)
        clock.advance(0)
        self.assertEqual(self.removed(recorder)[-1], "c1")
        self.assertEqual(reaper.kept, 2)

    def test_running_jobs_are_never_removed(self) -> None:
        reaper, recorder, clock = self.make(age=1, count=1)
        now = clock.seconds()
        running = JobStatus("r", "bob", (b"sleep",), JobState.RUNNING, Limits(), now)
        reaper.restored([running], 0)
        reaper.started(running)
        clock.advance(10 * DAY)
        self.assertEqual(recorder.removed, [])
        self.assertEqual(reaper.kept, 0)

    def test_a_job_removed_by_hand_is_forgotten(self) -> None:
        reaper, recorder, clock = self.make(age=60, count=2)
        now = clock.seconds()
        for job_id in ("a", "b"):
            self.end(reaper, recorder, ended(job_id, "bob", now))
        recorder.remove("a", "by bob", "request")  # the RPC, through the manager
        self.end(reaper, recorder, ended("c", "bob", now + 1))
        clock.advance(0)
        # "a" is gone already: two jobs are kept, none is over the count.
        self.assertEqual(self.removed(recorder), ["a"])
        clock.advance(61)
        clock.advance(SWEEP_GAP)
        clock.advance(0)
        self.assertEqual(self.removed(recorder), ["a", "b", "c"])

    def test_removals_run_one_after_another(self) -> None:
        reaper, recorder, clock = self.make(age=None, count=1)
        recorder.hold = Deferred()
        now = clock.seconds()
        for n in range(4):
            self.end(reaper, recorder, ended(f"j{n}", "bob", now + n))
        clock.advance(0)
        self.assertEqual(self.removed(recorder), ["j0"])
        held, recorder.hold = recorder.hold, None
        held.callback(None)
        self.assertEqual(self.removed(recorder), ["j0", "j1", "j2"])

    def test_a_failed_removal_is_logged_and_the_next_goes_on(self) -> None:
        reaper, recorder, clock = self.make(age=None, count=1)
        now = clock.seconds()
        for n in range(3):
            self.end(reaper, recorder, ended(f"j{n}", "bob", now + n))
        recorder.statuses.pop("j0")  # gone meanwhile: JobNotFound, ignored
        broken = recorder.remove

        def remove(job_id: str, reason: str, cause: str) -> Deferred[Any]:
            if job_id == "j1":
                return fail(OSError("disk on fire"))
            return broken(job_id, reason, cause)

        reaper.attach(remove)
        clock.advance(0)
        [error] = self.flushLoggedErrors(OSError)
        self.assertIn("disk on fire", str(error.value))

    def test_nothing_is_timed_after_stop(self) -> None:
        reaper, recorder, clock = self.make(age=60)
        self.end(reaper, recorder, ended("a", "bob", clock.seconds()))
        reaper.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(3600)
        self.assertEqual(recorder.removed, [])

    def test_the_stale_expiries_are_compacted(self) -> None:
        reaper, recorder, clock = self.make(age=7 * DAY, count=1)
        now = clock.seconds()
        for n in range(1000):
            self.end(reaper, recorder, ended(f"j{n}", "bob", now + n))
            clock.advance(0)
        self.assertEqual(reaper.kept, 1)
        self.assertLess(len(reaper._expiries), 100)

    def test_retention_is_checked(self) -> None:
        for age, count in ((0.0, 1), (-1.0, 1), (1.0, 0)):
            with self.assertRaises(ValueError):
                Retention(age, count)
        with self.assertRaises(RuntimeError):
            Reaper(Retention(), reactor=MemoryReactorClock()).startService()


class ReaperManagerTests(unittest.TestCase):
    """The reaper and a real manager: ended and restored jobs, removed for good."""

    async def test_ended_and_restored_jobs_are_removed_from_disk(self) -> None:
        state_dir = os.path.abspath(self.mktemp())
        first = JobManager(state_dir, reactor=reactor)
        statuses = [await first.start("bob", [b"true"]) for _ in range(2)]
        for status in statuses:
            await first.wait_ended(status.id)
        await first.shutdown()

        clock = MemoryReactorClock()
        clock.advance(time.time())
        reaper = Reaper(Retention(3600, 1), reactor=clock)
        manager = JobManager(state_dir, events=reaper, reactor=reactor)
        self.addCleanup(manager.shutdown)
        reaper.attach(manager.remove)
        reaper.startService()
        self.addCleanup(reaper.stopService)
        # The count: only the newest is kept, the other queued for removal.
        self.assertEqual(reaper.kept, 1)
        clock.advance(0)
        jobs = os.path.join(state_dir, "jobs")
        await _until(lambda: len(os.listdir(jobs)) == 1)
        self.assertEqual([s.id for s in manager.list()], [statuses[1].id])

        new = await manager.start("carol", [b"true"])
        await manager.wait_ended(new.id)
        self.assertEqual(reaper.kept, 2)
        clock.advance(time.time() + 3600 - clock.seconds())  # past both ends
        clock.advance(0)
        await _until(lambda: os.listdir(jobs) == [])
        self.assertEqual(manager.list(), [])
        self.assertEqual(JobManager(state_dir, reactor=reactor).list(), [])


async def _until(predicate: Any) -> None:
    """Let the real reactor turn (the removals' thread pool) until it holds."""
    for _ in range(1000):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("never happened")
