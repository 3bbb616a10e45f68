"""Issue 4's enforcement tests: real jobs through JobManager, limits measured.

Root only. Each test checks afterwards that no job cgroup, mount or process
is left. Set JOBWORKER_TEST_STATE_ROOT to a directory on a real block device
(default /var/tmp) for the disk IO test, and JOBWORKER_EXPECT_CGROUP to 1 or
2 to fail when the other hierarchy is in use (the v2 guest sets it).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Collection
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial import unittest

from jobworker.isolation.blockdev import job_disks
from jobworker.isolation.cgroups import V1JobCgroup, V2JobCgroup
from jobworker.isolation.cgroups.base import listed_pids
from jobworker.isolation.interfaces import CgroupDriver, IsolationConfig, JobCgroup
from jobworker.isolation.sandbox import Sandbox
from jobworker.job.manager import JobManager
from jobworker.model import JobState, JobStatus, Limits
from tests.cgrouputil import job_dirs, real_driver, require_root
from tests.managerutil import output_of, until_output
from tests.sandboxutil import default_sandbox

reactor: Any = _reactor
STATE_ROOT_ENV = "JOBWORKER_TEST_STATE_ROOT"
MiB = 1 << 20


class RecordingDriver:
    """The real driver, remembering the cgroups it made so tests can read them."""

    def __init__(self, driver: CgroupDriver) -> None:
        self.driver = driver
        self.created: dict[str, JobCgroup] = {}

    @property
    def version(self) -> int:
        return self.driver.version

    def create(
        self, job_id: str, limits: Limits, workdir: str, *, owner: str
    ) -> JobCgroup:
        cgroup = self.driver.create(job_id, limits, workdir, owner=owner)
        self.created[job_id] = cgroup
        return cgroup

    def find(self, job_id: str, *, owner: str) -> JobCgroup | None:
        return self.driver.find(job_id, owner=owner)

    def cleanup_stale(self, keep: Collection[str] = ()) -> int:
        return self.driver.cleanup_stale(keep)


def control_file(cgroup: JobCgroup, controller: str, name: str) -> str:
    if isinstance(cgroup, V1JobCgroup):
        return cgroup.file(controller, name)
    assert isinstance(cgroup, V2JobCgroup)
    return cgroup.file(name)


def keyed(path: str) -> dict[str, str]:
    with open(path) as file:
        return dict(line.split(" ", 1) for line in file.read().splitlines())


_PR_SET_CHILD_SUBREAPER = 36


async def pause(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class IsolationTestCase(unittest.TestCase):
    timeout = 180

    def setUp(self) -> None:
        require_root()
        root = os.environ.get(STATE_ROOT_ENV, "/var/tmp")
        self.state_dir = tempfile.mkdtemp(prefix="jobworker-isolation-", dir=root)
        self.addCleanup(shutil.rmtree, self.state_dir, ignore_errors=True)
        self.driver = RecordingDriver(real_driver(self, self.state_dir))
        self.addCleanup(self.assert_nothing_left)

    def manager(
        self,
        job_user: str | None = None,
        seccomp: bool = True,
        sandbox: Sandbox | None = None,
    ) -> JobManager:
        """A manager with the server's default sandbox (or `sandbox`)."""
        uid_per_job = job_user is None
        self.sandbox = sandbox or default_sandbox(
            uid_per_job=uid_per_job, seccomp=seccomp
        )
        manager = JobManager(
            self.state_dir,
            isolation=IsolationConfig(
                self.driver, namespaces=True, sandbox=self.sandbox
            ),
            job_user=job_user,
            stop_grace=2.0,
            reactor=reactor,
        )
        self.addCleanup(manager.shutdown)
        return manager

    def assert_nothing_left(self) -> None:
        self.assertEqual(job_dirs(self.driver.driver), [])
        for cgroup in self.driver.created.values():
            for path in cgroup.procs_files:
                self.assertFalse(os.path.exists(path), path)
        with open("/proc/self/mountinfo") as mountinfo:
            self.assertNotIn(self.state_dir, mountinfo.read())
        jobs = os.path.join(self.state_dir, "jobs")
        for job_id in os.listdir(jobs) if os.path.isdir(jobs) else []:
            self.assertFalse(os.path.exists(os.path.join(jobs, job_id, "work")))

    async def finish(
        self, manager: JobManager, status: JobStatus
    ) -> tuple[JobStatus, bytes]:
        output = await output_of(manager, status.id)
        return manager.status(status.id), output

    async def sh(
        self, manager: JobManager, script: str, limits: Limits | None = None
    ) -> JobStatus:
        return await manager.start("alice", [b"sh", b"-c", script.encode()], limits)


class LimitTests(IsolationTestCase):
    async def test_busy_loop_under_a_fifth_of_a_cpu_uses_about_a_fifth(self) -> None:
        manager = self.manager()
        status = await self.sh(manager, "while :; do :; done", Limits(cpu=0.2))
        cgroup = self.driver.created[status.id]
        await pause(0.5)
        used, since = cgroup.cpu_usage_ns(), reactor.seconds()
        await pause(3.0)
        share = (cgroup.cpu_usage_ns() - used) / 1e9 / (reactor.seconds() - since)
        await manager.stop(status.id)
        self.assertTrue(0.12 <= share <= 0.28, f"used {share:.3f} CPUs, not ~0.2")

    async def test_allocating_past_the_memory_limit_is_oom_killed(self) -> None:
        manager = self.manager()
        code = "b = bytearray(512 << 20); print('survived')"
        status = await manager.start(
            "alice", [b"python3", b"-c", code.encode()], Limits(memory_bytes=32 * MiB)
        )
        final, output = await self.finish(manager, status)
        self.assertNotIn(b"survived", output)
        self.assertTrue(final.oom_killed, final)
        self.assertEqual(final.state, JobState.KILLED)
        self.assertEqual(final.signal, 9)
        self.assertFalse(manager.status(status.id).stop_requested)

    async def test_a_job_within_its_memory_is_not_reported_oom_killed(self) -> None:
        manager = self.manager()
        status = await self.sh(manager, "echo fine", Limits(memory_bytes=64 * MiB))
        final, _ = await self.finish(manager, status)
        self.assertEqual((final.exit_code, final.oom_killed), (0, False))

    async def test_direct_io_is_throttled_near_the_limit_both_ways(self) -> None:
        if not job_disks(self.state_dir):
            raise unittest.SkipTest(f"{self.state_dir} is not on a block device")
        rate = 2 * MiB
        manager = self.manager()
        script = (
            "dd if=/dev/zero of=data bs=64k count=80 oflag=direct 2>&1 && "
            "dd if=data of=/dev/null bs=64k iflag=direct 2>&1"
        )
        limits = Limits(io_read_bps=rate, io_write_bps=rate)
        final, output = await self.finish(
            manager, await self.sh(manager, script, limits)
        )
        self.assertEqual(final.exit_code, 0, output)
        rates = [
            int(copied) / float(seconds)
            for copied, seconds in re.findall(
                rb"(\d+) bytes .* copied, ([\d.]+) s", output
            )
        ]
        self.assertEqual(len(rates), 2, output)
        for measured in rates:
            self.assertTrue(
                0.5 * rate <= measured <= 1.3 * rate,
                f"{measured / MiB:.2f} MiB/s, limit {rate / MiB} MiB/s: {output!r}",
            )

    async def test_usage_is_live_while_running_and_final_at_the_end(self) -> None:
        manager = self.manager()
        disk = bool(job_disks(self.state_dir))
        io = (
            "dd if=/dev/zero of=data bs=64k count=16 oflag=direct 2>/dev/null &&"
            " dd if=data of=/dev/null bs=64k iflag=direct 2>/dev/null; "
            if disk
            else ""
        )
        script = (
            f"{io}dd if=/dev/zero of=/dev/null bs=48M count=1 2>/dev/null; "
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; "
            "sleep 600 & sleep 600 & echo ready; wait"
        )
        status = await self.sh(manager, script, Limits(memory_bytes=256 * MiB))
        cgroup = self.driver.created[status.id]
        has_pids_peak = os.path.exists(control_file(cgroup, "pids", "pids.peak"))
        await until_output(manager, status.id, b"ready")
        live = manager.board.live(status.id).usage
        self.assertEqual(manager.board.get(status.id).usage, status.usage)
        final = (await manager.stop(status.id, grace=0)).usage
        for usage in (live, final):
            assert usage.cpu_seconds is not None
            self.assertGreater(usage.cpu_seconds, 0.01, usage)
            assert usage.memory_peak_bytes is not None
            self.assertGreaterEqual(usage.memory_peak_bytes, 48 * MiB, usage)
            self.assertLess(usage.memory_peak_bytes, 256 * MiB, usage)
            assert usage.io_read_bytes is not None and usage.io_write_bytes is not None
            if disk:
                self.assertGreaterEqual(usage.io_write_bytes, MiB, usage)
                self.assertGreaterEqual(usage.io_read_bytes, MiB, usage)
            if has_pids_peak:  # H, I, sh and two sleeps at once
                assert usage.pids_peak is not None
                self.assertGreaterEqual(usage.pids_peak, 5, usage)
            else:
                self.assertIsNone(usage.pids_peak)
        assert live.cpu_seconds is not None and final.cpu_seconds is not None
        self.assertGreaterEqual(final.cpu_seconds, live.cpu_seconds)
        self.assertEqual(manager.board.live(status.id).usage, final)

    async def test_fork_bomb_is_contained_and_the_job_still_stops(self) -> None:
        manager = self.manager()
        bomb = (
            "import os\n"
            "while True:\n"
            "    try:\n"
            "        os.fork()\n"
            "    except OSError:\n"
            "        pass\n"
        )
        status = await manager.start(
            "alice", [b"python3", b"-c", bomb.encode()], Limits(pids=16, cpu=0.5)
        )
        cgroup = self.driver.created[status.id]
        events = control_file(cgroup, "pids", "pids.events")
        for _ in range(200):
            if int(keyed(events).get("max", "0")) > 0:
                break
            await pause(0.05)
        self.assertGreater(int(keyed(events)["max"]), 0, "no fork was refused")
        with open(control_file(cgroup, "pids", "pids.current")) as current:
            self.assertLessEqual(int(current.read()), 16)
        final = await manager.stop(status.id, grace=0.5)
        self.assertEqual(final.state, JobState.KILLED)
        self.assertTrue(final.stop_requested)


class KillTests(IsolationTestCase):
    async def test_kill_escalation_leaves_no_zombie_for_a_subreaper(self) -> None:
        # As a subreaper (like a server under some supervisors), we would
        # inherit the namespace init if the helper died before reaping it.
        libc = ctypes.CDLL(None, use_errno=True)
        self.assertEqual(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0)
        self.addCleanup(libc.prctl, _PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        manager = self.manager()
        status = await manager.start(
            "alice",
            [b"sh", b"-c", b"trap '' TERM; echo ready; sleep 1000 & sleep 1000"],
        )
        # Only the KILL may end it: a TERM before the trap would (a slow
        # start in the guest, a stop's record written between TERM and KILL).
        await until_output(manager, status.id, b"ready")
        final = await manager.stop(status.id, grace=0)
        self.assertEqual(final.signal, 9)
        await pause(0.5)
        self.assertEqual(zombie_children(), [])

    async def test_a_writer_stuck_in_d_state_keeps_the_job_stopping(self) -> None:
        # A direct write throttled to 64 KiB/s waits for its 4 MiB; where the
        # kernel waits uninterruptibly, SIGKILL cannot end it until the
        # throttle is lifted (where it waits killably, the job just ends).
        if not job_disks(self.state_dir):
            raise unittest.SkipTest(f"{self.state_dir} is not on a block device")
        manager = self.manager()
        script = "echo ready; exec dd if=/dev/zero of=data bs=4M count=1 oflag=direct"
        status = await self.sh(manager, script, Limits(io_write_bps=64 * 1024))
        await until_output(manager, status.id, b"ready")
        cgroup = self.driver.created[status.id]
        await until_uninterruptible(cgroup)
        busy = first_event(self, "processes that ignore SIGKILL")
        alive_at_the_end: list[set[int]] = []

        def record(final: JobStatus) -> JobStatus:
            alive_at_the_end.append(listed_pids(cgroup.procs_files))
            return final

        stopped = manager.stop(status.id, grace=0).addCallback(record)
        while not (busy.called or stopped.called):
            await pause(0.1)
        if busy.called:  # the helper is killed, the writer lives on
            self.assertFalse(stopped.called)
            self.assertEqual(manager.status(status.id).state, JobState.STOPPING)
            self.assertTrue(listed_pids(cgroup.procs_files))
            lift_write_throttle(cgroup)
        final = await stopped
        self.assertEqual(alive_at_the_end, [set()])
        self.assertEqual(final.state, JobState.KILLED)
        # A killable wait ends on the stop's SIGTERM already.
        self.assertIn(final.signal, (9,) if busy.called else (9, 15))


def first_event(case: unittest.TestCase, text: str) -> Deferred[None]:
    """Fires when a log event whose format contains `text` is emitted."""
    seen: Deferred[None] = Deferred()

    def observe(event: LogEvent) -> None:
        if text in (event.get("log_format") or "") and not seen.called:
            seen.callback(None)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return seen


async def until_uninterruptible(cgroup: JobCgroup) -> None:
    """Wait until a process of `cgroup` sleeps in D state."""
    while True:
        for pid in listed_pids(cgroup.procs_files):
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] == "D":
                        return
            except OSError:
                continue
        await pause(0.05)


def lift_write_throttle(cgroup: JobCgroup) -> None:
    """Remove the job's write limit: its queued IO goes through at once."""
    if isinstance(cgroup, V1JobCgroup):
        path = cgroup.file("blkio", "blkio.throttle.write_bps_device")
        lines = open(path).read().split("\n")  # noqa: SIM115
        for device in (line.split()[0] for line in lines if line.strip()):
            with open(path, "w") as limits:
                limits.write(f"{device} 0")
        return
    assert isinstance(cgroup, V2JobCgroup)
    lines = open(cgroup.file("io.max")).read().split("\n")  # noqa: SIM115
    for device in (line.split()[0] for line in lines if line.strip()):
        with open(cgroup.file("io.max"), "w") as limits:
            limits.write(f"{device} wbps=max")


def zombie_children() -> list[str]:
    """The names of our children that are zombies."""
    zombies = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        state, ppid = fields[-1].split()[:2]
        if state == "Z" and int(ppid) == os.getpid():
            zombies.append(fields[0])
    return zombies


class NamespaceTests(IsolationTestCase):
    async def test_job_sees_only_its_own_processes(self) -> None:
        manager = self.manager()
        script = "for p in /proc/[0-9]*; do echo ${p#/proc/}; done"
        _, output = await self.finish(manager, await self.sh(manager, script))
        pids = sorted(int(pid) for pid in output.split())
        self.assertEqual(pids[0], 1)
        self.assertLessEqual(len(pids), 2, pids)  # the init and the shell

    async def test_root_job_cannot_signal_host_processes(self) -> None:
        host = subprocess.Popen(["sleep", "1000"])
        self.addCleanup(host.wait)
        self.addCleanup(host.kill)
        manager = self.manager(job_user="root")
        script = f"kill -9 {host.pid}; echo rc=$?"
        _, output = await self.finish(manager, await self.sh(manager, script))
        self.assertIn(b"rc=1", output)
        self.assertIsNone(host.poll())

    async def test_job_has_only_loopback_and_it_is_up(self) -> None:
        manager = self.manager()
        script = "ip -o link; cat /proc/net/dev"
        _, output = await self.finish(manager, await self.sh(manager, script))
        links = re.findall(rb"^\d+: ([^:@]+)", output, re.MULTILINE)
        self.assertEqual(links, [b"lo"], output)
        self.assertRegex(output, rb"<LOOPBACK,UP,LOWER_UP>")
        devices = re.findall(rb"^\s*([^\s:]+):\s+\d", output, re.MULTILINE)
        self.assertEqual(devices, [b"lo"], output)

    async def test_job_cannot_reach_a_host_loopback_listener(self) -> None:
        accepted: list[Protocol] = []

        class Counting(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

        port = reactor.listenTCP(
            0, Factory.forProtocol(Counting), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        host_port = port.getHost().port
        code = (
            "import socket\n"
            "inner = socket.create_server(('127.0.0.1', 0))\n"
            "socket.create_connection(inner.getsockname(), timeout=5)\n"
            "print('own loopback works')\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {host_port}), timeout=5)\n"
            "    print('reached the host')\n"
            "except OSError as error:\n"
            "    print('host unreachable', error.errno)\n"
        )
        manager = self.manager()
        status = await manager.start("alice", [b"python3", b"-c", code.encode()])
        _, output = await self.finish(manager, status)
        self.assertIn(b"own loopback works", output)
        self.assertIn(b"host unreachable", output)
        self.assertEqual(accepted, [])

    async def test_tmpfs_mounted_by_a_root_job_is_not_visible_on_the_host(self) -> None:
        # Without the syscall filter, which refuses mount (tests.test_sandbox).
        manager = self.manager(job_user="root", seccomp=False)
        script = (
            "mkdir m && mount -t tmpfs jobworker-probe m && echo mounted && sleep 1000"
        )
        status = await self.sh(manager, script)
        await until_output(manager, status.id, b"mounted")
        with open("/proc/self/mountinfo") as mountinfo:
            self.assertNotIn("jobworker-probe", mountinfo.read())
        with open("/proc/1/mountinfo") as mountinfo:
            self.assertNotIn("jobworker-probe", mountinfo.read())
        await manager.stop(status.id, grace=0.5)
