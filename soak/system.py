"""What a server run may leave behind on the machine: cgroups, processes, mounts.

Looked for independently of the code under test: the job cgroup parent is
searched for by name in the whole /sys/fs/cgroup tree, stray processes are
those whose working directory or cgroup points into this run, zombies are
those whose parent is the soak itself or that are job helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

from jobworker.isolation.cgroups import parent_name
from jobworker.isolation.cgroups.base import USER_PREFIX
from soak.server import proc_stat

CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_parents(state_dir: str) -> list[str]:
    """Every cgroup directory named after this state dir's job parent."""
    name = parent_name(state_dir)
    found = []
    for top, dirs, _ in os.walk(CGROUP_ROOT):
        if name in dirs:
            found.append(os.path.join(top, name))
        dirs[:] = [d for d in dirs if d != name]
    return found


def remove_cgroups(state_dir: str) -> None:
    """Kill what is in this state dir's cgroups and remove them all, deepest first.

    Only needed when a run broke off with the server killed mid-job.
    """
    for parent in cgroup_parents(state_dir):
        for directory in [top for top, _, _ in os.walk(parent, topdown=False)]:
            for _ in range(50):
                with open(os.path.join(directory, "cgroup.procs")) as procs:
                    pids = [int(pid) for pid in procs.read().split()]
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    os.rmdir(directory)
                    break
                except OSError:
                    time.sleep(0.1)


def job_cgroups(state_dir: str) -> set[str]:
    """The jobs (ids) with a cgroup below this state dir's users' cgroups.

    Jobs are at <parent>/u-<user>/<job>; one right below the parent is
    counted too.
    """
    found = set()
    for parent in cgroup_parents(state_dir):
        for entry in os.scandir(parent):
            if not entry.is_dir():
                continue
            if not entry.name.startswith(USER_PREFIX):
                found.add(entry.name)
                continue
            found |= {job.name for job in os.scandir(entry.path) if job.is_dir()}
    return found


def stray_processes(state_dir: str) -> list[int]:
    """Live processes working in the state dir or inside its cgroups."""
    real = os.path.realpath(state_dir)
    marker = "/" + parent_name(state_dir)
    stray = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = proc_stat(pid)
        if stat is None or stat[0] == "Z":
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            with open(f"/proc/{pid}/cgroup") as cgroup:
                groups = cgroup.read()
        except OSError:
            continue
        if cwd.startswith(real + "/") or marker in groups:
            stray.append(pid)
    return stray


def zombies(parent: int, patience: float = 3.0) -> list[int]:
    """Lasting zombies that are children of `parent` or job helpers.

    A zombie is normal for the moment between a death and its reaping (and
    other jobworker servers may run here), so only those still there after
    `patience` seconds count.
    """
    found = set(_zombies(parent))
    deadline = time.monotonic() + patience
    while found and time.monotonic() < deadline:
        time.sleep(0.1)
        found &= set(_zombies(parent))
    return sorted(found)


def _zombies(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        stat = proc_stat(int(entry)) if entry.isdigit() else None
        if stat is None or stat[0] != "Z":
            continue
        try:
            with open(f"/proc/{entry}/comm") as comm:
                name = comm.read()
        except OSError:
            continue
        if stat[1] == parent or name.startswith("jobworker"):
            found.append(int(entry))
    return found


def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path` in our mount namespace."""
    real = os.path.realpath(path)
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4]
            if point == real or point.startswith(real + "/"):
                points.append(point)
    return points


def work_dirs(state_dir: str) -> list[str]:
    """Job work directories still on disk (an ended job's is removed)."""
    jobs = os.path.join(state_dir, "jobs")
    if not os.path.isdir(jobs):
        return []
    return [
        path
        for entry in os.scandir(jobs)
        if os.path.isdir(path := os.path.join(entry.path, "work"))
    ]


@dataclass(frozen=True)
class Leftovers:
    """Everything of one state dir still on the machine."""

    cgroups: tuple[str, ...]
    processes: tuple[int, ...]
    zombies: tuple[int, ...]
    mounts: tuple[str, ...]

    @property
    def none(self) -> bool:
        return not (self.cgroups or self.processes or self.zombies or self.mounts)

    def describe(self) -> str:
        return (
            f"{len(self.cgroups)} cgroups, {len(self.processes)} processes,"
            f" {len(self.zombies)} zombies, {len(self.mounts)} mounts"
        )


def leftovers(state_dir: str) -> Leftovers:
    return Leftovers(
        cgroups=tuple(cgroup_parents(state_dir)),
        processes=tuple(stray_processes(state_dir)),
        zombies=tuple(zombies(os.getpid())),
        mounts=tuple(mounts_under(state_dir)),
    )
