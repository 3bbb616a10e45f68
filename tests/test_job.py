"""Tests for jobworker.job.job through JobManager, on a fake process reactor.

Like Twisted's test_procmon: `spawnProcess` is faked on a
`MemoryReactorClock`, so "TERM, wait, KILL", the drain timeout and the
clean-up order are checked without any real time or process.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess, IReactorThreads
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from zope.interface import implementer

from jobworker.defaults import EXEC_TIMEOUT
from jobworker.errors import ExecutableNotFound, IsolationFailed, StartFailed
from jobworker.isolation.interfaces import IsolationConfig, JobCgroup
from jobworker.job.job import DRAIN_TIMEOUT, KILL_BACKSTOP
from jobworker.job.manager import JobManager
from jobworker.job.process.launcher import HELPER
from jobworker.model import JobState, JobStatus, Limits


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

    @property
    def procs_files(self) -> tuple[str, ...]:
        return ("/sys/fs/cgroup/fake/cgroup.procs",)

    def kill_all(self) -> None:
        self.killed += 1

    def oom_killed(self) -> bool:
        return self.oom

    def cpu_usage_ns(self) -> int:
        return 0

    def remove(self) -> Deferred[None]:
        self.removed = True
        return self.removing


class FakeDriver:
    version = 2

    def __init__(self) -> None:
        self.cgroups: list[FakeCgroup] = []
        self.broken = False

    def create(self, job_id: str, limits: Limits, workdir: str) -> JobCgroup:
        if self.broken:
            raise PermissionError(13, "Permission denied")
        self.cgroups.append(FakeCgroup())
        return self.cgroups[-1]

    def cleanup_stale(self) -> int:
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

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.driver = FakeDriver()
        self.addCleanup(self.assert_every_status_published)
        self.manager = PublishCheckingManager(
            os.path.abspath(self.mktemp()),
            isolation=IsolationConfig(self.driver, namespaces=True),
            reactor=self.reactor,
        )

    def assert_every_status_published(self) -> None:
        for status in self.manager.list():
            self.assertEqual(self.manager.board.get(status.id), status)
        self.assertEqual(self.manager.board.all(), self.manager.list())


class JobLifecycleTests(FakeManagerTestCase):
    @property
    def protocol(self) -> ProcessProtocol:
        return self.reactor.spawned[-1][0]

    def started_job(self) -> JobStatus:
        starting = self.manager.start("bob", [b"prog", b"arg"])
        self.assertNoResult(starting)
        self.protocol.childConnectionLost(3)
        return self.successResultOf(starting)

    def exit_process(self, reason: Exception) -> None:
        self.protocol.processExited(Failure(reason))
        self.protocol.childConnectionLost(1)
        self.protocol.childConnectionLost(2)

    def test_helper_is_spawned_without_uid_gid_or_path(self) -> None:
        self.started_job()
        _, args, kw = self.reactor.spawned[0]
        self.assertEqual(
            args[:4], [os.fsencode(sys.executable), b"-I", b"-S", os.fsencode(HELPER)]
        )
        self.assertEqual(args[5:], [b"--", b"prog", b"arg"])
        self.assertEqual(set(kw), {"env", "childFDs"})
        fds = kw["childFDs"]
        self.assertEqual((type(fds[0]), fds[1], fds[2], fds[3]), (int, "r", "r", "r"))
        self.assertEqual(sorted(kw["env"]), ["HOME", "LANG", "PATH"])

    def test_stop_sends_term_then_kill_after_the_grace(self) -> None:
        job = self.started_job()
        stopped = self.manager.stop(job.id, grace=10)
        self.assertEqual(self.reactor.transport.signals, [signal.SIGTERM])
        self.reactor.advance(9.9)
        self.assertEqual(self.reactor.transport.signals, [signal.SIGTERM])
        self.reactor.advance(0.1)
        self.assertEqual(
            self.reactor.transport.signals, [signal.SIGTERM, signal.SIGUSR2]
        )
        # The helper reaps the namespace first; the cgroup is not killed yet.
        self.assertEqual(self.driver.cgroups[0].killed, 0)
        self.exit_process(ProcessTerminated(signal=signal.SIGKILL))
        self.reactor.advance(KILL_BACKSTOP)
        self.assertEqual(self.driver.cgroups[0].killed, 0)
        self.assertNoResult(stopped)  # the cgroup is still being removed
        self.assertEqual(self.manager.status(job.id).state, JobState.STOPPING)
        self.driver.cgroups[0].removing.callback(None)
        final = self.successResultOf(stopped)
        self.assertEqual(
            (final.state, final.signal, final.stop_requested),
            (JobState.KILLED, signal.SIGKILL, True),
        )
        self.assertEqual(final.ended_at, self.reactor.seconds())

    def test_every_change_is_published_in_the_same_step(self) -> None:
        job = self.started_job()
        board = self.manager.board
        self.assertEqual(board.get(job.id), job)
        self.protocol.childDataReceived(1, b"out")
        self.protocol.childDataReceived(2, b"err!")
        self.assertEqual(board.get(job.id).output_bytes, 7)
        self.manager.stop(job.id, grace=10)
        self.assertEqual(
            (board.get(job.id).state, board.get(job.id).stop_requested),
            (JobState.STOPPING, True),
        )
        self.exit_process(ProcessTerminated(signal=signal.SIGTERM))
        self.driver.cgroups[0].removing.callback(None)
        final = board.get(job.id)
        self.assertEqual((final.state, final.signal), (JobState.KILLED, signal.SIGTERM))
        self.assertEqual(board.all(), [final])

    def test_followers_are_woken_only_after_the_status_is_published(self) -> None:
        # A follower's thread may run as soon as it is woken: a client that
        # has read output, or the end of it, must not then get an older
        # status (as the soak saw: a RUNNING status after the whole output).
        job = self.started_job()
        board = self.manager.board
        seen: list[tuple[JobState, int]] = []

        def woken(_: object) -> None:
            status = board.get(job.id)
            seen.append((status.state, status.output_bytes))

        self.manager.wait_output(job.id, 0).addCallback(woken)
        self.protocol.childDataReceived(1, b"abc")
        self.assertEqual(seen, [(JobState.RUNNING, 3)])
        size = self.manager.wait_output(job.id, 0)
        end = self.successResultOf(size).size
        self.manager.wait_output(job.id, end).addCallback(woken)
        self.exit_process(ProcessDone(0))
        self.driver.cgroups[0].removing.callback(None)
        self.assertEqual(seen[-1], (JobState.EXITED, 3))

    def test_cgroup_is_killed_when_the_helper_outlives_the_kill(self) -> None:
        job = self.started_job()
        self.manager.stop(job.id, grace=0)
        self.reactor.advance(0)
        self.assertEqual(self.reactor.transport.signals[-1], signal.SIGUSR2)
        self.reactor.advance(KILL_BACKSTOP)
        self.assertEqual(self.driver.cgroups[0].killed, 1)

    def test_exit_within_the_grace_sends_no_kill(self) -> None:
        job = self.started_job()
        stopped = self.manager.stop(job.id, grace=10)
        self.exit_process(ProcessTerminated(signal=signal.SIGTERM))
        self.driver.cgroups[0].removing.callback(None)
        self.reactor.advance(60)
        self.assertEqual(self.reactor.transport.signals, [signal.SIGTERM])
        self.assertEqual(self.successResultOf(stopped).signal, signal.SIGTERM)

    def test_oom_flag_comes_from_the_cgroup(self) -> None:
        job = self.started_job()
        self.driver.cgroups[0].oom = True
        self.driver.cgroups[0].removing.callback(None)
        self.exit_process(ProcessTerminated(signal=signal.SIGKILL))
        status = self.manager.status(job.id)
        self.assertEqual((status.state, status.oom_killed), (JobState.KILLED, True))

    def test_open_output_pipes_are_closed_after_the_drain_timeout(self) -> None:
        job = self.started_job()
        self.driver.cgroups[0].removing.callback(None)
        self.protocol.processExited(Failure(ProcessDone(0)))
        self.assertEqual(self.manager.status(job.id).state, JobState.RUNNING)
        self.reactor.advance(DRAIN_TIMEOUT)
        self.assertEqual(sorted(self.reactor.transport.closed), [1, 2])
        status = self.manager.status(job.id)
        self.assertEqual((status.state, status.exit_code), (JobState.EXITED, 0))

    def test_failed_start_removes_cgroup_and_directory(self) -> None:
        starting = self.manager.start("bob", [b"prog"])
        self.protocol.childDataReceived(3, b"enoent No such file or directory\n")
        self.protocol.childConnectionLost(3)
        self.assertNoResult(starting)  # the helper has not exited yet
        self.exit_process(ProcessTerminated(exitCode=127))
        self.assertNoResult(starting)  # the cgroup is not removed yet
        self.driver.cgroups[0].removing.callback(None)
        self.failureResultOf(starting, ExecutableNotFound)
        self.assertEqual(self.manager.list(), [])
        self.assertEqual(os.listdir(os.path.join(self.manager._state_dir, "jobs")), [])

    def test_exit_seen_before_the_status_pipe_closes_still_starts(self) -> None:
        starting = self.manager.start("bob", [b"prog"])
        self.driver.cgroups[0].removing.callback(None)
        self.exit_process(ProcessDone(0))
        self.protocol.childConnectionLost(3)
        status = self.successResultOf(starting)
        self.assertEqual(self.manager.status(status.id).state, JobState.EXITED)

    def test_cgroup_that_cannot_be_made_fails_the_start_cleanly(self) -> None:
        self.driver.broken = True
        self.failureResultOf(self.manager.start("bob", [b"prog"]), IsolationFailed)
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(os.listdir(os.path.join(self.manager._state_dir, "jobs")), [])


class StartTimeoutTests(FakeManagerTestCase):
    """A helper that never execs the command is killed and the start fails."""

    def test_start_that_hangs_is_killed_and_fails(self) -> None:
        starting = self.manager.start("bob", [b"prog"])
        protocol = self.reactor.spawned[-1][0]
        self.reactor.advance(EXEC_TIMEOUT - 0.1)
        self.assertEqual(self.reactor.transport.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.reactor.transport.signals, [signal.SIGKILL])
        self.assertEqual(self.driver.cgroups[0].killed, 1)
        protocol.processExited(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        for fd in (1, 2, 3):
            protocol.childConnectionLost(fd)
        self.driver.cgroups[0].removing.callback(None)
        failure = self.failureResultOf(starting, StartFailed)
        self.assertIn("not exec'd within 30 s", str(failure.value))
        self.assertEqual(self.manager.list(), [])

    def test_start_timer_is_cancelled_once_exec_is_confirmed(self) -> None:
        starting = self.manager.start("bob", [b"prog"])
        self.reactor.spawned[-1][0].childConnectionLost(3)
        self.successResultOf(starting)
        self.reactor.advance(EXEC_TIMEOUT * 2)
        self.assertEqual(self.reactor.transport.signals, [])
