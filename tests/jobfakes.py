"""Fakes for the job library's unit tests: a process reactor and a cgroup driver.

Like Twisted's test_procmon, `FakeProcessReactor` records `spawnProcess`
calls on a `MemoryReactorClock` and runs thread-pool work at once, so a
`JobManager` on it is driven by `Clock.advance` and by hand-fed process
events, with no real time or process. `FakeManagerTestCase` builds one
with a fake cgroup driver and checks every status a test sees was published.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorProcess, IReactorThreads
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from zope.interface import implementer

from jobworker.isolation.interfaces import IsolationConfig, JobCgroup
from jobworker.job.events import JobEvents
from jobworker.job.manager import JobManager
from jobworker.model import JobStatus, Limits, Usage


class FakeTransport:
    def __init__(self) -> None:
        self.signals: list[int | str] = []
        self.closed: list[int] = []

    def signalProcess(self, sig: int | str) -> None:
        self.signals.append(sig)

    def closeChildFD(self, fd: int) -> None:
        self.closed.append(fd)


class SyncThreadPool(ThreadPool):
    """A thread pool (never started) that runs each call at once."""

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], object] | None,
        func: Callable[..., Any],
        *args: Any,
        **kw: Any,
    ) -> None:
        result = func(*args, **kw)
        if onResult is not None:
            onResult(True, result)


@implementer(IReactorProcess, IReactorThreads)
class FakeProcessReactor(MemoryReactorClock):
    """A clock that records spawned processes instead of starting them."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[ProcessProtocol, list[bytes], dict[str, Any]]] = []
        self.transport = FakeTransport()

    def spawnProcess(  # type: ignore[override]  # records the keywords as passed
        self, protocol: ProcessProtocol, executable: bytes, args: list[bytes], **kw: Any
    ) -> FakeTransport:
        self.spawned.append((protocol, args, kw))
        protocol.makeConnection(self.transport)
        return self.transport

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        callable(*args, **kwargs)

    def callInThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        callable(*args, **kwargs)

    def getThreadPool(self) -> SyncThreadPool:
        return SyncThreadPool()

    def suggestThreadPoolSize(self, size: int) -> None:
        pass


class FakeCgroup:
    def __init__(self) -> None:
        self.killed = 0
        self.removing: Deferred[None] = Deferred()
        self.removed = False
        self.oom = False
        self.used = Usage(cpu_seconds=0.0)

    @property
    def procs_files(self) -> tuple[str, ...]:
        return ("/sys/fs/cgroup/fake/cgroup.procs",)

    def kill_all(self) -> None:
        self.killed += 1

    def oom_killed(self) -> bool:
        return self.oom

    def cpu_usage_ns(self) -> int:
        return 0

    def usage(self) -> Usage:
        return self.used

    def remove(self) -> Deferred[None]:
        self.removed = True
        return self.removing


class FakeDriver:
    version = 2

    def __init__(self) -> None:
        self.cgroups: list[FakeCgroup] = []
        self.broken = False

    def create(
        self, job_id: str, limits: Limits, workdir: str, *, owner: str
    ) -> JobCgroup:
        if self.broken:
            raise PermissionError(13, "Permission denied")
        self.cgroups.append(FakeCgroup())
        return self.cgroups[-1]

    def find(self, job_id: str, *, owner: str) -> JobCgroup | None:
        return None

    def cleanup_stale(self, keep: Collection[str] = ()) -> int:
        return 0


class PublishCheckingManager(JobManager):
    """A JobManager whose `status` also checks the published status.

    Every status a test looks at is compared with the board's, so each
    step of every lifecycle test checks that the job published its change.
    """

    def status(self, job_id: str) -> JobStatus:
        status = super().status(job_id)
        published = self.board.get(job_id)
        if published != status:
            raise AssertionError(f"published {published} but the job is {status}")
        return status


class FakeManagerTestCase(unittest.TestCase):
    """A JobManager on a fake process reactor with a fake cgroup driver."""

    events: JobEvents | None = None

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.driver = FakeDriver()
        self.addCleanup(self.assert_every_status_published)
        self.manager = PublishCheckingManager(
            os.path.abspath(self.mktemp()),
            isolation=IsolationConfig(self.driver, namespaces=True),
            events=self.events,
            reactor=self.reactor,
        )

    @property
    def protocol(self) -> ProcessProtocol:
        """The protocol of the helper spawned last."""
        return self.reactor.spawned[-1][0]

    def assert_every_status_published(self) -> None:
        for status in self.manager.list():
            self.assertEqual(self.manager.board.get(status.id), status)
        self.assertEqual(self.manager.board.all(), self.manager.list())
