"""What the v1 and v2 cgroup drivers share: the kernel calls, the layout
(a parent per state directory, a cgroup per user in it, a cgroup per job in
that), killing everything in a cgroup, and removing cgroup directories
while the kernel still reports them busy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from jobworker.errors import IsolationFailed
from jobworker.isolation.blockdev import job_disks
from jobworker.isolation.interfaces import CgroupBusy
from jobworker.model import Limits
from jobworker.reactors import or_global

PARENT_PREFIX = "jobworker-"
USER_PREFIX = "u-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
REMOVE_TIMEOUT = 10.0  # seconds remove() keeps retrying a busy cgroup
_FIRST_DELAY = 0.01
_MAX_DELAY = 0.5
_KILL_ROUNDS = 20


class Kernel:
    """The calls that change cgroups; tests replace it to drive fake trees."""

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def write(self, path: str, value: str) -> None:
        """Write `value` with one write(2), as cgroup files require."""
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def kill_listed(self, procs_files: Sequence[str]) -> None:
        """SIGKILL every process listed in `procs_files`, forks included.

        Each pid is pinned with a pidfd and signalled only if it is still
        listed after that, so a recycled pid outside the cgroup is never hit.
        """
        signalled: set[int] = set()
        for _ in range(_KILL_ROUNDS):
            pids = listed_pids(procs_files) - signalled
            if not pids:
                return
            fds: dict[int, int] = {}
            for pid in pids:
                with suppress(ProcessLookupError):
                    fds[pid] = os.pidfd_open(pid)
            try:
                still = listed_pids(procs_files)
                for pid, fd in fds.items():
                    if pid in still:
                        with suppress(ProcessLookupError):
                            signal.pidfd_send_signal(fd, signal.SIGKILL)
            finally:
                for fd in fds.values():
                    os.close(fd)
            signalled |= pids


def listed_pids(procs_files: Iterable[str]) -> set[int]:
    """The pids in `cgroup.procs` files; a vanished file lists none."""
    pids: set[int] = set()
    for path in procs_files:
        with suppress(FileNotFoundError), open(path) as procs:
            pids.update(int(word) for word in procs.read().split())
    return pids


def read_keyed(path: str) -> dict[str, int]:
    """Parse a flat "key value" cgroup file (memory.events, cpu.stat...)."""
    values: dict[str, int] = {}
    with open(path) as file:
        for line in file:
            key, _, value = line.partition(" ")
            with suppress(ValueError):
                values[key] = int(value)
    return values


def read_int(path: str) -> int | None:
    """A cgroup file holding one number; None when the kernel lacks the file."""
    try:
        with open(path) as file:
            return int(file.read())
    except FileNotFoundError:
        return None


def user_name(owner: str) -> str:
    """The cgroup name of `owner`'s jobs: "u-<readable part>-<12 hex>".

    A CN may hold any character (a slash, a newline, "..") and any length;
    the name keeps at most 24 safe characters of it for people and a hash
    of all of it for uniqueness.
    """
    digest = hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()
    readable = _UNSAFE.sub("_", owner[:24])
    return f"{USER_PREFIX}{readable}-{digest[:12]}"


def check_job_id(job_id: str) -> None:
    """Refuse a job id that is not a plain directory name."""
    if not job_id or "/" in job_id or job_id in (".", "..") or "\0" in job_id:
        raise IsolationFailed(f"job id {job_id!r} cannot name a cgroup")


def _try_rmdir(kernel: Kernel, directories: Sequence[str]) -> list[str]:
    """Remove what can be removed now; return the directories still busy."""
    busy = []
    for directory in directories:
        try:
            kernel.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise CgroupBusy(
                    f"cannot remove cgroup {directory}: {error}"
                ) from error
            busy.append(directory)
    return busy


def _removal(
    kernel: Kernel,
    directories: Sequence[str],
    kill: Callable[[], None],
    now: Callable[[], float],
    timeout: float,
) -> Iterator[float]:
    """Kill and rmdir until all are gone; yield how long to wait in between."""
    deadline = now() + timeout
    delay = _FIRST_DELAY
    remaining = list(directories)
    while True:
        kill()
        remaining = _try_rmdir(kernel, remaining)
        if not remaining:
            prune_parents(kernel, directories)
            return
        if now() >= deadline:
            raise CgroupBusy(f"cgroup {remaining[0]} still busy after {timeout}s")
        yield delay
        delay = min(delay * 2, _MAX_DELAY)


def prune_parents(kernel: Kernel, directories: Sequence[str]) -> None:
    """Remove the user and state-dir cgroups above `directories` once empty.

    Only directories named as ours are tried: never the server's own cgroup.
    """
    users, parents = [], []
    for directory in directories:
        above = os.path.dirname(directory)
        if os.path.basename(above).startswith(USER_PREFIX):
            users.append(above)
            above = os.path.dirname(above)
        if os.path.basename(above).startswith(PARENT_PREFIX):
            parents.append(above)
    remove_if_empty(kernel, users)
    remove_if_empty(kernel, parents)


def remove_if_empty(kernel: Kernel, parents: Iterable[str]) -> None:
    """Remove per-state-dir parents that hold no job (else they are busy).

    An idle server leaves nothing behind; the next `create` makes them again.
    """
    for parent in dict.fromkeys(parents):
        with suppress(OSError):
            kernel.rmdir(parent)


async def remove_busy(
    kernel: Kernel,
    directories: Sequence[str],
    kill: Callable[[], None],
    clock: IReactorTime,
    timeout: float = REMOVE_TIMEOUT,
) -> None:
    """Kill and rmdir `directories`, retrying on `clock`."""
    for delay in _removal(kernel, directories, kill, clock.seconds, timeout):
        await deferLater(clock, delay, lambda: None)


def remove_now(
    kernel: Kernel, directories: Sequence[str], kill: Callable[[], None], timeout: float
) -> None:
    """Kill and rmdir `directories`, blocking; for server start-up only.

    TODO: this polls with short sleeps because `cleanup_stale` runs before
    the reactor does; waiting on the killed processes' pidfds would avoid it.
    """
    for delay in _removal(kernel, directories, kill, time.monotonic, timeout):
        time.sleep(delay)


class JobCgroupBase:
    """A job's cgroup directories: killing what is in them and removing them."""

    def __init__(
        self, directories: Sequence[str], kernel: Kernel, clock: IReactorTime
    ) -> None:
        self.directories = tuple(dict.fromkeys(directories))
        self._kernel = kernel
        self._clock = clock

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(os.path.join(d, "cgroup.procs") for d in self.directories)

    def kill_all(self) -> None:
        self._kernel.kill_listed(self.procs_files)

    def remove(self) -> Deferred[None]:
        return Deferred.fromCoroutine(
            remove_busy(self._kernel, self.directories, self.kill_all, self._clock)
        )

    def discard(self) -> None:
        """Undo a half-made cgroup at creation; nothing can run in it yet."""
        with suppress(OSError, CgroupBusy):
            _try_rmdir(self._kernel, self.directories)
            prune_parents(self._kernel, self.directories)


def _subdirs(parent: str) -> list[os.DirEntry[str]]:
    with suppress(FileNotFoundError):
        return [e for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)]
    return []


def stale_job_dirs(parents: Iterable[str]) -> dict[str, list[str]]:
    """Job cgroups below the parent directories: job id -> its directories.

    Jobs are in the users' cgroups; one right in a parent is of a run from
    before there were users' cgroups.
    """
    jobs: dict[str, list[str]] = {}
    for parent in dict.fromkeys(parents):
        for entry in _subdirs(parent):
            if not entry.name.startswith(USER_PREFIX):
                jobs.setdefault(entry.name, []).append(entry.path)
                continue
            for job in _subdirs(entry.path):
                jobs.setdefault(job.name, []).append(job.path)
    return jobs


def stale_user_dirs(parents: Iterable[str]) -> list[str]:
    """The users' cgroups below the parents (empty once their jobs are gone)."""
    return [
        entry.path
        for parent in dict.fromkeys(parents)
        for entry in _subdirs(parent)
        if entry.name.startswith(USER_PREFIX)
    ]


class DriverBase:
    """What both drivers hold: the kernel, the clock, the IO devices, and the
    limits of all jobs together (`totals`, on the parent) and of all of one
    user's jobs together (`per_user`, on each user's cgroup)."""

    def __init__(
        self,
        *,
        io_devices: Sequence[str] | None,
        reactor: IReactorTime | None,
        kernel: Kernel | None,
        mountinfo_path: str,
        sys_root: str,
        totals: Limits,
        per_user: Limits,
    ) -> None:
        self._io_devices = list(io_devices) if io_devices is not None else None
        self._clock = IReactorTime(or_global(reactor))
        self._kernel = kernel or Kernel()
        self._mountinfo_path = mountinfo_path
        self._sys_root = sys_root
        self.totals = totals
        self.per_user = per_user

    def io_devices(self, workdir: str) -> list[str]:
        """The disks a job's IO limits are written for: the override, or the
        disks of the filesystems the job sees (see jobworker.isolation.blockdev)."""
        if self._io_devices is not None:
            return self._io_devices
        return job_disks(
            workdir, mountinfo_path=self._mountinfo_path, sys_root=self._sys_root
        )
