"""The job library's facade: start, stop, query and read the output of jobs.

`JobManager` is usable without the server. It journals every job
(`jobworker.job.journal`) and, when made, restores the jobs an earlier
manager on the same state directory left (`jobworker.job.restored`). Every
method runs on the reactor thread; only `board` (the jobs' published
statuses) and the output log file may be used from other threads: a
`jobworker.job.outputlog.LogReader` (or `read_chunks`) on the path and
index `output_source(job_id)` gave, up to a size `wait_output` reported.
Methods that return a Deferred report their errors through it; the others
raise.
"""

from __future__ import annotations

import builtins
import functools
import math
import os
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorProcess, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from jobworker.defaults import INPUT_CAP, MAX_GRACE, OUTPUT_CAP, STOP_GRACE
from jobworker.errors import (
    InputClosed,
    InvalidRequest,
    IsolationFailed,
    JobNotEnded,
    JobNotFound,
    ShuttingDown,
    StartFailed,
    TooManyJobs,
)
from jobworker.isolation.interfaces import IsolationConfig, JobCgroup
from jobworker.isolation.uids import UidPool
from jobworker.job.admission import MAX_JOBS_PER_OWNER, RunningJobs
from jobworker.job.board import StatusBoard
from jobworker.job.dirs import JobDirs, create_job_dirs, job_dirs, remove_tree
from jobworker.job.environment import check_env, job_env
from jobworker.job.events import REQUEST_CAUSE, JobEvents
from jobworker.job.job import Job, JobRecord
from jobworker.job.journal import Entry, Journal
from jobworker.job.live import LiveFiles, read_exit, verify_helper
from jobworker.job.outputlog import OutputLog, OutputSource, read_chunks, scan
from jobworker.job.process.launcher import LaunchSpec
from jobworker.job.restored import Ended, RestoredJob, restore
from jobworker.job.stdin import JobInput
from jobworker.job.storage import StorageGuard
from jobworker.job.users import JobUser, resolve_user
from jobworker.limits import LimitPolicy
from jobworker.model import JobStatus, Limits, OutputChunk, OutputState
from jobworker.reactors import or_global

# Linux refuses a single argument of 128 KiB or more (MAX_ARG_STRLEN).
MAX_ARGUMENT = 128 * 1024 - 1
MAX_COMMAND = 1024 * 1024
DEFAULT_READ = 64 * 1024
MAX_REQUEST_ID = 128
_log = Logger()


class JobManager:
    """Runs jobs for owners, each in its own helper, cgroup and namespaces."""

    def __init__(
        self,
        state_dir: str,
        *,
        policy: LimitPolicy = LimitPolicy(),  # noqa: B008 - frozen, shared
        isolation: IsolationConfig | None = None,
        job_user: str | None = None,
        stop_grace: float = STOP_GRACE,
        output_cap: int = OUTPUT_CAP,
        input_cap: int = INPUT_CAP,
        events: JobEvents | None = None,
        max_jobs_per_owner: int | None = MAX_JOBS_PER_OWNER,
        storage: StorageGuard | None = None,
        live_restore: bool = False,
        reactor: IReactorProcess | None = None,
    ) -> None:
        """Jobs live below `state_dir`; `isolation=None` runs them bare.

        `job_user` is the account jobs run as (default: "nobody" when the
        server is root, else the server's own user); `stop_grace` is the
        default and shutdown TERM-to-KILL grace; `output_cap` the bytes of
        output kept per job, `input_cap` the bytes of stdin a job takes;
        `events` hears of every job event (the server's logs them);
        `max_jobs_per_owner` the jobs one owner may have starting or running
        at once (`None`: no cap); `storage` the owners' output quota and the
        free-disk floor (`None`: neither). The reactor also provides
        `IReactorTime` and `IReactorThreads`. The jobs journaled in
        `state_dir` are restored (ended; those whose end no manager saw as
        `LOST`): only one manager may use a state directory at a time (the
        server holds its lock).

        With `live_restore`, jobs outlive the manager: their helpers keep
        their output and status (`jobworker.job.live`), `shutdown` leaves
        them running, and a new manager re-adopts the jobs whose helper
        still runs (their cgroups are kept; every other stale one goes).
        """
        self._state_dir = state_dir
        self._policy = policy
        self._isolation = isolation
        self._job_user = job_user
        self._stop_grace = _check_grace(stop_grace)
        if output_cap < 0:
            raise InvalidRequest(f"output cap must not be negative: {output_cap}")
        self._output_cap = output_cap
        self._input_cap = input_cap
        self._events = events if events is not None else JobEvents()
        self._reactor = IReactorProcess(or_global(reactor))
        self.live_restore = live_restore
        self._jobs: dict[str, Job | RestoredJob] = {}
        self.running = RunningJobs(max_jobs_per_owner)
        """Starting and running jobs per owner, within the cap."""
        self.storage = storage
        """The owners' output quota and the disk's floor (None: neither)."""
        self.board = StatusBoard()
        """Every started job's latest status, for readers on any thread."""
        self._starting: dict[str, Job] = {}
        self._requests: dict[tuple[str, str], str] = {}
        """(owner, request id) -> the id of the job that Start made."""
        self._closing = False
        self._closed = False
        self._shutdown_waiters: builtins.list[Deferred[None]] = []
        self.journal = Journal(state_dir)
        """The jobs' records; `journal.remove(job_id)` forgets one (retention)."""
        self._restore()

    def _restore(self) -> None:
        """List the journaled jobs; a job dir without a record is removed."""
        loaded = self.journal.load()
        unrecorded = [name for name in loaded.unrecorded if _is_job_id(name)]
        for job_id in unrecorded:
            remove_tree(job_dirs(self._state_dir, job_id).job_dir)
        statuses = []
        adopted: builtins.list[tuple[Job, bool]] = []
        for entry in loaded.entries:
            dirs = job_dirs(self._state_dir, entry.status.id)
            live = self._readopt(entry, dirs) if self.live_restore else None
            if isinstance(live, Job):
                adopted.append((live, entry.status.stop_requested))
                status = live.status()
            else:
                job, changed = restore(entry, dirs, live)
                status = job.status()
                if changed:
                    self.journal.save(status, job.output.size)
                remove_tree(job.dirs.work_dir)  # left by a crash
                remove_tree(LiveFiles.of(dirs.job_dir).directory)
                self._jobs[status.id] = job
                if self.storage is not None:  # its log still holds that much
                    self.storage.stored(status.owner, status.output_bytes)
            if status.request_id is not None:
                self._requests[status.owner, status.request_id] = status.id
            self.board.publish(status)
            statuses.append(status)
        if self.live_restore and self._isolation is not None:
            keep = {each.record.id for each, _ in adopted}
            stale = self._isolation.cgroups.cleanup_stale(keep)
            if stale:
                _log.info("removed {count} stale job cgroup(s)", count=stale)
        self._events.restored(statuses, len(unrecorded))
        for each, stopping in adopted:
            self._adopted(each, stopping)

    def _readopt(self, entry: Entry, dirs: JobDirs) -> Job | Ended | None:
        """A running job of an earlier server, re-adopted if its helper runs.

        Else how its helper said it ended (`Ended`), or None (LOST).
        """
        status = entry.status
        if status.state.ended:
            return None
        live = LiveFiles.of(dirs.job_dir)
        cgroup = None
        if self._isolation is not None:
            cgroup = self._isolation.cgroups.find(status.id, owner=status.owner)
        procs = cgroup.procs_files if cgroup is not None else ()
        helper = verify_helper(live, procs) if os.path.isdir(live.directory) else None
        if helper is None:
            return _helper_ended(live, cgroup)
        scanned = scan(dirs.output_path)
        output = OutputLog(
            dirs.output_path,
            self._output_cap,
            IReactorTime(self._reactor),
            None if self.storage is None else self.storage.account(status.owner),
            external=True,
            start=scanned,
        )
        if self.storage is not None:
            self.storage.stored(status.owner, scanned.data_bytes)
        record = JobRecord(
            status.id, status.owner, status.command, status.limits, status.request_id
        )
        return self._job_of(
            (record, dirs, output, cgroup), None, live, adopted=(status, *helper)
        )

    def _job_of(
        self,
        parts: tuple[JobRecord, JobDirs, OutputLog, JobCgroup | None],
        spec: LaunchSpec | None,
        live: LiveFiles | None,
        adopted: tuple[JobStatus, int, int] | None = None,
    ) -> Job:
        """The `Job` of (record, dirs, output, cgroup): spawned for `spec`,
        or `adopted` (see `Job`)."""
        record, _, output, _ = parts
        return Job(
            *parts,
            spec=spec,
            reactor=self._reactor,
            on_change=functools.partial(self._publish, output),
            on_cleanup_failed=lambda: self._events.cleanup_failed(record.id),
            input_cap=self._input_cap,
            live=live,
            adopted=adopted,
        )

    def _adopted(self, job: Job, stopping: bool) -> None:
        """A re-adopted job is listed and counted as a started one; the
        earlier server's stop (`stopping`) goes on, with the default grace."""
        owner = job.record.owner
        self.running.admit(owner, force=True)
        Deferred.fromCoroutine(self._release_at_end(job))
        sandbox = self._isolation.sandbox if self._isolation is not None else None
        pool = sandbox.uids if sandbox and self._job_user is None else None
        if pool is not None:
            uid = os.stat(job.dirs.work_dir).st_uid
            user = pool.claim(uid)
            Deferred.fromCoroutine(_give_back_after(job, pool, user, job.cgroup))
        self._register(job, adopted=True)
        if stopping:
            job.stop(self._stop_grace)

    @property
    def shutting_down(self) -> bool:
        """Whether `shutdown` was called (under live restore: jobs left)."""
        return self._closing

    @property
    def policy(self) -> LimitPolicy:
        """The defaults and maximums of the jobs' limits."""
        return self._policy

    def start(
        self,
        owner: str,
        command: Sequence[bytes],
        limits: Limits | None = None,
        *,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        request_id: str | None = None,
    ) -> Deferred[JobStatus]:
        """Start `command` for `owner`; fire once it has really been exec'd.

        `env` is set on top of the job's clean environment
        (`environment.job_env`); with `stdin` the job's stdin is a pipe
        (`write_input`), else /dev/null. With a `request_id`, a start
        `owner` already made with it (now or in an earlier run, while the
        job is kept) is not made again: its job's status is the answer (or
        its start's failure, while no job has the id), and it counts
        against no cap. Fails with a `StartFailed` subclass (nothing of the
        job is left), `InvalidRequest` (empty command, NUL byte, bad limits,
        environment or request id, the request id of another command),
        `TooManyJobs` (the owner's running jobs at the cap;
        `StorageExhausted`: its output quota used up, or the disk below its
        floor) or `ShuttingDown`.
        """
        key = None if request_id is None else (str(owner), request_id)
        if key is not None and key in self._requests:
            before = self._started_before(self._requests[key], owner, command)
            return Deferred.fromCoroutine(before)
        launch = self._launch(
            owner, command, limits, env=env or {}, stdin=stdin, request_id=request_id
        )
        return Deferred.fromCoroutine(self._start(owner, command, launch, key))

    async def _start(
        self,
        owner: str,
        command: Sequence[bytes],
        launch: Coroutine[Any, Any, Job],
        key: tuple[str, str] | None,
    ) -> JobStatus:
        try:
            try:
                self.running.admit(str(owner))
            except TooManyJobs:
                launch.close()  # never started: nothing to undo
                raise
            try:
                job = await launch
            except BaseException:
                self.running.release(str(owner))
                raise
        except Exception as error:
            self._events.start_refused(owner, command, error)
            raise
        job_id = job.record.id
        Deferred.fromCoroutine(self._release_at_end(job))
        # Registered when exec'd even if our caller stopped waiting (cancel);
        # its request id is taken in the step that checked it was free.
        self._starting[job_id] = job
        if key is not None:
            self._requests[key] = job_id
        job.when_started().addCallbacks(
            lambda _: self._register(job),
            lambda failure: self._start_failed(job, key, failure.value),
        ).addBoth(lambda _: self._starting.pop(job_id))
        await job.when_started()
        return job.status()

    async def _started_before(
        self, job_id: str, owner: str, command: Sequence[bytes]
    ) -> JobStatus:
        """The status of the job a repeated Start made (once it has started)."""
        job = self._starting.get(job_id) or self._jobs[job_id]
        try:
            _check_same_command(job.status(), command)
            if isinstance(job, Job):
                await job.when_started()
        except Exception as error:
            self._events.start_refused(owner, command, error)
            raise
        return job.status()

    def _start_failed(
        self, job: Job, key: tuple[str, str] | None, error: BaseException
    ) -> None:
        if key is not None:
            self._requests.pop(key, None)  # a retry may start it again
        self._events.start_refused(job.record.owner, job.record.command, error)

    async def _launch(
        self,
        owner: str,
        command: Sequence[bytes],
        limits: Limits | None,
        *,
        env: Mapping[str, str],
        stdin: bool,
        request_id: str | None,
    ) -> Job:
        """Make the job's directories, log and cgroup, and spawn its helper."""
        if self._closing:
            raise ShuttingDown("the job manager is shutting down")
        if self.storage is not None:
            self.storage.admit(str(owner))
        argv = _check_command(command)
        extra_env = check_env(env)
        resolved = self._policy.resolve(limits)
        request_id = _check_request_id(request_id)
        sandbox = self._isolation.sandbox if self._isolation is not None else None
        pool = sandbox.uids if sandbox and self._job_user is None else None
        user = pool.lease() if pool is not None else resolve_user(self._job_user)
        record = JobRecord(str(uuid.uuid4()), str(owner), argv, resolved, request_id)
        try:
            dirs = create_job_dirs(self._state_dir, record.id, user)
        except BaseException:
            _give_back(pool, user, None)
            raise
        output: OutputLog | None = None
        cgroup: JobCgroup | None = None
        live = LiveFiles.of(dirs.job_dir) if self.live_restore else None
        try:
            output = OutputLog(
                dirs.output_path,
                self._output_cap,
                IReactorTime(self._reactor),
                None if self.storage is None else self.storage.account(record.owner),
                external=live is not None,
            )
            if live is not None:
                live.make()
            if self._isolation is not None:
                try:
                    cgroup = self._isolation.cgroups.create(
                        record.id, resolved, dirs.work_dir, owner=record.owner
                    )
                except OSError as e:
                    raise IsolationFailed(f"cannot create the job's cgroup: {e}") from e
            spec = LaunchSpec(
                argv,
                dirs.work_dir,
                job_env(dirs.work_dir, extra_env),
                user,
                cgroup.procs_files if cgroup is not None else (),
                self._isolation is not None and self._isolation.namespaces,
                stdin=stdin,
                job_id=record.id,
                live=None
                if live is None
                else live.helper_config(dirs.output_path, self._output_cap),
                **(
                    sandbox.launch_options(
                        self._state_dir, dirs.work_dir, user, resolved
                    )
                    if sandbox is not None
                    else {}
                ),
            )
            job = self._job_of((record, dirs, output, cgroup), spec, live)
        except BaseException:
            if output is not None:
                output.finish()
            try:
                if cgroup is not None:
                    await cgroup.remove()
            finally:
                _give_back(pool, user, cgroup)
            remove_tree(dirs.job_dir)
            raise
        # The uid is free again once nothing of the job can run as it.
        if pool is not None:
            Deferred.fromCoroutine(_give_back_after(job, pool, user, cgroup))
        return job

    async def _release_at_end(self, job: Job) -> None:
        """Free the owner's slot once the start failed or the job ended."""
        try:
            await _over(job)
        finally:
            self.running.release(job.record.owner)

    def _publish(self, output: OutputLog, status: JobStatus) -> None:
        """A job's status changed: on the board, and in the journal."""
        self.board.publish(status)
        self.journal.save(status, output.size)

    def _register(self, job: Job, *, adopted: bool = False) -> None:
        """The job was exec'd (and published its status), or re-`adopted`
        from an earlier server (not started again): it is listed."""
        job_id = job.record.id
        self._jobs[job_id] = job
        self.board.watch_usage(job_id, job.current_usage)
        if adopted:
            self._events.readopted(job.status())
        else:
            self._events.started(job.status())

        def ended(status: JobStatus) -> None:
            self.board.watch_usage(job_id, None)
            self._events.ended(status)

        job.ended().addCallback(ended)

    def stop(self, job_id: str, grace: float | None = None) -> Deferred[JobStatus]:
        """Stop a job: TERM, then after `grace` seconds KILL everything of it.

        Fires with the final status; safe on stopping and ended jobs.
        """
        try:
            job = self._job(job_id)
            seconds = self._stop_grace if grace is None else _check_grace(grace)
        except (JobNotFound, InvalidRequest) as e:
            return fail(e)
        self._events.stop_requested(job.status(), grace)
        return job.stop(seconds)

    def remove(
        self, job_id: str, reason: str = "", cause: str = REQUEST_CAUSE
    ) -> Deferred[JobStatus]:
        """Forget an ended job and delete its output; fire with its last status.

        Fails with `JobNotFound`, or `JobNotEnded` for a job still running or
        stopping. In this reactor step the job's journal record is removed
        (durably) and the job leaves the manager's table, the board, the
        request-id index (a Start with its request id starts a new job) and
        its owner's output quota; `reason` and `cause` (one of
        `events.REMOVAL_CAUSES`) are for the `removed` event. The
        Deferred fires once its directory is gone (removed in the reactor's
        thread pool). The record goes first: a crash after it leaves a
        directory without a record, which the next manager removes at start;
        the other order could leave a record whose output is gone, restored
        as a job with no output (doc/jobs.md, "Retention").
        """
        try:
            job = self._job(job_id)
        except JobNotFound as e:
            return fail(e)
        status = job.status()
        if not status.state.ended:
            return fail(
                JobNotEnded(
                    f"job {status.id} is {status.state.value}; only an ended job"
                    " can be removed (stop it first)"
                )
            )
        try:
            self.journal.remove(status.id)
        except OSError as e:
            return fail(e)
        del self._jobs[status.id]
        self.board.remove(status.id)
        if status.request_id is not None:
            key = (status.owner, status.request_id)
            if self._requests.get(key) == status.id:
                del self._requests[key]
        if self.storage is not None:
            self.storage.released(status.owner, status.output_bytes)
        self._events.removed(status, reason, cause)
        threads = IReactorThreads(self._reactor)
        gone = deferToThreadPool(
            threads, threads.getThreadPool(), remove_tree, job.dirs.job_dir
        )
        return gone.addCallback(lambda _: status)

    def status(self, job_id: str) -> JobStatus:
        """The job's current status; raises `JobNotFound`."""
        return self._job(job_id).status()

    def wait_ended(self, job_id: str) -> Deferred[JobStatus]:
        """Fire with the job's final status once it has ended.

        Cancelling the Deferred forgets it at once.
        """
        try:
            return self._job(job_id).ended()
        except JobNotFound as e:
            return fail(e)

    def list(self) -> builtins.list[JobStatus]:
        """Every job's status, oldest first."""
        return sorted(
            (job.status() for job in self._jobs.values()),
            key=lambda status: status.started_at,
        )

    def wait_output(self, job_id: str, offset: int) -> Deferred[OutputState]:
        """Fire once the job's log is longer than `offset` or complete.

        Cancelling the Deferred releases everything kept for it.
        """
        try:
            return self._job(job_id).output.wait(offset)
        except (JobNotFound, InvalidRequest) as e:
            return fail(e)

    def output_path(self, job_id: str) -> str:
        """The job's output log, for a `LogReader` or `read_chunks` on any thread."""
        return self._job(job_id).dirs.output_path

    def output_source(self, job_id: str) -> OutputSource:
        """The job's output log with its index and state, for a `LogReader`."""
        return self._job(job_id).output.source()

    def read(
        self, job_id: str, offset: int, max_bytes: int = DEFAULT_READ
    ) -> Deferred[builtins.list[OutputChunk]]:
        """Wait for output after `offset`, then read it; [] means the end."""
        return Deferred.fromCoroutine(self._read(job_id, offset, max_bytes))

    async def _read(
        self, job_id: str, offset: int, max_bytes: int
    ) -> builtins.list[OutputChunk]:
        if max_bytes <= 0:
            raise InvalidRequest(f"max_bytes must be positive, got {max_bytes}")
        state = await self.wait_output(job_id, offset)
        if offset >= state.size:
            return []
        source = self.output_source(job_id)
        return read_chunks(source.path, offset, state.size, max_bytes, source.index)

    def claim_input(self, job_id: str) -> None:
        """Take the job's stdin for one writer; `InputClosed` if it cannot be."""
        self._input(job_id).claim()

    def write_input(self, job_id: str, data: bytes) -> Deferred[bool]:
        """Write to the job's stdin; fire once more may be written.

        Fires with False once the job has closed its stdin (or ended);
        fails with `InputTooLarge` past the input cap. Cancellable.
        """
        try:
            return self._input(job_id).write(data)
        except (JobNotFound, InputClosed) as e:
            return fail(e)

    def close_input(self, job_id: str) -> None:
        """End the job's input: it reads EOF once it has read what was written."""
        self._input(job_id).close()

    def _input(self, job_id: str) -> JobInput:
        job = self._job(job_id)
        if isinstance(job, RestoredJob):
            raise InputClosed(f"job {job_id} has ended: its stdin is closed")
        if job.input is None:
            raise InputClosed(
                f"job {job_id} has no stdin to write to (it was started without"
                " one, or its stdin ended with the server that started it)"
            )
        return job.input

    def shutdown(self) -> Deferred[None]:
        """Refuse new jobs, stop every job, fire when all have ended.

        Under live restore the jobs are left running for the next manager
        instead (those still starting once they have started).
        """
        running = [status for status in self.list() if not status.state.ended]
        if self.live_restore:
            self._events.left_running(len(running))
        else:
            self._events.shutdown_requested(len(running))
        if self._closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._shutdown_waiters.append(waiter)
        if not self._closing:
            self._closing = True
            Deferred.fromCoroutine(self._shutdown())
        return waiter

    async def _shutdown(self) -> None:
        try:
            starts = [job.when_started() for job in self._starting.values()]
            await gatherResults(starts, consumeErrors=True).addErrback(lambda _: None)
            if self.live_restore:
                left = [
                    job.abandon() for job in self._jobs.values() if isinstance(job, Job)
                ]
                await gatherResults(left, consumeErrors=True)
                return
            stops = [job.stop(self._stop_grace) for job in self._jobs.values()]
            await gatherResults(stops, consumeErrors=True)
        finally:
            self._closed = True
            waiters, self._shutdown_waiters = self._shutdown_waiters, []
            for waiter in waiters:
                if not waiter.called:  # a cancelled waiter has been called
                    waiter.callback(None)

    def _job(self, job_id: str) -> Job | RestoredJob:
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise JobNotFound(str(job_id))
        return job


def _helper_ended(live: LiveFiles, cgroup: JobCgroup | None) -> Ended | None:
    """How a helper that died while no server ran said its job ended."""
    record = read_exit(live)
    if record is None:
        return None
    oom = False
    if cgroup is not None:
        try:
            oom = cgroup.oom_killed()
        except (OSError, ValueError):
            oom = False
    return Ended(record, oom, os.stat(live.exit_file).st_mtime)


def _give_back(
    pool: UidPool | None, user: JobUser | None, cgroup: JobCgroup | None
) -> None:
    """Return a job's uid to the pool, or hold it if its cgroup is not gone."""
    if pool is not None and user is not None:
        left = cgroup is not None and any(map(os.path.exists, cgroup.procs_files))
        pool.release(user.uid, gone=not left)


async def _give_back_after(
    job: Job, pool: UidPool, user: JobUser | None, cgroup: JobCgroup | None
) -> None:
    """Return the job's uid once it has ended (or failed to start)."""
    try:
        await _over(job)
    finally:
        _give_back(pool, user, cgroup)


async def _over(job: Job) -> None:
    """Return once the job has ended, or has failed to start."""
    try:
        await job.when_started()
        await job.ended()
    except StartFailed:
        pass


def _check_grace(grace: float) -> float:
    if not (isinstance(grace, int | float) and math.isfinite(grace)):
        raise InvalidRequest(f"grace must be a number of seconds, got {grace!r}")
    if not 0 <= grace <= MAX_GRACE:
        raise InvalidRequest(f"grace must be between 0 and {MAX_GRACE} seconds")
    return float(grace)


def _check_request_id(request_id: str | None) -> str | None:
    if request_id is None:
        return None
    if not isinstance(request_id, str) or not request_id:
        raise InvalidRequest("a request id must be a non-empty string")
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidRequest(
            f"a request id must be at most {MAX_REQUEST_ID} printable characters"
        )
    return request_id


def _check_same_command(status: JobStatus, command: Sequence[bytes]) -> None:
    """A repeated Start must ask for its job's argv; `InvalidRequest` if not."""
    if _check_command(command) != status.command:
        raise InvalidRequest(
            f"request id already used by job {status.id} for another command"
        )


def _is_job_id(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


def _check_command(command: Sequence[bytes]) -> tuple[bytes, ...]:
    if isinstance(cast(object, command), bytes | str):
        raise InvalidRequest("the command must be a list of arguments")
    argv = tuple(command)
    if not argv or not argv[0]:
        raise InvalidRequest("the command is empty")
    for arg in argv:
        if not isinstance(arg, bytes):
            raise InvalidRequest(f"arguments must be bytes, got {type(arg).__name__}")
        if b"\0" in arg:
            raise InvalidRequest("an argument contains a NUL byte")
        if len(arg) > MAX_ARGUMENT:
            raise InvalidRequest(f"an argument is longer than {MAX_ARGUMENT} bytes")
    if sum(len(arg) + 1 for arg in argv) > MAX_COMMAND:
        raise InvalidRequest(f"the command is longer than {MAX_COMMAND} bytes")
    return argv
