"""JobManager.remove: an ended job forgotten everywhere, durably; real processes."""

from __future__ import annotations

import os
from collections.abc import Sequence

from jobworker.errors import JobNotEnded, JobNotFound
from jobworker.job.events import JobEvents
from jobworker.job.journal import RECORD
from jobworker.job.manager import JobManager
from jobworker.job.storage import StorageGuard
from jobworker.model import JobState, JobStatus
from tests.managerutil import ManagerTestCase, output_of
from tests.procutil import marker

BIG = 1 << 40


class Removals(JobEvents):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.causes: list[str] = []
        self.restored_ids: list[str] = []

    def restored(self, statuses: Sequence[JobStatus], removed: int) -> None:
        self.restored_ids += [status.id for status in statuses]

    def removed(self, status: JobStatus, reason: str, cause: str) -> None:
        self.seen.append((status.id, reason))
        self.causes.append(cause)


class RemoveTests(ManagerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.events = Removals()
        self.storage = StorageGuard(
            self.state_dir, quota=BIG, min_free=0, free=lambda: BIG
        )
        self.manager = self.make_manager(events=self.events, storage=self.storage)

    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.state_dir, "jobs", job_id)

    async def ended_job(self, request_id: str | None = None) -> JobStatus:
        status = await self.manager.start(
            "alice", [b"sh", b"-c", b"echo 123456789"], request_id=request_id
        )
        await output_of(self.manager, status.id)
        return await self.manager.wait_ended(status.id)

    async def test_remove_drops_everything_kept_for_the_job(self) -> None:
        status = await self.ended_job(request_id="nightly")
        self.assertEqual(self.storage.used("alice"), 10)
        removed = await self.manager.remove(status.id, "by alice")
        self.assertEqual(removed, status)
        with self.assertRaises(JobNotFound):
            self.manager.status(status.id)
        with self.assertRaises(JobNotFound):
            self.manager.board.get(status.id)
        self.assertEqual(self.manager.list(), [])
        self.assertEqual(self.storage.used("alice"), 0)
        self.assertNotIn(status.id, self.manager.journal._saved)
        self.assertFalse(os.path.exists(self.job_dir(status.id)))
        self.assertEqual(self.events.seen, [(status.id, "by alice")])
        self.assertEqual(self.events.causes, ["request"])
        # The request id is free: the same Start makes a new job.
        again = await self.manager.start(
            "alice", [b"sh", b"-c", b"echo 123456789"], request_id="nightly"
        )
        self.assertNotEqual(again.id, status.id)
        await self.manager.wait_ended(again.id)

    async def test_a_removed_job_is_not_restored(self) -> None:
        kept = await self.ended_job()
        gone = await self.ended_job()
        await self.manager.remove(gone.id)
        await self.manager.shutdown()
        again = self.make_manager()
        self.assertEqual([status.id for status in again.list()], [kept.id])
        self.assertEqual(os.listdir(os.path.join(self.state_dir, "jobs")), [kept.id])

    async def test_a_restored_job_is_removed_with_its_quota_bytes(self) -> None:
        status = await self.ended_job()
        await self.manager.shutdown()
        storage = StorageGuard(self.state_dir, quota=BIG, min_free=0, free=lambda: BIG)
        again = self.make_manager(storage=storage)
        self.assertEqual(storage.used("alice"), 10)
        await again.remove(status.id)
        self.assertEqual(storage.used("alice"), 0)
        self.assertEqual(again.list(), [])
        self.assertFalse(os.path.exists(self.job_dir(status.id)))

    async def test_a_running_job_is_not_removed(self) -> None:
        status = await self.manager.start("alice", [b"sleep", marker().encode()])
        with self.assertRaises(JobNotEnded) as caught:
            await self.manager.remove(status.id)
        self.assertEqual(
            str(caught.exception),
            f"job {status.id} is running; only an ended job can be removed"
            " (stop it first)",
        )
        self.assertEqual(self.manager.status(status.id).state, JobState.RUNNING)
        self.assertTrue(os.path.exists(os.path.join(self.job_dir(status.id), RECORD)))
        self.assertEqual(self.events.seen, [])
        final = await self.manager.stop(status.id, 0)
        self.assertEqual(await self.manager.remove(status.id), final)

    async def test_an_unknown_job_is_not_found(self) -> None:
        with self.assertRaises(JobNotFound):
            await self.manager.remove("0000-no-such-job")
        status = await self.ended_job()
        await self.manager.remove(status.id)
        with self.assertRaises(JobNotFound):
            await self.manager.remove(status.id)

    async def test_a_crash_after_the_record_went_leaves_nothing_restored(
        self,
    ) -> None:
        # What a crash between the two steps leaves: the record gone, the
        # directory (output) not yet. The next start removes the directory.
        status = await self.ended_job()
        await self.manager.shutdown()
        self.manager.journal.remove(status.id)
        self.assertTrue(os.path.exists(self.job_dir(status.id)))
        events = Removals()
        again = self.make_manager(events=events)
        self.assertEqual((again.list(), events.restored_ids), ([], []))
        self.assertFalse(os.path.exists(self.job_dir(status.id)))


class RemoveWithoutStorageTests(ManagerTestCase):
    async def test_remove_without_a_storage_guard(self) -> None:
        manager: JobManager = self.manager
        status = await manager.start("bob", [b"true"])
        await manager.wait_ended(status.id)
        await manager.remove(status.id)
        self.assertEqual(manager.list(), [])
