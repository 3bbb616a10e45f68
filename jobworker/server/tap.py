"""`twistd jobworker`: the server's command-line options and its service.

`Options` validates every option as it is parsed (a bad value is a
`UsageError` naming the option). `makeService` checks the environment:
the TLS material, the state directory (locked before stale job cgroups are
removed) and isolation, refusing to start with the reason when any is
wrong; then builds the `JobManager`, the `JobWorkerServer`, SIGHUP
certificate reload and systemd readiness inside a `MultiService`. twistd
parses `TwistdOptions` (the plugin's): any problem at start-up, a usage
error or a port that cannot be bound included, ends twistd with one line
saying what is wrong (`jobworker.server.startup`), not a traceback or the
whole help.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar, TypeVar

from twisted.application.service import MultiService
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorProcess,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python import usage

from jobworker import defaults
from jobworker.address import InvalidAddress, parse_address
from jobworker.errors import InvalidRequest, IsolationUnavailable, JobWorkerError
from jobworker.isolation.interfaces import IsolationConfig
from jobworker.isolation.uids import DEFAULT_RANGE as DEFAULT_UID_RANGE
from jobworker.isolation.uids import parse_range
from jobworker.job.events import JobEventsFanOut, LoggingJobEvents
from jobworker.job.manager import JobManager
from jobworker.job.retention import Reaper, Retention
from jobworker.job.storage import StorageGuard
from jobworker.limits import LIMITS, Limit, LimitPolicy, limits_for_log
from jobworker.model import Limits
from jobworker.reactors import or_global
from jobworker.server import levers
from jobworker.server.logformat import JSON_OBSERVER, LOG_FORMATS, json_logger_problem
from jobworker.server.metrics import MetricsJobEvents, MetricsListener, ServerMetrics
from jobworker.server.notify import Readiness, sd_notify
from jobworker.server.reload import CertificateReload
from jobworker.server.service import JobWorkerServer
from jobworker.server.startup import CheckedStart, cannot_start
from jobworker.server.statelock import StateDirLock
from jobworker.server.tls import load_server_tls
from jobworker.units import InvalidNumber, InvalidSize, format_size, parse_size

log = Logger()
# The API server's name in the MultiService: `top.getServiceNamed(API_SERVICE)`.
API_SERVICE = "api"
METRICS_SERVICE = "metrics"  # only with --metrics-listen
_UNLIMITED = ("unlimited", "none")
F = TypeVar("F", bound=Callable[..., None])


def _help(text: str) -> Callable[[F], F]:
    """Give an `opt_*` method its help, which names a default from `defaults`."""

    def document(option: F) -> F:
        option.__doc__ = text
        return option

    return document


def _parse_bytes(text: str) -> int:
    try:
        return parse_size(text)
    except InvalidSize as error:
        raise usage.UsageError(str(error)) from None


def _limit_default_text(kind: str, limit: Limit) -> str:
    if kind == "max" and limit.name == "cpu":
        return defaults.MAX_CPU_TEXT
    source = defaults.DEFAULT_LIMITS if kind == "default" else defaults.max_limits()
    value = getattr(source, limit.name)
    return "unlimited" if value is None else limit.format(value)


def _limit_option(kind: str, limit: Limit) -> Callable[[Options, str], None]:
    """The `opt_default_*` or `opt_max_*` method of `limit`."""

    def option(self: Options, value: str) -> None:
        self._limit(kind, limit, value)

    scope = "when it asks for none" if kind == "default" else "the most it may ask"
    what = limit.help[0].upper() + limit.help[1:]
    default = _limit_default_text(kind, limit)
    option.__doc__ = f"{what} per job, {scope} [default: {default}]"
    return option


class Options(usage.Options):
    """Options of `twistd jobworker`."""

    synopsis = "[options]"
    longdesc = (
        "Serve the jobworker gRPC API over mutual TLS. Sizes are bytes or take"
        " a K, M, G or T suffix (base 1024); a limit may be 'unlimited'."
    )
    optFlags: ClassVar[list[list[str | None]]] = [
        [
            "no-isolation",
            None,
            "Run jobs without cgroups or namespaces: no limits are enforced."
            " For development only.",
        ],
        ["no-seccomp", None, "Run jobs without the syscall filter (doc/sandbox.md)."],
        [
            "live-restore",
            None,
            "Jobs outlive the server: a stop or crash leaves them running and"
            " the next server on the state directory re-adopts them"
            " (doc/restart.md; systemd needs KillMode=process).",
        ],
    ]
    # Per-user caps and host totals (jobworker.server.levers).
    optParameters: ClassVar[list[list[Any]]] = levers.PARAMETERS

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = defaults.LISTEN
        self["tls-cert"] = self["tls-key"] = self["client-ca"] = None
        self["state-dir"] = defaults.STATE_DIR
        self["job-user"] = None
        self["stop-grace"] = defaults.STOP_GRACE
        self["max-followers"] = defaults.MAX_FOLLOWERS
        self["output-cap"] = defaults.OUTPUT_CAP
        self["io-devices"] = []
        self["bind-ro"] = []
        self["job-uid-range"] = DEFAULT_UID_RANGE
        self["min-io-bps"] = defaults.MIN_IO_BPS
        self["defaults"] = asdict(defaults.DEFAULT_LIMITS)
        self["maximums"] = asdict(defaults.max_limits())
        self["explicit-defaults"] = set()
        self["policy"] = None
        self["log-format"] = "text"
        self["metrics-listen"] = None

    @_help(f"HOST:PORT to serve on, [::1]:7443 for IPv6 [default: {defaults.LISTEN}]")
    def opt_listen(self, value: str) -> None:
        try:
            parse_address(value, allow_port_zero=True)
        except InvalidAddress as error:
            raise usage.UsageError(f"--listen: {error}") from None
        self["listen"] = value

    def opt_metrics_listen(self, value: str) -> None:
        """HOST:PORT to serve Prometheus metrics on, plain HTTP: bind it to
        localhost or a management network [default: off]"""
        try:
            parse_address(value, allow_port_zero=True)
        except InvalidAddress as error:
            raise usage.UsageError(f"--metrics-listen: {error}") from None
        self["metrics-listen"] = value

    def opt_tls_cert(self, path: str) -> None:
        """The server's certificate (PEM) [required]"""
        self["tls-cert"] = path

    def opt_tls_key(self, path: str) -> None:
        """The server certificate's private key (PEM) [required]"""
        self["tls-key"] = path

    def opt_client_ca(self, path: str) -> None:
        """The CA (PEM) client certificates must chain to [required]"""
        self["client-ca"] = path

    @_help(
        f"Where job output and work directories live [default: {defaults.STATE_DIR}]"
    )
    def opt_state_dir(self, path: str) -> None:
        self["state-dir"] = path

    def opt_log_format(self, value: str) -> None:
        """text (twistd's lines) or json (one JSON event per line) [default: text]"""
        if value not in LOG_FORMATS:
            raise usage.UsageError(
                f"--log-format: {value!r} is not {' or '.join(LOG_FORMATS)}"
            )
        self["log-format"] = value

    def opt_job_user(self, name: str) -> None:
        """One user all jobs run as [default: a uid per job when root, else the
        server's user]"""
        if not name or "\0" in name:
            raise usage.UsageError("--job-user: empty user name")
        self["job-user"] = name

    @_help(
        "Seconds between SIGTERM and SIGKILL when stopping a job"
        f" [default: {defaults.STOP_GRACE:g}]"
    )
    def opt_stop_grace(self, value: str) -> None:
        try:
            grace = float(value)
        except ValueError:
            grace = -1.0
        if not 0 <= grace <= defaults.MAX_GRACE:
            raise usage.UsageError(
                f"--stop-grace: {value!r} is not 0..{defaults.MAX_GRACE:g} seconds"
            )
        self["stop-grace"] = grace

    @_help(f"Most output streams served at once [default: {defaults.MAX_FOLLOWERS}]")
    def opt_max_followers(self, value: str) -> None:
        ceiling = defaults.MAX_FOLLOWERS_CEILING
        if not value.isdigit() or not 1 <= int(value) <= ceiling:
            raise usage.UsageError(f"--max-followers: {value!r} is not 1..{ceiling}")
        self["max-followers"] = int(value)

    @_help(
        "Output kept per job; the rest is dropped"
        f" [default: {format_size(defaults.OUTPUT_CAP)}]"
    )
    def opt_output_cap(self, value: str) -> None:
        cap = _parse_bytes(value)
        if cap < 1:
            raise usage.UsageError("--output-cap must be at least 1 byte")
        self["output-cap"] = cap

    def opt_io_device(self, value: str) -> None:
        """MAJ:MIN of a disk IO limits apply to (repeatable) [default: auto]"""
        major, _, minor = value.partition(":")
        if not (major.isdigit() and minor.isdigit()):
            raise usage.UsageError(f"--io-device: {value!r} is not MAJ:MIN, e.g. 8:0")
        self["io-devices"].append(f"{int(major)}:{int(minor)}")

    @_help(
        "The lowest disk IO limit a job may ask for"
        f" [default: {format_size(defaults.MIN_IO_BPS)}]"
    )
    def opt_min_io_bps(self, value: str) -> None:
        self["min-io-bps"] = max(1, _parse_bytes(value))

    def opt_bind_ro(self, path: str) -> None:
        """A host path every job also sees, read-only (repeatable)"""
        if not os.path.isabs(path):
            raise usage.UsageError(f"--bind-ro: {path!r} is not an absolute path")
        self["bind-ro"].append(path)

    def opt_job_uid_range(self, value: str) -> None:
        """FIRST-LAST: each job runs as its own uid from these, unless --job-user
        [default: 61184-65519]"""
        try:
            self["job-uid-range"] = parse_range(value)
        except ValueError as error:
            raise usage.UsageError(f"--job-uid-range: {error}") from None

    def _limit(self, kind: str, limit: Limit, value: str) -> None:
        parsed: float | int | None = None
        if value.strip().lower() not in _UNLIMITED:
            try:
                parsed = limit.parse(value)
            except InvalidNumber as error:
                raise usage.UsageError(f"--{kind}-{limit.flag}: {error}") from None
        self["defaults" if kind == "default" else "maximums"][limit.name] = parsed
        if kind == "default":
            self["explicit-defaults"].add(limit.name)

    def postOptions(self) -> None:
        missing = [
            f"--{name}"
            for name in ("tls-cert", "tls-key", "client-ca")
            if not self[name]
        ]
        if missing:
            raise usage.UsageError(f"missing {', '.join(missing)}")
        total, user = levers.cgroup_limits(self)
        self["totals"], self["per-user"] = total, user
        self["policy"] = _policy(
            self["defaults"],
            levers.job_ceiling(self["maximums"], user),
            self["explicit-defaults"],
            self["min-io-bps"],
        )


def _add_limit_options(options: type[Options]) -> None:
    """Give `options` the `--default-*` and `--max-*` option of every limit."""
    for limit in LIMITS:
        for kind in ("default", "max"):
            method = f"opt_{kind}_{limit.flag.replace('-', '_')}"
            setattr(options, method, _limit_option(kind, limit))


_add_limit_options(Options)


class TwistdOptions(Options):
    """`Options` as `twistd jobworker` parses them (the plugin's).

    A usage error is one line, `jobworker: cannot start: <error>`, rather
    than twistd's whole help; `--log-format json` becomes twistd's
    `--logger`, so the JSON observer is in place before the first event.
    """

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as error:
            raise cannot_start(error) from None

    def postOptions(self) -> None:
        super().postOptions()
        twistd = self.parent
        if self["log-format"] == "json" and twistd is not None:
            problem = json_logger_problem(twistd)
            if problem is not None:
                raise usage.UsageError(problem)
            twistd["logger"] = JSON_OBSERVER


def _policy(
    wanted: dict[str, Any],
    maximums: dict[str, Any],
    explicit: set[str],
    min_io_bps: int = 1,
) -> LimitPolicy:
    """The limit policy; a default not given explicitly follows a lower maximum."""
    wanted = dict(wanted)
    for name, maximum in maximums.items():
        default = wanted[name]
        if name in explicit or maximum is None:
            continue
        if default is None or default > maximum:
            wanted[name] = maximum
    try:
        return LimitPolicy(Limits(**wanted), Limits(**maximums), min_io_bps)
    except InvalidRequest as error:
        raise usage.UsageError(str(error)) from None


def build_service(
    config: dict[str, Any],
    reactor: object | None = None,
    top_class: type[MultiService] = MultiService,
) -> MultiService:
    """Check TLS and isolation, then build the manager and the API server.

    `reactor` (the installed one when None) is adapted to the interface each
    service uses; `top_class` is the class of the service returned.
    """
    reactor = or_global(reactor)
    host, _ = parse_address(config["listen"], allow_port_zero=True)
    load_tls = functools.partial(
        load_server_tls,
        config["tls-cert"],
        config["tls-key"],
        config["client-ca"],
        host,
    )
    tls = load_tls()
    state_dir = os.path.abspath(config["state-dir"])
    os.makedirs(state_dir, mode=0o711, exist_ok=True)
    lock = StateDirLock(state_dir)  # before stale clean-up: it kills jobs
    metrics = ServerMetrics()
    # Before the manager: it hears of the jobs the manager restores.
    reaper = Reaper(
        Retention(config["retain"], config["retain-jobs"]),
        reactor=IReactorTime(reactor),
    )
    try:
        manager = JobManager(
            state_dir,
            policy=config["policy"],
            isolation=_isolation(config, state_dir, IReactorTime(reactor)),
            job_user=config["job-user"],
            stop_grace=config["stop-grace"],
            output_cap=config["output-cap"],
            events=JobEventsFanOut(
                LoggingJobEvents(), MetricsJobEvents(metrics), reaper
            ),
            max_jobs_per_owner=config["max-jobs-per-user"],
            storage=StorageGuard(
                state_dir, config["user-output-quota"], config["min-free-disk"]
            ),
            live_restore=config["live-restore"],
            reactor=IReactorProcess(reactor),
        )
    except BaseException:
        lock.release()
        raise
    reaper.attach(manager.remove)
    top = top_class()
    lock.setServiceParent(top)  # type: ignore[no-untyped-call]
    reaper.setServiceParent(top)  # type: ignore[no-untyped-call]
    server = JobWorkerServer(
        manager,
        listen=config["listen"],
        tls=tls,
        max_followers=config["max-followers"],
        metrics=metrics,
        max_followers_per_user=config["max-followers-per-user"],
        reactor=IReactorThreads(reactor),
    )
    server.setName(API_SERVICE)  # type: ignore[no-untyped-call]
    server.setServiceParent(top)  # type: ignore[no-untyped-call]
    if config["metrics-listen"] is not None:
        listener = MetricsListener(
            config["metrics-listen"], metrics.registry, reactor=IReactorTCP(reactor)
        )
        listener.setName(METRICS_SERVICE)  # type: ignore[no-untyped-call]
        listener.setServiceParent(top)  # type: ignore[no-untyped-call]
    reload = CertificateReload(
        server.credentials,
        load_tls,
        notify=sd_notify,
        reactor=IReactorFromThreads(reactor),
    )
    reload.setServiceParent(top)  # type: ignore[no-untyped-call]
    ready = Readiness(
        lambda: f"serving on {config['listen']} (port {server.port})",
        reactor=IReactorCore(reactor),
    )
    ready.setServiceParent(top)  # type: ignore[no-untyped-call]
    log.info(
        "starting jobworker on {listen}, state in {state_dir}",
        listen=config["listen"],
        state_dir=state_dir,
    )
    return top


_NAMESPACES = ("pid", "mnt", "net", "ipc", "uts", "cgroup")


def _isolation(
    config: dict[str, Any], state_dir: str, reactor: IReactorTime
) -> IsolationConfig | None:
    """Detect cgroups and namespaces, or refuse to start without them."""
    if config["no-isolation"]:
        log.warn(
            "--no-isolation: jobs run WITHOUT cgroups or namespaces; no limits are"
            " enforced and jobs see the host. For development only."
        )
        return None
    if os.geteuid() != 0:
        raise IsolationUnavailable(
            "isolating jobs (cgroups, namespaces) needs root; run as root, or pass"
            " --no-isolation (development only)"
        )
    missing = [ns for ns in _NAMESPACES if not os.path.exists(f"/proc/self/ns/{ns}")]
    if missing:
        raise IsolationUnavailable(
            f"the kernel lacks {', '.join(missing)} namespaces"
            " (or pass --no-isolation, development only)"
        )
    from jobworker.isolation.cgroups import detect  # noqa: PLC0415
    from jobworker.isolation.sandbox import make_sandbox  # noqa: PLC0415

    if config["no-seccomp"]:
        log.warn("--no-seccomp: jobs run WITHOUT a syscall filter")
    sandbox = make_sandbox(
        bind_ro=config["bind-ro"],
        seccomp=not config["no-seccomp"],
        uid_range=None if config["job-user"] else config["job-uid-range"],
    )
    driver = detect(
        state_dir,
        io_devices=config["io-devices"] or None,
        reactor=reactor,
        totals=config["totals"],
        per_user=config["per-user"],
    )
    # Under live restore the manager keeps the cgroups of the jobs it re-adopts.
    stale = 0 if config["live-restore"] else driver.cleanup_stale()
    if stale:
        log.info("removed {count} stale job cgroup(s) of an earlier run", count=stale)
    log.info(
        "isolating jobs with cgroup v{version}, namespaces, a private root{more};"
        " all jobs: {totals}; one user's jobs: {per_user}",
        version=driver.version,
        more=(", a syscall filter" if sandbox.seccomp else "")
        + (", a uid each" if sandbox.uids else ""),
        totals=limits_for_log(config["totals"]),
        per_user=limits_for_log(config["per-user"]),
    )
    return IsolationConfig(cgroups=driver, namespaces=True, sandbox=sandbox)


def makeService(config: Options) -> MultiService:
    """The jobworker service; ends twistd with one line on a start-up problem."""
    try:
        service = build_service(config, top_class=CheckedStart)
    except (JobWorkerError, OSError) as error:
        raise cannot_start(error) from None
    _exit_zero_after_shutdown()
    return service


def _exit_zero_after_shutdown() -> None:
    """Exit 0 after a graceful stop on SIGTERM or SIGINT.

    twistd re-raises the signal once the reactor has stopped, so the process
    would end "killed by SIGTERM" even though every job was stopped and
    every stream ended cleanly; supervisors and scripts read that as a
    failure. The reactor records the signal in `_exitSignal`, which twistd
    reads after `run()` returns: forget it once shutdown has completed.
    """
    reactor = IReactorCore(or_global(None))

    def forget_signal() -> None:
        # A private attribute of Twisted's posix reactor, read by twistd.
        if getattr(reactor, "_exitSignal", None) is not None:
            setattr(reactor, "_exitSignal", None)  # noqa: B010

    reactor.addSystemEventTrigger("after", "shutdown", forget_signal)
