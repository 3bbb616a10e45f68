"""The cgroup v1 driver: one directory per controller for each job.

In each hierarchy jobs live in `<parent>/u-<user>/<job>`: the totals are
written on the parent, a user's limits on the user's directory, the job's
on its own, and the kernel holds each below the one above. Files written
(the same on all three levels, IO throttles on jobs only):
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
from collections.abc import Collection, Mapping, Sequence
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
    stale_user_dirs,
    user_name,
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
    """Creates job cgroups in the v1 hierarchies, below the server's own.

    In each hierarchy: `<parent>/u-<user>/<job>`, the totals written on the
    parent when it is made, a user's limits on the user's cgroup.
    """

    def __init__(
        self,
        parents: Mapping[str, str],
        *,
        io_devices: Sequence[str] | None = None,
        reactor: IReactorTime | None = None,
        kernel: Kernel | None = None,
        mountinfo_path: str = "/proc/self/mountinfo",
        sys_root: str = "/sys",
        totals: Limits = Limits(),  # noqa: B008 - frozen, shared
        per_user: Limits = Limits(),  # noqa: B008 - frozen, shared
    ) -> None:
        super().__init__(
            io_devices=io_devices,
            reactor=reactor,
            kernel=kernel,
            mountinfo_path=mountinfo_path,
            sys_root=sys_root,
            totals=totals,
            per_user=per_user,
        )
        self.parents = dict(parents)
        self._make(self.parents, self.totals)  # proves we may, at start-up
        remove_if_empty(self._kernel, self.parents.values())

    @property
    def version(self) -> int:
        return 1

    def _make(self, dirs: Mapping[str, str], limits: Limits) -> None:
        """Make the directories that are missing, each with `limits`.

        Controllers mounted together (cpu,cpuacct) share a directory: it is
        made once and gets the limits of each.
        """
        made: set[str] = set()
        for controller, directory in dirs.items():
            if directory not in made:
                if os.path.isdir(directory):
                    continue
                try:
                    self._kernel.mkdir(directory)
                except FileExistsError:
                    continue
                except OSError as error:
                    raise IsolationUnavailable(
                        f"cannot create the {controller} cgroup {directory}: {error}"
                    ) from error
                made.add(directory)
            self._hierarchical(controller, directory)
            self._limit(controller, directory, limits, None)

    def _hierarchical(self, controller: str, directory: str) -> None:
        """Kernels before 5.12 may keep memory accounting flat: ask for a tree."""
        flag = os.path.join(directory, "memory.use_hierarchy")
        if controller == "memory" and os.path.exists(flag):
            with open(flag) as value:
                if value.read().strip() == "0":
                    self._kernel.write(flag, "1")

    def create(
        self, job_id: str, limits: Limits, workdir: str, *, owner: str
    ) -> V1JobCgroup:
        check_job_id(job_id)
        users = {c: os.path.join(p, user_name(owner)) for c, p in self.parents.items()}
        dirs = {c: os.path.join(u, job_id) for c, u in users.items()}
        cgroup = V1JobCgroup(dirs, self._kernel, self._clock)
        try:
            self._make(self.parents, self.totals)
            self._make(users, self.per_user)
            for directory in cgroup.directories:
                self._kernel.mkdir(directory)
            for controller, directory in dirs.items():
                self._limit(controller, directory, limits, workdir)
        except (OSError, IsolationUnavailable) as error:
            cgroup.discard()
            raise IsolationFailed(f"cannot set up the job's cgroup: {error}") from error
        return cgroup

    def _limit(
        self, controller: str, directory: str, limits: Limits, workdir: str | None
    ) -> None:
        """Write `limits` to `controller`'s files in `directory` (IO: jobs only)."""
        write = self._kernel.write

        def file(name: str) -> str:
            return os.path.join(directory, name)

        if controller == "cpu" and limits.cpu is not None:
            quota = max(_MIN_QUOTA_US, round(limits.cpu * CFS_PERIOD_US))
            write(file("cpu.cfs_period_us"), str(CFS_PERIOD_US))
            write(file("cpu.cfs_quota_us"), str(quota))
        if controller == "memory" and limits.memory_bytes is not None:
            write(file("memory.limit_in_bytes"), str(limits.memory_bytes))
            if os.path.exists(file("memory.memsw.limit_in_bytes")):
                write(file("memory.memsw.limit_in_bytes"), str(limits.memory_bytes))
            else:
                write(file("memory.swappiness"), "0")
        throttles = (
            ("blkio.throttle.read_bps_device", limits.io_read_bps),
            ("blkio.throttle.write_bps_device", limits.io_write_bps),
        )
        throttled = any(bps is not None for _, bps in throttles)
        if controller == "blkio" and workdir is not None and throttled:
            for device in self.io_devices(workdir):
                for name, bps in throttles:
                    if bps is not None:
                        write(file(name), f"{device} {bps}")
        if controller == "pids" and limits.pids is not None:
            write(file("pids.max"), str(limits.pids))

    def find(self, job_id: str, *, owner: str) -> V1JobCgroup | None:
        check_job_id(job_id)
        dirs = {
            c: os.path.join(p, user_name(owner), job_id)
            for c, p in self.parents.items()
        }
        if not all(map(os.path.isdir, dirs.values())):
            return None
        return V1JobCgroup(dirs, self._kernel, self._clock)

    def cleanup_stale(self, keep: Collection[str] = ()) -> int:
        jobs = stale_job_dirs(self.parents.values())
        jobs = {job: dirs for job, dirs in jobs.items() if job not in keep}
        for dirs in jobs.values():
            procs = [os.path.join(d, "cgroup.procs") for d in dirs]
            kill = partial(self._kernel.kill_listed, procs)
            remove_now(self._kernel, dirs, kill, STALE_TIMEOUT)
        remove_if_empty(self._kernel, stale_user_dirs(self.parents.values()))
        remove_if_empty(self._kernel, self.parents.values())
        return len(jobs)
