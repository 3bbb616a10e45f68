"""Prometheus metrics of the server, and the plain-HTTP listener serving them.

`ServerMetrics` owns its own `CollectorRegistry` (not prometheus_client's
global one, so two servers in one process never mix). Counters move where
the event happens: job starts and ends through `MetricsJobEvents` (a
`JobEvents` observer), calls and refusals at the API edge, bytes streamed
by the follower loop. What is already kept elsewhere is read at scrape
time: jobs by state and output bytes written from the status board, open
followers from the servicer. `metrics_service` serves `/metrics` through
Twisted's web server with the library's own resource
(`prometheus_client.twisted.MetricsResource`, which renders in the reactor's
thread pool), on `--metrics-listen`; it is off by default.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from jobworker.address import parse_address
from jobworker.job.events import JobEvents
from jobworker.model import JobState, JobStatus
from jobworker.reactors import or_global

log = Logger()

# Seconds from a Start arriving to its command exec'd.
START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def job_outcome(status: JobStatus) -> str:
    """How an ended job ended, as a label: oom, stopped, killed, failed, exited."""
    if status.oom_killed:
        return "oom"
    if status.stop_requested:
        return "stopped"
    if status.signal is not None:
        return "killed"
    return "failed" if status.exit_code else "exited"


class _BoardCollector(Collector):
    """Jobs by state and output bytes written, read from the board at scrape."""

    def __init__(
        self,
        statuses: Callable[[], Sequence[JobStatus]],
        removed_bytes: Callable[[], int],
    ) -> None:
        self._statuses = statuses
        self._removed_bytes = removed_bytes
        self._written = 0  # the highest total yet: a counter never goes down
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        jobs = self._statuses()
        by_state = Tally(status.state for status in jobs)
        states = GaugeMetricFamily(
            "jobworker_jobs", "Jobs the server knows, by state.", labels=["state"]
        )
        for state in JobState:
            states.add_metric([state.value], by_state[state])
        yield states
        yield CounterMetricFamily(
            "jobworker_output_written_bytes",
            "Output bytes jobs wrote and the server kept.",
            value=self._written_total(jobs),
        )

    def _written_total(self, jobs: Sequence[JobStatus]) -> int:
        """Bytes kept by the jobs on the board and by every job removed.

        A removal takes a job off the board and adds its bytes to the
        removed ones in one reactor step, which a scrape on another thread
        may see half done: the total reported never goes below the last.
        """
        total = sum(status.output_bytes for status in jobs) + self._removed_bytes()
        with self._lock:
            self._written = max(self._written, total)
            return self._written


class ServerMetrics:
    """Every metric of one server, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.jobs_started = Counter(
            "jobworker_jobs_started",
            "Jobs whose command was exec'd.",
            registry=registry,
        )
        self.jobs_readopted = Counter(
            "jobworker_jobs_readopted",
            "Running jobs of an earlier server re-adopted (live restore).",
            registry=registry,
        )
        self.jobs_ended = Counter(
            "jobworker_jobs_ended",
            "Jobs ended, by outcome: exited (0), failed (other exit code),"
            " killed (a signal), stopped (a stop request), oom.",
            ["outcome"],
            registry=registry,
        )
        self.starts_refused = Counter(
            "jobworker_job_starts_refused",
            "Starts the job manager refused (bad command, limits, exec failure).",
            registry=registry,
        )
        self.start_seconds = Histogram(
            "jobworker_start_seconds",
            "Seconds from a Start call to its command exec'd (successful starts).",
            buckets=START_BUCKETS,
            registry=registry,
        )
        self.calls = Counter(
            "jobworker_calls",
            "JobWorker calls answered, by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.refusals = Counter(
            "jobworker_refusals",
            "Calls refused, every service, by method and gRPC status code"
            " (the reason's kind).",
            ["method", "code"],
            registry=registry,
        )
        self.followers = Gauge(
            "jobworker_followers",
            "Open output streams and waits.",
            registry=registry,
        )
        self.streamed_bytes = Counter(
            "jobworker_output_streamed_bytes",
            "Output bytes sent to followers.",
            registry=registry,
        )
        self.jobs_removed = Counter(
            "jobworker_jobs_removed",
            "Ended jobs removed, by cause: retain (their age), retain-jobs"
            " (beyond the newest of their owner), request (a Remove call).",
            ["cause"],
            registry=registry,
        )
        self.cgroup_cleanup_failures = Counter(
            "jobworker_cgroup_cleanup_failures",
            "Job cgroups that could not be removed when their job ended.",
            registry=registry,
        )
        self.removed_output_bytes = 0
        """Output bytes of the jobs removed (reactor thread), for the counter."""
        # The labelled children already made, by (method, code): `labels`
        # validates, formats and locks on every use, once per call here.
        self._answered: dict[tuple[str, str], Counter] = {}
        self._refused: dict[tuple[str, str], Counter] = {}

    def watch(
        self,
        statuses: Callable[[], Sequence[JobStatus]],
        followers: Callable[[], int],
    ) -> None:
        """Read jobs and open followers from these at scrape time (any thread)."""
        self.registry.register(
            _BoardCollector(statuses, lambda: self.removed_output_bytes)
        )
        self.followers.set_function(lambda: float(followers()))

    def answered(self, method: str, code: str) -> None:
        """Count a call answered with `code` (a status code's name; any thread)."""
        child = self._answered.get((method, code))
        if child is None:
            child = self._answered[method, code] = self.calls.labels(method, code)
        child.inc()

    def refused(self, method: str, code: str) -> None:
        """Count a refused call (any thread)."""
        child = self._refused.get((method, code))
        if child is None:
            child = self._refused[method, code] = self.refusals.labels(method, code)
        child.inc()


class MetricsJobEvents(JobEvents):
    """Counts job starts, refused starts, ends, removals and clean-up failures."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def started(self, status: JobStatus) -> None:
        self._metrics.jobs_started.inc()

    def readopted(self, status: JobStatus) -> None:
        self._metrics.jobs_readopted.inc()

    def start_refused(
        self, owner: str, command: Sequence[bytes], error: BaseException
    ) -> None:
        self._metrics.starts_refused.inc()

    def ended(self, status: JobStatus) -> None:
        self._metrics.jobs_ended.labels(job_outcome(status)).inc()

    def removed(self, status: JobStatus, reason: str, cause: str) -> None:
        self._metrics.removed_output_bytes += status.output_bytes
        self._metrics.jobs_removed.labels(cause).inc()

    def cleanup_failed(self, job_id: str) -> None:
        self._metrics.cgroup_cleanup_failures.inc()


class MetricsListener(Service):
    """Plain HTTP on `listen` (HOST:PORT) serving `/metrics` from `registry`."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        reactor: IReactorTCP | None = None,
    ) -> None:
        self.listen = listen
        self._host, self._port_number = parse_address(listen, allow_port_zero=True)
        # Imported here: it imports the global reactor, which importing this
        # module must not install.
        from prometheus_client.twisted import MetricsResource  # noqa: PLC0415

        root = Resource()  # type: ignore[no-untyped-call]
        root.putChild(b"metrics", MetricsResource(registry))  # type: ignore[no-untyped-call]
        self._site = Site(root)  # type: ignore[no-untyped-call]
        self._site.displayTracebacks = False
        self._reactor = IReactorTCP(or_global(reactor))
        self._listening: IListeningPort | None = None

    @property
    def port(self) -> int:
        """The port bound (useful with port 0)."""
        if self._listening is None:
            raise RuntimeError("the metrics listener is not started")
        address = self._listening.getHost()
        assert isinstance(address, IPv4Address | IPv6Address)
        return address.port

    def startService(self) -> None:
        self._listening = self._reactor.listenTCP(
            self._port_number,
            self._site,  # type: ignore[arg-type]
            interface=self._host,
        )
        super().startService()  # type: ignore[no-untyped-call]
        log.info(
            "metrics on http://{listen}/metrics (port {port}), plain HTTP",
            listen=self.listen,
            port=self.port,
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        listening, self._listening = self._listening, None
        if listening is None:
            return None
        stopped: Deferred[None] | None = listening.stopListening()
        return stopped
