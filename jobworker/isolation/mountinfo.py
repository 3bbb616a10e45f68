"""Parse /proc/<pid>/mountinfo and /proc/<pid>/cgroup into plain values.

Pure functions over the files' text, shared by the cgroup drivers (where is
each hierarchy mounted, where is the server's own cgroup) and by
jobworker.isolation.blockdev (which block devices back the mounted filesystems).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: a mounted filesystem."""

    device: str  # "MAJ:MIN" of st_dev; major 0 for tmpfs, overlay, btrfs...
    root: str  # the directory of the filesystem mounted here
    mount_point: str
    fstype: str
    source: str
    super_options: tuple[str, ...]


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts listed in a mountinfo file, in order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields or len(fields) < 10:
            continue
        dash = fields.index("-", 6)
        mounts.append(
            Mount(
                device=fields[2],
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fstype=fields[dash + 1],
                source=_unescape(fields[dash + 2]),
                super_options=tuple(fields[dash + 3].split(",")),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map each controller (or "name=x", or "" for v2) to the cgroup path."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def cgroup_directory(mount: Mount, path: str) -> str | None:
    """The directory of cgroup `path` in `mount`, or None if outside it."""
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    relative = path[len(root) :].strip("/")
    return os.path.join(mount.mount_point, relative) if relative else mount.mount_point


def mount_of(mounts: list[Mount], path: str) -> Mount | None:
    """The mount `path` (absolute, resolved) is on: the last longest match."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/") or "/"
        inside = point in ("/", path) or path.startswith(point + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = mount
    return best
