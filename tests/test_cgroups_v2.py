"""Unit tests for the cgroup v2 driver and its set-up, on fake cgroup trees."""

from __future__ import annotations

import errno
import os

from twisted.internet.task import Clock
from twisted.trial import unittest

from jobworker.errors import IsolationUnavailable
from jobworker.isolation.cgroups import V2Driver, V2JobCgroup, detect_in, parent_name
from jobworker.isolation.cgroups.base import user_name
from jobworker.model import Limits, Usage
from tests.cgroupfake import V2_FILES, FakeKernel, fill, v2_tree
from tests.test_blockdev import make_sysfs

LIMITS = Limits(
    cpu=1.5, memory_bytes=64 << 20, io_read_bps=1000, io_write_bps=2000, pids=32
)
JOB = "0e0e0e0e-1111-2222-3333-444444444444"
NO_LIMITS = Limits()
ENABLE = "+cpu +memory +io +pids"


class V2Fixture(unittest.TestCase):
    """A fake unified tree with the server in a service's cgroup."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.state_dir = self.mktemp()
        self.own = "/system.slice/jobworker.service"
        self.mounts, self.paths = v2_tree(self.root, self.own)
        self.own_dir = os.path.join(self.root, self.own.strip("/"))
        self.kernel = FakeKernel(V2_FILES)
        self.clock = Clock()

    def driver(
        self,
        io_devices: list[str] | None = None,
        totals: Limits = NO_LIMITS,
        per_user: Limits = NO_LIMITS,
    ) -> V2Driver:
        driver = detect_in(
            self.mounts,
            self.paths,
            self.state_dir,
            io_devices=io_devices,
            reactor=self.clock,
            kernel=self.kernel,
            sys_root=make_sysfs(self.mktemp()),
            totals=totals,
            per_user=per_user,
        )
        assert isinstance(driver, V2Driver)
        return driver


class V2Tests(V2Fixture):
    def test_parent_is_below_the_servers_own_cgroup_with_controllers(self) -> None:
        driver = self.driver()
        self.assertEqual(driver.version, 2)
        self.assertEqual(
            driver.parent, os.path.join(self.own_dir, parent_name(self.state_dir))
        )
        self.assertEqual(self.kernel.written("cgroup.subtree_control"), [ENABLE] * 2)

    def test_server_moves_into_a_leaf_when_its_cgroup_holds_processes(self) -> None:
        control = os.path.join(self.own_dir, "cgroup.subtree_control")
        self.kernel.refuse[control] = OSError(errno.EBUSY, "busy")
        with open(os.path.join(self.own_dir, "cgroup.procs"), "w") as procs:
            procs.write(f"{os.getpid()}\n")
        self.driver()
        leaf = os.path.join(self.own_dir, "jobworker-server")
        self.assertIn(
            (os.path.join(leaf, "cgroup.procs"), str(os.getpid())), self.kernel.writes
        )
        self.assertIn((control, ENABLE), self.kernel.writes)

    def test_a_server_already_in_its_leaf_uses_the_same_parent(self) -> None:
        first = self.driver().parent
        fill(os.path.join(self.own_dir, "jobworker-server"), V2_FILES)
        paths = {"": self.own + "/jobworker-server"}
        again = detect_in(self.mounts, paths, self.state_dir, kernel=self.kernel)
        self.assertEqual(
            again.create(JOB, Limits(), "/", owner="bob").procs_files[0],
            os.path.join(first, user_name("bob"), JOB, "cgroup.procs"),
        )

    def test_missing_controllers_are_named(self) -> None:
        with open(os.path.join(self.own_dir, "cgroup.controllers"), "w") as file:
            file.write("cpu memory\n")
        error = self.assertRaises(
            IsolationUnavailable, detect_in, self.mounts, self.paths, self.state_dir
        )
        self.assertIn("io, pids", str(error))

    def test_limits_are_written(self) -> None:
        self.driver(io_devices=["254:0", "259:2"]).create(JOB, LIMITS, "/", owner="bob")
        self.assertEqual(self.kernel.written("cpu.max"), ["150000 100000"])
        self.assertEqual(self.kernel.written("memory.max"), ["67108864"])
        self.assertEqual(self.kernel.written("memory.swap.max"), ["0"])
        self.assertEqual(
            self.kernel.written("io.max"),
            ["254:0 rbps=1000 wbps=2000", "259:2 rbps=1000 wbps=2000"],
        )
        self.assertEqual(self.kernel.written("pids.max"), ["32"])

    def test_only_the_requested_io_direction_is_limited(self) -> None:
        self.driver(io_devices=["254:0"]).create(
            JOB, Limits(io_read_bps=7), "/", owner="bob"
        )
        self.assertEqual(self.kernel.written("io.max"), ["254:0 rbps=7"])

    def test_oom_kill_and_cpu_usage_are_read(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        self.assertFalse(cgroup.oom_killed())
        with open(cgroup.file("memory.events"), "w") as events:
            events.write("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
        with open(cgroup.file("cpu.stat"), "w") as stat:
            stat.write("usage_usec 1500\nuser_usec 1000\n")
        self.assertTrue(cgroup.oom_killed())
        self.assertEqual(cgroup.cpu_usage_ns(), 1_500_000)

    def write(self, cgroup: V2JobCgroup, name: str, content: str) -> None:
        with open(cgroup.file(name), "w") as file:
            file.write(content)

    def test_usage_is_read_from_the_v2_files(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        self.write(cgroup, "cpu.stat", "usage_usec 1250000\nuser_usec 1000000\n")
        self.write(cgroup, "memory.peak", "1048576\n")
        self.write(
            cgroup,
            "io.stat",
            "8:0 rbytes=4096 wbytes=512 rios=1 wios=1 dbytes=0 dios=0\n"
            "254:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n",
        )
        self.write(cgroup, "pids.peak", "12\n")
        self.assertEqual(
            cgroup.usage(),
            Usage(
                cpu_seconds=1.25,
                memory_peak_bytes=1048576,
                io_read_bytes=4106,
                io_write_bytes=532,
                pids_peak=12,
            ),
        )

    def test_without_memory_peak_the_highest_current_read_is_the_peak(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        os.remove(cgroup.file("memory.peak"))
        os.remove(cgroup.file("pids.peak"))
        peaks = []
        for current in (300, 100, 500):
            self.write(cgroup, "memory.current", f"{current}\n")
            peaks.append(cgroup.usage().memory_peak_bytes)
        self.assertEqual(peaks, [300, 300, 500])
        self.assertIsNone(cgroup.usage().pids_peak)

    def test_kill_all_writes_cgroup_kill(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        cgroup.kill_all()
        self.assertEqual(self.kernel.written("cgroup.kill"), ["1"])
        self.assertEqual(self.kernel.kills, [])

    def test_without_cgroup_kill_processes_are_killed_one_by_one(self) -> None:
        del self.kernel.files["cgroup.kill"]
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        cgroup.kill_all()
        self.assertEqual(self.kernel.kills, [cgroup.procs_files])

    def test_remove_kills_then_removes(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        self.kernel.busy = 2
        removed = cgroup.remove()
        self.clock.pump([0.05] * 4)
        self.successResultOf(removed)
        self.assertFalse(os.path.exists(cgroup.directory))
        self.assertEqual(self.kernel.written("cgroup.kill"), ["1"] * 3)

    def test_cleanup_stale_kills_and_removes_job_cgroups(self) -> None:
        self.driver().create(JOB, LIMITS, "/", owner="bob")
        driver = self.driver()
        self.assertEqual(driver.cleanup_stale(), 1)
        self.assertFalse(os.path.exists(driver.parent))
        self.assertEqual(self.kernel.written("cgroup.kill"), ["1"])

    def test_a_new_parent_enables_the_controllers_again(self) -> None:
        driver = self.driver()
        self.successResultOf(driver.create(JOB, LIMITS, "/", owner="bob").remove())
        self.assertFalse(os.path.exists(driver.parent))
        self.kernel.writes.clear()
        driver.create("next", LIMITS, "/", owner="bob")
        # The parent's, then bob's: each enables the controllers below it.
        self.assertEqual(self.kernel.written("cgroup.subtree_control"), [ENABLE] * 2)


class V2UserTests(V2Fixture):
    """Each user's jobs in a cgroup of their own, between the parent and jobs."""

    def test_totals_go_on_the_parent_and_a_users_limits_on_its_cgroup(self) -> None:
        driver = self.driver(
            totals=Limits(cpu=2.0, memory_bytes=1 << 30, pids=1000),
            per_user=Limits(memory_bytes=128 << 20, pids=100),
        )
        cgroup = driver.create(JOB, Limits(memory_bytes=64 << 20), "/", owner="bob")
        user = os.path.dirname(cgroup.directory)
        self.assertEqual(os.path.basename(user), user_name("bob"))
        self.assertEqual(os.path.dirname(user), driver.parent)
        writes = set(self.kernel.writes)
        for path, value in (
            (os.path.join(driver.parent, "memory.max"), str(1 << 30)),
            (os.path.join(driver.parent, "pids.max"), "1000"),
            (os.path.join(driver.parent, "cpu.max"), "200000 100000"),
            (os.path.join(user, "memory.max"), str(128 << 20)),
            (os.path.join(user, "memory.swap.max"), "0"),
            (os.path.join(user, "pids.max"), "100"),
            (os.path.join(user, "cgroup.subtree_control"), ENABLE),
            (cgroup.file("memory.max"), str(64 << 20)),
        ):
            self.assertIn((path, value), writes)
        self.assertNotIn(os.path.join(user, "cpu.max"), {p for p, _ in writes})
