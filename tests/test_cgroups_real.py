"""The cgroup drivers against this kernel's real cgroups (root only)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from twisted.trial import unittest

from jobworker.isolation.cgroups import V1JobCgroup, V2JobCgroup, detect
from jobworker.isolation.cgroups.base import read_keyed
from jobworker.isolation.interfaces import CgroupDriver, JobCgroup
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
        cgroup = self.driver.create("limits", LIMITS, self.state_dir, owner="bob")
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
        cgroup = self.driver.create("kill", LIMITS, self.state_dir, owner="bob")
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
        cgroup = self.driver.create(
            "oom", Limits(memory_bytes=32 << 20), "/", owner="bob"
        )
        code = "b = bytearray(256 << 20)"
        process = spawn_in(cgroup, [sys.executable, "-I", "-S", "-c", code])
        self.assertEqual(process.wait(timeout=60), -9)
        self.assertTrue(cgroup.oom_killed())
        await cgroup.remove()

    async def test_a_job_within_its_memory_is_not_oom_killed(self) -> None:
        cgroup = self.driver.create(
            "fits", Limits(memory_bytes=64 << 20), "/", owner="bob"
        )
        process = spawn_in(cgroup, ["sh", "-c", "exit 3"])
        self.assertEqual(process.wait(timeout=10), 3)
        self.assertFalse(cgroup.oom_killed())
        await cgroup.remove()

    async def test_cpu_usage_counts_the_jobs_cpu_time(self) -> None:
        cgroup = self.driver.create("cpu", Limits(), "/", owner="bob")
        code = "import time\nend = time.process_time() + 0.2\n"
        code += "while time.process_time() < end: pass"
        process = spawn_in(cgroup, [sys.executable, "-I", "-S", "-c", code])
        self.assertEqual(process.wait(timeout=30), 0)
        self.assertGreaterEqual(cgroup.cpu_usage_ns(), 200_000_000)
        await cgroup.remove()

    def test_stale_cgroups_of_a_crashed_run_are_killed_and_removed(self) -> None:
        cgroup = self.driver.create("stale", LIMITS, self.state_dir, owner="bob")
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
        cgroup = self.driver.create("mine", Limits(), self.state_dir, owner="bob")
        self.addCleanup(cgroup.remove)
        other = real_driver(self, os.path.abspath(self.mktemp()))
        self.assertEqual(other.cleanup_stale(), 0)
        self.assertEqual({os.path.basename(d) for d in job_dirs(self.driver)}, {"mine"})


class UserCgroupTests(unittest.TestCase):
    """A user's jobs together are held to the user's limits, by the kernel."""

    def setUp(self) -> None:
        self.state_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.state_dir)

    def job(
        self, driver: CgroupDriver, job_id: str, limits: Limits, owner: str = "bob"
    ) -> JobCgroup:
        """A job's cgroup, removed (everything in it killed) after the test."""
        cgroup = driver.create(job_id, limits, "/", owner=owner)
        self.addCleanup(cgroup.remove)
        return cgroup

    def spawn(self, cgroup: JobCgroup, argv: list[str]) -> subprocess.Popen[bytes]:
        process = spawn_in(cgroup, argv)
        self.addCleanup(process.wait, 10)
        self.addCleanup(cgroup.kill_all)  # first: then the wait is short
        return process

    def user_file(self, cgroup: JobCgroup, controller: str, name: str) -> str:
        if isinstance(cgroup, V1JobCgroup):
            return os.path.join(os.path.dirname(cgroup.dirs[controller]), name)
        assert isinstance(cgroup, V2JobCgroup)
        return os.path.join(os.path.dirname(cgroup.directory), name)

    def test_a_users_two_jobs_together_hit_the_users_memory_cap(self) -> None:
        driver = real_driver(self, self.state_dir, Limits(memory_bytes=96 << 20))
        limits = Limits(memory_bytes=128 << 20)  # each job alone fits its own
        jobs = [self.job(driver, f"mem-{n}", limits) for n in "ab"]
        code = "import time\nb = bytearray(b'x') * (64 << 20)\ntime.sleep(600)"
        argv = [sys.executable, "-I", "-S", "-c", code]
        first = self.spawn(jobs[0], argv)
        usage = _memory_usage_file(jobs[0])
        _until(lambda: int(read(usage)) >= 64 << 20, "a holds 64M")
        second = self.spawn(jobs[1], argv)
        _until(
            lambda: first.poll() is not None or second.poll() is not None,
            "one of them is OOM-killed",
        )
        self.assertIn(-9, (first.poll(), second.poll()))
        self.assertTrue(any(job.oom_killed() for job in jobs))
        if isinstance(jobs[0], V1JobCgroup):
            # The user's usage peaked at its cap; no job came near its own.
            peak = self.user_file(jobs[0], "memory", "memory.max_usage_in_bytes")
            self.assertEqual(int(read(peak)), 96 << 20)
            for job in jobs:
                assert isinstance(job, V1JobCgroup)
                own = int(read(job.file("memory", "memory.max_usage_in_bytes")))
                self.assertLess(own, 100 << 20)
        else:
            events = read_keyed(self.user_file(jobs[0], "memory", "memory.events"))
            self.assertGreater(events["max"], 0)
            for job in jobs:
                assert isinstance(job, V2JobCgroup)
                self.assertEqual(read_keyed(job.file("memory.events.local"))["max"], 0)

    def test_a_users_two_jobs_together_hit_the_users_pids_cap(self) -> None:
        driver = real_driver(self, self.state_dir, Limits(pids=6))
        jobs = [self.job(driver, f"pids-{n}", Limits(pids=100)) for n in "ab"]
        forked = os.path.join(self.state_dir, "forked")
        # Each job's shell forks three sleeps (four tasks), then says so
        # (echo is built in: no fork); a shell that cannot fork exits.
        forks = f"sleep 600 & sleep 600 & sleep 600 & echo > {forked}; wait"
        self.spawn(jobs[0], ["sh", "-c", forks])
        _until(lambda: os.path.exists(forked), "a has forked")
        self.assertEqual(len(listed(jobs[0])), 4)
        os.unlink(forked)
        second = self.spawn(jobs[1], ["sh", "-c", forks])
        self.assertNotEqual(second.wait(timeout=60), 0)  # its second fork failed
        self.assertFalse(os.path.exists(forked))
        self.assertEqual(len(listed(jobs[1])), 1)  # the one sleep it forked

    async def test_each_user_has_a_cgroup_of_its_own(self) -> None:
        driver = real_driver(self, self.state_dir, Limits(pids=50))
        bob = driver.create("bob-job", Limits(), "/", owner="bob")
        carol = driver.create("carol-job", Limits(), "/", owner="carol/../x")
        bob_pids, carol_pids = (
            self.user_file(job, "pids", "pids.max") for job in (bob, carol)
        )
        self.assertNotEqual(bob_pids, carol_pids)
        self.assertEqual(read(bob_pids), "50\n")
        self.assertEqual(read(carol_pids), "50\n")
        for job in (bob, carol):
            await job.remove()
        self.assertEqual(job_dirs(driver), [])  # and the users' cgroups went


def _memory_usage_file(cgroup: JobCgroup) -> str:
    if isinstance(cgroup, V1JobCgroup):
        return cgroup.file("memory", "memory.usage_in_bytes")
    assert isinstance(cgroup, V2JobCgroup)
    return cgroup.file("memory.current")


def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def _exited(pidfd: int) -> bool:
    import select  # noqa: PLC0415

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(5000))
