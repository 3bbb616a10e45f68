"""The cgroup drivers against this kernel's real cgroups (root only)."""

from __future__ import annotations

import os
import sys
import time

from twisted.trial import unittest

from jobworker.isolation.cgroups import V1JobCgroup, V2JobCgroup, detect
from jobworker.model import Limits
from tests.cgrouputil import job_dirs, listed, real_driver, spawn_in

LIMITS = Limits(
    cpu=0.25, memory_bytes=48 << 20, io_read_bps=1 << 20, io_write_bps=2 << 20, pids=20
)


def read(path: str) -> str:
    with open(path) as file:
        return file.read()


class RealCgroupTests(unittest.TestCase):
    def setUp(self) -> None:
        self.state_dir = os.path.abspath(self.mktemp())
        self.driver = real_driver(self, self.state_dir)

    def test_limits_are_written_to_the_kernel(self) -> None:
        cgroup = self.driver.create("limits", LIMITS, self.state_dir)
        self.addCleanup(cgroup.remove)
        if isinstance(cgroup, V1JobCgroup):
            self.assertEqual(read(cgroup.file("cpu", "cpu.cfs_quota_us")), "25000\n")
            self.assertEqual(
                read(cgroup.file("memory", "memory.limit_in_bytes")), f"{48 << 20}\n"
            )
            memsw = cgroup.file("memory", "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                self.assertEqual(read(memsw), f"{48 << 20}\n")
            throttle = read(cgroup.file("blkio", "blkio.throttle.write_bps_device"))
            self.assertRegex(throttle, rf"^\d+:\d+ {2 << 20}\n")
            self.assertEqual(read(cgroup.file("pids", "pids.max")), "20\n")
        else:
            assert isinstance(cgroup, V2JobCgroup)
            self.assertEqual(read(cgroup.file("cpu.max")), "25000 100000\n")
            self.assertEqual(read(cgroup.file("memory.max")), f"{48 << 20}\n")
            if os.path.exists(cgroup.file("memory.swap.max")):
                self.assertEqual(read(cgroup.file("memory.swap.max")), "0\n")
            self.assertEqual(read(cgroup.file("pids.max")), "20\n")
            io_max = read(cgroup.file("io.max"))
            if self.driver.io_devices(self.state_dir):  # type: ignore[attr-defined]
                self.assertIn(f"rbps={1 << 20} wbps={2 << 20}", io_max)

    async def test_kill_all_kills_every_process_and_remove_leaves_nothing(
        self,
    ) -> None:
        cgroup = self.driver.create("kill", LIMITS, self.state_dir)
        process = spawn_in(cgroup, ["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
        deadline = time.monotonic() + 10
        while len(listed(cgroup)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        pids = listed(cgroup)
        self.assertEqual(len(pids), 3)
        pidfds = [os.pidfd_open(pid) for pid in pids - {process.pid}]
        cgroup.kill_all()
        self.assertEqual(process.wait(timeout=10), -9)
        await cgroup.remove()
        for pidfd in pidfds:  # readable once the process has exited
            self.assertTrue(_exited(pidfd))
            os.close(pidfd)
        self.assertEqual(job_dirs(self.driver), [])

    async def test_allocating_past_the_memory_limit_is_an_oom_kill(self) -> None:
        cgroup = self.driver.create("oom", Limits(memory_bytes=32 << 20), "/")
        code = "b = bytearray(256 << 20)"
        process = spawn_in(cgroup, [sys.executable, "-I", "-S", "-c", code])
        self.assertEqual(process.wait(timeout=60), -9)
        self.assertTrue(cgroup.oom_killed())
        await cgroup.remove()

    async def test_a_job_within_its_memory_is_not_oom_killed(self) -> None:
        cgroup = self.driver.create("fits", Limits(memory_bytes=64 << 20), "/")
        process = spawn_in(cgroup, ["sh", "-c", "exit 3"])
        self.assertEqual(process.wait(timeout=10), 3)
        self.assertFalse(cgroup.oom_killed())
        await cgroup.remove()

    async def test_cpu_usage_counts_the_jobs_cpu_time(self) -> None:
        cgroup = self.driver.create("cpu", Limits(), "/")
        code = "import time\nend = time.process_time() + 0.2\n"
        code += "while time.process_time() < end: pass"
        process = spawn_in(cgroup, [sys.executable, "-I", "-S", "-c", code])
        self.assertEqual(process.wait(timeout=30), 0)
        self.assertGreaterEqual(cgroup.cpu_usage_ns(), 200_000_000)
        await cgroup.remove()

    def test_stale_cgroups_of_a_crashed_run_are_killed_and_removed(self) -> None:
        cgroup = self.driver.create("stale", LIMITS, self.state_dir)
        process = spawn_in(cgroup, ["sleep", "1000"])
        deadline = time.monotonic() + 10
        while not listed(cgroup) and time.monotonic() < deadline:
            time.sleep(0.01)
        restarted = detect(self.state_dir)
        self.assertEqual(restarted.cleanup_stale(), 1)
        self.assertEqual(process.wait(timeout=10), -9)
        self.assertEqual(job_dirs(self.driver), [])
        self.assertEqual(restarted.cleanup_stale(), 0)

    def test_stale_cleanup_leaves_other_state_dirs_alone(self) -> None:
        cgroup = self.driver.create("mine", Limits(), self.state_dir)
        self.addCleanup(cgroup.remove)
        other = real_driver(self, os.path.abspath(self.mktemp()))
        self.assertEqual(other.cleanup_stale(), 0)
        self.assertEqual({os.path.basename(d) for d in job_dirs(self.driver)}, {"mine"})


def _exited(pidfd: int) -> bool:
    import select  # noqa: PLC0415

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(5000))
