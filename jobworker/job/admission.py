"""How many jobs each owner has starting or running, within a cap per owner.

The manager admits a start before it makes anything for the job and
releases the owner's slot when the start fails or the job has ended, all on
the reactor thread, so the count is exact: no start can slip past the cap,
and a job that ended frees its slot before its final status is published.
"""

from __future__ import annotations

from jobworker.errors import TooManyJobs
from jobworker.untrusted import shown

# Running (and starting) jobs one owner may have at once (`--max-jobs-per-user`).
MAX_JOBS_PER_OWNER = 128


class RunningJobs:
    """Starting and running jobs per owner; `None` is no cap."""

    def __init__(self, cap: int | None = MAX_JOBS_PER_OWNER) -> None:
        if cap is not None and cap < 1:
            raise ValueError(f"the cap of running jobs must be at least 1: {cap}")
        self.cap = cap
        self._counts: dict[str, int] = {}

    def admit(self, owner: str, *, force: bool = False) -> None:
        """Count one more job of `owner`; `TooManyJobs` naming the cap if full.

        `force` counts it anyway (a running job re-adopted after a restart).
        """
        count = self._counts.get(owner, 0)
        if self.cap is not None and count >= self.cap and not force:
            raise TooManyJobs(
                f"{shown(owner)} has {count} jobs running, the most one user may"
                f" run at once (max-jobs-per-user {self.cap}); stop one or wait"
                " for one to end"
            )
        self._counts[owner] = count + 1

    def release(self, owner: str) -> None:
        """One job of `owner` failed to start or has ended."""
        left = self._counts[owner] - 1
        if left:
            self._counts[owner] = left
        else:
            del self._counts[owner]

    def count(self, owner: str) -> int:
        return self._counts.get(owner, 0)
