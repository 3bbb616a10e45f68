"""Storage: the per-user output quota, the free-disk guard, a full disk.

The guard's arithmetic with a fake free-space figure; the output log
against a quota and a real full tmpfs; the manager with real jobs on a
small tmpfs state directory (root, to mount it).
"""

from __future__ import annotations

import os
import signal
import subprocess

from twisted.internet.task import Clock
from twisted.trial import unittest

from jobworker.errors import StorageExhausted
from jobworker.job.outputlog import LogReader, OutputLog, read_chunks
from jobworker.job.storage import StorageGuard, free_bytes
from jobworker.model import Stream
from tests.managerutil import ManagerTestCase, output_of

MIB = 1 << 20


def small_tmpfs(case: unittest.TestCase, size: int) -> str:
    """A tmpfs of `size` bytes, unmounted when `case` ends (root only)."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("mounting a small tmpfs needs root")
    path: str = os.path.abspath(case.mktemp())
    os.makedirs(path)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "tmpfs", path],
        check=True,
    )
    case.addCleanup(subprocess.run, ["umount", "-l", path], check=True)
    return path


class StorageGuardTests(unittest.TestCase):
    def setUp(self) -> None:
        self.free = 100 * MIB
        self.guard = StorageGuard("/", 10 * MIB, 50 * MIB, free=lambda: self.free)

    def test_room_is_the_quota_left_while_the_disk_has_more(self) -> None:
        self.guard.stored("alice", 4 * MIB)
        self.assertEqual(self.guard.room("alice"), (6 * MIB, "user-output-quota"))
        self.assertEqual(self.guard.room("bob"), (10 * MIB, "user-output-quota"))

    def test_room_is_the_disk_above_its_floor_when_that_is_less(self) -> None:
        self.free = 55 * MIB
        self.assertEqual(self.guard.room("alice"), (5 * MIB, "min-free-disk"))

    def test_start_past_the_quota_is_refused_naming_it(self) -> None:
        self.guard.account("alice").stored(10 * MIB)
        error = self.assertRaises(StorageExhausted, self.guard.admit, "alice")
        self.assertIn("user-output-quota 10M", str(error))
        self.assertIn("alice holds 10M", str(error))
        self.guard.admit("bob")

    def test_start_below_the_free_disk_floor_is_refused_naming_it(self) -> None:
        self.free = 50 * MIB
        error = self.assertRaises(StorageExhausted, self.guard.admit, "bob")
        self.assertIn("min-free-disk 50M", str(error))

    def test_no_quota_leaves_only_the_disk(self) -> None:
        guard = StorageGuard("/", None, 0, free=lambda: 7)
        guard.stored("alice", 1 << 40)
        self.assertEqual(guard.room("alice"), (7, "min-free-disk"))

    def test_bad_figures_are_refused(self) -> None:
        self.assertRaises(ValueError, StorageGuard, "/", -1)
        self.assertRaises(ValueError, StorageGuard, "/", 1, -1)

    def test_free_bytes_reads_the_filesystem_or_is_none(self) -> None:
        self.assertGreater(free_bytes("."), 0)
        self.assertEqual(free_bytes(os.path.abspath(self.mktemp())), 0)


class OutputLogStorageTests(unittest.TestCase):
    def make_log(
        self, directory: str, cap: int, guard: StorageGuard | None
    ) -> OutputLog:
        storage = None if guard is None else guard.account("alice")
        log = OutputLog(os.path.join(directory, "out.log"), cap, Clock(), storage)
        self.addCleanup(log.finish)
        return log

    def test_a_log_past_its_owners_quota_is_truncated_naming_it(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        guard = StorageGuard(directory, 10, 0)
        guard.stored("alice", 4)
        log = self.make_log(directory, 100, guard)
        log.append(Stream.STDOUT, b"12345678")
        log.append(Stream.STDOUT, b"more")
        self.assertEqual((log.data_bytes, log.truncated), (6, True))
        self.assertEqual(log.truncated_by, "user-output-quota")
        self.assertEqual(guard.used("alice"), 10)
        chunks = read_chunks(log.path, 0, log.size, MIB)
        self.assertEqual([c.data for c in chunks], [b"123456"])

    def test_the_own_cap_is_named_when_it_is_the_lower(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        log = self.make_log(directory, 3, StorageGuard(directory, 10, 0))
        log.append(Stream.STDERR, b"12345")
        self.assertEqual((log.data_bytes, log.truncated_by), (3, "output-cap"))

    def test_a_full_disk_truncates_the_log_at_a_whole_record(self) -> None:
        directory = small_tmpfs(self, 1 * MIB)
        log = self.make_log(directory, 1 << 30, None)
        changes: list[bool] = []
        log.before_wake = lambda: changes.append(log.truncated)
        for _ in range(40):
            log.append(Stream.STDOUT, b"x" * 50_000)
        self.assertTrue(log.truncated)
        self.assertEqual(log.truncated_by, os.strerror(28))  # ENOSPC
        self.assertEqual(changes[-1], True)
        self.assertLess(log.data_bytes, 1 * MIB)
        # The file ends where the log says: every record whole and readable.
        self.assertEqual(os.path.getsize(log.path), log.size)
        with LogReader(log.path) as reader:
            data = b"".join(c.data for c in reader.read(0, log.size, 1 << 30))
        self.assertEqual(data, b"x" * log.data_bytes)


class ManagerStorageTests(ManagerTestCase):
    """Real jobs against the quota, the disk guard and their own cap."""

    async def test_a_job_writing_past_its_cap_is_told_by_sigpipe(self) -> None:
        # Before: the server read and dropped `cat /dev/zero` for ever.
        manager = self.make_manager(output_cap=1000)
        status = await manager.start("alice", [b"cat", b"/dev/zero"])
        final = await manager.wait_ended(status.id)
        self.assertEqual(final.signal, signal.SIGPIPE)
        self.assertEqual((final.output_bytes, final.output_truncated), (1000, True))
        self.assertEqual(await output_of(manager, status.id), b"\0" * 1000)

    async def test_the_quota_truncates_a_job_then_refuses_its_owners_starts(
        self,
    ) -> None:
        os.makedirs(self.state_dir)
        guard = StorageGuard(self.state_dir, 3000, 0)
        manager = self.make_manager(storage=guard)
        status = await manager.start("alice", [b"cat", b"/dev/zero"])
        final = await manager.wait_ended(status.id)
        self.assertEqual((final.output_bytes, final.output_truncated), (3000, True))
        self.assertEqual(
            manager._job(status.id).output.truncated_by, "user-output-quota"
        )
        refused = manager.start("alice", [b"true"])
        error = await self.assertFailure(refused, StorageExhausted)
        self.assertIn("user-output-quota", str(error))
        self.assertEqual(manager.running.count("alice"), 0)
        other = await manager.start("bob", [b"echo", b"hi"])
        await manager.wait_ended(other.id)
        self.assertEqual(await output_of(manager, other.id), b"hi\n")

    async def test_the_disk_guard_truncates_jobs_and_refuses_starts(self) -> None:
        self.state_dir = small_tmpfs(self, 8 * MIB)
        guard = StorageGuard(self.state_dir, None, 4 * MIB)
        manager = self.make_manager(storage=guard)
        status = await manager.start("alice", [b"cat", b"/dev/zero"])
        final = await manager.wait_ended(status.id)
        self.assertTrue(final.output_truncated)
        self.assertEqual(manager._job(status.id).output.truncated_by, "min-free-disk")
        self.assertGreaterEqual(free_bytes(self.state_dir), 4 * MIB - 300 * 1024)
        error = await self.assertFailure(
            manager.start("bob", [b"true"]), StorageExhausted
        )
        self.assertIn("min-free-disk 4M", str(error))

    async def test_a_full_disk_truncates_a_job_and_the_server_goes_on(self) -> None:
        self.state_dir = small_tmpfs(self, 2 * MIB)
        manager = self.make_manager()  # no guard: the disk fills up
        status = await manager.start("alice", [b"cat", b"/dev/zero"])
        final = await manager.wait_ended(status.id)
        self.assertEqual(final.signal, signal.SIGPIPE)
        self.assertTrue(final.output_truncated)
        output = await output_of(manager, status.id)
        self.assertEqual(output, b"\0" * final.output_bytes)
        self.assertGreater(final.output_bytes, 0)
        self.assertEqual(manager._job(status.id).output.truncated_by, os.strerror(28))
        again = await manager.start("bob", [b"true"])
        self.assertEqual((await manager.wait_ended(again.id)).exit_code, 0)
