"""The private, minimal root a job's mount namespace gets (doc/sandbox.md).

`host_layout` inspects the host once, at server start-up: which of the
system directories exist, which are symlinks (merged /usr), and the
operator's `--bind-ro` paths. `root_plan` turns that into the list of mount
operations for one job, plain tuples the stdlib-only helper executes
before it `pivot_root`s into the result:

    ("bind", target, source, attrs)    recursive bind, then MOUNT_ATTR_* attrs
    ("mount", target, source, fstype, flags, data)
    ("symlink", target, link_text)
    ("seal", target, attrs)            remount one mount (not recursively)

Targets are paths inside the new root. The root itself is a small tmpfs,
sealed read-only last; every job gets its own /tmp, /var/tmp, /run and
/dev/shm tmpfs (owned by the job's uid, 0700, sized by its memory limit,
whose cgroup their pages are charged to), a fresh /proc, a read-only sysfs
of its network namespace, a minimal /dev and its working directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from jobworker.errors import IsolationUnavailable

# The host directories every job sees read-only (those that exist).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Mount points inside the job's own root, not host temporary files.
PRIVATE_TMPFS = ("/tmp", "/var/tmp", "/run", "/dev/shm")  # noqa: S108
HOSTNAME = "jobworker"
# The mount(2) flags and the mount_setattr(2) attributes, which share values.
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
RO = MS_RDONLY | MS_NOSUID | MS_NODEV
_DEV_SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
)
_VAR_SYMLINKS = (("../run", "/var/run"), ("../run/lock", "/var/lock"))


@dataclass(frozen=True)
class HostLayout:
    """What of the host a job sees.

    `system`: (path, symlink text, or None to bind it read-only);
    `binds`: the operator's extra read-only paths, mounted last so that
    they may lie below a private tmpfs (/run/x).
    """

    system: tuple[tuple[str, str | None], ...]
    binds: tuple[str, ...] = ()
    hostname: str = HOSTNAME


def host_layout(bind_ro: Iterable[str] = (), root: str = "/") -> HostLayout:
    """The system directories present here, and the operator's binds.

    Raises `IsolationUnavailable` for a `--bind-ro` path that is not an
    existing absolute path.
    """
    system: list[tuple[str, str | None]] = []
    for path in SYSTEM_DIRS:
        host = os.path.join(root, path.lstrip("/"))
        if os.path.islink(host):
            system.append((path, os.readlink(host)))
        elif os.path.isdir(host):
            system.append((path, None))
    binds: list[str] = []
    for path in bind_ro:
        normal = os.path.normpath(path)
        if not os.path.isabs(normal) or normal == "/":
            raise IsolationUnavailable(f"--bind-ro {path!r}: not an absolute path")
        if not os.path.exists(os.path.join(root, normal.lstrip("/"))):
            raise IsolationUnavailable(f"--bind-ro {path!r}: no such file or directory")
        if normal not in binds and normal not in (p for p, _ in system):
            binds.append(normal)
    return HostLayout(tuple(system), tuple(binds))


def _tmpfs_data(uid: int, gid: int, size: int | None, mode: str = "0700") -> str:
    options = [f"mode={mode}", f"uid={uid}", f"gid={gid}"]
    return ",".join([*options, f"size={size}"] if size is not None else options)


def root_plan(
    layout: HostLayout,
    *,
    work_dir: str,
    uid: int,
    gid: int,
    tmpfs_bytes: int | None,
) -> list[tuple[Any, ...]]:
    """The helper's mount operations for one job (see the module docstring).

    `tmpfs_bytes` caps each private tmpfs (the job's memory limit; `None`
    leaves the kernel's default of half the RAM, still charged to the job).
    """
    plan: list[tuple[Any, ...]] = []
    for path, link in layout.system:
        if link is not None:
            plan.append(("symlink", path, link))
        else:
            plan.append(("bind", path, os.path.realpath(path), RO))
    fresh = MS_NOSUID | MS_NODEV | MS_NOEXEC
    plan.append(("mount", "/proc", "proc", "proc", fresh, None))
    plan.append(("mount", "/sys", "sysfs", "sysfs", fresh | MS_RDONLY, None))
    dev_data = "mode=0755,size=64k,nr_inodes=64"
    plan.append(("mount", "/dev", "jobworker-dev", "tmpfs", MS_NOSUID, dev_data))
    for device in DEVICES:
        plan.append(("bind", f"/dev/{device}", f"/dev/{device}", MS_NOSUID | MS_NOEXEC))
    pts_data = "newinstance,ptmxmode=0666,mode=0620"
    plan.append(
        ("mount", "/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC, pts_data)
    )
    plan.extend(("symlink", link, text) for text, link in _DEV_SYMLINKS)
    data = _tmpfs_data(uid, gid, tmpfs_bytes)
    for path in PRIVATE_TMPFS:
        plan.append(
            ("mount", path, "jobworker-tmp", "tmpfs", MS_NOSUID | MS_NODEV, data)
        )
    plan.extend(("symlink", link, text) for text, link in _VAR_SYMLINKS)
    plan.append(("seal", "/dev", MS_RDONLY | MS_NOSUID | MS_NOEXEC))
    # Last: a work dir or bind below /tmp or /run stays visible.
    plan.append(("bind", work_dir, work_dir, MS_NOSUID | MS_NODEV))
    plan.extend(("bind", path, os.path.realpath(path), RO) for path in layout.binds)
    return plan


def helper_rootfs(
    layout: HostLayout, stage: str, plan: Sequence[tuple[Any, ...]]
) -> dict[str, Any]:
    """The `rootfs` entry of the helper's configuration."""
    return {"stage": stage, "plan": list(plan), "hostname": layout.hostname}
