"""Live restore with real processes: jobs outlive their manager, the next adopts them.

Every manager test and output test runs again with `live_restore` (the
helper writes the log, the exit file and serves the control socket), and
the restart cases: a manager shut down leaves its jobs running, a new one
on the same state directory re-adopts them with every byte of their
output, also what was written while no manager ran; a job that ended
meanwhile comes back with its exit status; a pid file that does not name
the job's helper is never trusted. The real server, SIGKILLed and
SIGTERMed, is in tests.test_live_restore_server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from dataclasses import replace
from typing import Any

from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import ProcessProtocol

from jobworker.errors import ShuttingDown
from jobworker.job.live import LiveFiles
from jobworker.job.manager import JobManager
from jobworker.job.process.keeper import start_time
from jobworker.model import JobState, Limits
from tests import test_manager, test_manager_io
from tests.managerutil import (
    ManagerTestCase,
    NamespacedMixin,
    output_of,
    reactor,
    stop_every_job,
    until_output,
)
from tests.procutil import marker, processes_with
from tests.test_events import RecordedEvents


async def until(predicate: Any) -> None:
    """Wait (polling: there is no event for it) until `predicate()` is true."""
    while not predicate():
        await task.deferLater(reactor, 0.02, lambda: None)


def lines(first: int, last: int) -> bytes:
    """What `seq first last` prints."""
    return b"".join(b"%d\n" % n for n in range(first, last + 1))


class LiveManagerTests(test_manager.ManagerTests):
    """The manager's behaviour, unchanged under live restore but for shutdown."""

    live_restore = True

    async def test_shutdown_stops_every_job_and_refuses_new_ones(self) -> None:
        """Under live restore: shutdown refuses new jobs but stops none."""
        tag = marker()
        job = await self.manager.start("alice", [b"sleep", tag.encode()])
        await self.manager.shutdown()
        self.assertEqual(self.manager.status(job.id).state, JobState.RUNNING)
        self.assertNotEqual(processes_with(tag), [])
        await self.assertFailure(self.manager.start("alice", [b"true"]), ShuttingDown)
        final = await self.make_manager().stop(job.id, grace=0)
        self.assertEqual(final.signal, signal.SIGTERM)
        self.assertEqual(processes_with(tag), [])

    async def test_cancelled_start_leaves_no_unmanaged_process(self) -> None:
        """Under live restore a cancelled start's job is left to the next manager."""
        tag = marker()
        started = self.manager.start("alice", [b"sleep", tag.encode()])
        started.cancel()
        self.failureResultOf(started, CancelledError)
        await self.manager.shutdown()
        (left,) = self.manager.list()
        adopted = self.make_manager()
        self.assertEqual(adopted.status(left.id).state, JobState.RUNNING)
        await stop_every_job(adopted)
        self.assertEqual(processes_with(tag), [])


class LiveNamespacedManagerTests(NamespacedMixin, LiveManagerTests):
    pass


class LiveManagerOutputTests(test_manager_io.ManagerOutputTests):
    live_restore = True


class LiveNamespacedManagerOutputTests(NamespacedMixin, LiveManagerOutputTests):
    pass


class LiveRestoreTests(ManagerTestCase):
    """A manager shut down under live restore, and the next one."""

    live_restore = True

    async def test_next_manager_adopts_a_job_with_all_its_output(self) -> None:
        tag = marker()
        # 1000 lines, then (on EOF: the first manager is gone) 20000 more.
        script = f"seq 1 1000; cat >/dev/null; seq 1001 21000; exec sleep {tag}"
        first = self.manager
        job = await first.start("alice", [b"sh", b"-c", script.encode()], stdin=True)
        before = b""
        offset = 0
        while b"\n1000\n" not in before:
            chunks = await first.read(job.id, offset)
            before += b"".join(chunk.data for chunk in chunks)
            offset = chunks[-1].next_offset
        await first.shutdown()
        helper = LiveFiles.of(os.path.dirname(first.output_path(job.id)))
        self.assertTrue(os.path.exists(helper.pid_file))

        second = self.make_manager()
        self.assertEqual(second.status(job.id).state, JobState.RUNNING)
        await until_output(second, job.id, b"\n21000\n")
        final = await second.stop(job.id, grace=5)
        after = await output_of(second, job.id, offset)
        self.assertEqual(
            hashlib.sha256(before + after).hexdigest(),
            hashlib.sha256(lines(1, 21000)).hexdigest(),
        )
        self.assertEqual(await output_of(second, job.id), lines(1, 21000))
        self.assertEqual(
            (final.state, final.signal, final.stop_requested),
            (JobState.KILLED, signal.SIGTERM, True),
        )
        self.assertEqual(final.output_bytes, len(lines(1, 21000)))
        self.assertEqual(processes_with(tag), [])
        self.assertFalse(os.path.exists(helper.directory))
        self.assertEqual(second.journal.load().entries[0].status, final)

    async def test_a_job_that_ended_while_no_manager_ran_has_its_status(self) -> None:
        script = b"cat >/dev/null; echo bye; exit 7"
        job = await self.manager.start("alice", [b"sh", b"-c", script], stdin=True)
        await self.manager.shutdown()
        helper = LiveFiles.of(os.path.dirname(self.manager.output_path(job.id)))
        await until(lambda: os.path.exists(helper.exit_file))
        await until(lambda: not _alive(helper))

        second = self.make_manager()
        final = second.status(job.id)
        self.assertEqual((final.state, final.exit_code), (JobState.EXITED, 7))
        self.assertEqual(await output_of(second, job.id), b"bye\n")
        self.assertFalse(os.path.exists(helper.directory))
        self.assertEqual(second.journal.load().entries[0].status, final)

    async def test_a_dead_helper_without_exit_file_is_lost(self) -> None:
        tag = marker()
        job = await self.start_sh(f"echo hi; exec sleep {tag}".encode())
        await until_output(self.manager, job.id, b"hi")
        await self.manager.shutdown()
        helper = LiveFiles.of(os.path.dirname(self.manager.output_path(job.id)))
        pid = _helper_pid(helper)
        os.kill(pid, signal.SIGKILL)
        await until(lambda: not _alive(helper))
        for leftover in processes_with(tag):
            os.kill(leftover, signal.SIGKILL)

        final = self.make_manager().status(job.id)
        self.assertEqual(final.state, JobState.LOST)
        self.assertEqual(final.output_bytes, 3)

    async def test_a_pid_file_of_another_process_is_not_trusted(self) -> None:
        tag = marker()
        job = await self.start_sh(f"exec sleep {tag}".encode())
        await self.manager.shutdown()
        helper = LiveFiles.of(os.path.dirname(self.manager.output_path(job.id)))
        real = _helper_pid(helper)
        self.addCleanup(_kill_all, [real, *processes_with(tag)])
        # Another live process, with its true start time: only the socket's
        # peer (and, isolated, the job's cgroup) can tell it is not the helper.
        sleeper = _Ends()
        other = reactor.spawnProcess(sleeper, "/bin/sleep", ["sleep", marker()], env={})
        self.addCleanup(lambda: sleeper.ended)
        self.addCleanup(_kill_all, [other.pid])
        with open(helper.pid_file, "w") as pid_file:
            pid_file.write(f"{other.pid} {start_time(other.pid)}\n")

        second = self.make_manager()
        final = await second.wait_ended(job.id)
        self.assertEqual(final.state, JobState.LOST)
        self.assertEqual(start_time(other.pid), start_time(other.pid))  # alive

    async def test_a_stale_pid_file_is_not_trusted(self) -> None:
        tag = marker()
        job = await self.start_sh(f"exec sleep {tag}".encode())
        await self.manager.shutdown()
        helper = LiveFiles.of(os.path.dirname(self.manager.output_path(job.id)))
        with open(helper.pid_file) as pid_file:
            pid, started = pid_file.read().split()
        self.addCleanup(_kill_all, [int(pid), *processes_with(tag)])
        with open(helper.pid_file, "w") as pid_file:
            pid_file.write(f"{pid} {int(started) + 1}\n")  # a reused pid

        final = self.make_manager().status(job.id)
        self.assertEqual(final.state, JobState.LOST)

    async def test_an_adopted_job_counts_and_answers_its_start_retry(self) -> None:
        tag = marker()
        command = [b"sleep", tag.encode()]
        job = await self.manager.start("alice", command, request_id="r-1")
        await self.manager.shutdown()

        second = self.make_manager()
        self.assertEqual(second.running.count("alice"), 1)
        retried = await second.start("alice", command, request_id="r-1")
        self.assertEqual((retried.id, retried.state), (job.id, JobState.RUNNING))
        await second.stop(job.id, grace=0)
        self.assertEqual(second.running.count("alice"), 0)

    async def test_an_adopted_job_is_told_readopted_not_started_again(self) -> None:
        tag = marker()
        job = await self.manager.start("alice", [b"sleep", tag.encode()])
        await self.manager.shutdown()

        events = RecordedEvents()
        second = self.make_manager(events=events)
        await second.stop(job.id, grace=0)
        told = [each[:2] for each in events.told if each[0] != "stop requested"]
        self.assertEqual(told, [("readopted", job.id), ("ended", job.id)])

    async def test_stop_of_an_adopted_job_escalates_to_kill(self) -> None:
        tag = marker()
        script = f"trap '' TERM; echo ready; while :; do sleep {tag}; done"
        job = await self.start_sh(script.encode())
        await until_output(self.manager, job.id, b"ready")
        await self.manager.shutdown()

        second = self.make_manager()
        final = await second.stop(job.id, grace=0.5)
        self.assertEqual(
            (final.state, final.signal, final.stop_requested),
            (JobState.KILLED, signal.SIGKILL, True),
        )
        self.assertEqual(processes_with(tag), [])

    async def test_a_stopping_job_goes_on_stopping_when_adopted(self) -> None:
        tag = marker()
        # `wait` returns at once on the trapped TERM, even one that came while
        # the shell forked (a foreground sleep would be waited for).
        script = f"trap 'exit 4' TERM; echo ready; while :; do sleep {tag} & wait; done"
        job = await self.start_sh(script.encode())
        await until_output(self.manager, job.id, b"ready")
        stopping = replace(self.manager.status(job.id), stop_requested=True)
        self.manager.journal.save(stopping, 0)
        await self.manager.shutdown()
        final = await self.make_manager().wait_ended(job.id)
        self.assertEqual((final.exit_code, final.stop_requested), (4, True))

    async def test_a_manager_without_live_restore_ends_left_jobs_as_lost(
        self,
    ) -> None:
        tag = marker()
        job = await self.start_sh(f"exec sleep {tag}".encode())
        await self.manager.shutdown()
        helper = LiveFiles.of(os.path.dirname(self.manager.output_path(job.id)))
        pid = _helper_pid(helper)
        self.addCleanup(_kill_all, [pid, *processes_with(tag)])
        isolation = self.isolation()
        if isolation is not None:  # as the server does before its manager starts
            isolation.cgroups.cleanup_stale()
        plain = JobManager(self.state_dir, isolation=isolation, reactor=reactor)
        self.addCleanup(plain.shutdown)
        self.assertEqual(plain.status(job.id).state, JobState.LOST)


class LiveRestoreNamespacedTests(NamespacedMixin, LiveRestoreTests):
    async def test_an_oom_kill_while_no_manager_ran_is_known(self) -> None:
        # On EOF (the manager is gone) it fills 512 MiB at once: past 64 MiB.
        # (A shell reading 512 MiB into a variable took minutes in the guest.)
        script = b"cat >/dev/null; exec python3 -c 'b = bytearray(512 << 20)'"
        limits = Limits(memory_bytes=64 << 20)
        job = await self.manager.start(
            "alice", [b"sh", b"-c", script], limits, stdin=True
        )
        await self.manager.shutdown()
        helper = LiveFiles.of(os.path.dirname(self.manager.output_path(job.id)))
        await until(lambda: os.path.exists(helper.exit_file))
        await until(lambda: not _alive(helper))

        final = self.make_manager().status(job.id)
        self.assertEqual(
            (final.state, final.signal, final.oom_killed),
            (JobState.KILLED, signal.SIGKILL, True),
        )


class _Ends(ProcessProtocol):
    """`ended` fires when the process is gone."""

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


def _helper_pid(helper: LiveFiles) -> int:
    with open(helper.pid_file) as pid_file:
        return int(pid_file.read().split()[0])


def _alive(helper: LiveFiles) -> bool:
    try:
        pid = _helper_pid(helper)
    except (OSError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
