"""Tests for jobworker.isolation.rootfs: the plan of a job's private root."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial import unittest

from jobworker.errors import IsolationUnavailable
from jobworker.isolation.rootfs import MS_RDONLY, host_layout, root_plan


class HostLayoutTests(unittest.TestCase):
    def fake_root(self) -> str:
        root: str = os.path.abspath(self.mktemp())
        for directory in ("usr/bin", "usr/lib", "etc", "lib64", "opt/tool"):
            os.makedirs(os.path.join(root, directory))
        os.symlink("usr/bin", os.path.join(root, "bin"))
        os.symlink("usr/lib", os.path.join(root, "lib"))
        return root

    def test_merged_usr_symlinks_are_kept_and_missing_dirs_skipped(self) -> None:
        layout = host_layout(root=self.fake_root())
        self.assertEqual(
            layout.system,
            (
                ("/usr", None),
                ("/bin", "usr/bin"),
                ("/lib", "usr/lib"),
                ("/lib64", None),
                ("/etc", None),
            ),
        )

    def test_operator_binds_must_exist_and_be_absolute(self) -> None:
        root = self.fake_root()
        self.assertEqual(host_layout(["/opt/tool/"], root=root).binds, ("/opt/tool",))
        for bad in ("opt/tool", "/", "/opt/missing"):
            self.assertRaises(IsolationUnavailable, host_layout, [bad], root=root)


class RootPlanTests(unittest.TestCase):
    def plan(self, memory: int | None = 64 << 20) -> list[tuple[Any, ...]]:
        layout = host_layout(["/etc"])  # a system dir: bound only once
        return root_plan(
            layout,
            work_dir="/state/jobs/j/work",
            uid=70001,
            gid=70001,
            tmpfs_bytes=memory,
        )

    def test_private_tmpfs_are_the_jobs_and_capped(self) -> None:
        mounts = {op[1]: op for op in self.plan() if op[0] == "mount"}
        for path in ("/tmp", "/var/tmp", "/run", "/dev/shm"):
            self.assertEqual(mounts[path][3], "tmpfs")
            self.assertEqual(
                mounts[path][5], f"mode=0700,uid=70001,gid=70001,size={64 << 20}"
            )
        (unsized,) = {op[5] for op in self.plan(None) if op[1] == "/tmp"}
        self.assertNotIn("size=", str(unsized))  # no memory limit: kernel default

    def test_system_dirs_are_read_only_and_the_work_dir_writable_last(self) -> None:
        plan = self.plan()
        binds = [op for op in plan if op[0] == "bind"]
        self.assertEqual([op[1] for op in binds].count("/etc"), 1)
        for op in binds:
            if op[1] in ("/usr", "/etc"):
                self.assertTrue(op[3] & MS_RDONLY)
        self.assertEqual(
            plan[-1][:3], ("bind", "/state/jobs/j/work", "/state/jobs/j/work")
        )
        self.assertFalse(plan[-1][3] & MS_RDONLY)

    def test_dev_is_sealed_after_it_is_populated(self) -> None:
        plan = self.plan()
        seal = plan.index(("seal", "/dev", MS_RDONLY | 2 | 8))
        dev_ops = [i for i, op in enumerate(plan) if str(op[1]).startswith("/dev/")]
        self.assertLess(max(dev_ops), seal)
