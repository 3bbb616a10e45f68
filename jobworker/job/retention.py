"""Retention: ended jobs are removed a while after they end, and past a count.

`Reaper` hears of the manager's jobs as a `JobEvents` observer (the jobs
restored at start, each end, each removal) and removes, with
`JobManager.remove`, every ended job `Retention.age` seconds after its end,
and an owner's oldest ended jobs beyond its newest `Retention.count`. It is
cheap: the count is applied when a job ends, the age by one timer set for
the next expiry (never sooner than `SWEEP_GAP` after the last), so nothing
scans every job. Removals run one after another, each once the last one's
directory is gone, so a backlog (a restart with a shorter `--retain`) does
not flood the reactor or its thread pool. A job is known to the reaper
only once it has ended: running jobs are never removed. Nothing is removed
before `startService` (the manager that tells it of its restored jobs is
still being made) or after `stopService`. See doc/jobs.md, "Retention".
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from jobworker.defaults import RETAIN, RETAIN_JOBS
from jobworker.errors import JobNotFound
from jobworker.job.events import AGE_CAUSE, COUNT_CAUSE, JobEvents
from jobworker.model import JobStatus
from jobworker.reactors import or_global
from jobworker.units import format_duration
from jobworker.untrusted import shown

# The least time between two sweeps of the jobs past their age: jobs ending
# in a stream are removed in batches, not one timer each.
SWEEP_GAP = 1.0
_log = Logger()
Remove = Callable[[str, str, str], Deferred[Any]]


@dataclass(frozen=True)
class Retention:
    """How long ended jobs are kept, and how many per owner; None: no cap."""

    age: float | None = RETAIN
    count: int | None = RETAIN_JOBS

    def __post_init__(self) -> None:
        if self.age is not None and not self.age > 0:
            raise ValueError(f"the retention age must be more than 0: {self.age}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"the retention count must be at least 1: {self.count}")


class Reaper(JobEvents, Service):
    """Removes ended jobs past `retention`, with `remove` (`attach`)."""

    def __init__(
        self, retention: Retention, reactor: IReactorTime | None = None
    ) -> None:
        self.retention = retention
        self._clock = IReactorTime(or_global(reactor))
        self._remove: Remove | None = None
        self._ended: dict[str, dict[str, float]] = {}
        """Owner -> its ended jobs' ids -> when they ended, oldest first."""
        self._owner_of: dict[str, str] = {}
        self._expiries: list[tuple[float, str]] = []
        """A heap of (time to remove, job id); ids no longer kept are skipped."""
        self._timer: IDelayedCall | None = None
        self._due: deque[tuple[str, str, str]] = deque()
        self._kick: IDelayedCall | None = None
        self._removing = False

    def attach(self, remove: Remove) -> None:
        """Remove jobs with `remove(job_id, reason, cause)` (`JobManager.remove`).

        A second step because the reaper hears of the restored jobs while
        the manager is being made: it must exist first.
        """
        self._remove = remove

    @property
    def kept(self) -> int:
        """How many ended jobs the reaper keeps track of."""
        return len(self._owner_of)

    def startService(self) -> None:
        if self._remove is None:
            raise RuntimeError("the reaper has no remove (attach) to remove with")
        super().startService()  # type: ignore[no-untyped-call]
        for owner in list(self._ended):
            self._cap(owner)
        self._schedule(0.0)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        for call in (self._timer, self._kick):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._kick = None

    # JobEvents

    def restored(self, statuses: Sequence[JobStatus], removed: int) -> None:
        ended = [status for status in statuses if status.state.ended]
        self._track(sorted(ended, key=lambda status: status.ended_at or 0.0))
        if self.running:
            for owner in {status.owner for status in ended}:
                self._cap(owner)
            self._schedule(0.0)

    def ended(self, status: JobStatus) -> None:
        self._track([status])
        if self.running:
            self._cap(status.owner)
            self._schedule(0.0)

    def removed(self, status: JobStatus, reason: str, cause: str) -> None:
        self._forget(status.id)

    # The work

    def _track(self, statuses: Iterable[JobStatus]) -> None:
        for status in statuses:
            if status.id in self._owner_of:
                continue
            ended_at = status.ended_at if status.ended_at is not None else 0.0
            self._ended.setdefault(status.owner, {})[status.id] = ended_at
            self._owner_of[status.id] = status.owner
            if self.retention.age is not None:
                expiry = (ended_at + self.retention.age, status.id)
                heapq.heappush(self._expiries, expiry)

    def _forget(self, job_id: str) -> None:
        owner = self._owner_of.pop(job_id, None)
        if owner is None:
            return
        jobs = self._ended[owner]
        del jobs[job_id]
        if not jobs:
            del self._ended[owner]
        if len(self._expiries) > 2 * len(self._owner_of) + 64:
            # Mostly ids no longer kept (removed by count or by hand): compact.
            self._expiries = [e for e in self._expiries if e[1] in self._owner_of]
            heapq.heapify(self._expiries)

    def _cap(self, owner: str) -> None:
        """Queue the owner's oldest ended jobs beyond the newest `count`."""
        count = self.retention.count
        jobs = self._ended.get(owner, {})
        if count is None or len(jobs) <= count:
            return
        reason = (
            f"as one of {shown(owner)}'s oldest ended jobs beyond the newest"
            f" {count} ({COUNT_CAUSE})"
        )
        for job_id in list(jobs)[: len(jobs) - count]:
            self._queue(job_id, reason, COUNT_CAUSE)

    def _schedule(self, gap: float) -> None:
        """Set the timer for the next expiry, at least `gap` seconds away."""
        if not self._expiries or not self.running:
            return
        now = self._clock.seconds()
        when = max(self._expiries[0][0], now + gap)
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= when:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(when - now, self._sweep)

    def _sweep(self) -> None:
        """Queue every job past its age; set the timer for the next."""
        self._timer = None
        age = self.retention.age
        now = self._clock.seconds()
        reason = f"{format_duration(age or 0)} after it ended ({AGE_CAUSE})"
        while self._expiries and self._expiries[0][0] <= now:
            _, job_id = heapq.heappop(self._expiries)
            if job_id in self._owner_of:
                self._queue(job_id, reason, AGE_CAUSE)
        self._schedule(SWEEP_GAP)

    def _queue(self, job_id: str, reason: str, cause: str) -> None:
        """Remove the job soon: after those queued before it, in a later step."""
        self._forget(job_id)
        self._due.append((job_id, reason, cause))
        if not self._removing and (self._kick is None or not self._kick.active()):
            self._kick = self._clock.callLater(0, self._start_removing)

    def _start_removing(self) -> None:
        self._kick = None
        if self.running and not self._removing:
            Deferred.fromCoroutine(self._remove_due())

    async def _remove_due(self) -> None:
        self._removing = True
        try:
            while self._due and self.running and self._remove is not None:
                job_id, reason, cause = self._due.popleft()
                try:
                    await self._remove(job_id, reason, cause)
                except JobNotFound:
                    pass  # removed meanwhile (by its owner, say)
                except Exception:
                    _log.failure("job {job_id}: cannot remove it", job_id=job_id)
        finally:
            self._removing = False
