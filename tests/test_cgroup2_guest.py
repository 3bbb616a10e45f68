"""Runs the isolation tests on cgroup v2, in a virtme-ng guest.

This machine mounts cgroup v1, so the same real-cgroup tests are run again
in a qemu guest (no KVM needed) booted by virtme-ng with a Debian kernel:
the guest shares the host's root read-only, mounts cgroup2 only, and gets a
scratch ext4 disk for the state directory (the disk IO test needs a block
device; the guest's /var/tmp is a tmpfs). The guest shell first moves itself
into a service-like cgroup, so the driver's move into `jobworker-server`
(the no-internal-processes rule) is exercised as under systemd.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest

reactor: Any = _reactor
GUEST_MODULES = (
    "tests.test_isolation",
    "tests.test_sandbox",
    "tests.test_cgroups_real",
    "tests.test_restart.RestartNamespacedTests",
    "tests.test_live_restore.LiveRestoreNamespacedTests",
)
IN_GUEST_ENV = "JOBWORKER_IN_GUEST"
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
EXIT_MARK = "JOBWORKER-GUEST-TRIAL-EXIT="
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"

GUEST_SCRIPT = """set -e
disk=$(ls /dev/vd? /dev/sd? 2>/dev/null | head -n 1)
mkdir -p /run/jobworker-disk
mount -t ext4 "$disk" /run/jobworker-disk
echo '+cpu +memory +io +pids' > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/jobworker-guest.service
echo $$ > /sys/fs/cgroup/jobworker-guest.service/cgroup.procs
cd {project}
set +e
{env} {trial} --temp-directory=/run/jobworker-disk/trial {modules}
echo "{mark}$?"
"""


def guest_missing() -> str | None:
    """Why the guest cannot be booted here, or None if it can."""
    path = os.environ.get("PATH", "") + ":" + SBIN_PATH
    checks = [
        (os.environ.get(IN_GUEST_ENV) is None, "already running inside the guest"),
        (os.geteuid() == 0, "needs root (the guest's tests run as root)"),
        (platform.machine() == "x86_64", "the guest kernel and qemu are x86_64"),
        (
            os.path.exists(os.path.join(VENV_BIN, "vng")),
            f"virtme-ng's vng is not in {VENV_BIN} (pip install virtme-ng)",
        ),
        (
            shutil.which("qemu-system-x86_64", path=path) is not None,
            "qemu-system-x86_64 not found (apt-get install qemu-system-x86,"
            " or make sysdeps)",
        ),
        (
            bool(guest_kernels()),
            "no kernel /boot/vmlinuz-* (apt-get install linux-image-amd64,"
            " or make sysdeps)",
        ),
        (
            shutil.which("mkfs.ext4", path=path) is not None,
            "mkfs.ext4 not found (apt-get install e2fsprogs)",
        ),
    ]
    return next((reason for ok, reason in checks if not ok), None)


def guest_kernels() -> list[str]:
    return sorted(k for k in glob.glob("/boot/vmlinuz-*") if os.access(k, os.R_OK))


def trial_summary(output: str) -> tuple[str, dict[str, int]]:
    """trial's last "PASSED (successes=3, skips=1)" line, as verdict and counts."""
    found = re.findall(r"^(PASSED|FAILED) \(([^)]*)\)\s*$", output, re.MULTILINE)
    if not found:
        return "MISSING", {}
    verdict, counts = found[-1]
    pairs = (item.split("=") for item in counts.split(", ") if "=" in item)
    return verdict, {key: int(value) for key, value in pairs}


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        cast(Any, self.transport).closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class CgroupV2GuestTests(unittest.TestCase):
    timeout = 1200  # about 20 s to boot without KVM, then the tests, emulated

    async def test_isolation_tests_pass_on_cgroup_v2_in_a_guest(self) -> None:
        reason = guest_missing()
        if reason:
            raise unittest.SkipTest(reason)
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        image = os.path.join(work, "disk.img")
        with open(image, "wb") as disk:
            disk.truncate(512 << 20)
        mkfs = shutil.which(
            "mkfs.ext4", path=os.environ.get("PATH", "") + ":" + SBIN_PATH
        )
        assert mkfs is not None
        subprocess.run([mkfs, "-q", "-F", image], check=True)
        env = " ".join(
            f"{k}={v}"
            for k, v in (
                (IN_GUEST_ENV, "1"),
                ("JOBWORKER_TEST_STATE_ROOT", "/run/jobworker-disk"),
                ("JOBWORKER_EXPECT_CGROUP", "2"),
            )
        )
        script = GUEST_SCRIPT.format(
            project=PROJECT,
            env=env,
            trial=os.path.join(VENV_BIN, "trial"),
            modules=" ".join(GUEST_MODULES),
            mark=EXIT_MARK,
        )
        vng = os.path.join(VENV_BIN, "vng")
        argv = [vng, "--disable-kvm", "--run", guest_kernels()[-1], "--user", "root"]
        argv += ["--cpus", "2", "--memory", "1G", "--disk", image, "--exec", script]
        collect = _Collect()
        path = f"{VENV_BIN}:{os.environ.get('PATH', '')}:{SBIN_PATH}"
        process = reactor.spawnProcess(
            collect, vng, argv, env={**os.environ, "PATH": path}, path=PROJECT
        )
        self.addCleanup(_kill, process, collect)
        await collect.ended
        output = collect.output.decode(errors="replace")
        tail = output[-6000:]
        self.assertIn(f"{EXIT_MARK}0", output, f"trial failed in the guest:\n{tail}")
        verdict, counts = trial_summary(output)
        self.assertEqual(verdict, "PASSED", tail)
        self.assertGreater(counts.get("successes", 0), 0, tail)
        self.assertEqual(
            counts.get("skips", 0), 0, f"tests skipped in the guest:\n{tail}"
        )


def _kill(process: Any, collect: _Collect) -> Deferred[None] | None:
    if collect.ended.called:
        return None
    process.signalProcess("KILL")
    return collect.ended
