"""JobManager with real processes: starting, ending and stopping jobs.

`ManagerTests` runs jobs without isolation; `NamespacedManagerTests` runs
the same tests again (as root) with real cgroups and new PID, mount and
network namespaces. Output and bad input: tests/test_manager_io.py.
"""

from __future__ import annotations

import os
import signal
import uuid

from twisted.internet.defer import CancelledError
from twisted.trial import unittest

from jobworker.errors import (
    BadUser,
    BadWorkingDirectory,
    ExecutableNotFound,
    NotExecutable,
    ShuttingDown,
)
from jobworker.model import JobState
from tests.managerutil import ManagerTestCase, NamespacedMixin, until_output
from tests.procutil import marker, processes_with, sleepers


class ManagerTests(ManagerTestCase):
    """Job lifecycle without isolation."""

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

    async def test_work_dir_is_removed_and_output_and_record_kept(self) -> None:
        status, _ = await self.run_sh(b"echo data > file; pwd")
        job_dir = os.path.dirname(self.manager.output_path(status.id))
        self.assertEqual(sorted(os.listdir(job_dir)), ["job.json", "output.log"])

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


class NamespacedManagerTests(NamespacedMixin, ManagerTests):
    """The same, with every job in its cgroup and new namespaces."""

    async def test_job_sees_only_its_own_processes(self) -> None:
        _, output = await self.run_sh(b"ps -e -o pid= | wc -l")
        self.assertEqual(output.strip(), b"4")  # init, sh, ps, wc

    async def test_job_has_only_loopback(self) -> None:
        _, output = await self.run_sh(
            b"ls /sys/class/net 2>/dev/null; ip -o link | wc -l"
        )
        self.assertTrue(output.endswith(b"1\n"), output)
