"""One job: its record, its state machine, its output log and its clean-up.

Making a `Job` spawns its helper and starts the timer that kills a helper
which has not exec'd the command within `defaults.EXEC_TIMEOUT`. The job
receives its helper's events (it is the `ProcessEvents` of
`jobworker.job.process.protocol`). `when_started()` fires once the command
was exec'd, or fails with the precise `StartFailed` once the helper is gone
and everything made for the job (cgroup, directories) is removed. After a
start, the job ends when the helper exits: the output pipes are drained
(for at most `DRAIN_TIMEOUT` seconds, so nothing outside the job can hold
them open), the cgroup is checked for an OOM kill and removed (once it is
empty, however long a process in D state takes), the work dir removed, and
only then is the final status recorded and the output log completed.

Under live restore (`live`) the helper keeps the output, the exit status
and the controls (`jobworker.job.process.keeper`): the job follows the log
the helper writes, signals the helper through a pidfd (SIGTERM is
forwarded to the command, SIGUSR2 kills everything), and ends once its
`HelperLink` is gone, with the status the helper sent or wrote to its exit
file. A job of an earlier server is made the same way (`adopted`), without
a spawn; `abandon` leaves it running for the next server.
"""

from __future__ import annotations

import itertools
import os
import signal as signals
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorThreads,
    IReactorTime,
    IReactorUNIX,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobworker.defaults import EXEC_TIMEOUT, INPUT_CAP
from jobworker.errors import StartFailed
from jobworker.isolation.interfaces import CgroupBusy, JobCgroup
from jobworker.job.dirs import JobDirs, remove_tree
from jobworker.job.live import LiveFiles, read_exit, wait_outcome
from jobworker.job.machine import JobCore, JobInputs, JobMachine
from jobworker.job.outputlog import OutputLog
from jobworker.job.process.launcher import (
    MAX_REPORT,
    LaunchSpec,
    spawn,
    start_error,
)
from jobworker.job.process.link import HelperLink, connect_helper
from jobworker.job.process.protocol import JobProcessProtocol
from jobworker.job.stdin import JobInput, StdinPipe
from jobworker.model import JobStatus, Limits, Stream, Usage

DRAIN_TIMEOUT = 5.0
# After SIGUSR2 ("kill everything") the helper has this long to exit before
# the job's whole cgroup is killed as well.
KILL_BACKSTOP = 2.0
_log = Logger()
T = TypeVar("T")


@dataclass(frozen=True)
class JobRecord:
    """What a job was asked to be."""

    id: str
    owner: str
    command: tuple[bytes, ...]
    limits: Limits
    request_id: str | None = None


class Waiters(Generic[T]):
    """Deferreds waiting for one outcome; later waiters get it at once.

    A cancelled waiter is forgotten immediately.
    """

    def __init__(self) -> None:
        self._waiting: list[Deferred[T]] = []
        self._value: tuple[T] | None = None
        self._error: Exception | None = None

    def wait(self) -> Deferred[T]:
        if self._value is not None:
            return succeed(self._value[0])
        if self._error is not None:
            return fail(self._error)
        waiter: Deferred[T] = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        return waiter

    def fire(self, value: T) -> None:
        self._value = (value,)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(value)

    def fail(self, error: Exception) -> None:
        self._error = error
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(error)


@dataclass
class _Exit:
    exit_code: int | None
    signal: int | None


class Job:
    """A started (or starting) job; touched on the reactor thread only."""

    _pidfd: int | None
    """The helper's pidfd, under live restore."""

    def __init__(
        self,
        record: JobRecord,
        dirs: JobDirs,
        output: OutputLog,
        cgroup: JobCgroup | None,
        *,
        spec: LaunchSpec | None,
        reactor: IReactorProcess,
        on_change: Callable[[JobStatus], None],
        on_cleanup_failed: Callable[[], None] = lambda: None,
        input_cap: int = INPUT_CAP,
        live: LiveFiles | None = None,
        adopted: tuple[JobStatus, int, int] | None = None,
    ) -> None:
        """Spawn the helper for `spec`, and time its exec (`EXEC_TIMEOUT`).

        With `spec.stdin`, `input` is the server's end of the job's stdin
        (at most `input_cap` bytes); else it is None.

        Once the command was exec'd, `on_change` gets the new status each
        time it changes. Raises `StartFailed` if the helper cannot be
        spawned; everything made for the job is then the caller's to remove.

        `live`: the helper keeps the job (live restore). `adopted`: the
        job's last status and the pid and a verified pidfd of the running
        helper of an earlier server (`jobworker.job.live.verify_helper`); nothing is
        spawned and `spec` is None.
        """
        self.record = record
        self.dirs = dirs
        self.output = output
        self.cgroup = cgroup
        self._clock = IReactorTime(reactor)
        self._threads = IReactorThreads(reactor)
        self._on_change = on_change
        self._on_cleanup_failed = on_cleanup_failed
        self.started_at = self._clock.seconds()
        self.ended_at: float | None = None
        self.oom_killed = False
        self.usage = Usage()  # final, shown once the job has ended
        self._final_usage: Usage | None = None  # read before the cgroup goes
        self._started = False
        self._start_waiters: Waiters[None] = Waiters()
        self._report = b""
        self._status_open = True
        self._backstop: IDelayedCall | None = None
        self._exit: _Exit | None = None
        self._open_streams = {Stream.STDOUT, Stream.STDERR}
        self._output_closed = False  # by us, past a cap
        self._drained: Deferred[None] = Deferred()
        self._end_waiters: Waiters[JobStatus] = Waiters()
        self.core = JobCore(self._clock, self._terminate, self._kill)
        self.machine: JobInputs = JobMachine(self.core)
        # New output and the end are published before any follower is woken:
        # a client that has read output must not get an older status.
        self.output.before_wake = self.publish
        self._reactor = reactor
        self._live_state(live)
        self.input: JobInput | None = None
        self.transport: IProcessTransport | None = None
        self._start_timer: IDelayedCall | None = None
        if live is not None:
            self._open_streams.clear()  # the helper reads them
            self._drained.callback(None)
        if adopted is not None:
            self._adopt(*adopted)
            return
        assert spec is not None
        self.transport = spawn(reactor, JobProcessProtocol(self), spec)
        if live is not None:
            self._pidfd = os.pidfd_open(self.transport.pid)  # not reaped yet
        if spec.stdin:
            self.input = JobInput(cast(StdinPipe, self.transport), input_cap)
        self._start_timer = self._clock.callLater(
            EXEC_TIMEOUT, self._start_timed_out, EXEC_TIMEOUT
        )

    def _live_state(self, live: LiveFiles | None) -> None:
        self.live = live
        self._link: HelperLink | None = None
        self._connecting: Deferred[HelperLink] | None = None
        self._link_lost = False
        self._link_closed: Waiters[None] = Waiters()
        self._abandoned = False
        self._ended_with: int | None = None  # the wait status the helper sent
        self._pidfd = None

    def _adopt(self, before: JobStatus, pid: int, pidfd: int) -> None:
        self._pidfd = pidfd
        self.started_at = before.started_at
        self._started = True
        self._status_open = False
        self._start_waiters.fire(None)  # it was, by an earlier server
        self._connect(pid)

    def status(self) -> JobStatus:
        """An immutable snapshot of this job."""
        return JobStatus(
            id=self.record.id,
            owner=self.record.owner,
            command=self.record.command,
            state=self.machine.state(),
            limits=self.record.limits,
            started_at=self.started_at,
            ended_at=self.ended_at,
            exit_code=self.core.exit_code,
            signal=self.core.signal,
            oom_killed=self.oom_killed,
            stop_requested=self.core.stop_requested,
            output_bytes=self.output.data_bytes,
            output_truncated=self.output.truncated,
            output_truncated_by=self.output.truncated_by,
            usage=self.usage,
            request_id=self.record.request_id,
        )

    def current_usage(self) -> Usage:
        """What the job has used so far, or its final usage once it has one.

        Reads the cgroup's files and nothing the reactor changes but two
        attributes, so any thread may call it (the API's Status does).
        """
        final = self._final_usage
        if self.cgroup is None or final is not None:
            return final or self.usage
        try:
            return self.cgroup.usage()
        except (OSError, ValueError):  # removed meanwhile: the final usage
            return self._final_usage or self.usage

    def publish(self) -> None:
        """Hand the current status to `on_change` (after every change).

        Nothing is published before the command was exec'd: until then the
        job is not listed, and a failed start leaves no trace.
        """
        if self._started:
            self._on_change(self.status())

    def stop(self, grace: float) -> Deferred[JobStatus]:
        """TERM, then KILL after `grace`; fires with the final status."""
        self.machine.stop(grace)
        self.publish()
        return self.ended()

    def ended(self) -> Deferred[JobStatus]:
        """Fires with the final status."""
        return self._end_waiters.wait()

    def when_started(self) -> Deferred[None]:
        """Fires once the command was exec'd; fails with `StartFailed`."""
        return self._start_waiters.wait()

    def _start_timed_out(self, seconds: float) -> None:  # spawned jobs only
        _log.warn("job {id}: not exec'd after {s} s", id=self.record.id, s=seconds)
        if not self._report:
            self._report = f"timeout not exec'd within {seconds:g} s".encode()
        self._signal(signals.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def _signal(self, sig: int) -> None:
        try:
            if self._pidfd is not None:
                signals.pidfd_send_signal(self._pidfd, sig)
            elif self.transport is not None:
                self.transport.signalProcess(sig)
        except (ProcessExitedAlready, ProcessLookupError):
            _log.debug("job {id}: signal {sig} not sent", id=self.record.id, sig=sig)

    def _terminate(self) -> None:
        self._signal(signals.SIGTERM)

    def _kill(self) -> None:
        # The helper SIGKILLs the namespace's init and reaps it; killing the
        # helper first would leave the init a zombie of whichever subreaper
        # is above us. The cgroup is killed too, but only if the helper has
        # not exited shortly after (and, in any case, when it is removed).
        self._signal(signals.SIGUSR2)
        if self.cgroup is not None:
            self._backstop = self._clock.callLater(KILL_BACKSTOP, self.cgroup.kill_all)

    # ProcessEvents

    def output_received(self, stream: Stream, data: bytes) -> None:
        self.output.append(stream, data)  # publishes (before_wake)
        if self.output.truncated and not self._output_closed:
            self._close_output(stream)

    def _close_output(self, last: Stream) -> None:
        """Past a cap, close the output pipes: the job's writes get EPIPE.

        Its next write fails at once (SIGPIPE, as `cmd | head` does) rather
        than the server reading, and dropping, its output at full speed
        (doc/output.md, "Past a cap"). The stream that reached the cap is
        closed `last`: its writer may go on to write to the other one
        (`head ...; echo done >&2`), which must be closed by then.
        """
        self._output_closed = True
        _log.info(
            "job {id}: output truncated ({cap}); its output pipes are closed",
            id=self.record.id,
            cap=self.output.truncated_by,
        )
        for stream in sorted(self._open_streams, key=lambda open_: open_ == last):
            self._close_child_fd(stream)

    def _close_child_fd(self, fd: int) -> None:
        if self.transport is not None:
            self.transport.closeChildFD(fd)

    def output_closed(self, stream: Stream) -> None:
        self._open_streams.discard(stream)
        if not self._open_streams and not self._drained.called:
            self._drained.callback(None)

    def input_closed(self) -> None:
        if self.input is not None:
            self.input.job_closed()

    def status_received(self, data: bytes) -> None:
        self._report = (self._report + data)[:MAX_REPORT]

    def status_closed(self) -> None:
        self._status_open = False
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        if not self._report:
            self._started = True
            if self.live is not None and self.transport is not None:
                self._connect(self.transport.pid)  # before anyone can abandon it
            self.publish()
            self._start_waiters.fire(None)
        self._after_exit()

    def process_exited(self, exit_code: int | None, signal: int | None) -> None:
        self._exit = _Exit(exit_code, signal)
        if self._backstop is not None and self._backstop.active():
            self._backstop.cancel()
        self._after_exit()

    def _after_exit(self) -> None:
        # Both the exit and the start report are needed; they come in any order.
        # Under live restore the end is the link's: it is lost once the helper
        # has said "ended" (or died), and a spawned helper has exited too.
        if self._status_open:
            return
        if self._report:
            if self._exit is None:
                return
            ending = Deferred.fromCoroutine(self._fail_start())
        elif self.live is not None:
            if not self._link_lost or self._abandoned:
                return
            if self.transport is not None and self._exit is None:
                return
            self.machine.process_exited()
            ending = Deferred.fromCoroutine(self._end(self._live_exit()))
        else:
            if self._exit is None:
                return
            self.machine.process_exited()
            ending = Deferred.fromCoroutine(self._end(self._exit))
        # What can fail is handled where it does; this only logs a bug.
        ending.addErrback(self._clean_up_failed)

    # Live restore: the helper's link (LinkEvents)

    def _connect(self, pid: int) -> None:
        """Connect to the helper's socket; its peer must be `pid`."""
        assert self.live is not None
        self._link = HelperLink(self, pid)
        try:
            connecting = connect_helper(
                IReactorUNIX(self._reactor), self.live.directory, self._link
            )
        except OSError as error:
            connecting = fail(error)
        self._connecting = connecting
        connecting.addErrback(self._not_connected)

    def _not_connected(self, failure: Failure) -> None:
        if self._abandoned:
            self.link_lost()
            return
        _log.warn(
            "job {id}: cannot reach its helper: {why}",
            id=self.record.id,
            why=failure.getErrorMessage(),
        )
        self.link_lost()

    def log_grew(self, size: int) -> None:
        if self._abandoned:
            return
        self.output.follow(size)  # publishes (before_wake)
        why = self.output.exhausted()
        if why is not None and not self._output_closed and self._link is not None:
            self._output_closed = True
            _log.info(
                "job {id}: output truncated ({cap}); the helper closes its pipes",
                id=self.record.id,
                cap=why,
            )
            self._link.drop(why)

    def log_truncated(self, why: str) -> None:
        if not self._abandoned:
            self.output.mark_truncated(why)

    def helper_ended(self, wait_status: int) -> None:
        self._ended_with = wait_status

    def link_lost(self) -> None:
        if self._link_lost:
            return
        self._link_lost = True
        self._link_closed.fire(None)
        if self._backstop is not None and self._backstop.active():
            self._backstop.cancel()
        self._after_exit()

    def abandon(self) -> Deferred[None]:
        """Leave the job running, for the next server (live restore).

        Its stdin, if it has one, is closed: the job reads EOF. Fires once
        the link to its helper is closed.
        """
        self._abandoned = True
        if self.input is not None:
            self.input.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._link is not None and self._link.transport is not None:
            self._link.transport.loseConnection()
        elif self._connecting is not None and not self._connecting.called:
            self._connecting.cancel()  # fails: `_not_connected`
        elif not self._link_lost:
            self.link_lost()
        return self._link_closed.wait()

    def _live_exit(self) -> _Exit | None:
        """How the command ended: the helper's word, its exit file, its exit."""
        assert self.live is not None
        record = read_exit(self.live)
        if record is not None:
            self.output.follow(record.log_size)
            if record.truncated_by:
                self.output.mark_truncated(record.truncated_by)
        status = self._ended_with
        if status is None and record is not None:
            status = record.wait_status
        if status is not None:
            return _Exit(*wait_outcome(status))
        if self._exit is not None:
            _log.warn("job {id}: its helper died", id=self.record.id)
            return self._exit
        _log.warn(
            "job {id}: its helper is gone without an exit status: lost",
            id=self.record.id,
        )
        return None

    def _clean_up_failed(self, failure: Failure) -> None:
        _log.failure("job {id}: clean-up failed", failure, id=self.record.id)

    async def _fail_start(self) -> None:
        error: StartFailed = start_error(self._report, self.record.command)
        try:
            await self._drain()
            await self._release()
            self.output.finish()
            await self._remove(self.dirs.job_dir)
        finally:
            # Whatever went wrong above, the start has failed: say so.
            self._start_waiters.fail(error)

    async def _end(self, how: _Exit | None) -> None:
        try:
            await self._drain()
            self._read_oom_flag()
            self._read_usage()
            await self._release()
            await self._remove(self.dirs.work_dir)
        finally:
            # Whatever went wrong above, the job has ended: record it.
            self.ended_at = self._clock.seconds()
            self.usage = self._final_usage or Usage()
            if self.input is not None:
                self.input.job_closed()
            if how is None:
                self.machine.lost()
            elif how.signal is not None:
                self.machine.killed(how.signal)
            else:
                self.machine.exited(how.exit_code or 0)
            if self.live is not None:
                self._forget_helper()
            self.output.finish()  # publishes the final status (before_wake)
            self._end_waiters.fire(self.status())

    def _forget_helper(self) -> None:
        """Journal the final status, then remove the helper's files."""
        self.publish()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        assert self.live is not None
        remove_tree(self.live.directory)

    async def _drain(self) -> None:
        """Wait for the output pipes to close, but not for ever."""
        timer = self._clock.callLater(DRAIN_TIMEOUT, self._stop_draining)
        await self._drained
        if timer.active():
            timer.cancel()

    def _stop_draining(self) -> None:
        _log.warn("job {id}: output still open after exit", id=self.record.id)
        for stream in list(self._open_streams):
            self._close_child_fd(stream)
        if not self._drained.called:
            self._drained.callback(None)

    def _read_oom_flag(self) -> None:
        if self.cgroup is None:
            return
        try:
            self.oom_killed = self.cgroup.oom_killed()
        except (OSError, ValueError):
            _log.failure("job {id}: cannot read its OOM flag", id=self.record.id)

    def _read_usage(self) -> None:
        if self.cgroup is None:
            return
        try:
            self._final_usage = self.cgroup.usage()
        except (OSError, ValueError):
            _log.failure("job {id}: cannot read its usage", id=self.record.id)

    async def _release(self) -> None:
        """Remove the cgroup; the job ends only once it is empty.

        A process stuck in D state (a throttled or hung write) survives
        SIGKILL until its IO completes: the job stays stopping (or running)
        until then, and is never reported ended while a process of it lives.
        """
        if self.cgroup is None:
            return
        for attempt in itertools.count():
            try:
                await self.cgroup.remove()
            except CgroupBusy as error:
                if attempt == 0:
                    _log.warn(
                        "job {id}: {error}; processes that ignore SIGKILL (in D"
                        " state, waiting on IO) are left; the job ends once"
                        " they are gone",
                        id=self.record.id,
                        error=error,
                    )
                continue
            except OSError:
                _log.failure("job {id}: cannot remove its cgroup", id=self.record.id)
                self._on_cleanup_failed()
            return

    def _remove(self, path: str) -> Deferred[None]:
        """Remove a directory tree in the reactor's thread pool (it may be big)."""
        pool = self._threads.getThreadPool()
        return deferToThreadPool(self._threads, pool, remove_tree, path)
