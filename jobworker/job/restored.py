"""Jobs of an earlier run, as the journal kept them: ended, output on disk.

`restore` turns a journal entry into a `RestoredJob`, which answers what
the manager asks of a job (status, stop, end, output) as an ended `Job`
does. A record that was not final (the server died while the job ran or
stopped: nobody saw how it ended) becomes `LOST`, keeping what is known
(`stop_requested`, `output_truncated`); its output is what its log holds
in whole records, and its end the last sign of life known, the newer of
its last output and its record. Under live restore, a job whose helper
ended while no server ran comes back with the status from its exit file
(`Ended`) instead, and the OOM flag its cgroup kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from jobworker.job.dirs import JobDirs
from jobworker.job.journal import RECORD, Entry
from jobworker.job.live import ExitRecord, wait_outcome
from jobworker.job.outputindex import LogIndex
from jobworker.job.outputlog import OutputSource, ScannedLog, check_offset, scan
from jobworker.model import JobState, JobStatus, OutputState

_log = Logger()


@dataclass(frozen=True)
class Ended:
    """How a live-restore helper said its job ended (while no server ran)."""

    record: ExitRecord
    oom_killed: bool
    ended_at: float


class FinishedOutput:
    """The output log of an ended job: `size` bytes, nothing more to come."""

    waiter_count = 0
    """Nobody waits for more output: there is none to come."""

    def __init__(
        self, path: str, size: int, index: LogIndex, truncated_by: str = ""
    ) -> None:
        self.path = path
        self.size = size
        self.index = index
        self.truncated_by = truncated_by
        """What truncated it, as journaled ("": not truncated, or not known)."""

    def source(self) -> OutputSource:
        """The log, its index and its final state, for a reader on any thread."""
        return OutputSource(self.path, self.index, OutputState(self.size, True))

    def wait(self, offset: int) -> Deferred[OutputState]:
        """Fire at once; `InvalidRequest` if `offset` is outside the log."""
        check_offset(offset, self.size)
        return succeed(OutputState(size=self.size, complete=True))


class RestoredJob:
    """An ended job of an earlier run; its status never changes."""

    input = None
    """No stdin: the job has ended."""

    def __init__(self, final: JobStatus, dirs: JobDirs, log: ScannedLog) -> None:
        self.dirs = dirs
        self.output = FinishedOutput(
            dirs.output_path, log.size, log.index, final.output_truncated_by
        )
        self._final = final

    def status(self) -> JobStatus:
        return self._final

    def stop(self, grace: float) -> Deferred[JobStatus]:
        """Nothing to stop: the final status."""
        return succeed(self._final)

    def ended(self) -> Deferred[JobStatus]:
        return succeed(self._final)


def restore(
    entry: Entry, dirs: JobDirs, ended: Ended | None = None
) -> tuple[RestoredJob, bool]:
    """The job `entry` records, and whether its record changes (to LOST,
    or to how `ended` says a job whose record was not final ended).

    Its log is read once (`outputlog.scan`), for its index.
    """
    status = entry.status
    if ended is not None and not status.state.ended:
        return _ended(entry, dirs, ended), True
    if status.state.ended:
        log = scan(dirs.output_path, entry.log_size)
        if log.size < entry.log_size:
            _log.warn(
                "job {job_id}: its output log is shorter than recorded;"
                " {size} bytes of it are served",
                job_id=status.id,
                size=log.size,
            )
        return RestoredJob(status, dirs, log), False
    log = scan(dirs.output_path)
    lost = replace(
        status,
        state=JobState.LOST,
        ended_at=max(
            status.started_at,
            _mtime(dirs.output_path),
            _mtime(os.path.join(dirs.job_dir, RECORD)),
        ),
        output_bytes=log.data_bytes,
    )
    return RestoredJob(lost, dirs, log), True


def _ended(entry: Entry, dirs: JobDirs, ended: Ended) -> RestoredJob:
    record = ended.record
    log = scan(dirs.output_path, record.log_size)
    exit_code, signal = wait_outcome(record.wait_status)
    final = replace(
        entry.status,
        state=JobState.KILLED if signal is not None else JobState.EXITED,
        exit_code=exit_code,
        signal=signal,
        oom_killed=ended.oom_killed,
        ended_at=max(entry.status.started_at, ended.ended_at),
        output_bytes=log.data_bytes,
        output_truncated=entry.status.output_truncated or bool(record.truncated_by),
        output_truncated_by=entry.status.output_truncated_by or record.truncated_by,
    )
    return RestoredJob(final, dirs, log)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0
