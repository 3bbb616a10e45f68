"""Fake cgroup trees in a temp dir, for the cgroup drivers' unit tests.

`FakeKernel` behaves like cgroupfs where the drivers can tell: a new
directory comes with its control files, writing a file that does not exist
fails, rmdir removes the control files (optionally busy a few times first).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence

from jobworker.isolation.cgroups import Kernel
from jobworker.isolation.mountinfo import Mount

V1_FILES = {
    "cgroup.procs": "",
    "cpu.cfs_period_us": "100000\n",
    "cpu.cfs_quota_us": "-1\n",
    "cpuacct.usage": "0\n",
    "memory.limit_in_bytes": "9223372036854771712\n",
    "memory.memsw.limit_in_bytes": "9223372036854771712\n",
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    "memory.failcnt": "0\n",
    "memory.swappiness": "60\n",
    "blkio.throttle.read_bps_device": "",
    "blkio.throttle.write_bps_device": "",
    "pids.max": "max\n",
    "memory.max_usage_in_bytes": "0\n",
    "blkio.throttle.io_service_bytes": "Total 0\n",
    "pids.peak": "0\n",
}

V2_FILES = {
    "cgroup.procs": "",
    "cgroup.controllers": "cpuset cpu io memory hugetlb pids\n",
    "cgroup.subtree_control": "",
    "cgroup.kill": "",
    "cpu.max": "max 100000\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    "io.max": "",
    "pids.max": "max\n",
    "memory.current": "0\n",
    "memory.peak": "0\n",
    "io.stat": "",
    "pids.peak": "0\n",
}


def fill(directory: str, files: dict[str, str]) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(directory, name), "w") as file:
            file.write(content)


class FakeKernel(Kernel):
    """cgroupfs as far as the drivers can see it, with a log of changes."""

    def __init__(self, files: dict[str, str], busy: int = 0) -> None:
        self.files = dict(files)  # a test may change its copy
        self.busy = busy
        self.writes: list[tuple[str, str]] = []
        self.kills: list[tuple[str, ...]] = []
        self.rmdirs: list[str] = []
        self.refuse: dict[str, OSError] = {}
        self.refuse_mkdir = ""

    def mkdir(self, path: str) -> None:
        if path == self.refuse_mkdir:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        os.mkdir(path)
        fill(path, self.files)

    def rmdir(self, path: str) -> None:
        self.rmdirs.append(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, "gone", path)
        if self.busy:
            self.busy -= 1
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        if any(e.is_dir() for e in os.scandir(path)):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        shutil.rmtree(path)

    def write(self, path: str, value: str) -> None:
        if path in self.refuse:
            raise self.refuse.pop(path)
        super().write(path, value)
        self.writes.append((path, value))

    def kill_listed(self, procs_files: Sequence[str]) -> None:
        self.kills.append(tuple(procs_files))

    def written(self, name: str) -> list[str]:
        """The values written to files called `name`, in order."""
        return [v for p, v in self.writes if os.path.basename(p) == name]


def v1_tree(root: str, own: dict[str, str]) -> tuple[list[Mount], dict[str, str]]:
    """Mount one fake v1 hierarchy per controller (cpu and cpuacct together)."""
    mounts = []
    for controllers in (("cpu", "cpuacct"), ("memory",), ("blkio",), ("pids",)):
        point = os.path.join(root, ",".join(controllers))
        path = own.get(controllers[0], "/")
        fill(os.path.join(point, path.strip("/")), V1_FILES)
        mounts.append(
            Mount("0:30", "/", point, "cgroup", "cgroup", ("rw", *controllers))
        )
    unified = os.path.join(root, "unified")
    fill(unified, {**V2_FILES, "cgroup.controllers": "hugetlb\n"})
    mounts.append(Mount("0:31", "/", unified, "cgroup2", "cgroup2", ("rw",)))
    paths = {c: own.get(c, "/") for c in ("cpu", "cpuacct", "memory", "blkio", "pids")}
    paths[""] = "/"
    return mounts, paths


def v2_tree(root: str, own: str) -> tuple[list[Mount], dict[str, str]]:
    """Mount a fake unified hierarchy with the server in cgroup `own`."""
    fill(os.path.join(root, own.strip("/")), V2_FILES)
    return [Mount("0:31", "/", root, "cgroup2", "cgroup2", ("rw",))], {"": own}
