"""The cgroup v2 driver: one directory per job in the unified hierarchy.

Set-up: the controllers are enabled in the server's own cgroup's
cgroup.subtree_control; if the kernel refuses because that cgroup holds
processes (the no-internal-processes rule), they are first moved into a leaf
`<own>/jobworker-server`. The per-state-dir parent enables them again for
its children, and so does each user's cgroup in it: jobs live in
`<parent>/u-<user>/<job>`, the totals on the parent, a user's limits on the
user's cgroup, and the kernel holds each level below the one above. Files
written on each level: cpu.max, memory.max, memory.swap.max 0 (swap cannot
extend memory), pids.max; for jobs also one io.max line per disk (rbps=,
wbps=). CPU time comes from cpu.stat usage_usec, the OOM flag from
memory.events oom_kill; usage from memory.peak (kernel 5.19 and later;
before, the highest memory.current seen when usage was read), io.stat
(rbytes, wbytes, every device) and pids.peak (where the kernel has it);
kill_all writes cgroup.kill.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Collection, Sequence
from contextlib import suppress
from functools import partial

from twisted.internet.interfaces import IReactorTime

from jobworker.errors import IsolationFailed, IsolationUnavailable
from jobworker.isolation.cgroups.base import (
    DriverBase,
    JobCgroupBase,
    Kernel,
    check_job_id,
    listed_pids,
    read_int,
    read_keyed,
    remove_if_empty,
    remove_now,
    stale_job_dirs,
    stale_user_dirs,
    user_name,
)
from jobworker.model import Limits, Usage

CONTROLLERS = ("cpu", "memory", "io", "pids")
SERVER_LEAF = "jobworker-server"
CPU_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000
_MOVE_ROUNDS = 10
STALE_TIMEOUT = 5.0
_ENABLE = " ".join(f"+{c}" for c in CONTROLLERS)


def kill_cgroup(kernel: Kernel, directory: str) -> None:
    """SIGKILL everything in a v2 cgroup: cgroup.kill, or one by one."""
    kill_file = os.path.join(directory, "cgroup.kill")
    if os.path.exists(kill_file):
        with suppress(FileNotFoundError):
            kernel.write(kill_file, "1")
    else:  # kernels before 5.14
        kernel.kill_listed([os.path.join(directory, "cgroup.procs")])


def enable_controllers(kernel: Kernel, own: str) -> None:
    """Enable the job controllers below `own`, moving its processes to a leaf."""
    control = os.path.join(own, "cgroup.subtree_control")
    try:
        kernel.write(control, _ENABLE)
    except OSError as error:
        if error.errno != errno.EBUSY:
            raise IsolationUnavailable(f"cannot write {control}: {error}") from error
        _move_to_leaf(kernel, own, control)


def _move_to_leaf(kernel: Kernel, own: str, control: str) -> None:
    """Satisfy the no-internal-processes rule, then enable the controllers."""
    leaf = os.path.join(own, SERVER_LEAF)
    try:
        if not os.path.isdir(leaf):
            kernel.mkdir(leaf)
        for _ in range(_MOVE_ROUNDS):
            pids = listed_pids([os.path.join(own, "cgroup.procs")])
            if not pids:
                break
            for pid in pids:
                with suppress(ProcessLookupError):
                    kernel.write(os.path.join(leaf, "cgroup.procs"), str(pid))
        kernel.write(control, _ENABLE)
    except OSError as error:
        raise IsolationUnavailable(
            f"cannot enable {_ENABLE} in {control} after moving its processes"
            f" to {leaf}: {error}"
        ) from error


class V2JobCgroup(JobCgroupBase):
    """One job's directory in the unified hierarchy."""

    def __init__(self, directory: str, kernel: Kernel, clock: IReactorTime):
        super().__init__([directory], kernel, clock)
        self.directory = directory
        self._lock = threading.Lock()
        self._current_peak = 0  # the memory.peak fallback

    def file(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def kill_all(self) -> None:
        kill_cgroup(self._kernel, self.directory)

    def oom_killed(self) -> bool:
        return read_keyed(self.file("memory.events")).get("oom_kill", 0) > 0

    def cpu_usage_ns(self) -> int:
        return read_keyed(self.file("cpu.stat"))["usage_usec"] * 1000

    def usage(self) -> Usage:
        read, write = self._io_bytes()
        return Usage(
            cpu_seconds=self.cpu_usage_ns() / 1e9,
            memory_peak_bytes=self._memory_peak(),
            io_read_bytes=read,
            io_write_bytes=write,
            pids_peak=read_int(self.file("pids.peak")),
        )

    def _memory_peak(self) -> int | None:
        """memory.peak; without it, the highest memory.current read so far."""
        peak = read_int(self.file("memory.peak"))
        if peak is not None:
            return peak
        current = read_int(self.file("memory.current"))
        if current is None:
            return None
        with self._lock:  # usage() may be read from several threads
            self._current_peak = max(self._current_peak, current)
            return self._current_peak

    def _io_bytes(self) -> tuple[int, int]:
        """Bytes read and written, every device: "MAJ:MIN rbytes=N wbytes=N ..."."""
        read = write = 0
        with open(self.file("io.stat")) as stats:
            for line in stats:
                fields = dict(
                    word.split("=", 1) for word in line.split()[1:] if "=" in word
                )
                read += int(fields.get("rbytes", 0))
                write += int(fields.get("wbytes", 0))
        return read, write


class V2Driver(DriverBase):
    """Creates job cgroups in the unified hierarchy, below the server's own.

    Jobs live in `<parent>/u-<user>/<job>`: the totals are written on the
    parent when it is made, a user's limits on the user's cgroup; both
    enable the controllers for their children.
    """

    def __init__(
        self,
        parent: str,
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
        self.parent = parent
        self._make(parent, self.totals, again=True)  # proves we may, at start-up
        remove_if_empty(self._kernel, [parent])

    @property
    def version(self) -> int:
        return 2

    def _make(self, directory: str, limits: Limits, *, again: bool = False) -> None:
        """Make an inner cgroup if it is missing (`again`: set it up anyway):
        its limits, then its children's controllers."""
        if os.path.isdir(directory) and not again:
            return
        try:
            with suppress(FileExistsError):
                self._kernel.mkdir(directory)
            self._limit(directory, limits, None)
            self._kernel.write(
                os.path.join(directory, "cgroup.subtree_control"), _ENABLE
            )
        except OSError as error:
            raise IsolationUnavailable(
                f"cannot create the cgroup {directory} with {_ENABLE}: {error}"
            ) from error

    def create(
        self, job_id: str, limits: Limits, workdir: str, *, owner: str
    ) -> V2JobCgroup:
        check_job_id(job_id)
        user = os.path.join(self.parent, user_name(owner))
        cgroup = V2JobCgroup(os.path.join(user, job_id), self._kernel, self._clock)
        try:
            self._make(self.parent, self.totals)
            self._make(user, self.per_user)
            self._kernel.mkdir(cgroup.directory)
            self._limit(cgroup.directory, limits, workdir)
        except (OSError, IsolationUnavailable) as error:
            cgroup.discard()
            raise IsolationFailed(f"cannot set up the job's cgroup: {error}") from error
        return cgroup

    def _limit(self, directory: str, limits: Limits, workdir: str | None) -> None:
        """Write `limits` to the cgroup `directory` (IO: jobs only)."""
        write = self._kernel.write

        def file(name: str) -> str:
            return os.path.join(directory, name)

        if limits.cpu is not None:
            quota = max(_MIN_QUOTA_US, round(limits.cpu * CPU_PERIOD_US))
            write(file("cpu.max"), f"{quota} {CPU_PERIOD_US}")
        if limits.memory_bytes is not None:
            write(file("memory.max"), str(limits.memory_bytes))
            if os.path.exists(file("memory.swap.max")):
                write(file("memory.swap.max"), "0")
        rates = [
            f"{key}={bps}"
            for key, bps in (
                ("rbps", limits.io_read_bps),
                ("wbps", limits.io_write_bps),
            )
            if bps is not None
        ]
        if rates and workdir is not None:
            for device in self.io_devices(workdir):
                write(file("io.max"), " ".join([device, *rates]))
        if limits.pids is not None:
            write(file("pids.max"), str(limits.pids))

    def find(self, job_id: str, *, owner: str) -> V2JobCgroup | None:
        check_job_id(job_id)
        directory = os.path.join(self.parent, user_name(owner), job_id)
        if not os.path.isdir(directory):
            return None
        return V2JobCgroup(directory, self._kernel, self._clock)

    def cleanup_stale(self, keep: Collection[str] = ()) -> int:
        jobs = stale_job_dirs([self.parent])
        jobs = {job: dirs for job, dirs in jobs.items() if job not in keep}
        for dirs in jobs.values():
            kill = partial(kill_cgroup, self._kernel, dirs[0])
            remove_now(self._kernel, dirs, kill, STALE_TIMEOUT)
        remove_if_empty(self._kernel, stale_user_dirs([self.parent]))
        remove_if_empty(self._kernel, [self.parent])
        return len(jobs)
