"""The cgroup v1 driver: one directory per controller for each job.

Files written (all in the job's directory of each hierarchy):
cpu.cfs_period_us and cpu.cfs_quota_us; memory.limit_in_bytes, then
memory.memsw.limit_in_bytes to the same value so swap cannot extend it
(memory.swappiness 0 when swap accounting is off); one line per disk in
blkio.throttle.read_bps_device / write_bps_device; pids.max. CPU time comes
from cpuacct.usage, the OOM flag from memory.oom_control's oom_kill count;
usage from memory.max_usage_in_bytes, blkio.throttle.io_service_bytes (Read
and Write, every device) and pids.peak (where the kernel has it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial

from twisted.internet.interfaces import IReactorTime

from jobworker.errors import IsolationFailed, IsolationUnavailable
from jobworker.isolation.cgroups.base import (
    DriverBase,
    JobCgroupBase,
    Kernel,
    check_job_id,
    read_int,
    read_keyed,
    remove_if_empty,
    remove_now,
    stale_job_dirs,
)
from jobworker.model import Limits, Usage

CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "pids")
CFS_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000
STALE_TIMEOUT = 5.0


class V1JobCgroup(JobCgroupBase):
    """One job's directories in the cpu, cpuacct, memory, blkio and pids trees."""

    def __init__(self, dirs: Mapping[str, str], kernel: Kernel, clock: IReactorTime):
        super().__init__(list(dirs.values()), kernel, clock)
        self.dirs = dict(dirs)

    def file(self, controller: str, name: str) -> str:
        return os.path.join(self.dirs[controller], name)

    def oom_killed(self) -> bool:
        control = read_keyed(self.file("memory", "memory.oom_control"))
        if "oom_kill" in control:
            return control["oom_kill"] > 0
        # Kernels before 4.13 lack the count: any refused charge counts.
        with open(self.file("memory", "memory.failcnt")) as failcnt:
            return int(failcnt.read()) > 0

    def cpu_usage_ns(self) -> int:
        with open(self.file("cpuacct", "cpuacct.usage")) as usage:
            return int(usage.read())

    def usage(self) -> Usage:
        read, write = self._io_bytes()
        return Usage(
            cpu_seconds=self.cpu_usage_ns() / 1e9,
            memory_peak_bytes=read_int(
                self.file("memory", "memory.max_usage_in_bytes")
            ),
            io_read_bytes=read,
            io_write_bytes=write,
            pids_peak=read_int(self.file("pids", "pids.peak")),
        )

    def _io_bytes(self) -> tuple[int, int]:
        """Bytes read and written, every device: "MAJ:MIN Read N" lines."""
        totals = {"Read": 0, "Write": 0}
        with open(self.file("blkio", "blkio.throttle.io_service_bytes")) as stats:
            for line in stats:
                words = line.split()
                if len(words) == 3 and words[1] in totals:
                    totals[words[1]] += int(words[2])
        return totals["Read"], totals["Write"]


class V1Driver(DriverBase):
    """Creates job cgroups in the v1 hierarchies, below the server's own."""

    def __init__(
        self,
        parents: Mapping[str, str],
        *,
        io_devices: Sequence[str] | None = None,
        reactor: IReactorTime | None = None,
        kernel: Kernel | None = None,
        mountinfo_path: str = "/proc/self/mountinfo",
        sys_root: str = "/sys",
    ) -> None:
        super().__init__(
            io_devices=io_devices,
            reactor=reactor,
            kernel=kernel,
            mountinfo_path=mountinfo_path,
            sys_root=sys_root,
        )
        self.parents = dict(parents)
        self._make_parents()  # proves we may, at start-up
        remove_if_empty(self._kernel, self.parents.values())

    @property
    def version(self) -> int:
        return 1

    def _make_parents(self) -> None:
        for controller, parent in self.parents.items():
            if not os.path.isdir(parent):
                try:
                    self._kernel.mkdir(parent)
                except FileExistsError:
                    pass
                except OSError as error:
                    raise IsolationUnavailable(
                        f"cannot create the {controller} cgroup {parent}: {error}"
                    ) from error

    def create(self, job_id: str, limits: Limits, workdir: str) -> V1JobCgroup:
        check_job_id(job_id)
        dirs = {c: os.path.join(p, job_id) for c, p in self.parents.items()}
        cgroup = V1JobCgroup(dirs, self._kernel, self._clock)
        try:
            self._make_parents()
            for directory in cgroup.directories:
                self._kernel.mkdir(directory)
            self._apply(cgroup, limits, workdir)
        except (OSError, IsolationUnavailable) as error:
            cgroup.discard()
            raise IsolationFailed(f"cannot set up the job's cgroup: {error}") from error
        return cgroup

    def _apply(self, cgroup: V1JobCgroup, limits: Limits, workdir: str) -> None:
        write = self._kernel.write
        if limits.cpu is not None:
            quota = max(_MIN_QUOTA_US, round(limits.cpu * CFS_PERIOD_US))
            write(cgroup.file("cpu", "cpu.cfs_period_us"), str(CFS_PERIOD_US))
            write(cgroup.file("cpu", "cpu.cfs_quota_us"), str(quota))
        if limits.memory_bytes is not None:
            write(
                cgroup.file("memory", "memory.limit_in_bytes"), str(limits.memory_bytes)
            )
            memsw = cgroup.file("memory", "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                write(memsw, str(limits.memory_bytes))
            else:
                write(cgroup.file("memory", "memory.swappiness"), "0")
        throttles = (
            ("blkio.throttle.read_bps_device", limits.io_read_bps),
            ("blkio.throttle.write_bps_device", limits.io_write_bps),
        )
        if any(bps is not None for _, bps in throttles):
            for device in self.io_devices(workdir):
                for name, bps in throttles:
                    if bps is not None:
                        write(cgroup.file("blkio", name), f"{device} {bps}")
        if limits.pids is not None:
            write(cgroup.file("pids", "pids.max"), str(limits.pids))

    def cleanup_stale(self) -> int:
        jobs = stale_job_dirs(self.parents.values())
        for dirs in jobs.values():
            procs = [os.path.join(d, "cgroup.procs") for d in dirs]
            kill = partial(self._kernel.kill_listed, procs)
            remove_now(self._kernel, dirs, kill, STALE_TIMEOUT)
        return len(jobs)
