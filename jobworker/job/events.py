"""Job events: the hook the job manager calls, and its logging observer.

`JobManager` (jobworker.job.manager) calls a `JobEvents` when it restores
the jobs of an earlier run, when a job starts or is refused, when a stop is
asked for, when a job ends and when it is asked to shut down. `JobEvents`
itself does nothing; `LoggingJobEvents`, which the server passes
(`jobworker.server.tap`), logs one line for each through `twisted.logger`,
with the job's owner. Its events carry the same fields as the API's
refusals, for `--log-format json`: `job_id`, `caller` (who asked: the
owner, for a start) and `outcome`. The command and the owner come from the
client: each line shows them cut and escaped (`jobworker.untrusted`), and
refused starts are logged at most a few at a time per owner
(`jobworker.logbursts`).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import asdict

from twisted.logger import Logger

from jobworker.limits import limits_for_log
from jobworker.logbursts import Bursts
from jobworker.model import JobState, JobStatus
from jobworker.untrusted import SHOWN_CHARS, shown

log = Logger()


def command_for_log(command: Sequence[bytes]) -> str:
    """The command as one shell-quoted string (invalid UTF-8 as \\xXX), cut.

    Only the arguments that can show are decoded and quoted: logging a 1 MiB
    argv costs no more than logging a short one.
    """
    words: list[str] = []
    used = 0
    for arg in command:
        if used > SHOWN_CHARS:
            break
        word = arg[: SHOWN_CHARS + 1].decode("utf-8", "backslashreplace")
        words.append(shlex.quote(word))
        used += len(words[-1]) + 1
    size = sum(len(arg) for arg in command)
    complete = len(words) == len(command) and all(
        len(arg) <= SHOWN_CHARS for arg in command
    )
    whole = None if complete else f"{len(command)} arguments, {size} bytes"
    return shown(" ".join(words), head_of=whole)


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


# Why an ended job was removed: its age (`--retain`), its owner's newer
# jobs (`--retain-jobs`), or a Remove call. The first two are the options.
AGE_CAUSE = "retain"
COUNT_CAUSE = "retain-jobs"
REQUEST_CAUSE = "request"
REMOVAL_CAUSES = (AGE_CAUSE, COUNT_CAUSE, REQUEST_CAUSE)


class JobEvents:
    """What the manager tells about its jobs; each hook here does nothing.

    Called on the reactor thread, in the step the event happens in, before
    the caller that caused it hears of it. A hook must not raise.
    """

    def restored(self, statuses: Sequence[JobStatus], removed: int) -> None:
        """The manager listed the jobs of an earlier run its journal kept.

        They have ended (`LOST` those whose end no manager saw); `removed`
        job directories held no record and were removed.
        """

    def started(self, status: JobStatus) -> None:
        """The job's command was exec'd: the job is listed, with `status`."""

    def readopted(self, status: JobStatus) -> None:
        """A running job of an earlier server was re-adopted (live restore):
        listed again, not started again."""

    def start_refused(
        self, owner: str, command: Sequence[bytes], error: BaseException
    ) -> None:
        """Starting `command` for `owner` failed with `error`; no job is left."""

    def stop_requested(self, status: JobStatus, grace: float | None) -> None:
        """A stop was asked for (`grace` seconds; None: the default grace)."""

    def ended(self, status: JobStatus) -> None:
        """The job has ended with its final `status`."""

    def removed(self, status: JobStatus, reason: str, cause: str) -> None:
        """The ended job was removed: `cause` one of `REMOVAL_CAUSES`,
        `reason` its words for the log ("by alice", "7d after it ended")."""

    def shutdown_requested(self, running: int) -> None:
        """The manager was asked to shut down with `running` jobs not ended."""

    def left_running(self, running: int) -> None:
        """Shut down under live restore: `running` jobs go on, for the next."""

    def cleanup_failed(self, job_id: str) -> None:
        """The job's cgroup could not be removed when it ended (logged there)."""


class JobEventsFanOut(JobEvents):
    """Tells every one of several `JobEvents`, in order (the server: log, metrics)."""

    def __init__(self, *observers: JobEvents) -> None:
        self._observers = observers

    def restored(self, statuses: Sequence[JobStatus], removed: int) -> None:
        for observer in self._observers:
            observer.restored(statuses, removed)

    def started(self, status: JobStatus) -> None:
        for observer in self._observers:
            observer.started(status)

    def readopted(self, status: JobStatus) -> None:
        for observer in self._observers:
            observer.readopted(status)

    def start_refused(
        self, owner: str, command: Sequence[bytes], error: BaseException
    ) -> None:
        for observer in self._observers:
            observer.start_refused(owner, command, error)

    def stop_requested(self, status: JobStatus, grace: float | None) -> None:
        for observer in self._observers:
            observer.stop_requested(status, grace)

    def ended(self, status: JobStatus) -> None:
        for observer in self._observers:
            observer.ended(status)

    def removed(self, status: JobStatus, reason: str, cause: str) -> None:
        for observer in self._observers:
            observer.removed(status, reason, cause)

    def shutdown_requested(self, running: int) -> None:
        for observer in self._observers:
            observer.shutdown_requested(running)

    def left_running(self, running: int) -> None:
        for observer in self._observers:
            observer.left_running(running)

    def cleanup_failed(self, job_id: str) -> None:
        for observer in self._observers:
            observer.cleanup_failed(job_id)


class LoggingJobEvents(JobEvents):
    """Logs every job event, with the job's owner: the server's observer."""

    def __init__(self) -> None:
        self._refused_starts = Bursts(log, "refused job starts")

    def restored(self, statuses: Sequence[JobStatus], removed: int) -> None:
        lost = [status for status in statuses if status.state is JobState.LOST]
        if statuses:
            log.info(
                "restored {count} job(s) of an earlier run, {lost} lost",
                count=len(statuses),
                lost=len(lost),
            )
        for status in lost:
            log.warn(
                "job {job_id} of {owner}: lost: the server stopped while it ran"
                "{stopping}; how it ended is not known",
                job_id=status.id,
                caller=shown(status.owner),
                owner=shown(status.owner),
                outcome="lost",
                stopping=", being stopped" if status.stop_requested else "",
            )
        if removed:
            log.info(
                "removed {count} job directory(ies) without a journal record",
                count=removed,
            )

    def started(self, status: JobStatus) -> None:
        log.info(
            "job {job_id} started by {caller}: {command} ({limits})",
            job_id=status.id,
            caller=shown(status.owner),
            owner=shown(status.owner),
            outcome="started",
            command=command_for_log(status.command),
            limits=limits_for_log(status.limits),
        )

    def readopted(self, status: JobStatus) -> None:
        log.info(
            "job {job_id} of {owner} re-adopted from an earlier server: {command}",
            job_id=status.id,
            owner=shown(status.owner),
            outcome="readopted",
            command=command_for_log(status.command),
        )

    def start_refused(
        self, owner: str, command: Sequence[bytes], error: BaseException
    ) -> None:
        who, reason = shown(owner), shown(str(error))
        if self._refused_starts.admit(who, reason):
            log.info(
                "job start refused for {caller}: {command}: {error}",
                caller=who,
                owner=who,
                outcome="refused",
                command=command_for_log(command),
                error=reason,
            )

    def stop_requested(self, status: JobStatus, grace: float | None) -> None:
        log.info(
            "job {job_id} of {owner}: stop requested (grace {grace})",
            job_id=status.id,
            owner=shown(status.owner),
            grace="default" if grace is None else f"{grace:g}s",
        )

    def ended(self, status: JobStatus) -> None:
        log.info(
            "job {job_id} of {owner} ended: {outcome}",
            job_id=status.id,
            owner=shown(status.owner),
            outcome=outcome_for_log(status),
            **asdict(status.usage),
        )

    def removed(self, status: JobStatus, reason: str, cause: str) -> None:
        log.info(
            "job {job_id} of {owner} removed {reason}",
            job_id=status.id,
            owner=shown(status.owner),
            outcome="removed",
            reason=shown(reason),
        )

    def shutdown_requested(self, running: int) -> None:
        self._refused_starts.flush()
        log.info("shutting down: stopping {count} running job(s)", count=running)

    def left_running(self, running: int) -> None:
        self._refused_starts.flush()
        log.info(
            "shutting down: leaving {count} jobs running for the next server",
            count=running,
        )
