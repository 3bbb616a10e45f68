"""A real API server for tests: JobManager + JobWorkerServer on 127.0.0.1:0.

Real mutual TLS with this run's PKI (`tests.pkiutil`), real processes (no
isolation: the isolation tests cover cgroups and namespaces). grpc client
calls block, so they run in a private thread pool while the reactor keeps
turning; channels are closed (cancelling any call still open) before the
server is stopped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import jobworker.server.api  # noqa: F401 - grpc-core settings before grpc is imported

# isort: split
import grpc
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from jobworker.job.events import JobEvents
from jobworker.job.manager import JobManager
from jobworker.server.service import JobWorkerServer
from jobworker.server.tls import load_server_tls
from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from tests import pkiutil

reactor: Any = _reactor
T = TypeVar("T")
SHELL = b"/bin/sh"


def channel_credentials(user: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        pkiutil.read("server-ca.pem"),
        pkiutil.read(f"{user}.key"),
        pkiutil.read(f"{user}.pem"),
    )


def shell(script: str) -> list[bytes]:
    return [SHELL, b"-c", script.encode()]


class APITestCase(unittest.TestCase):
    """One server per test; `stub(user)` talks to it as that certificate."""

    max_followers = 8
    max_followers_per_user: int | None = None
    stop_grace = 2.0
    events_class: type[JobEvents] = JobEvents
    """What the manager tells job events to (the server's: LoggingJobEvents)."""

    def setUp(self) -> None:
        state_dir = self.mktemp()
        self.manager = JobManager(
            state_dir,
            isolation=None,
            stop_grace=self.stop_grace,
            events=self.events_class(),
        )
        tls = load_server_tls(
            pkiutil.path("server.pem"),
            pkiutil.path("server.key"),
            pkiutil.path("client-ca.pem"),
            "127.0.0.1",
        )
        self.server = JobWorkerServer(
            self.manager,
            listen="127.0.0.1:0",
            tls=tls,
            max_followers=self.max_followers,
            max_followers_per_user=self.max_followers_per_user,
        )
        self.server.startService()
        self.server_stopped = False
        self.addCleanup(self.stop_server)
        self.pool = ThreadPool(minthreads=0, maxthreads=64, name="test-grpc-clients")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.channels: list[grpc.Channel] = []
        self.addCleanup(self.close_channels)

    def close_channels(self) -> None:
        for channel in self.channels:
            channel.close()

    def stop_server(self) -> Deferred[None]:
        """Stop the server (once); fires when it has stopped."""
        if self.server_stopped:
            return Deferred.fromCoroutine(_nothing())
        self.server_stopped = True
        return self.server.stopService()

    def channel(self, user: str = "alice", address: str | None = None) -> grpc.Channel:
        channel = grpc.secure_channel(
            address or f"localhost:{self.server.port}", channel_credentials(user)
        )
        self.channels.append(channel)
        return channel

    def stub(self, user: str = "alice") -> pb_grpc.JobWorkerStub:
        return pb_grpc.JobWorkerStub(self.channel(user))

    def in_thread(
        self, function: Callable[..., T], *args: Any, **kw: Any
    ) -> Deferred[T]:
        return deferToThreadPool(reactor, self.pool, function, *args, **kw)

    def call(
        self, user: str, method: str, request: Any, timeout: float = 30
    ) -> Deferred[Any]:
        """Make one unary call as `user` in a client thread."""
        return self.in_thread(
            getattr(self.stub(user), method), request, timeout=timeout
        )

    async def error(self, user: str, method: str, request: Any) -> grpc.RpcError:
        """Make a call that must fail; return its error."""
        try:
            response = await self.call(user, method, request)
        except grpc.RpcError as error:
            return error
        raise AssertionError(f"{method} as {user} succeeded: {response}")

    async def raw_error(self, user: str, method: str, data: bytes) -> grpc.RpcError:
        """Send `data` as the request bytes of a call that must fail; its error."""
        raw = self.channel(user).unary_unary(
            f"/jobworker.v1.JobWorker/{method}",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            await self.in_thread(raw, data, timeout=10)
        except grpc.RpcError as error:
            return error
        raise AssertionError(f"{method} as {user} accepted {data!r}")

    async def start_job(self, user: str, command: list[bytes]) -> str:
        response = await self.call(user, "Start", pb.StartRequest(command=command))
        job_id: str = response.job.id
        return job_id

    def follow(self, user: str, job_id: str, offset: int = 0) -> Any:
        """Open a StreamOutput call (an iterator; `.cancel()` ends it)."""
        request = pb.StreamOutputRequest(job_id=job_id, offset=offset)
        return self.stub(user).StreamOutput(request, timeout=60)

    async def read_all(self, user: str, job_id: str, offset: int = 0) -> list[Any]:
        """Follow a job's output to its end; (stream, offset, next, data) tuples."""

        def collect() -> list[Any]:
            return [
                (c.stream, c.offset, c.next_offset, c.data)
                for c in self.follow(user, job_id, offset)
            ]

        return await self.in_thread(collect)

    def capture_log(self) -> list[str]:
        """Every log line from now to the end of the test, formatted."""
        lines: list[str] = []

        def observe(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return lines

    async def eventually(self, predicate: Callable[[], bool], what: str) -> None:
        """Let the reactor turn until `predicate()` holds (at most 10 s)."""
        for _ in range(1000):
            if predicate():
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"never happened: {what}")


def twistd_argv(state_dir: str, *, isolated: bool = False) -> list[str]:
    """`twistd -n jobworker` on 127.0.0.1:0 with this run's PKI.

    Without isolation unless `isolated` (which needs root).
    """
    pki = pkiutil.pki_dir()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    return [
        twistd, "-n", "--pidfile=", "jobworker",
        *([] if isolated else ["--no-isolation"]),
        "--listen", "127.0.0.1:0", "--state-dir", state_dir,
        "--tls-cert", os.path.join(pki, "server.pem"),
        "--tls-key", os.path.join(pki, "server.key"),
        "--client-ca", os.path.join(pki, "client-ca.pem"),
    ]  # fmt: skip


def stream_end(call: Any) -> tuple[grpc.StatusCode, str]:
    """Read a stream to its end; its final status code and details."""
    try:
        for _ in call:
            pass
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def threads_in(function: Callable[..., Any]) -> int:
    """How many threads are executing `function` right now (any frame)."""
    code = function.__code__
    count = 0
    for frame in sys._current_frames().values():
        walker: Any = frame
        while walker is not None:
            if walker.f_code is code:
                count += 1
                break
            walker = walker.f_back
    return count


async def _nothing() -> None:
    return None
