"""Shared set-up of the JobManager tests: real processes, optional namespaces."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.trial import unittest

from jobworker.isolation.cgroups import detect
from jobworker.isolation.interfaces import IsolationConfig
from jobworker.job.manager import JobManager
from jobworker.model import JobStatus, Stream
from tests.procutil import processes_with
from tests.sandboxutil import default_sandbox

reactor: Any = _reactor


async def output_of(manager: JobManager, job_id: str, offset: int = 0) -> bytes:
    """Follow a job's output to its end; stdout and stderr, tagged."""
    data = b""
    while chunks := await manager.read(job_id, offset):
        for chunk in chunks:
            data += (b"" if chunk.stream == Stream.STDOUT else b"E:") + chunk.data
        offset = chunks[-1].next_offset
    return data


async def until_output(manager: JobManager, job_id: str, text: bytes) -> None:
    """Wait until the job's stdout contains `text`."""
    offset, seen = 0, b""
    while text not in seen:
        chunks = await manager.read(job_id, offset)
        if not chunks:
            raise AssertionError(f"output ended without {text!r}: {seen!r}")
        seen += b"".join(c.data for c in chunks)
        offset = chunks[-1].next_offset


async def stop_every_job(manager: JobManager) -> None:
    """Stop (grace 0) every job the manager has not seen end, unless it has
    shut down (under live restore its jobs are then the next manager's)."""
    if manager.shutting_down:
        return
    for status in manager.list():
        if not status.state.ended:
            await manager.stop(status.id, grace=0)


class ManagerTestCase(unittest.TestCase):
    """A JobManager in a temporary state dir, without isolation."""

    live_restore = False
    """Whether the managers made keep their jobs live (`--live-restore`)."""

    def isolation(self) -> IsolationConfig | None:
        return None

    def setUp(self) -> None:
        self.state_dir = os.path.abspath(self.mktemp())
        self.manager = self.make_manager()

    def make_manager(self, **options: Any) -> JobManager:
        options.setdefault("live_restore", self.live_restore)
        manager = JobManager(
            self.state_dir, isolation=self.isolation(), reactor=reactor, **options
        )
        self.addCleanup(manager.shutdown)
        if manager.live_restore:  # shutdown leaves them: stopped before it
            self.addCleanup(stop_every_job, manager)
        return manager

    def start_sh(self, script: bytes, manager: JobManager | None = None) -> Any:
        return (manager or self.manager).start("alice", [b"sh", b"-c", script])

    async def run_sh(self, script: bytes) -> tuple[JobStatus, bytes]:
        status = await self.start_sh(script)
        output = await output_of(self.manager, status.id)
        return self.manager.status(status.id), output

    def assert_no_trace_of_failed_start(self, tag: str) -> None:
        self.assertEqual(self.manager.list(), [])
        jobs = os.path.join(self.state_dir, "jobs")
        self.assertEqual(os.listdir(jobs) if os.path.exists(jobs) else [], [])
        self.assertEqual(processes_with(tag), [])


class NamespacedMixin:
    """Runs a `ManagerTestCase`'s tests with real cgroups and namespaces."""

    state_dir: str

    def isolation(self) -> IsolationConfig | None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("namespaces and cgroups need root")
        driver = detect(self.state_dir, reactor=reactor)
        # The driver has no call to remove its parent cgroups; they are empty
        # once the manager has shut down (cleanups run last-added first).
        parents = [*getattr(driver, "parents", {}).values()]
        parents += [getattr(driver, "parent", None)] if driver.version == 2 else []
        for parent in parents:
            self.addCleanup(_remove_dir, parent)  # type: ignore[attr-defined]
        # One fixed job user, as ManagerTests expect ("nobody" when root);
        # the uid per job is tested in tests.test_sandbox.
        sandbox = default_sandbox(uid_per_job=False)
        return IsolationConfig(driver, namespaces=True, sandbox=sandbox)


def _remove_dir(path: str) -> None:
    if os.path.isdir(path):
        os.rmdir(path)
