"""The contract between the job manager and the isolation back-ends.

`JobManager` (jobworker.job.manager) only sees these types; the cgroup v1 and v2
drivers (jobworker.isolation.cgroups) implement them. Namespaces are set up by the
exec'd helper (jobworker.job.process.helper) when `IsolationConfig.namespaces` is true,
with the `IsolationConfig.sandbox` (jobworker.isolation.sandbox) inside them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred

from jobworker.errors import JobWorkerError
from jobworker.model import Limits, Usage

if TYPE_CHECKING:
    from jobworker.isolation.sandbox import Sandbox


class CgroupBusy(JobWorkerError):
    """A job's cgroup could not be removed: the kernel kept it busy."""


class JobCgroup(Protocol):
    """The cgroup(s) of one job: one directory per v1 controller, one on v2."""

    @property
    def procs_files(self) -> tuple[str, ...]:
        """The `cgroup.procs` files the helper writes its pid into before exec."""
        ...

    def kill_all(self) -> None:
        """SIGKILL every process in the job's cgroup (cgroup.kill on v2)."""
        ...

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this job."""
        ...

    def cpu_usage_ns(self) -> int:
        """CPU time used by the job so far, in nanoseconds."""
        ...

    def usage(self) -> Usage:
        """What the job has used so far; None for a counter the kernel lacks.

        Reads kernel files only, so it may be called from any thread; raises
        `OSError` (or `ValueError`) once the cgroup is gone.
        """
        ...

    def remove(self) -> Deferred[None]:
        """Kill what is left and remove the cgroup, retrying while it is busy.

        Fails with `CgroupBusy` when it stays busy, or `OSError`.
        """
        ...


class CgroupDriver(Protocol):
    """Creates job cgroups below the server's own cgroup, on v1 or v2."""

    @property
    def version(self) -> int:
        """1 or 2."""
        ...

    def create(
        self, job_id: str, limits: Limits, workdir: str, *, owner: str
    ) -> JobCgroup:
        """Create the job's cgroup, in its owner's, with its limits.

        Raise `IsolationFailed`.
        """
        ...

    def find(self, job_id: str, *, owner: str) -> JobCgroup | None:
        """The cgroup `create` made for this job, if it is still there."""
        ...

    def cleanup_stale(self, keep: Collection[str] = ()) -> int:
        """Kill and remove job cgroups left by a crashed run, but those of the
        jobs in `keep` (adopted by live restore); return how many."""
        ...


@dataclass(frozen=True)
class IsolationConfig:
    """How jobs are isolated: their cgroups, whether namespaces are new, and
    the sandbox (private root, syscall filter, uid per job) inside them."""

    cgroups: CgroupDriver
    namespaces: bool = True
    sandbox: Sandbox | None = None
