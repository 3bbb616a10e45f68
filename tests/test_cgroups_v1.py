"""Unit tests for the cgroup v1 driver, on fake cgroup trees."""

from __future__ import annotations

import errno
import os

from twisted.internet.task import Clock
from twisted.trial import unittest

from jobworker.errors import IsolationFailed, IsolationUnavailable
from jobworker.isolation.cgroups import CgroupBusy, V1Driver, detect_in, parent_name
from jobworker.isolation.cgroups.base import user_name
from jobworker.model import Limits, Usage
from tests.cgroupfake import V1_FILES, FakeKernel, v1_tree

LIMITS = Limits(
    cpu=0.2, memory_bytes=64 << 20, io_read_bps=1000, io_write_bps=2000, pids=32
)
JOB = "0e0e0e0e-1111-2222-3333-444444444444"
NO_LIMITS = Limits()
BOB = user_name("bob")


class V1Fixture(unittest.TestCase):
    """A fake v1 tree with the server in a memory cgroup of its own."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.state_dir = self.mktemp()
        self.own = {"memory": "/session/abc"}
        self.mounts, self.paths = v1_tree(self.root, self.own)
        self.kernel = FakeKernel(V1_FILES)
        self.clock = Clock()

    def driver(
        self,
        io_devices: list[str] | None = None,
        totals: Limits = NO_LIMITS,
        per_user: Limits = NO_LIMITS,
    ) -> V1Driver:
        driver = detect_in(
            self.mounts,
            self.paths,
            self.state_dir,
            io_devices=io_devices,
            reactor=self.clock,
            kernel=self.kernel,
            totals=totals,
            per_user=per_user,
        )
        assert isinstance(driver, V1Driver)
        return driver


class V1Tests(V1Fixture):
    def test_v1_is_chosen_when_unified_lacks_the_controllers(self) -> None:
        self.assertEqual(self.driver().version, 1)

    def test_parents_are_below_the_servers_own_cgroups(self) -> None:
        parents = self.driver().parents
        name = parent_name(self.state_dir)
        self.assertEqual(
            parents["memory"], os.path.join(self.root, "memory", "session/abc", name)
        )
        self.assertEqual(parents["cpu"], os.path.join(self.root, "cpu,cpuacct", name))
        self.assertEqual(parents["cpu"], parents["cpuacct"])

    def test_parents_exist_only_while_there_are_jobs(self) -> None:
        driver = self.driver()
        for parent in driver.parents.values():
            self.assertFalse(os.path.exists(parent))
        driver.create(JOB, LIMITS, "/", owner="bob")
        for parent in driver.parents.values():
            self.assertTrue(os.path.isdir(os.path.join(parent, BOB, JOB)))

    def test_unwritable_hierarchy_is_refused_at_start_up(self) -> None:
        memory = os.path.join(self.root, "memory", "session/abc")
        name = parent_name(self.state_dir)
        self.kernel.refuse_mkdir = os.path.join(memory, name)
        error = self.assertRaises(IsolationUnavailable, self.driver)
        self.assertIn("memory", str(error))

    def test_missing_hierarchy_is_named(self) -> None:
        mounts = [m for m in self.mounts if "blkio" not in m.super_options]
        error = self.assertRaises(
            IsolationUnavailable, detect_in, mounts, self.paths, self.state_dir
        )
        self.assertIn("blkio", str(error))
        self.assertIn("lacks the cpu, memory, io, pids", str(error))

    def test_no_cgroup_filesystem_at_all_is_named(self) -> None:
        error = self.assertRaises(IsolationUnavailable, detect_in, [], {}, "/x")
        self.assertIn("cpu, cpuacct, memory, blkio, pids", str(error))

    def test_limits_are_written(self) -> None:
        cgroup = self.driver(io_devices=["254:0"]).create(JOB, LIMITS, "/", owner="bob")
        self.assertEqual(self.kernel.written("cpu.cfs_period_us"), ["100000"])
        self.assertEqual(self.kernel.written("cpu.cfs_quota_us"), ["20000"])
        self.assertEqual(self.kernel.written("memory.limit_in_bytes"), ["67108864"])
        self.assertEqual(
            self.kernel.written("memory.memsw.limit_in_bytes"), ["67108864"]
        )
        self.assertEqual(
            self.kernel.written("blkio.throttle.read_bps_device"), ["254:0 1000"]
        )
        self.assertEqual(
            self.kernel.written("blkio.throttle.write_bps_device"), ["254:0 2000"]
        )
        self.assertEqual(self.kernel.written("pids.max"), ["32"])
        self.assertEqual(len(cgroup.procs_files), 4)  # cpu,cpuacct share one

    def test_memsw_write_comes_after_the_memory_limit(self) -> None:
        self.driver().create(JOB, LIMITS, "/", owner="bob")
        names = [os.path.basename(p) for p, _ in self.kernel.writes]
        self.assertLess(
            names.index("memory.limit_in_bytes"),
            names.index("memory.memsw.limit_in_bytes"),
        )

    def test_without_swap_accounting_swappiness_is_zero(self) -> None:
        del self.kernel.files["memory.memsw.limit_in_bytes"]
        self.driver().create(JOB, LIMITS, "/", owner="bob")
        self.assertEqual(self.kernel.written("memory.swappiness"), ["0"])

    def test_every_disk_gets_a_throttle_line(self) -> None:
        self.driver(io_devices=None).create(
            JOB, Limits(io_write_bps=5), "/", owner="bob"
        )
        lines = self.kernel.written("blkio.throttle.write_bps_device")
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, r"^\d+:\d+ 5$")
        self.assertEqual(self.kernel.written("blkio.throttle.read_bps_device"), [])

    def test_no_limits_write_nothing(self) -> None:
        self.driver().create(JOB, Limits(), "/", owner="bob")
        self.assertEqual(self.kernel.writes, [])

    def test_failed_write_removes_the_half_made_cgroup(self) -> None:
        driver = self.driver()
        pids = os.path.join(driver.parents["pids"], BOB, JOB, "pids.max")
        self.kernel.refuse[pids] = OSError(errno.EINVAL, "Invalid argument")
        self.assertRaises(IsolationFailed, driver.create, JOB, LIMITS, "/", owner="bob")
        for parent in driver.parents.values():
            self.assertFalse(os.path.exists(os.path.join(parent, BOB, JOB)))

    def test_job_id_that_is_not_a_name_is_refused(self) -> None:
        driver = self.driver()
        for bad in ("", "..", "a/b"):
            self.assertRaises(
                IsolationFailed, driver.create, bad, LIMITS, "/", owner="bob"
            )

    def test_oom_kill_count_means_oom_killed(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        self.assertFalse(cgroup.oom_killed())
        with open(cgroup.file("memory", "memory.oom_control"), "w") as control:
            control.write("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
        self.assertTrue(cgroup.oom_killed())

    def test_old_kernel_without_oom_kill_count_uses_failcnt(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        with open(cgroup.file("memory", "memory.oom_control"), "w") as control:
            control.write("oom_kill_disable 0\nunder_oom 0\n")
        self.assertFalse(cgroup.oom_killed())
        with open(cgroup.file("memory", "memory.failcnt"), "w") as failcnt:
            failcnt.write("3\n")
        self.assertTrue(cgroup.oom_killed())

    def test_cpu_usage_comes_from_cpuacct(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        with open(cgroup.file("cpuacct", "cpuacct.usage"), "w") as usage:
            usage.write("123456789\n")
        self.assertEqual(cgroup.cpu_usage_ns(), 123456789)

    def test_usage_is_read_from_the_v1_files(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        for controller, name, content in (
            ("cpuacct", "cpuacct.usage", "2500000000\n"),
            ("memory", "memory.max_usage_in_bytes", "73400320\n"),
            (
                "blkio",
                "blkio.throttle.io_service_bytes",
                "8:0 Read 4096\n8:0 Write 100\n8:0 Sync 4196\n8:0 Total 4196\n"
                "254:0 Read 10\n254:0 Write 20\n254:0 Total 30\nTotal 4226\n",
            ),
            ("pids", "pids.peak", "7\n"),
        ):
            with open(cgroup.file(controller, name), "w") as file:
                file.write(content)
        self.assertEqual(
            cgroup.usage(),
            Usage(
                cpu_seconds=2.5,
                memory_peak_bytes=73400320,
                io_read_bytes=4106,
                io_write_bytes=120,
                pids_peak=7,
            ),
        )

    def test_usage_without_pids_peak_leaves_it_unknown(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        os.remove(cgroup.file("pids", "pids.peak"))
        usage = cgroup.usage()
        self.assertIsNone(usage.pids_peak)
        self.assertEqual((usage.io_read_bytes, usage.io_write_bytes), (0, 0))

    def test_remove_retries_on_the_clock_while_busy(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        self.kernel.busy = 3
        removed = cgroup.remove()
        self.assertNoResult(removed)
        self.clock.advance(1)
        self.successResultOf(removed)
        for directory in cgroup.directories:
            self.assertFalse(os.path.exists(directory))
        self.assertGreaterEqual(len(self.kernel.kills), 2)

    def test_remove_gives_up_when_busy_for_too_long(self) -> None:
        cgroup = self.driver().create(JOB, LIMITS, "/", owner="bob")
        self.kernel.busy = 10**6
        removed = cgroup.remove()
        self.clock.pump([0.5] * 30)
        self.failureResultOf(removed, CgroupBusy)

    def test_cleanup_stale_kills_and_removes_job_cgroups(self) -> None:
        self.driver().create(JOB, LIMITS, "/", owner="bob")
        self.driver().create("other", LIMITS, "/", owner="bob")
        self.kernel.kills.clear()
        driver = self.driver()
        self.assertEqual(driver.cleanup_stale(), 2)
        self.assertEqual(len(self.kernel.kills), 2)
        for parent in driver.parents.values():
            self.assertFalse(os.path.exists(parent))
        self.assertEqual(driver.cleanup_stale(), 0)

    def test_parents_go_with_the_last_job_and_come_back_with_the_next(self) -> None:
        driver = self.driver()
        first = driver.create(JOB, LIMITS, "/", owner="bob")
        second = driver.create("second", LIMITS, "/", owner="bob")
        self.successResultOf(first.remove())
        for parent in driver.parents.values():
            self.assertTrue(os.path.isdir(parent))
        self.successResultOf(second.remove())
        for parent in driver.parents.values():
            self.assertFalse(os.path.exists(parent))
        driver.create("third", LIMITS, "/", owner="bob")
        for parent in driver.parents.values():
            self.assertTrue(os.path.isdir(os.path.join(parent, BOB, "third")))


class V1UserTests(V1Fixture):
    """Each user's jobs in a cgroup of their own, between the parent and jobs."""

    TOTALS = Limits(cpu=2.0, memory_bytes=1 << 30, pids=1000)
    PER_USER = Limits(cpu=0.5, memory_bytes=128 << 20, pids=100)

    def limited(self) -> V1Driver:
        return self.driver(totals=self.TOTALS, per_user=self.PER_USER)

    def written_in(self, directory: str) -> dict[str, str]:
        return {
            os.path.basename(path): value
            for path, value in self.kernel.writes
            if os.path.dirname(path) == directory
        }

    def test_totals_go_on_the_parent_and_a_users_limits_on_its_cgroup(self) -> None:
        driver = self.limited()
        cgroup = driver.create(JOB, Limits(memory_bytes=64 << 20), "/", owner="bob")
        memory = driver.parents["memory"]
        self.assertEqual(self.written_in(memory)["memory.limit_in_bytes"], str(1 << 30))
        self.assertEqual(
            self.written_in(os.path.join(memory, BOB))["memory.limit_in_bytes"],
            str(128 << 20),
        )
        self.assertEqual(
            self.written_in(cgroup.dirs["memory"])["memory.limit_in_bytes"],
            str(64 << 20),
        )
        self.assertEqual(
            self.written_in(os.path.join(driver.parents["pids"], BOB))["pids.max"],
            "100",
        )
        cpu = os.path.join(driver.parents["cpu"], BOB)
        self.assertEqual(self.written_in(cpu)["cpu.cfs_quota_us"], "50000")
        self.assertEqual(
            self.written_in(driver.parents["cpu"])["cpu.cfs_quota_us"], "200000"
        )

    def test_a_users_cgroup_is_set_up_once_for_all_its_jobs(self) -> None:
        driver = self.limited()
        self.kernel.writes.clear()  # the parent was made and removed at start
        driver.create(JOB, Limits(), "/", owner="bob")
        driver.create("second", Limits(), "/", owner="bob")
        driver.create("third", Limits(), "/", owner="carol")
        self.assertEqual(
            self.kernel.written("memory.limit_in_bytes"),
            [str(1 << 30), str(128 << 20), str(128 << 20)],
        )

    def test_a_hostile_common_name_makes_a_safe_distinct_name(self) -> None:
        names = {user_name(cn) for cn in ("../x", "a/b\n", ".", "x" * 5000, "")}
        self.assertEqual(len(names), 5)
        for name in names:
            self.assertRegex(name, r"^u-[A-Za-z0-9_.-]{0,24}-[0-9a-f]{12}$")
        cgroup = self.limited().create(JOB, Limits(), "/", owner="../../etc")
        for directory in cgroup.directories:
            self.assertTrue(directory.startswith(self.root))
            self.assertNotIn("/../", directory)

    def test_a_users_cgroup_goes_with_its_last_job(self) -> None:
        driver = self.limited()
        first = driver.create(JOB, Limits(), "/", owner="bob")
        driver.create("other", Limits(), "/", owner="carol")
        self.successResultOf(first.remove())
        self.assertFalse(os.path.exists(os.path.join(driver.parents["pids"], BOB)))
        self.assertTrue(os.path.isdir(driver.parents["pids"]))

    def test_stale_jobs_of_both_layouts_are_removed(self) -> None:
        driver = self.limited()
        driver.create(JOB, Limits(), "/", owner="bob")
        for parent in driver.parents.values():  # a run from before users
            os.makedirs(os.path.join(parent, "older-job"), exist_ok=True)
        self.assertEqual(self.limited().cleanup_stale(), 2)
        for parent in driver.parents.values():
            self.assertFalse(os.path.exists(parent))
