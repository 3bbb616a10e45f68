"""Tests for jobworker.job.job through JobManager, on a fake process reactor.

Like Twisted's test_procmon: `spawnProcess` is faked on a
`MemoryReactorClock` (tests.jobfakes), so "TERM, wait, KILL", the drain
timeout and the clean-up order are checked without any real time or process.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from jobworker.defaults import EXEC_TIMEOUT
from jobworker.errors import ExecutableNotFound, IsolationFailed, StartFailed
from jobworker.isolation.interfaces import CgroupBusy
from jobworker.job.job import DRAIN_TIMEOUT, KILL_BACKSTOP
from jobworker.job.process.launcher import HELPER, HELPER_ENV, JOB_ENV
from jobworker.model import JobState, JobStatus
from tests.jobfakes import FakeManagerTestCase


class JobLifecycleTests(FakeManagerTestCase):
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
        # The job's environment is marshalled for the helper, not its own.
        self.assertEqual(set(kw["env"]), {*HELPER_ENV, JOB_ENV})
        job_env = marshal.loads(bytes.fromhex(kw["env"][JOB_ENV]))
        self.assertEqual(sorted(job_env), ["HOME", "LANG", "PATH"])

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

    def test_a_busy_cgroup_keeps_the_job_stopping_until_it_is_empty(self) -> None:
        job = self.started_job()
        stopped = self.manager.stop(job.id, grace=0)
        cgroup = self.driver.cgroups[0]
        self.exit_process(ProcessTerminated(signal=signal.SIGKILL))
        for _ in range(3):  # a process in D state outlives each removal try
            busy, cgroup.removing = cgroup.removing, Deferred()
            busy.errback(CgroupBusy("cgroup /fake still busy after 10.0s"))
            self.assertNoResult(stopped)
            self.assertEqual(self.manager.status(job.id).state, JobState.STOPPING)
        cgroup.removing.callback(None)
        self.assertEqual(self.successResultOf(stopped).state, JobState.KILLED)
        self.flushLoggedErrors()

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
