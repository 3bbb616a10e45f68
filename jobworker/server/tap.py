"""`twistd jobworker`: the server's command-line options and its service.

`Options` validates every option as it is parsed (a bad value is a
`UsageError` naming the option). `makeService` checks the environment:
the TLS material, the state directory (locked before stale job cgroups are
removed) and isolation, refusing to start with the reason when any is
wrong; then builds the `JobManager`, the `JobWorkerServer`, SIGHUP
certificate reload and systemd readiness inside a `MultiService`. A
problem found there ends twistd with one line saying what is wrong, not a
traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from jobworker.address import InvalidAddress, parse_address
from jobworker.errors import InvalidRequest, IsolationUnavailable, JobWorkerError
from jobworker.isolation.interfaces import IsolationConfig
from jobworker.job.events import LoggingJobManager
from jobworker.model import LimitPolicy, Limits
from jobworker.server.notify import Readiness, sd_notify
from jobworker.server.reload import CertificateReload
from jobworker.server.service import JobWorkerServer
from jobworker.server.statelock import StateDirLock
from jobworker.server.tls import load_server_tls
from jobworker.units import InvalidSize, parse_size

log = Logger()
# The API server's name in the MultiService: `top.getServiceNamed(API_SERVICE)`.
API_SERVICE = "api"

DEFAULT_LISTEN = "127.0.0.1:7443"
DEFAULT_STATE_DIR = "/var/lib/jobworker"
DEFAULT_OUTPUT_CAP = 1 << 30
_UNLIMITED = ("unlimited", "none")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


# name -> (default, maximum); None is unlimited. IO is unlimited by default:
# which device to throttle, and how much, depends on the machine.
DEFAULT_LIMITS: dict[str, tuple[float | int | None, float | int | None]] = {
    "cpu": (1.0, float(_cpu_count())),
    "memory_bytes": (512 << 20, 4 << 30),
    "io_read_bps": (None, None),
    "io_write_bps": (None, None),
    "pids": (1024, 32768),
}


def _parse_cpu(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise usage.UsageError(f"invalid number of CPUs {text!r}") from None
    return value


def _parse_pids(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise usage.UsageError(f"invalid number of processes {text!r}") from None


def _parse_bytes(text: str) -> int:
    try:
        return parse_size(text)
    except InvalidSize as error:
        raise usage.UsageError(str(error)) from None


_PARSERS: dict[str, Callable[[str], float | int]] = {
    "cpu": _parse_cpu,
    "memory_bytes": _parse_bytes,
    "io_read_bps": _parse_bytes,
    "io_write_bps": _parse_bytes,
    "pids": _parse_pids,
}


def _limit_option(
    kind: str, name: str, what: str, default: str = "unlimited"
) -> Callable[[Options, str], None]:
    """An `opt_default_*` or `opt_max_*` method for the limit `name`."""

    def option(self: Options, value: str) -> None:
        self._limit(kind, name, value)

    scope = "when it asks for none" if kind == "default" else "the most it may ask"
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
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = DEFAULT_LISTEN
        self["tls-cert"] = self["tls-key"] = self["client-ca"] = None
        self["state-dir"] = DEFAULT_STATE_DIR
        self["job-user"] = None
        self["stop-grace"] = 10.0
        self["max-followers"] = 64
        self["output-cap"] = DEFAULT_OUTPUT_CAP
        self["io-devices"] = []
        self["defaults"] = {name: pair[0] for name, pair in DEFAULT_LIMITS.items()}
        self["maximums"] = {name: pair[1] for name, pair in DEFAULT_LIMITS.items()}
        self["explicit-defaults"] = set()
        self["policy"] = None

    def opt_listen(self, value: str) -> None:
        """HOST:PORT to serve on, [::1]:7443 for IPv6 [default: 127.0.0.1:7443]"""
        try:
            parse_address(value, allow_port_zero=True)
        except InvalidAddress as error:
            raise usage.UsageError(f"--listen: {error}") from None
        self["listen"] = value

    def opt_tls_cert(self, path: str) -> None:
        """The server's certificate (PEM) [required]"""
        self["tls-cert"] = path

    def opt_tls_key(self, path: str) -> None:
        """The server certificate's private key (PEM) [required]"""
        self["tls-key"] = path

    def opt_client_ca(self, path: str) -> None:
        """The CA (PEM) client certificates must chain to [required]"""
        self["client-ca"] = path

    def opt_state_dir(self, path: str) -> None:
        """Where job output and work directories live [default: /var/lib/jobworker]"""
        self["state-dir"] = path

    def opt_job_user(self, name: str) -> None:
        """User jobs run as [default: nobody when root, else the server's user]"""
        if not name or "\0" in name:
            raise usage.UsageError("--job-user: empty user name")
        self["job-user"] = name

    def opt_stop_grace(self, value: str) -> None:
        """Seconds between SIGTERM and SIGKILL when stopping a job [default: 10]"""
        try:
            grace = float(value)
        except ValueError:
            grace = -1.0
        if not 0 <= grace <= 86400:
            raise usage.UsageError(f"--stop-grace: {value!r} is not 0..86400 seconds")
        self["stop-grace"] = grace

    def opt_max_followers(self, value: str) -> None:
        """Most output streams served at once [default: 64]"""
        if not value.isdigit() or not 1 <= int(value) <= 10000:
            raise usage.UsageError(f"--max-followers: {value!r} is not 1..10000")
        self["max-followers"] = int(value)

    def opt_output_cap(self, value: str) -> None:
        """Output kept per job; the rest is dropped [default: 1G]"""
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

    def _limit(self, kind: str, name: str, value: str) -> None:
        flag = f"--{kind}-{name.replace('_bytes', '').replace('_', '-')}"
        if value.strip().lower() in _UNLIMITED:
            parsed = None
        else:
            try:
                parsed = _PARSERS[name](value)
            except usage.UsageError as error:
                raise usage.UsageError(f"{flag}: {error}") from None
        self["defaults" if kind == "default" else "maximums"][name] = parsed
        if kind == "default":
            self["explicit-defaults"].add(name)

    opt_default_cpu = _limit_option("default", "cpu", "CPUs", "1")
    opt_max_cpu = _limit_option("max", "cpu", "CPUs", "all CPUs")
    opt_default_memory = _limit_option("default", "memory_bytes", "Memory", "512M")
    opt_max_memory = _limit_option("max", "memory_bytes", "Memory", "4G")
    opt_default_io_read_bps = _limit_option("default", "io_read_bps", "Disk reads/s")
    opt_max_io_read_bps = _limit_option("max", "io_read_bps", "Disk reads/s")
    opt_default_io_write_bps = _limit_option("default", "io_write_bps", "Disk writes/s")
    opt_max_io_write_bps = _limit_option("max", "io_write_bps", "Disk writes/s")
    opt_default_pids = _limit_option("default", "pids", "Processes and threads", "1024")
    opt_max_pids = _limit_option("max", "pids", "Processes and threads", "32768")

    def postOptions(self) -> None:
        missing = [
            f"--{name}"
            for name in ("tls-cert", "tls-key", "client-ca")
            if not self[name]
        ]
        if missing:
            raise usage.UsageError(f"missing {', '.join(missing)}")
        self["policy"] = _policy(
            self["defaults"], self["maximums"], self["explicit-defaults"]
        )


def _policy(
    defaults: dict[str, Any], maximums: dict[str, Any], explicit: set[str]
) -> LimitPolicy:
    """The limit policy; a default not given explicitly follows a lower maximum."""
    defaults = dict(defaults)
    for name, maximum in maximums.items():
        default = defaults[name]
        if name in explicit or maximum is None:
            continue
        if default is None or default > maximum:
            defaults[name] = maximum
    try:
        return LimitPolicy(defaults=Limits(**defaults), maximums=Limits(**maximums))
    except InvalidRequest as error:
        raise usage.UsageError(str(error)) from None


def build_service(config: dict[str, Any], reactor: Any = None) -> MultiService:
    """Check TLS and isolation, then build the manager and the API server."""
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
    try:
        manager = LoggingJobManager(
            state_dir,
            policy=config["policy"],
            isolation=_isolation(config, state_dir, reactor),
            job_user=config["job-user"],
            stop_grace=config["stop-grace"],
            output_cap=config["output-cap"],
            reactor=reactor,
        )
    except BaseException:
        lock.release()
        raise
    top = MultiService()  # type: ignore[no-untyped-call]
    lock.setServiceParent(top)  # type: ignore[no-untyped-call]
    server = JobWorkerServer(
        manager,
        listen=config["listen"],
        tls=tls,
        max_followers=config["max-followers"],
        reactor=reactor,
    )
    server.setName(API_SERVICE)  # type: ignore[no-untyped-call]
    server.setServiceParent(top)  # type: ignore[no-untyped-call]
    reload = CertificateReload(
        server.credentials, load_tls, notify=sd_notify, reactor=reactor
    )
    reload.setServiceParent(top)  # type: ignore[no-untyped-call]
    ready = Readiness(
        lambda: f"serving on {config['listen']} (port {server.port})",
        reactor=reactor,
    )
    ready.setServiceParent(top)  # type: ignore[no-untyped-call]
    log.info(
        "starting jobworker on {listen}, state in {state_dir}",
        listen=config["listen"],
        state_dir=state_dir,
    )
    return top


_NAMESPACES = ("pid", "mnt", "net")


def _isolation(
    config: dict[str, Any], state_dir: str, reactor: Any
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

    driver = detect(state_dir, io_devices=config["io-devices"] or None, reactor=reactor)
    stale = driver.cleanup_stale()
    if stale:
        log.info("removed {count} stale job cgroup(s) of an earlier run", count=stale)
    log.info(
        "isolating jobs with cgroup v{version} and namespaces", version=driver.version
    )
    return IsolationConfig(cgroups=driver, namespaces=True)


def makeService(config: Options) -> MultiService:
    """The jobworker service; ends twistd with one line on a start-up problem."""
    try:
        service = build_service(config)
    except (JobWorkerError, OSError) as error:
        raise SystemExit(f"jobworker: cannot start: {error}") from None
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
    from twisted.internet import reactor as installed  # noqa: PLC0415 - twistd's

    reactor: Any = installed

    def forget_signal() -> None:
        if getattr(reactor, "_exitSignal", None) is not None:
            reactor._exitSignal = None

    reactor.addSystemEventTrigger("after", "shutdown", forget_signal)
