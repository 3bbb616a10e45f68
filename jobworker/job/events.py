"""One log line per job event: started, start failed, stop requested, ended.

And one when the server shuts down, saying how many jobs it stops.

`LoggingJobManager` is the `JobManager` the server runs (`jobworker.server.tap`);
it adds logging through `twisted.logger` and changes nothing else. A job's
end is noticed through the manager's public `wait_output`: output is complete
once the job has ended.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobworker.errors import JobNotFound
from jobworker.job.manager import JobManager
from jobworker.limits import limits_for_log
from jobworker.model import JobStatus, Limits, OutputState, command_text

log = Logger()


def outcome_for_log(status: JobStatus) -> str:
    """How a job ended, in words for the log: "killed by signal 9, OOM killed".

    Also says whether its output was truncated; the CLI's STATE column is
    shorter (`jobworker.cli.formatting.state_text`).
    """
    if status.exit_code is not None:
        text = f"exited {status.exit_code}"
    elif status.signal is not None:
        text = f"killed by signal {status.signal}"
    else:
        text = status.state.value
    if status.stop_requested:
        text += ", stop requested"
    if status.oom_killed:
        text += ", OOM killed"
    if status.output_truncated:
        text += ", output truncated"
    return text


class LoggingJobManager(JobManager):
    """A `JobManager` that logs every job event with the job's owner."""

    def start(
        self, owner: str, command: Sequence[bytes], limits: Limits | None = None
    ) -> Deferred[JobStatus]:
        started = super().start(owner, command, limits)

        def logged(status: JobStatus) -> JobStatus:
            log.info(
                "job {job_id} started by {owner}: {command} ({limits})",
                job_id=status.id,
                owner=owner,
                command=command_text(status.command),
                limits=limits_for_log(status.limits),
            )
            self._watch_end(status.id, 0)
            return status

        def failed(failure: Failure) -> Failure:
            log.info(
                "job start refused for {owner}: {command}: {error}",
                owner=owner,
                command=command_text(command),
                error=failure.getErrorMessage(),
            )
            return failure

        return started.addCallbacks(logged, failed)

    def stop(self, job_id: str, grace: float | None = None) -> Deferred[JobStatus]:
        try:
            status = self.status(job_id)
        except JobNotFound:
            pass
        else:
            log.info(
                "job {job_id} of {owner}: stop requested (grace {grace})",
                job_id=job_id,
                owner=status.owner,
                grace="default" if grace is None else f"{grace:g}s",
            )
        return super().stop(job_id, grace)

    def shutdown(self) -> Deferred[None]:
        running = [status.id for status in self.list() if not status.state.ended]
        log.info("shutting down: stopping {count} running job(s)", count=len(running))
        return super().shutdown()

    def _watch_end(self, job_id: str, offset: int) -> None:
        def check(state: OutputState) -> None:
            if not state.complete:
                self._watch_end(job_id, state.size)
                return
            status = self.status(job_id)
            log.info(
                "job {job_id} of {owner} ended: {outcome}",
                job_id=job_id,
                owner=status.owner,
                outcome=outcome_for_log(status),
            )

        self.wait_output(job_id, offset).addCallbacks(check, self._lost)

    @staticmethod
    def _lost(failure: Failure) -> None:
        log.failure("lost track of a job's end", failure)
