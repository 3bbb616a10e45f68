"""The `jobworker.v1.JobWorker` service: RPCs on grpc threads, jobs on the reactor.

Requests arrive as raw bytes and are decoded here, so a malformed request is
INVALID_ARGUMENT rather than grpc's own INTERNAL. Each RPC is one flat
method inside `answering` (the caller in, the call's status out), with one
helper per kind of call: Start, Stop and Remove wait on the reactor,
within the Start/Stop budget, through a `CallWaiter` (bounded or
cancellable waits): `on_reactor`; Status and List read the statuses the
jobs publish on the grpc thread: `on_board`; `StreamOutput` holds a
follower slot and waits on the reactor only for "there is more"
(`wait_output`, and not once the output is complete), reading the log file
itself, in its own thread, with a `LogReader` opened on the reactor
(`openlog`); `WriteInput` holds one too,
reads the client's messages in its thread and waits on the reactor only
while the job's stdin pipe is full. Whether the caller may see a
job is read from the board (`Caller.may_see` on the published status).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import grpc

from jobworker.defaults import (
    MAX_GRACE,
    QUERY_TIMEOUT,
    REMOVE_CALL_TIMEOUT,
    START_CALL_TIMEOUT,
    STOP_DEFAULT_BOUND,
    STOP_MARGIN,
)
from jobworker.errors import InvalidRequest, JobWorkerError, ServerBusy, TooManyJobs
from jobworker.job.board import StatusBoard
from jobworker.job.manager import JobManager
from jobworker.job.outputlog import LogReader, OutputSource
from jobworker.job.outputseek import since_start, tail_start
from jobworker.limits import MINIMUMS, limits_from_pb, limits_to_pb
from jobworker.logbursts import Bursts
from jobworker.model import JobStatus
from jobworker.server.api.auth import Caller, caller_of
from jobworker.server.api.bridge import Bridge, CallWaiter
from jobworker.server.api.convert import (
    check_job_id,
    encode_chunk,
    parse,
    start_command,
    status_reply,
    status_to_pb,
)
from jobworker.server.api.errors import (
    EXPECTED,
    AlreadyLogged,
    ClientGone,
    Refused,
    abort,
    final,
    refusal_bursts,
    refuse,
    status_for,
)
from jobworker.server.api.ids import resolve
from jobworker.server.api.openlog import OpenLog
from jobworker.server.api.paging import PageRequest, list_filter
from jobworker.server.api.quota import WaitingCalls
from jobworker.server.metrics import ServerMetrics
from jobworker.untrusted import shown
from jobworker.v1 import jobworker_pb2 as pb

SERVICE_NAME = "jobworker.v1.JobWorker"
# Output messages are as large as this while few followers are open (large
# messages make streaming cheap per byte, on both ends); the output in
# flight to all followers together is kept near FOLLOWER_BUFFER_BYTES by
# making them smaller, down to CHUNK_BYTES_MIN, as followers are added.
CHUNK_BYTES = 1024 * 1024
CHUNK_BYTES_MIN = 64 * 1024
FOLLOWER_BUFFER_BYTES = 4 * 1024 * 1024
# A follower that has caught up waits this long after a short batch before
# asking for more: the added latency is small, and output written faster
# than that is sent as large messages (see doc/performance.md).
COALESCE_PAUSE = 0.002


@contextmanager
def answering(
    method: str,
    context: grpc.ServicerContext,
    metrics: ServerMetrics,
    refusals: Bursts,
) -> Iterator[Caller]:
    """The call's caller; a failure in the `with` ends the call with its status.

    Every call is counted in `metrics` with its code, a refusal also as one;
    `refusals` summarises bursts of refusals in the log.
    """
    identity = "?"
    try:
        caller = caller_of(context)
        identity = caller.identity
        yield caller
    except EXPECTED as error:
        status = refuse(method, identity, context.peer(), error, refusals)
        retry = not final(error)
        if status[0] not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL):
            metrics.refused(method, status[0].name)
    except Exception as error:  # the last resort, and only at the boundary:
        # a bug must reach the client as INTERNAL with a reference (the
        # traceback logged), not as grpc's UNKNOWN carrying its text.
        status, retry = status_for(error, method), True
    else:
        metrics.answered(method, "OK")
        return
    metrics.answered(method, status[0].name)
    abort(context, *status, retry=retry)


class JobWorkerService:
    """The servicer; `handler()` is what the grpc server registers."""

    def __init__(
        self,
        manager: JobManager,
        bridge: Bridge,
        max_followers: int,
        metrics: ServerMetrics,
        *,
        refusals: Bursts | None = None,
        max_followers_per_user: int | None = None,
    ) -> None:
        self.refusals = refusals or refusal_bursts()
        self._manager = manager
        self._bridge = bridge
        self.max_followers = max_followers
        self.metrics = metrics
        self.max_followers_per_user = max_followers_per_user or max(
            1, max_followers // 2
        )
        self._lock = threading.Lock()
        self._followers = 0
        self._followers_of: dict[str, int] = {}
        self.waiting_calls = WaitingCalls()

    @property
    def followers(self) -> int:
        """How many StreamOutput calls are open."""
        with self._lock:
            return self._followers

    def chunk_bytes(self) -> int:
        """The largest output message to send now, given the open followers."""
        share = FOLLOWER_BUFFER_BYTES // max(self.followers, 1)
        return max(CHUNK_BYTES_MIN, min(CHUNK_BYTES, share))

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The generic handler for every method of the service."""

        def unary(
            method: Callable[[bytes, grpc.ServicerContext], Any], out: Any
        ) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                method, response_serializer=out.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Start": unary(self.start, pb.StartResponse),
                "Stop": unary(self.stop, pb.StopResponse),
                "Status": unary(self.status, pb.StatusResponse),
                "Wait": unary(self.wait, pb.WaitResponse),
                "List": unary(self.list, pb.ListResponse),
                "GetLimits": unary(self.get_limits, pb.GetLimitsResponse),
                # Chunks are encoded by `encode_chunk`, sent as they are.
                "StreamOutput": grpc.unary_stream_rpc_method_handler(
                    self.stream_output
                ),
                "Remove": unary(self.remove, pb.RemoveResponse),
                "WriteInput": grpc.stream_unary_rpc_method_handler(
                    self.write_input,
                    response_serializer=pb.WriteInputResponse.SerializeToString,
                ),
            },
        )

    @contextmanager
    def on_reactor(
        self, method: str, context: grpc.ServicerContext
    ) -> Iterator[tuple[Caller, CallWaiter]]:
        """A call that waits on the reactor: its turn (in line), and its waiter."""
        with (
            answering(method, context, self.metrics, self.refusals) as caller,
            self._bridge.waiting(context) as waiter,
            self.waiting_calls.hold(
                caller.identity, waiter.park, context.time_remaining()
            ),
        ):
            yield caller, waiter

    @contextmanager
    def on_board(
        self, method: str, context: grpc.ServicerContext
    ) -> Iterator[tuple[Caller, StatusBoard]]:
        """A call that reads the published statuses, right on the grpc thread.

        No trip to the reactor, nothing to wait for, so no waiter either;
        like every call, it is refused once the server is shutting down.
        """
        with answering(method, context, self.metrics, self.refusals) as caller:
            self._bridge.check_open()
            yield caller, self._manager.board

    def _visible(self, caller: Caller, job_id: str) -> JobStatus:
        """The published status of the job `job_id` (or a prefix) names.

        Only jobs the caller may see count (`ids.resolve`); any thread.
        """
        return resolve(self._manager.board, caller, check_job_id(job_id))

    def start(self, data: bytes, context: grpc.ServicerContext) -> pb.StartResponse:
        with self.on_reactor("Start", context) as (caller, waiter):
            began = time.monotonic()
            request = parse(pb.StartRequest, data)
            command = start_command(request)
            limits = (
                limits_from_pb(request.limits) if request.HasField("limits") else None
            )
            try:
                status = waiter.wait(
                    partial(
                        self._manager.start,
                        env=dict(request.env),
                        stdin=request.stdin,
                        request_id=request.request_id or None,
                    ),
                    caller.identity,
                    command,
                    limits,
                    timeout=START_CALL_TIMEOUT,
                    cancel_on_end=False,
                )
            except JobWorkerError as error:
                raise AlreadyLogged(error) from error
            self.metrics.start_seconds.observe(time.monotonic() - began)
            return pb.StartResponse(job=status_to_pb(status))

    def stop(self, data: bytes, context: grpc.ServicerContext) -> pb.StopResponse:
        with self.on_reactor("Stop", context) as (caller, waiter):
            request = parse(pb.StopRequest, data)
            grace = request.grace_seconds if request.HasField("grace_seconds") else None
            job_id = self._visible(caller, request.job_id).id
            bound = STOP_DEFAULT_BOUND
            if grace is not None and math.isfinite(grace) and grace >= 0:
                bound = min(grace, MAX_GRACE)
            status = waiter.wait(
                self._manager.stop,
                job_id,
                grace,
                timeout=bound + STOP_MARGIN,
                cancel_on_end=False,
            )
            return pb.StopResponse(job=status_to_pb(status))

    def remove(self, data: bytes, context: grpc.ServicerContext) -> pb.RemoveResponse:
        with self.on_reactor("Remove", context) as (caller, waiter):
            request = parse(pb.RemoveRequest, data)
            job_id = self._visible(caller, request.job_id).id
            status = waiter.wait(
                self._manager.remove,
                job_id,
                f"by {caller.identity}",
                timeout=REMOVE_CALL_TIMEOUT,
                cancel_on_end=False,
            )
            return pb.RemoveResponse(job=status_to_pb(status))

    def status(self, data: bytes, context: grpc.ServicerContext) -> pb.StatusResponse:
        with self.on_board("Status", context) as (caller, board):
            request = parse(pb.StatusRequest, data)
            status = self._visible(caller, request.job_id)
            return status_reply(board.with_usage(status))

    def wait(self, data: bytes, context: grpc.ServicerContext) -> pb.WaitResponse:
        with answering("Wait", context, self.metrics, self.refusals) as caller:
            request = parse(pb.WaitRequest, data)
            job_id = self._visible(caller, request.job_id).id
            # As long as a follower, so it takes a follower's slot and thread;
            # it ends with the job, the client going away or the server.
            with (
                self._following(caller.identity, "waits"),
                self._bridge.waiting(context) as waiter,
            ):
                status = waiter.wait(self._manager.wait_ended, job_id)
            return pb.WaitResponse(job=status_to_pb(status))

    def get_limits(
        self, data: bytes, context: grpc.ServicerContext
    ) -> pb.GetLimitsResponse:
        with self.on_board("GetLimits", context):
            parse(pb.GetLimitsRequest, data)
            policy = self._manager.policy
            return pb.GetLimitsResponse(
                defaults=limits_to_pb(policy.defaults),
                maximums=limits_to_pb(policy.maximums),
                minimums=limits_to_pb(MINIMUMS),
            )

    def list(self, data: bytes, context: grpc.ServicerContext) -> pb.ListResponse:
        with self.on_board("List", context) as (caller, board):
            request = parse(pb.ListRequest, data)
            page = PageRequest.from_pb(request)
            wanted = list_filter(request)
            # Visibility first, then the page: a token cannot widen the view.
            return page.page(
                [job for job in board.all() if caller.may_see(job) and wanted(job)]
            )

    def stream_output(
        self, data: bytes, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        with answering("StreamOutput", context, self.metrics, self.refusals) as caller:
            request = parse(pb.StreamOutputRequest, data)
            with (
                self._following(caller.identity),
                self._bridge.waiting(context) as waiter,
            ):
                yield from self._chunks(caller, request, waiter)

    def write_input(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> pb.WriteInputResponse:
        with answering("WriteInput", context, self.metrics, self.refusals) as caller:
            first = parse(pb.InputChunk, _next_message(requests) or b"")
            status = self._visible(caller, first.job_id)
            if status.owner != caller.identity:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"only the job's owner ({status.owner}) may write its stdin",
                )
            with (
                self._following(caller.identity, "input streams"),
                self._bridge.waiting(context) as w,
            ):
                w.wait(self._manager.claim_input, status.id, timeout=QUERY_TIMEOUT)
                try:
                    return self._copy_input(status.id, first, requests, w)
                finally:
                    # However the call ends, the job's input has ended.
                    self._bridge.post(self._manager.close_input, status.id)

    def _copy_input(
        self,
        job_id: str,
        first: pb.InputChunk,
        requests: Iterator[bytes],
        waiter: CallWaiter,
    ) -> pb.WriteInputResponse:
        written, chunk = 0, first
        while True:
            if chunk.job_id not in ("", first.job_id):
                raise InvalidRequest("every message of a WriteInput is for one job")
            if chunk.data:
                # Fires once the pipe has room: the client waits, not our memory.
                if not waiter.wait(self._manager.write_input, job_id, chunk.data):
                    return pb.WriteInputResponse(
                        bytes_written=written, closed_by_job=True
                    )
                written += len(chunk.data)
            data = _next_message(requests)
            if data is None:
                return pb.WriteInputResponse(bytes_written=written)
            chunk = parse(pb.InputChunk, data)

    @contextmanager
    def _following(self, identity: str, what: str = "output streams") -> Iterator[None]:
        """Count one follower of `identity` for the `with`, within the caps.

        Past the server's cap the call is `ServerBusy` (others' streams
        end); past the caller's share, `TooManyJobs` (its own streams hold it).
        Waits count as followers: they hold a thread as long.
        """
        with self._lock:
            mine = self._followers_of.get(identity, 0)
            if mine >= self.max_followers_per_user:
                raise TooManyJobs(
                    f"{shown(identity)} has {mine} {what} open, the most one user"
                    f" may have of output streams and waits (max-followers-per-user"
                    f" {self.max_followers_per_user}); close one first"
                )
            if self._followers >= self.max_followers:
                raise ServerBusy(
                    f"too many {what} open (the server allows"
                    f" {self.max_followers} output streams and waits); try again"
                    " later"
                )
            self._followers += 1
            self._followers_of[identity] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                self._followers -= 1
                left = self._followers_of[identity] - 1
                if left:
                    self._followers_of[identity] = left
                else:
                    del self._followers_of[identity]

    def _chunks(
        self, caller: Caller, request: pb.StreamOutputRequest, waiter: CallWaiter
    ) -> Iterator[bytes]:
        job_id = self._visible(caller, request.job_id).id
        opened = OpenLog(self._manager, job_id)
        try:
            source = waiter.wait(opened.open, timeout=QUERY_TIMEOUT)
            yield from self._serve(job_id, opened.reader, source, request, waiter)
        finally:
            opened.close()

    def _serve(
        self,
        job_id: str,
        log: LogReader,
        source: OutputSource,
        request: pb.StreamOutputRequest,
        waiter: CallWaiter,
    ) -> Iterator[bytes]:
        """The job's output from `log`; the reactor asked only while it grows.

        Once the output is known complete, the rest is read from the open
        log without asking again: a removal of the ended job cannot cut the
        stream short (doc/api.md, "Remove").
        """
        offset, skip = start_of(log, request, source.state.size)
        stop = source.state.size if request.no_follow else None
        state = source.state
        while stop is None or offset < stop:
            if not state.complete:
                state = waiter.wait(self._manager.wait_output, job_id, offset)
            if offset >= state.size:
                return
            end = state.size if stop is None else min(state.size, stop)
            began, chunk_bytes = offset, self.chunk_bytes()
            # Send everything the reactor said is there before asking
            # again: one round trip per batch, not per message.
            while offset < end:
                self._bridge.check_open()
                runs = log.read_runs(
                    offset, end, chunk_bytes, by_time=request.timestamps, skip=skip
                )
                skip = 0
                for run in runs:
                    yield encode_chunk(run)
                    self.metrics.streamed_bytes.inc(
                        sum(len(piece) for piece in run.pieces)
                    )
                offset = runs[-1].next_offset
            if not state.complete and state.size - began < chunk_bytes:
                # Caught up with a fast writer: let output gather for a
                # moment so the next message is large, not one pipe read.
                time.sleep(COALESCE_PAUSE)


def start_of(
    log: LogReader, request: pb.StreamOutputRequest, size: int
) -> tuple[int, int]:
    """Where a StreamOutput starts: a record, and data bytes of it to skip.

    The latest of `offset`, `since` and the start of the last `tail_lines`
    lines of the `size` bytes of log there are now.
    """
    if not 0 <= request.offset <= size:
        raise InvalidRequest(
            f"offset {request.offset} is outside the output (0 to {size})"
        )
    log.time_at(request.offset)  # InvalidRequest unless a record start
    start = (request.offset, 0)
    if request.HasField("since"):
        start = max(start, (since_start(log, size, request.since.ToNanoseconds()), 0))
    if request.HasField("tail_lines"):
        start = max(start, tail_start(log, size, request.tail_lines))
    return start


def _next_message(requests: Iterator[bytes]) -> bytes | None:
    """The client's next message; None at the end of its stream."""
    try:
        return next(requests, None)
    except grpc.RpcError:  # what grpc raises for a client that went away
        raise ClientGone("the client went away") from None
