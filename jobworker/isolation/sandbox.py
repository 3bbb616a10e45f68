"""What a sandboxed job gets beyond its cgroup and namespaces (doc/sandbox.md).

A `Sandbox` is made once, at server start-up: the host layout (what of the
host jobs see, jobworker.isolation.rootfs), the compiled syscall filter
(jobworker.isolation.seccomp) and, unless jobs run as one fixed account,
the pool of per-job uids (jobworker.isolation.uids). `launch_options`
turns it into the helper's settings for one job.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jobworker.isolation.rootfs import HostLayout, helper_rootfs, host_layout, root_plan
from jobworker.isolation.seccomp import compile_filter
from jobworker.isolation.uids import UidPool
from jobworker.job.users import JobUser
from jobworker.model import Limits

# Below the state directory: where each job's mount namespace builds its
# root (an empty directory on the host; the mounts are the job's own).
STAGE_NAME = "root"


@dataclass(frozen=True)
class Sandbox:
    """The private root, syscall filter and uid pool of every job."""

    layout: HostLayout
    seccomp: bytes | None
    uids: UidPool | None

    def launch_options(
        self, state_dir: str, work_dir: str, user: JobUser | None, limits: Limits
    ) -> dict[str, Any]:
        """The `rootfs` and `seccomp` settings of one job's `LaunchSpec`."""
        stage = os.path.join(state_dir, STAGE_NAME)
        os.makedirs(stage, mode=0o700, exist_ok=True)
        uid, gid = (user.uid, user.gid) if user is not None else (0, 0)
        plan = root_plan(
            self.layout,
            work_dir=work_dir,
            uid=uid,
            gid=gid,
            tmpfs_bytes=limits.memory_bytes,
        )
        return {
            "rootfs": helper_rootfs(self.layout, stage, plan),
            "seccomp": self.seccomp,
        }


def make_sandbox(
    *,
    bind_ro: Iterable[str] = (),
    seccomp: bool = True,
    uid_range: tuple[int, int] | None = None,
) -> Sandbox:
    """Inspect the host and compile the filter; raise `IsolationUnavailable`.

    `uid_range=None`: jobs run as the manager's fixed job user.
    """
    program = compile_filter().program if seccomp else None
    uids = UidPool(*uid_range) if uid_range is not None else None
    return Sandbox(host_layout(bind_ro), program, uids)
