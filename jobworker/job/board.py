"""The latest status of every job, readable from any thread.

Jobs live on the reactor thread. Each job publishes an immutable
`JobStatus` here whenever what it reports changes (it is registered,
asked to stop, writes output, ends), on the reactor thread; readers on
other threads (the API's Status and List) take the published snapshot
under a lock, without a trip to the reactor. A snapshot is never stale
with respect to anything the reactor has finished doing: it is replaced
in the same reactor step that changes the job.
"""

from __future__ import annotations

import threading

from jobworker.errors import JobNotFound
from jobworker.model import JobStatus


class StatusBoard:
    """Job id -> latest `JobStatus`, in the order jobs were registered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobStatus] = {}

    def publish(self, status: JobStatus) -> None:
        """Record `status` as its job's latest (reactor thread only)."""
        with self._lock:
            self._jobs[status.id] = status

    def get(self, job_id: str) -> JobStatus:
        """The job's latest status (any thread); raises `JobNotFound`."""
        with self._lock:
            status = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if status is None:
            raise JobNotFound(str(job_id))
        return status

    def all(self) -> list[JobStatus]:
        """Every job's latest status, oldest first (any thread)."""
        with self._lock:
            jobs = list(self._jobs.values())
        return sorted(jobs, key=lambda status: status.started_at)
