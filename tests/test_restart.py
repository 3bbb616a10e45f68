"""A JobManager made again on the same state directory: the journal's jobs.

Real processes. A manager that shut down left final records; one that
"crashed" is a copy of the state directory taken while its jobs ran (their
records say running), which a new manager reads as a crashed run's.
`RestartNamespacedTests` repeats them with cgroups and namespaces.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from typing import cast

from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from jobworker.errors import InvalidRequest
from jobworker.job.journal import RECORD
from jobworker.job.manager import JobManager
from jobworker.job.outputlog import HEADER
from jobworker.job.storage import StorageGuard
from jobworker.model import JobState, JobStatus
from tests.managerutil import (
    ManagerTestCase,
    NamespacedMixin,
    output_of,
    until_output,
)
from tests.procutil import marker


class RestartTests(ManagerTestCase):
    """Jobs outlive their manager as records and output."""

    def again(self, state_dir: str | None = None) -> JobManager:
        """A new manager on this (or another) state directory."""
        self.state_dir = state_dir or self.state_dir
        return self.make_manager()

    def crashed_copy(self) -> str:
        """The state directory as a crash would leave it, jobs still running."""
        copy: str = os.path.abspath(self.mktemp())
        shutil.copytree(os.path.join(self.state_dir, "jobs"), f"{copy}/jobs")
        return copy

    async def test_finished_jobs_come_back_with_their_exact_status(self) -> None:
        exited, _ = await self.run_sh(b"echo out; echo err >&2; exit 3")
        killed, _ = await self.run_sh(b"echo bye; kill -KILL $$")
        capped = self.make_manager(output_cap=4)
        cut = await self.start_sh(b"echo 123456789", capped)
        await output_of(capped, cut.id)
        await capped.shutdown()
        await self.manager.shutdown()
        before = [self.manager.status(exited.id), self.manager.status(killed.id)]
        before.append(capped.status(cut.id))

        manager = self.again()
        self.assertEqual(manager.list(), sorted(before, key=lambda s: s.started_at))
        self.assertEqual(manager.board.all(), manager.list())
        self.assertEqual(
            (before[0].state, before[0].exit_code, before[1].signal),
            (JobState.EXITED, 3, signal.SIGKILL),
        )
        self.assertTrue(before[2].output_truncated)
        self.assertEqual(await output_of(manager, exited.id), b"out\nE:err\n")
        self.assertEqual(await output_of(manager, killed.id), b"bye\n")
        self.assertEqual(await output_of(manager, cut.id), b"1234")
        self.assertEqual(await manager.wait_ended(exited.id), before[0])
        self.assertEqual(await manager.stop(exited.id), before[0])
        state = await manager.wait_output(exited.id, 0)
        self.assertTrue(state.complete)
        self.failureResultOf(manager.wait_output(exited.id, 10**6), InvalidRequest)

    async def test_a_restored_log_has_the_index_its_writer_kept(self) -> None:
        status, _ = await self.run_sh(
            b"for i in 1 2 3 4 5 6; do head -c 200000 /dev/zero; sleep 0.01; done"
        )
        await self.manager.shutdown()
        written = self.manager.output_source(status.id).index.entries()
        self.assertGreater(len(written), 2)
        restored = self.again().output_source(status.id)
        self.assertEqual(restored.index.entries(), written)
        self.assertTrue(restored.state.complete)

    async def test_restored_output_counts_against_its_owners_quota(self) -> None:
        await self.run_sh(b"echo 123456789")
        await self.manager.shutdown()
        manager = self.make_manager(storage=StorageGuard(self.state_dir, quota=15))
        assert manager.storage is not None
        self.assertEqual(manager.storage.used("alice"), 10)
        self.assertEqual(manager.storage.used("bob"), 0)

    async def test_job_stopped_at_shutdown_comes_back_killed(self) -> None:
        status = await self.manager.start("alice", [b"sleep", marker().encode()])
        await self.manager.shutdown()
        final = self.again().status(status.id)
        self.assertEqual(
            (final.state, final.signal, final.stop_requested),
            (JobState.KILLED, signal.SIGTERM, True),
        )
        self.assertIsNotNone(final.ended_at)

    async def test_running_jobs_of_a_crashed_run_come_back_lost(self) -> None:
        tag = marker().encode()
        first = self.make_manager(stop_grace=0.5)  # ends them after the test
        running = await self.start_sh(b"echo started; sleep %s" % tag, first)
        stopping = await self.start_sh(
            b"trap '' TERM; echo ready; sleep %s" % tag, first
        )
        await until_output(first, running.id, b"started")
        await until_output(first, stopping.id, b"ready")
        first.stop(stopping.id, grace=3600)
        crashed = self.crashed_copy()

        manager = self.again(crashed)
        lost = manager.status(running.id)
        self.assertEqual(
            (lost.state, lost.exit_code, lost.signal, lost.stop_requested),
            (JobState.LOST, None, None, False),
        )
        self.assertEqual(lost.output_bytes, len(b"started\n"))
        assert lost.ended_at is not None
        self.assertGreaterEqual(lost.ended_at, lost.started_at)
        self.assertEqual(await output_of(manager, running.id), b"started\n")
        self.assertEqual(manager.status(stopping.id).state, JobState.LOST)
        self.assertTrue(manager.status(stopping.id).stop_requested)
        job_dir = os.path.join(crashed, "jobs", running.id)
        self.assertEqual(sorted(os.listdir(job_dir)), [RECORD, "output.log"])
        # LOST is decided once: the record says it now.
        self.assertEqual(self.again(crashed).status(running.id), lost)

    async def test_a_torn_output_record_is_not_served(self) -> None:
        status = await self.start_sh(b"echo whole; sleep %s" % marker().encode())
        await until_output(self.manager, status.id, b"whole")
        crashed = self.crashed_copy()
        log = os.path.join(crashed, "jobs", status.id, "output.log")
        with open(log, "ab") as torn:
            torn.write(HEADER.pack(1, 100) + b"cut of")
        manager = self.again(crashed)
        self.assertEqual(await output_of(manager, status.id), b"whole\n")
        self.assertEqual(manager.status(status.id).output_bytes, 6)

    async def test_damaged_records_do_not_stop_the_start(self) -> None:
        good, _ = await self.run_sh(b"echo good")
        bad, _ = await self.run_sh(b"echo bad")
        await self.manager.shutdown()
        with open(os.path.join(self.state_dir, "jobs", bad.id, RECORD), "r+b") as f:
            f.truncate(20)
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        manager = self.again()
        self.assertEqual([job.id for job in manager.list()], [good.id])
        logged = [formatEvent(event) for event in events]
        self.assertTrue(any(bad.id in text and "skipped" in text for text in logged))
        again = await self.start_sh(b"echo still works", manager)
        self.assertEqual(await output_of(manager, again.id), b"still works\n")

    async def test_job_dirs_without_a_record_are_removed(self) -> None:
        jobs = os.path.join(self.state_dir, "jobs")
        orphan = os.path.join(jobs, str(uuid.uuid4()))
        stranger = os.path.join(jobs, "not-a-job")
        for path in (orphan, stranger):
            os.makedirs(os.path.join(path, "work"))
        self.again()
        self.assertFalse(os.path.exists(orphan))
        self.assertTrue(os.path.exists(stranger))

    async def test_new_jobs_are_listed_after_the_restored_ones(self) -> None:
        old, _ = await self.run_sh(b"true")
        await self.manager.shutdown()
        manager = self.again()
        new: JobStatus = await self.start_sh(b"true", manager)
        self.assertEqual([status.id for status in manager.list()], [old.id, new.id])


class RestartNamespacedTests(NamespacedMixin, RestartTests):
    """The same, with every job in its cgroup and new namespaces."""
