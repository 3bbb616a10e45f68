"""Tests for jobworker.manager.JobManager with real processes.

`ManagerTests` runs jobs without isolation; `NamespacedManagerTests` runs
the same tests again (as root) with new PID, mount and network namespaces.
"""

from __future__ import annotations

import importlib
import os
import signal
import uuid
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.trial import unittest

from jobworker.errors import (
    BadUser,
    BadWorkingDirectory,
    ExecutableNotFound,
    InvalidRequest,
    JobNotFound,
    NotExecutable,
    ShuttingDown,
)
from jobworker.isolation import CgroupDriver, IsolationConfig, JobCgroup
from jobworker.manager import JobManager
from jobworker.model import JobState, JobStatus, Limits, Stream
from tests.procutil import marker, processes_with, sleepers

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


class ManagerTests(unittest.TestCase):
    """The job library without isolation."""

    def isolation(self) -> IsolationConfig | None:
        return None

    def setUp(self) -> None:
        self.state_dir = os.path.abspath(self.mktemp())
        self.manager = self.make_manager()

    def make_manager(self, **options: Any) -> JobManager:
        manager = JobManager(
            self.state_dir, isolation=self.isolation(), reactor=reactor, **options
        )
        self.addCleanup(manager.shutdown)
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

    async def test_start_fires_with_a_running_status(self) -> None:
        tag = marker()
        status = await self.manager.start("alice", [b"sleep", tag.encode()])
        self.assertEqual(status.state, JobState.RUNNING)
        self.assertEqual(
            (status.owner, status.command), ("alice", (b"sleep", tag.encode()))
        )
        self.assertEqual(uuid.UUID(status.id).version, 4)
        self.assertEqual(len(sleepers(tag)), 1)
        self.assertEqual(self.manager.list(), [self.manager.status(status.id)])

    async def test_exit_code_is_recorded(self) -> None:
        status, output = await self.run_sh(b"echo hello; exit 3")
        self.assertEqual(
            (status.state, status.exit_code, status.signal), (JobState.EXITED, 3, None)
        )
        self.assertEqual(output, b"hello\n")
        self.assertIsNotNone(status.ended_at)
        self.assertFalse(status.stop_requested)

    async def test_signal_death_is_reported_as_the_signal(self) -> None:
        status, _ = await self.run_sh(b"kill -KILL $$")
        self.assertEqual(
            (status.state, status.exit_code, status.signal),
            (JobState.KILLED, None, signal.SIGKILL),
        )

    async def test_job_runs_as_nobody_when_the_server_is_root(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root")
        _, output = await self.run_sh(b"id -un")
        self.assertEqual(output, b"nobody\n")

    async def test_work_dir_is_removed_and_output_kept(self) -> None:
        status, _ = await self.run_sh(b"echo data > file; pwd")
        job_dir = os.path.dirname(self.manager.output_path(status.id))
        self.assertEqual(os.listdir(job_dir), ["output.log"])

    async def test_missing_program_fails_and_leaves_nothing(self) -> None:
        tag = marker()
        started = self.manager.start("alice", [b"no-such-program-jw", tag.encode()])
        await self.assertFailure(started, ExecutableNotFound)
        self.assert_no_trace_of_failed_start(tag)

    async def test_non_executable_program_fails_and_leaves_nothing(self) -> None:
        tag = marker()
        await self.assertFailure(
            self.manager.start("alice", [b"/etc/passwd", tag.encode()]), NotExecutable
        )
        self.assert_no_trace_of_failed_start(tag)

    async def test_unusable_state_dir_is_a_bad_working_directory(self) -> None:
        with open(self.state_dir, "w"):
            pass
        tag = marker()
        await self.assertFailure(
            self.manager.start("alice", [b"sleep", tag.encode()]), BadWorkingDirectory
        )
        self.assertEqual(self.manager.list(), [])
        self.assertEqual(processes_with(tag), [])

    async def test_unknown_job_user_fails_and_leaves_nothing(self) -> None:
        manager = self.make_manager(job_user="no-such-user-jw")
        tag = marker()
        await self.assertFailure(
            manager.start("alice", [b"sleep", tag.encode()]), BadUser
        )
        self.assert_no_trace_of_failed_start(tag)

    async def test_stop_sends_term(self) -> None:
        status = await self.manager.start("alice", [b"sleep", marker().encode()])
        final = await self.manager.stop(status.id, grace=30)
        self.assertEqual((final.state, final.signal), (JobState.KILLED, signal.SIGTERM))
        self.assertTrue(final.stop_requested)

    async def test_job_that_traps_term_is_killed_after_the_grace(self) -> None:
        tag = marker().encode()
        status = await self.start_sh(
            b"trap '' TERM; echo ready; sleep %s; sleep %s" % (tag, tag)
        )
        await until_output(self.manager, status.id, b"ready")
        stopping = self.manager.stop(status.id, grace=0.3)
        self.assertEqual(self.manager.status(status.id).state, JobState.STOPPING)
        final = await stopping
        self.assertEqual((final.state, final.signal), (JobState.KILLED, signal.SIGKILL))
        self.assertEqual(processes_with(tag.decode()), [])

    async def test_stop_kills_background_and_double_forked_children(self) -> None:
        tag = marker().encode()
        script = (
            b'sleep %s & setsid sh -c "sleep %s & sleep %s & wait" &'
            b' while [ $(pgrep -c -x -f "sleep %s") -lt 3 ]; do sleep 0.02; done;'
            b" echo ready; wait" % (tag, tag, tag, tag)
        )
        status = await self.start_sh(script)
        await until_output(self.manager, status.id, b"ready")
        self.assertEqual(len(sleepers(tag.decode())), 3)
        await self.manager.stop(status.id, grace=5)
        self.assertEqual(processes_with(tag.decode()), [])

    async def test_children_left_behind_die_when_the_job_exits(self) -> None:
        tag = marker().encode()
        status, _ = await self.run_sh(
            b'sleep %s & setsid sh -c "sleep %s &"; exit 0' % (tag, tag)
        )
        self.assertEqual((status.state, status.exit_code), (JobState.EXITED, 0))
        self.assertEqual(processes_with(tag.decode()), [])

    async def test_grandchild_holding_stdout_does_not_keep_the_job_running(
        self,
    ) -> None:
        tag = marker().encode()
        status, output = await self.run_sh(b"(sleep %s; echo late) & echo early" % tag)
        self.assertEqual((status.state, output), (JobState.EXITED, b"early\n"))

    async def test_concurrent_stops_share_one_final_status(self) -> None:
        tag = marker().encode()
        status = await self.start_sh(b"trap '' TERM; echo ready; sleep %s" % tag)
        await until_output(self.manager, status.id, b"ready")
        first = self.manager.stop(status.id, grace=0.2)
        second = self.manager.stop(status.id, grace=60)
        self.assertEqual(await first, await second)
        again = await self.manager.stop(status.id)
        self.assertEqual(again, self.manager.status(status.id))
        self.assertEqual(again.signal, signal.SIGKILL)

    async def test_followers_before_during_and_after_get_every_byte(self) -> None:
        go = os.path.abspath(self.mktemp())
        os.chmod(os.path.dirname(go), 0o755)
        script = (
            b"printf '\\000\\377a'; printf 'err' >&2;"
            b" while [ ! -e %s ]; do sleep 0.02; done; printf '\\001no newline'"
            % go.encode()
        )
        status = await self.start_sh(script)
        before = Deferred.fromCoroutine(output_of(self.manager, status.id))
        await self.manager.wait_output(status.id, 0)
        during = Deferred.fromCoroutine(output_of(self.manager, status.id))
        with open(go, "w"):
            pass
        expected = await before
        self.assertEqual(expected.replace(b"E:err", b""), b"\x00\xffa\x01no newline")
        self.assertEqual(await during, expected)
        self.assertEqual(await output_of(self.manager, status.id), expected)

    async def test_cancelled_follower_is_released(self) -> None:
        status = await self.manager.start("alice", [b"sleep", marker().encode()])
        waiter = self.manager.wait_output(status.id, 0)
        self.assertEqual(self.manager._job(status.id).output.waiter_count, 1)
        waiter.cancel()
        self.failureResultOf(waiter, CancelledError)
        self.assertEqual(self.manager._job(status.id).output.waiter_count, 0)

    async def test_output_past_the_cap_is_dropped_without_blocking_the_job(
        self,
    ) -> None:
        manager = self.make_manager(output_cap=10)
        status = await manager.start(
            "alice", [b"head", b"-c", b"1000000", b"/dev/zero"]
        )
        output = await output_of(manager, status.id)
        final = manager.status(status.id)
        self.assertEqual((output, final.exit_code), (b"\0" * 10, 0))
        self.assertEqual((final.output_bytes, final.output_truncated), (10, True))

    async def test_bad_commands_are_invalid_requests(self) -> None:
        bad: list[Any] = [[], [b""], [b"echo", b"a\0b"], ["echo"], b"echo"]
        for command in [*bad, [b"x" * (1 << 17)]]:
            started = self.manager.start("alice", command)
            await self.assertFailure(started, InvalidRequest)
        self.assertEqual(self.manager.list(), [])

    async def test_bad_limits_are_invalid_requests(self) -> None:
        for limits in (Limits(cpu=-1), Limits(memory_bytes=1 << 70), Limits(pids=0)):
            await self.assertFailure(
                self.manager.start("alice", [b"true"], limits), InvalidRequest
            )

    async def test_unknown_ids_are_not_found(self) -> None:
        unknown = str(uuid.uuid4())
        self.assertRaises(JobNotFound, self.manager.status, unknown)
        self.assertRaises(JobNotFound, self.manager.output_path, unknown)
        await self.assertFailure(self.manager.stop(unknown), JobNotFound)
        await self.assertFailure(self.manager.wait_output(unknown, 0), JobNotFound)
        await self.assertFailure(self.manager.read(unknown, 0), JobNotFound)

    async def test_bad_grace_offset_and_size_are_invalid_requests(self) -> None:
        status, _ = await self.run_sh(b"echo x")
        for grace in (-1.0, float("nan"), float("inf")):
            await self.assertFailure(
                self.manager.stop(status.id, grace), InvalidRequest
            )
        await self.assertFailure(
            self.manager.wait_output(status.id, -1), InvalidRequest
        )
        await self.assertFailure(
            self.manager.wait_output(status.id, 10**6), InvalidRequest
        )
        await self.assertFailure(
            self.manager.read(status.id, 0, max_bytes=0), InvalidRequest
        )
        self.assertRaises(InvalidRequest, JobManager, self.state_dir, stop_grace=-1)

    async def test_cancelled_start_leaves_no_unmanaged_process(self) -> None:
        tag = marker()
        started = self.manager.start("alice", [b"sleep", tag.encode()])
        started.cancel()
        self.failureResultOf(started, CancelledError)
        await self.manager.shutdown()
        self.assertEqual(len(self.manager.list()), 1)
        self.assertEqual(processes_with(tag), [])

    async def test_cancelled_stop_waiter_does_not_affect_the_stop(self) -> None:
        status = await self.manager.start("alice", [b"sleep", marker().encode()])
        cancelled = self.manager.stop(status.id, grace=30)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        final = await self.manager.stop(status.id)
        self.assertEqual(final.signal, signal.SIGTERM)

    async def test_shutdown_stops_every_job_and_refuses_new_ones(self) -> None:
        tag = marker().encode()
        jobs = [await self.manager.start("alice", [b"sleep", tag]) for _ in range(2)]
        await self.manager.shutdown()
        for job in jobs:
            self.assertEqual(self.manager.status(job.id).signal, signal.SIGTERM)
        self.assertEqual(processes_with(tag.decode()), [])
        await self.assertFailure(self.manager.start("alice", [b"true"]), ShuttingDown)
        await self.manager.shutdown()


def _remove_dir(path: str) -> None:
    if os.path.isdir(path):
        os.rmdir(path)


class _NoCgroup:
    """TEST-ONLY stand-in used until jobworker.cgroups exists: no cgroup at all."""

    procs_files: tuple[str, ...] = ()

    def kill_all(self) -> None:
        pass

    def oom_killed(self) -> bool:
        return False

    def cpu_usage_ns(self) -> int:
        return 0

    def remove(self) -> Deferred[None]:
        return succeed(None)


class _NoCgroupDriver:
    """TEST-ONLY driver making `_NoCgroup`s; namespaces are what is tested."""

    version = 1

    def create(self, job_id: str, limits: Limits, workdir: str) -> JobCgroup:
        return _NoCgroup()

    def cleanup_stale(self) -> int:
        return 0


class NamespacedManagerTests(ManagerTests):
    """The same, with every job in new PID, mount and network namespaces."""

    def isolation(self) -> IsolationConfig | None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("namespaces need root")
        driver: CgroupDriver
        try:
            detect = importlib.import_module("jobworker.cgroups").detect
        except (ImportError, AttributeError):
            driver = _NoCgroupDriver()
        else:
            driver = detect(self.state_dir, reactor=reactor)
            # The driver has no call to remove its parent cgroups; after the
            # manager's shutdown (cleanups run last first) they are empty.
            parents = [*getattr(driver, "parents", {}).values()]
            parents += [getattr(driver, "parent", None)] if driver.version == 2 else []
            for parent in parents:
                self.addCleanup(_remove_dir, parent)
        return IsolationConfig(driver, namespaces=True)

    async def test_job_sees_only_its_own_processes(self) -> None:
        _, output = await self.run_sh(b"ps -e -o pid= | wc -l")
        self.assertEqual(output.strip(), b"4")  # init, sh, ps, wc

    async def test_job_has_only_loopback(self) -> None:
        _, output = await self.run_sh(
            b"ls /sys/class/net 2>/dev/null; ip -o link | wc -l"
        )
        self.assertTrue(output.endswith(b"1\n"), output)
