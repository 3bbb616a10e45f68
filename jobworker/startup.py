"""Building the running server from `twistd jobworker` options.

Checks the TLS material, locks the state directory and checks isolation
(refusing to start, with the reason, when any is wrong), removes stale job
cgroups, then builds the `JobManager` and the `JobWorkerServer` in one
`MultiService`.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from jobworker.address import parse_address
from jobworker.errors import IsolationUnavailable
from jobworker.isolation import IsolationConfig
from jobworker.joblog import LoggingJobManager
from jobworker.server import JobWorkerServer
from jobworker.statelock import StateDirLock
from jobworker.tlsconfig import load_server_tls

log = Logger()
# The API server's name in the MultiService: `top.getServiceNamed(API_SERVICE)`.
API_SERVICE = "api"


def build_service(config: dict[str, Any], reactor: Any = None) -> MultiService:
    """Check TLS and isolation, then build the manager and the API server."""
    host, _ = parse_address(config["listen"], allow_port_zero=True)
    tls = load_server_tls(
        config["tls-cert"], config["tls-key"], config["client-ca"], host
    )
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
    from jobworker.cgroups import detect  # noqa: PLC0415

    driver = detect(state_dir, io_devices=config["io-devices"] or None, reactor=reactor)
    stale = driver.cleanup_stale()
    if stale:
        log.info("removed {count} stale job cgroup(s) of an earlier run", count=stale)
    log.info(
        "isolating jobs with cgroup v{version} and namespaces", version=driver.version
    )
    return IsolationConfig(cgroups=driver, namespaces=True)
