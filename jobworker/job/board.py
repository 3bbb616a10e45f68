"""The latest status of every job, readable from any thread.

Jobs live on the reactor thread. Each job publishes an immutable
`JobStatus` here whenever what it reports changes (it is registered,
asked to stop, writes output, ends), on the reactor thread; readers on
other threads (the API's Status and List) take the published snapshot
under a lock, without a trip to the reactor. A snapshot is never stale
with respect to anything the reactor has finished doing: it is replaced
in the same reactor step that changes the job. What a running job has
used changes without the reactor: `live` reads it then and there, with the
reader each job registers (`watch_usage`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from jobworker.errors import JobNotFound
from jobworker.model import JobStatus, Usage


class StatusBoard:
    """Job id -> latest `JobStatus`, in the order jobs were registered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobStatus] = {}
        self._usage: dict[str, Callable[[], Usage]] = {}

    def publish(self, status: JobStatus) -> None:
        """Record `status` as its job's latest (reactor thread only)."""
        with self._lock:
            self._jobs[status.id] = status

    def remove(self, job_id: str) -> None:
        """Forget a removed job (reactor thread only)."""
        with self._lock:
            self._jobs.pop(job_id, None)
            self._usage.pop(job_id, None)

    def watch_usage(self, job_id: str, read: Callable[[], Usage] | None) -> None:
        """Read the job's usage so far with `read` (any thread); None: stop."""
        with self._lock:
            if read is None:
                self._usage.pop(job_id, None)
            else:
                self._usage[job_id] = read

    def live(self, job_id: str) -> JobStatus:
        """The job's latest status, with what it has used so far (any thread)."""
        return self.with_usage(self.get(job_id))

    def with_usage(self, status: JobStatus) -> JobStatus:
        """`status`, read from this board, with its job's usage so far."""
        if status.state.ended:  # its final usage is in it already
            return status
        with self._lock:
            read = self._usage.get(status.id)
        if read is None:
            return status
        return replace(status, usage=read())

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
