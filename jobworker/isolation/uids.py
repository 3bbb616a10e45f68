"""A uid (and gid of the same number) per job, from a range no account uses.

`UidPool` hands out each uid of its range to one job at a time, in turn
(the uid just freed is the last to come back), and skips any number that
names an account or a group. A uid is given back only once nothing of the
job can still run as it: its cgroup is empty and removed. A uid whose
cgroup could not be removed stays out of the pool until the server
restarts (start-up kills stale job cgroups before the pool exists).
"""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass

from jobworker.errors import IsolationUnavailable, JobUidsExhausted
from jobworker.job.users import JobUser

# systemd's DynamicUser= range (see systemd's UIDS-GIDS.md).
DEFAULT_RANGE = (61184, 65519)


def parse_range(text: str) -> tuple[int, int]:
    """ "FIRST-LAST" as two ints; raise `ValueError` saying what is wrong."""
    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit()):
        raise ValueError(f"{text!r} is not FIRST-LAST, e.g. 61184-65519")
    low, high = int(first), int(last)
    if not 1 <= low <= high < 2**32 - 1:
        raise ValueError(f"{text!r}: need 1 <= FIRST <= LAST < 4294967295")
    return low, high


def _named(uid: int) -> bool:
    """Whether an account or a group has this number."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False


@dataclass
class UidPool:
    """The job uids of `first`..`last`; touched on the reactor thread only."""

    first: int = DEFAULT_RANGE[0]
    last: int = DEFAULT_RANGE[1]

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last:
            raise IsolationUnavailable(f"bad job uid range {self.first}-{self.last}")
        self._next = self.first
        self._leased: set[int] = set()
        self._held: set[int] = set()

    @property
    def in_use(self) -> frozenset[int]:
        """The uids of running jobs, and those held back after a failure."""
        return frozenset(self._leased | self._held)

    def lease(self) -> JobUser:
        """A uid no running job has; raise `JobUidsExhausted` if none is left."""
        size = self.last - self.first + 1
        for step in range(size):
            uid = self.first + (self._next - self.first + step) % size
            if uid in self._leased or uid in self._held or _named(uid):
                continue
            self._leased.add(uid)
            self._next = self.first + (uid - self.first + 1) % size
            return JobUser(f"job-{uid}", uid, uid, ())
        raise JobUidsExhausted(
            f"every job uid of {self.first}-{self.last} is in use; widen"
            " --job-uid-range or wait for jobs to end"
        )

    def claim(self, uid: int) -> JobUser:
        """Lease `uid`, which a running job of an earlier server has."""
        self._leased.add(uid)
        return JobUser(f"job-{uid}", uid, uid, ())

    def release(self, uid: int, *, gone: bool) -> None:
        """The job of `uid` ended; `gone`: nothing of it can run any more."""
        self._leased.discard(uid)
        if not gone:
            self._held.add(uid)
