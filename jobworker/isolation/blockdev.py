"""Choose the whole-disk block devices a job's disk IO limits apply to.

The kernel throttles IO per whole disk (it refuses a partition's MAJ:MIN), so
each mounted filesystem's device is resolved to its disk through sysfs: a
partition's /sys/dev/block/MAJ:MIN directory has a `partition` file and sits
inside its disk's directory, whose `dev` file names the disk. Device-mapper,
md and loop devices are disks of their own (their bios are throttled where
the filesystem submits them), NVMe namespaces too; no minor number is assumed.

By default the devices are those of every block-backed filesystem the job
can see (its mount namespace starts as a copy of the server's), plus the one
holding its work directory. The server's `--io-device` option replaces them.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence

from jobworker.errors import IsolationUnavailable
from jobworker.isolation.mountinfo import Mount, mount_of, parse_mountinfo

_DEVICE = re.compile(r"^(\d+):(\d+)$")


def whole_disk(device: str, sys_root: str = "/sys") -> str:
    """The "MAJ:MIN" of the disk holding block device `device`.

    Raises `LookupError` if the kernel does not know the device.
    """
    entry = os.path.join(sys_root, "dev", "block", device)
    if not os.path.exists(entry):
        raise LookupError(f"no block device {device}")
    directory = os.path.realpath(entry)
    if os.path.exists(os.path.join(directory, "partition")):
        directory = os.path.dirname(directory)
    with open(os.path.join(directory, "dev")) as dev:
        return dev.read().strip()


def _mount_device(mount: Mount) -> str | None:
    """The block device a mount is on, if any (btrfs reports an anonymous one)."""
    major = mount.device.split(":", 1)[0]
    if major != "0":
        return mount.device
    if mount.source.startswith("/dev/"):
        try:
            info = os.stat(mount.source)
        except OSError:
            return None
        if stat.S_ISBLK(info.st_mode):
            return f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    return None


def disks_of(mounts: Iterable[Mount], sys_root: str = "/sys") -> list[str]:
    """The distinct whole disks behind `mounts`, in first-seen order."""
    disks: list[str] = []
    for mount in mounts:
        device = _mount_device(mount)
        if device is None:
            continue
        try:
            disk = whole_disk(device, sys_root)
        except (LookupError, OSError):
            continue  # e.g. an anonymous device number that is not a disk
        if disk not in disks:
            disks.append(disk)
    return disks


def job_disks(
    workdir: str,
    *,
    mountinfo_path: str = "/proc/self/mountinfo",
    sys_root: str = "/sys",
) -> list[str]:
    """The disks a job working in `workdir` can do IO on: its dir's first."""
    with open(mountinfo_path) as file:
        mounts = parse_mountinfo(file.read())
    own = mount_of(mounts, os.path.realpath(workdir))
    ordered = ([own] if own is not None else []) + mounts
    return disks_of(ordered, sys_root)


def check_io_devices(devices: Sequence[str], sys_root: str = "/sys") -> list[str]:
    """Validate the server's IO device override: existing whole disks only.

    Raises `IsolationUnavailable` naming the offending entry.
    """
    checked: list[str] = []
    for device in devices:
        if not _DEVICE.match(device):
            raise IsolationUnavailable(f"IO device {device!r} is not MAJ:MIN")
        try:
            disk = whole_disk(device, sys_root)
        except (LookupError, OSError):
            raise IsolationUnavailable(
                f"IO device {device} is not a block device known to the kernel"
            ) from None
        if disk != device:
            raise IsolationUnavailable(
                f"IO device {device} is a partition; give its disk {disk} instead"
            )
        if device not in checked:
            checked.append(device)
    return checked
