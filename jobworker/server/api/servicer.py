"""The `jobworker.v1.JobWorker` service: RPCs on grpc threads, jobs on the reactor.

Requests arrive as raw bytes and are decoded here, so a malformed request is
INVALID_ARGUMENT rather than grpc's own INTERNAL. Start and Stop reach the
library through a `CallWaiter` (bounded or cancellable waits); Status and
List read the jobs' published statuses (`manager.board`) on the grpc thread.
`StreamOutput` waits on the reactor only for "there is more" (`wait_output`)
and reads the log file itself, in its own thread, with a `LogReader`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from jobworker.errors import JobNotFound, TooManyJobs
from jobworker.job.board import StatusBoard
from jobworker.job.outputlog import LogReader
from jobworker.model import JobStatus
from jobworker.server.api import errors
from jobworker.server.api.auth import Caller, caller_of
from jobworker.server.api.bridge import Bridge, CallWaiter
from jobworker.server.api.convert import (
    encode_chunk,
    limits_from_pb,
    parse,
    status_to_pb,
)
from jobworker.server.api.paging import PageRequest
from jobworker.server.api.quota import WaitingCalls
from jobworker.v1 import jobworker_pb2 as pb

SERVICE_NAME = "jobworker.v1.JobWorker"
# The calls that wait on a job (for its exec, for its end): budgeted.
WAITING_METHODS = frozenset({"Start", "Stop"})
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
START_TIMEOUT = 120.0
QUERY_TIMEOUT = 30.0
# Stop waits for the grace period (the server's default when unset) plus this.
STOP_MARGIN = 60.0
STOP_DEFAULT_BOUND = 600.0
T = TypeVar("T")


class JobWorkerService:
    """The servicer; `handler()` is what the grpc server registers."""

    def __init__(self, manager: Any, bridge: Bridge, max_followers: int) -> None:
        self._manager = manager
        self._bridge = bridge
        self.max_followers = max_followers
        self._lock = threading.Lock()
        self._followers = 0
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
                "List": unary(self.list, pb.ListResponse),
                # Chunks are encoded by `encode_chunk`, sent as they are.
                "StreamOutput": grpc.unary_stream_rpc_method_handler(
                    self.stream_output
                ),
            },
        )

    def _unary(
        self,
        method: str,
        context: grpc.ServicerContext,
        body: Callable[[Caller, CallWaiter], T],
    ) -> T:
        def run() -> T:
            caller = caller_of(context)
            if method not in WAITING_METHODS:
                return self._run(caller, context, body)
            with self.waiting_calls.hold(caller.identity):
                return self._run(caller, context, body)

        return errors.call(method, context, run)

    def _run(
        self,
        caller: Caller,
        context: grpc.ServicerContext,
        body: Callable[[Caller, CallWaiter], T],
    ) -> T:
        waiter = self._bridge.waiter(context)
        try:
            return body(caller, waiter)
        finally:
            self._bridge.done(waiter)

    def _visible(self, caller: Caller, job_id: str) -> JobStatus:
        """The job's status if the caller may see it (reactor thread)."""
        status: JobStatus = self._manager.status(job_id)
        if not caller.may_see(status):
            raise JobNotFound(job_id)
        return status

    def start(self, data: bytes, context: grpc.ServicerContext) -> pb.StartResponse:
        def body(caller: Caller, waiter: CallWaiter) -> pb.StartResponse:
            request = parse(pb.StartRequest, data)
            limits = (
                limits_from_pb(request.limits) if request.HasField("limits") else None
            )
            status: JobStatus = waiter.wait(
                self._manager.start,
                caller.identity,
                list(request.command),
                limits,
                timeout=START_TIMEOUT,
                cancel_on_end=False,
            )
            return pb.StartResponse(job=status_to_pb(status))

        return self._unary("Start", context, body)

    def stop(self, data: bytes, context: grpc.ServicerContext) -> pb.StopResponse:
        def body(caller: Caller, waiter: CallWaiter) -> pb.StopResponse:
            request = parse(pb.StopRequest, data)
            grace = request.grace_seconds if request.HasField("grace_seconds") else None

            def stop() -> Any:
                self._visible(caller, request.job_id)
                return self._manager.stop(request.job_id, grace)

            bound = STOP_DEFAULT_BOUND
            if grace is not None and math.isfinite(grace) and grace >= 0:
                bound = min(grace, 24 * 3600.0)
            status: JobStatus = waiter.wait(
                stop, timeout=bound + STOP_MARGIN, cancel_on_end=False
            )
            return pb.StopResponse(job=status_to_pb(status))

        return self._unary("Stop", context, body)

    # Status and List read the statuses the jobs publish (`manager.board`)
    # right here on the grpc thread: no trip to the reactor, nothing to wait
    # for, so no waiter either; like every call, they are refused once the
    # server is shutting down.

    def _board(self) -> StatusBoard:
        self._bridge.check_open()
        board: StatusBoard = self._manager.board
        return board

    def status(self, data: bytes, context: grpc.ServicerContext) -> pb.StatusResponse:
        def run() -> pb.StatusResponse:
            caller = caller_of(context)
            request = parse(pb.StatusRequest, data)
            status: JobStatus = self._board().get(request.job_id)
            if not caller.may_see(status):
                raise JobNotFound(request.job_id)
            return pb.StatusResponse(job=status_to_pb(status))

        return errors.call("Status", context, run)

    def list(self, data: bytes, context: grpc.ServicerContext) -> pb.ListResponse:
        def run() -> pb.ListResponse:
            caller = caller_of(context)
            page = PageRequest.from_pb(parse(pb.ListRequest, data))
            jobs: list[JobStatus] = self._board().all()
            # Visibility first, then the page: a token cannot widen the view.
            return page.page([job for job in jobs if caller.may_see(job)])

        return errors.call("List", context, run)

    def stream_output(
        self, data: bytes, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        return errors.stream("StreamOutput", context, self._follow(data, context))

    def _follow(self, data: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        caller = caller_of(context)
        request = parse(pb.StreamOutputRequest, data)
        with self._lock:
            if self._followers >= self.max_followers:
                raise TooManyJobs(
                    f"too many output streams open (the server allows"
                    f" {self.max_followers}); try again later"
                )
            self._followers += 1
        try:
            waiter = self._bridge.waiter(context)
            try:
                yield from self._chunks(caller, request, waiter)
            finally:
                self._bridge.done(waiter)
        finally:
            with self._lock:
                self._followers -= 1

    def _chunks(
        self, caller: Caller, request: pb.StreamOutputRequest, waiter: CallWaiter
    ) -> Iterator[bytes]:
        job_id, offset = request.job_id, request.offset

        def output_path() -> str:
            self._visible(caller, job_id)
            path: str = self._manager.output_path(job_id)
            return path

        path = waiter.wait(output_path, timeout=QUERY_TIMEOUT)
        with LogReader(path) as log:
            while True:
                state = waiter.wait(self._manager.wait_output, job_id, offset)
                if offset >= state.size:
                    return
                began, chunk_bytes = offset, self.chunk_bytes()
                # Send everything the reactor said is there before asking
                # again: one round trip per batch, not per message.
                while offset < state.size:
                    self._bridge.check_open()
                    runs = log.read_runs(offset, state.size, chunk_bytes)
                    for run in runs:
                        yield encode_chunk(run)
                    offset = runs[-1].next_offset
                if not state.complete and state.size - began < chunk_bytes:
                    # Caught up with a fast writer: let output gather for a
                    # moment so the next message is large, not one pipe read.
                    time.sleep(COALESCE_PAUSE)
