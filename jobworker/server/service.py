"""The API server as a Twisted service: grpcio over mutual TLS around a JobManager.

`startService` binds grpcio (its own thread pool, sized for the follower
cap, the Start/Stop calls in progress and in line, and headroom for quick
calls) with the JobWorker service, health and reflection, all behind one
interceptor (`Gate`:
authentication, and a cap on health watches and reflection streams).
`stopService` closes the bridge (new calls are refused; every call still
waiting, open streams included, ends with UNAVAILABLE "server shutting
down"), marks health NOT_SERVING, shuts the manager down (every job
stopped), then stops grpcio and its threads; its Deferred fires when
nothing is left.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

# isort: off
import jobworker.server.api  # noqa: F401 - configures grpc-core before grpc is imported
import grpc

# isort: on
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from jobworker.address import bind_error
from jobworker.defaults import MAX_FOLLOWERS
from jobworker.errors import JobWorkerError
from jobworker.job.manager import JobManager
from jobworker.reactors import or_global
from jobworker.server.api.bridge import Bridge
from jobworker.server.api.gate import Gate
from jobworker.server.api.quota import CALL_THREADS
from jobworker.server.api.servicer import SERVICE_NAME, JobWorkerService
from jobworker.server.metrics import ServerMetrics
from jobworker.server.reload import ReloadableCredentials
from jobworker.server.tls import ServerTLS

log = Logger()

# Threads beyond the follower cap and the Start/Stop calls (CALL_THREADS),
# for Status/List, health and reflection; grpcio refuses calls past the pool
# (RESOURCE_EXHAUSTED) instead of queueing them behind followers.
UNARY_HEADROOM = 16
# Health watches and reflection streams allowed at once (out of the headroom).
SIDE_STREAMS = 4
# Seconds in-flight unary calls get to finish once the jobs are stopped.
GRPC_STOP_GRACE = 5.0


class ListenFailed(JobWorkerError):
    """The server cannot listen on the requested address."""


class JobWorkerServer(Service):
    """Serves `manager` over gRPC with mutual TLS on `listen` (HOST:PORT)."""

    def __init__(
        self,
        manager: JobManager,
        *,
        listen: str,
        tls: ServerTLS,
        max_followers: int = MAX_FOLLOWERS,
        metrics: ServerMetrics | None = None,
        max_followers_per_user: int | None = None,
        reactor: IReactorThreads | None = None,
    ) -> None:
        """`metrics` (a new, unserved set when None) counts what it serves."""
        if max_followers < 1:
            raise ValueError("max_followers must be at least 1")
        self.manager = manager
        self.listen = listen
        # Replaced on SIGHUP by a CertificateReload (jobworker.server.reload).
        self.credentials = ReloadableCredentials(tls)
        self.max_followers = max_followers
        self._reactor = IReactorThreads(or_global(reactor))
        self._port: int | None = None
        self._grpc: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._health: health.HealthServicer | None = None
        self.bridge = Bridge(self._reactor)
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.service = JobWorkerService(
            manager,
            self.bridge,
            max_followers,
            self.metrics,
            max_followers_per_user=max_followers_per_user,
        )
        self.metrics.watch(manager.board.all, lambda: self.service.followers)

    @property
    def tls(self) -> ServerTLS:
        """The TLS material new connections use."""
        return self.credentials.current

    @property
    def port(self) -> int:
        """The port bound by `startService` (useful with port 0)."""
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    def startService(self) -> None:
        workers = self.max_followers + CALL_THREADS + UNARY_HEADROOM
        executor = ThreadPoolExecutor(workers, thread_name_prefix="jobworker-grpc")
        server = grpc.server(
            executor,
            handlers=[self.service.handler()],
            interceptors=[
                Gate(
                    SERVICE_NAME,
                    SIDE_STREAMS,
                    self.metrics.refused,
                    self.service.refusals,
                )
            ],
            maximum_concurrent_rpcs=workers,
            # Without this, a second server could silently share the port.
            options=[("grpc.so_reuseport", 0)],
        )
        self._health = health.HealthServicer()
        self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port: int | None = None
        failure = bind_error(self.listen)
        if failure is None:
            # grpcio raises RuntimeError with no reason: the guess below.
            with contextlib.suppress(RuntimeError):
                port = server.add_secure_port(
                    self.listen, self.credentials.server_credentials()
                )
        if port is None:
            executor.shutdown(wait=False)
            reason = failure.strerror if failure is not None else None
            raise ListenFailed(
                f"cannot listen on {self.listen}:"
                f" {reason or 'address in use or not local?'}"
            )
        server.start()
        self._grpc, self._executor, self._port = server, executor, port
        super().startService()  # type: ignore[no-untyped-call]
        log.info(
            "API listening on {listen} (port {port}), mutual TLS 1.3,"
            " {followers} followers at most ({share} per user)",
            listen=self.listen,
            port=port,
            followers=self.max_followers,
            share=self.service.max_followers_per_user,
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        log.info(
            "API shutting down: refusing calls, ending {calls} open call(s),"
            " stopping every job",
            calls=self.bridge.active,
        )
        self.bridge.close()
        self.service.refusals.flush()
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        done: Deferred[None] = Deferred.fromCoroutine(self._stop())
        return done

    async def _stop(self) -> None:
        try:
            await self.manager.shutdown()
        finally:
            server, executor = self._grpc, self._executor
            self._grpc = self._executor = None
            if server is not None and executor is not None:
                # Off the reactor thread: both calls block until grpcio's
                # threads are gone.
                await deferToThreadPool(
                    self._reactor,
                    self._reactor.getThreadPool(),
                    _stop_grpc,
                    server,
                    executor,
                )


def _stop_grpc(server: grpc.Server, executor: ThreadPoolExecutor) -> None:
    """Stop grpcio and join its threads (blocks: run in a thread)."""
    server.stop(GRPC_STOP_GRACE).wait()
    executor.shutdown(wait=True)
