"""JobManager with real processes: following output, and bad input.

`ManagerOutputTests` runs without isolation, `NamespacedManagerOutputTests`
again (as root) with real cgroups and namespaces.
"""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

from twisted.internet.defer import CancelledError, Deferred

from jobworker.errors import InvalidRequest, JobNotFound
from jobworker.job.manager import JobManager
from jobworker.model import Limits
from tests.managerutil import ManagerTestCase, NamespacedMixin, output_of
from tests.procutil import marker


class ManagerOutputTests(ManagerTestCase):
    """Output and bad input without isolation."""

    async def test_followers_before_during_and_after_get_every_byte(self) -> None:
        # In the work dir: a sandboxed job sees no other host path.
        script = (
            b"printf '\\000\\377a'; printf 'err' >&2;"
            b" while [ ! -e go ]; do sleep 0.02; done; printf '\\001no newline'"
        )
        status = await self.start_sh(script)
        go = os.path.join(self.manager._job(status.id).dirs.work_dir, "go")
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

    async def test_cancelled_read_is_released(self) -> None:
        status = await self.manager.start("alice", [b"sleep", marker().encode()])
        output = self.manager._job(status.id).output
        readers = [self.manager.read(status.id, 0) for _ in range(100)]
        self.assertEqual(output.waiter_count, 100)
        for reader in readers:
            reader.cancel()
            self.failureResultOf(reader, CancelledError)
        self.assertEqual(output.waiter_count, 0)

    async def test_output_past_the_cap_is_dropped_and_the_writer_told_by_sigpipe(
        self,
    ) -> None:
        # Far more than one read takes: the writer meets the closed pipe.
        manager = self.make_manager(output_cap=10)
        status = await manager.start(
            "alice", [b"head", b"-c", b"100000000", b"/dev/zero"]
        )
        output = await output_of(manager, status.id)
        final = manager.status(status.id)
        self.assertEqual((output, final.signal), (b"\0" * 10, signal.SIGPIPE))
        self.assertEqual((final.output_bytes, final.output_truncated), (10, True))

    async def test_output_of_exactly_the_cap_is_whole(self) -> None:
        # Reaching the cap drops nothing: only output past it is truncated.
        manager = self.make_manager(output_cap=1 << 20)
        for size in (1 << 20, (1 << 20) - 1):
            # It stays a while once at the cap: time for a cap to be applied.
            script = f"head -c {size} /dev/zero; sleep 0.5"
            command = [b"sh", b"-c", script.encode()]
            status = await manager.start("alice", command)
            output = await output_of(manager, status.id)
            final = manager.status(status.id)
            self.assertEqual(len(output), size)
            self.assertEqual(
                (final.output_bytes, final.output_truncated, final.exit_code),
                (size, False, 0),
            )
            self.assertEqual(final.output_truncated_by, "")

    async def test_a_write_to_stderr_after_stdout_broke_at_the_cap_gets_sigpipe(
        self,
    ) -> None:
        # The stream past the cap is closed after the other one, so the shell
        # cannot write `done` to a stderr still open (it did, now and then).
        manager = self.make_manager(output_cap=10)
        for _ in range(5):
            status = await manager.start(
                "alice", [b"sh", b"-c", b"head -c 100000000 /dev/zero; echo done >&2"]
            )
            output = await output_of(manager, status.id)
            final = manager.status(status.id)
            self.assertEqual((output, final.signal), (b"\0" * 10, signal.SIGPIPE))

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


class NamespacedManagerOutputTests(NamespacedMixin, ManagerOutputTests):
    """The same, with every job in its cgroup and new namespaces."""
