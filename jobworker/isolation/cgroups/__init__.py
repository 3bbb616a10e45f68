"""Per-job cgroups: find the hierarchy the server runs in and pick a driver.

`detect` reads /proc/self/mountinfo and /proc/self/cgroup. It uses cgroup v2
when the server's own v2 cgroup offers cpu, memory, io and pids, else the v1
hierarchies of cpu, cpuacct, memory, blkio and pids, and otherwise raises
`IsolationUnavailable` saying what is missing. Job cgroups live in
`<own cgroup>/jobworker-<12 hex of sha256(realpath(state_dir))>/u-<user>/<job
id>` (`base.user_name`), so two servers with different state directories
never touch each other's jobs, and each user's jobs share a cgroup with the
user's limits.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence

from twisted.internet.interfaces import IReactorTime

from jobworker.errors import IsolationUnavailable
from jobworker.isolation.blockdev import check_io_devices
from jobworker.isolation.cgroups import v1, v2
from jobworker.isolation.cgroups.base import PARENT_PREFIX, Kernel
from jobworker.isolation.cgroups.v1 import V1Driver, V1JobCgroup
from jobworker.isolation.cgroups.v2 import V2Driver, V2JobCgroup
from jobworker.isolation.interfaces import CgroupBusy, CgroupDriver
from jobworker.isolation.mountinfo import (
    Mount,
    cgroup_directory,
    parse_mountinfo,
    parse_proc_cgroup,
)
from jobworker.model import Limits

__all__ = [
    "CgroupBusy",
    "Kernel",
    "V1Driver",
    "V1JobCgroup",
    "V2Driver",
    "V2JobCgroup",
    "detect",
    "detect_in",
    "parent_name",
]


def parent_name(state_dir: str) -> str:
    """The name of the cgroup holding the jobs of the server using `state_dir`."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(state_dir))).hexdigest()
    return PARENT_PREFIX + digest[:12]


def detect(
    state_dir: str,
    *,
    io_devices: Sequence[str] | None = None,
    reactor: IReactorTime | None = None,
    totals: Limits = Limits(),  # noqa: B008 - frozen, shared
    per_user: Limits = Limits(),  # noqa: B008 - frozen, shared
) -> CgroupDriver:
    """The driver for this kernel's cgroups; raise `IsolationUnavailable`.

    `totals` bound all jobs together, `per_user` all of one user's jobs.
    """
    with open("/proc/self/mountinfo") as mountinfo, open("/proc/self/cgroup") as own:
        mounts, paths = parse_mountinfo(mountinfo.read()), parse_proc_cgroup(own.read())
    return detect_in(
        mounts,
        paths,
        state_dir,
        io_devices=io_devices,
        reactor=reactor,
        totals=totals,
        per_user=per_user,
    )


def _v2_own(mounts: Sequence[Mount], paths: Mapping[str, str]) -> str | None:
    mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if mount is None or "" not in paths:
        return None
    own = cgroup_directory(mount, paths[""])
    if own is not None and os.path.basename(own) == v2.SERVER_LEAF:
        own = os.path.dirname(own)  # moved there by an earlier detect
    return own


def _v1_own(mounts: Sequence[Mount], paths: Mapping[str, str]) -> dict[str, str | None]:
    own: dict[str, str | None] = {}
    for controller in v1.CONTROLLERS:
        mount = next(
            (
                m
                for m in mounts
                if m.fstype == "cgroup" and controller in m.super_options
            ),
            None,
        )
        path = paths.get(controller)
        own[controller] = (
            None if mount is None or path is None else (cgroup_directory(mount, path))
        )
    return own


def detect_in(
    mounts: Sequence[Mount],
    paths: Mapping[str, str],
    state_dir: str,
    *,
    io_devices: Sequence[str] | None = None,
    reactor: IReactorTime | None = None,
    kernel: Kernel | None = None,
    sys_root: str = "/sys",
    totals: Limits = Limits(),  # noqa: B008 - frozen, shared
    per_user: Limits = Limits(),  # noqa: B008 - frozen, shared
) -> CgroupDriver:
    """`detect` over given mounts and own cgroup paths (for fake trees)."""
    kernel = kernel or Kernel()
    devices = check_io_devices(io_devices, sys_root) if io_devices else None
    name = parent_name(state_dir)
    problems = []
    own = _v2_own(mounts, paths)
    if own is not None:
        try:
            with open(os.path.join(own, "cgroup.controllers")) as controllers:
                available = controllers.read().split()
        except OSError as error:
            available = []
            problems.append(f"cannot read {own}/cgroup.controllers: {error}")
        missing = [c for c in v2.CONTROLLERS if c not in available]
        if not missing:
            v2.enable_controllers(kernel, own)
            return V2Driver(
                os.path.join(own, name),
                io_devices=devices,
                reactor=reactor,
                kernel=kernel,
                sys_root=sys_root,
                totals=totals,
                per_user=per_user,
            )
        problems.append(
            f"cgroup v2 at {own} lacks the {', '.join(missing)} controller(s)"
        )
    v1_own = _v1_own(mounts, paths)
    absent = [c for c, d in v1_own.items() if d is None]
    if not absent:
        parents = {c: os.path.join(d, name) for c, d in v1_own.items() if d}
        return V1Driver(
            parents,
            io_devices=devices,
            reactor=reactor,
            kernel=kernel,
            sys_root=sys_root,
            totals=totals,
            per_user=per_user,
        )
    problems.append(f"cgroup v1 has no {', '.join(absent)} hierarchy for this process")
    raise IsolationUnavailable("no usable cgroups: " + "; ".join(problems))
