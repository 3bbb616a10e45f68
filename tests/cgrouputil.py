"""Helpers for tests that use the real cgroups of this machine (as root)."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence

from twisted.trial import unittest

from jobworker.isolation.cgroups import V1Driver, V2Driver, detect
from jobworker.isolation.interfaces import CgroupDriver, JobCgroup
from jobworker.model import Limits

EXPECT_ENV = "JOBWORKER_EXPECT_CGROUP"


def require_root() -> None:
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root to create cgroups and namespaces")


def real_driver(
    case: unittest.TestCase, state_dir: str, per_user: Limits | None = None
) -> CgroupDriver:
    """Detect this kernel's cgroups; remove the state dir's parent afterwards."""
    require_root()
    driver = detect(state_dir, per_user=per_user or Limits())
    expected = os.environ.get(EXPECT_ENV)
    if expected:
        case.assertEqual(str(driver.version), expected, f"{EXPECT_ENV}={expected}")
    case.addCleanup(remove_parents, driver)
    return driver


def parent_dirs(driver: CgroupDriver) -> list[str]:
    if isinstance(driver, V1Driver):
        return list(dict.fromkeys(driver.parents.values()))
    assert isinstance(driver, V2Driver)
    return [driver.parent]


def remove_parents(driver: CgroupDriver) -> None:
    """Remove the per-state-dir parents; fails if a job cgroup is left in one."""
    for parent in parent_dirs(driver):
        if os.path.isdir(parent):
            os.rmdir(parent)


def job_dirs(driver: CgroupDriver) -> list[str]:
    """The job cgroups currently below the driver's parents, in users' cgroups.

    A user's cgroup left without jobs counts as one too: it should be gone.
    """
    found = []
    for parent in parent_dirs(driver):
        if not os.path.isdir(parent):
            continue
        for user in (entry for entry in os.scandir(parent) if entry.is_dir()):
            jobs = [entry.path for entry in os.scandir(user.path) if entry.is_dir()]
            found.extend(jobs or [user.path])
    return found


def spawn_in(cgroup: JobCgroup, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Run `argv` inside `cgroup`: a shell joins it, then execs the command."""
    joins = "".join(
        f"echo $$ > {shlex.quote(path)} || exit 99; " for path in cgroup.procs_files
    )
    return subprocess.Popen(["sh", "-c", joins + 'exec "$@"', "sh", *argv])


def listed(cgroup: JobCgroup) -> set[int]:
    pids: set[int] = set()
    for path in cgroup.procs_files:
        with open(path) as procs:
            pids.update(int(pid) for pid in procs.read().split())
    return pids
