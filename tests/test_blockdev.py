"""Tests for jobworker.isolation.blockdev: partitions resolve to their disk
through sysfs."""

from __future__ import annotations

import os

from twisted.trial import unittest

from jobworker.errors import IsolationUnavailable
from jobworker.isolation.blockdev import (
    check_io_devices,
    disks_of,
    job_disks,
    whole_disk,
)
from jobworker.isolation.mountinfo import Mount

# (sysfs path below devices/, MAJ:MIN, is a partition)
_DEVICES = [
    ("pci0/virtio1/block/vda", "254:0", False),
    ("pci0/virtio1/block/vda/vda1", "254:1", True),
    ("pci0/nvme/nvme0/nvme0n1", "259:0", False),
    ("pci0/nvme/nvme0/nvme0n1/nvme0n1p1", "259:1", True),
    ("pci0/nvme/nvme1/nvme1n1", "259:2", False),
    ("pci0/nvme/nvme1/nvme1n1/nvme1n1p1", "259:3", True),
    ("virtual/block/dm-0", "253:0", False),
    ("virtual/block/md127", "9:127", False),
    ("virtual/block/md127/md127p1", "259:4", True),
]


def make_sysfs(root: str) -> str:
    """A fake /sys with /sys/dev/block links like the kernel's."""
    links = os.path.join(root, "dev", "block")
    os.makedirs(links)
    for path, device, partition in _DEVICES:
        directory = os.path.join(root, "devices", path)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "dev"), "w") as dev:
            dev.write(device + "\n")
        if partition:
            with open(os.path.join(directory, "partition"), "w") as number:
                number.write("1\n")
        target = os.path.relpath(directory, links)
        os.symlink(target, os.path.join(links, device))
    return root


def mount(device: str, point: str, fstype: str = "ext4", source: str = "x") -> Mount:
    return Mount(device, "/", point, fstype, source, ("rw",))


class WholeDiskTests(unittest.TestCase):
    def setUp(self) -> None:
        self.sys = make_sysfs(self.mktemp())

    def test_partition_resolves_to_its_disk(self) -> None:
        self.assertEqual(whole_disk("254:1", self.sys), "254:0")

    def test_nvme_partition_resolves_to_a_disk_whose_minor_is_not_zero(self) -> None:
        self.assertEqual(whole_disk("259:3", self.sys), "259:2")

    def test_device_mapper_and_md_are_disks_themselves(self) -> None:
        self.assertEqual(whole_disk("253:0", self.sys), "253:0")
        self.assertEqual(whole_disk("259:4", self.sys), "9:127")

    def test_unknown_device_is_a_lookup_error(self) -> None:
        self.assertRaises(LookupError, whole_disk, "8:0", self.sys)

    def test_tmpfs_and_overlay_have_no_disk(self) -> None:
        mounts = [
            mount("0:25", "/tmp", "tmpfs"),
            mount("254:1", "/"),
            mount("0:40", "/merged", "overlay"),
            mount("259:3", "/srv"),
            mount("254:1", "/home"),
        ]
        self.assertEqual(disks_of(mounts, self.sys), ["254:0", "259:2"])

    def test_job_disks_puts_the_workdirs_disk_first(self) -> None:
        mountinfo = os.path.join(self.mktemp())
        with open(mountinfo, "w") as file:
            file.write(
                "27 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n"
                "30 27 0:25 / /tmp rw - tmpfs tmpfs rw\n"
                "31 27 253:0 / /var/lib/jobs rw - xfs /dev/dm-0 rw\n"
            )
        disks = job_disks(
            "/var/lib/jobs/state", mountinfo_path=mountinfo, sys_root=self.sys
        )
        self.assertEqual(disks, ["253:0", "254:0"])

    def test_job_disks_of_this_machines_var_tmp_is_a_real_disk(self) -> None:
        for disk in job_disks("/var/tmp"):
            self.assertFalse(
                os.path.exists(f"/sys/dev/block/{disk}/partition"), f"{disk} partition"
            )


class IoDeviceOverrideTests(unittest.TestCase):
    def setUp(self) -> None:
        self.sys = make_sysfs(self.mktemp())

    def test_whole_disks_are_accepted_once_each(self) -> None:
        devices = check_io_devices(["259:2", "253:0", "259:2"], self.sys)
        self.assertEqual(devices, ["259:2", "253:0"])

    def test_partition_is_refused_naming_its_disk(self) -> None:
        error = self.assertRaises(
            IsolationUnavailable, check_io_devices, ["259:3"], self.sys
        )
        self.assertIn("259:2", str(error))

    def test_malformed_and_unknown_devices_are_refused(self) -> None:
        self.assertRaises(IsolationUnavailable, check_io_devices, ["sda"], self.sys)
        self.assertRaises(IsolationUnavailable, check_io_devices, ["8:0"], self.sys)
