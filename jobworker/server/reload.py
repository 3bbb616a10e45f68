"""Certificate reload without a restart: SIGHUP and grpcio's dynamic credentials.

`ReloadableCredentials` hands grpcio the checked TLS material through
`grpc.dynamic_ssl_server_credentials`: grpc-core asks it for news before
every new handshake, so new connections use the material accepted last while
open connections (their streams, and every job) keep what they were made
with. `CertificateReload` is the service that, on SIGHUP, re-reads the files
with the start-up checks (`load_server_tls`); material that fails a check is
one log line and the old material stays in use.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import jobworker.server.api  # noqa: F401 - configures grpc-core before grpc is imported

# isort: split
import grpc
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from jobworker.reactors import or_global
from jobworker.server.tls import ServerTLS, TLSConfigError

log = Logger()

_Handler = Callable[[int, FrameType | None], Any] | int | None


def _configuration(tls: ServerTLS) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(tls.private_key, tls.cert_chain)], root_certificates=tls.client_ca
    )


class ReloadableCredentials:
    """Server credentials whose certificate, key and client CA can be replaced."""

    def __init__(self, tls: ServerTLS) -> None:
        self._lock = threading.Lock()
        self._current = tls
        self._pending: grpc.ServerCertificateConfiguration | None = None

    @property
    def current(self) -> ServerTLS:
        """The material new connections use (or will, from the next handshake)."""
        return self._current

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for `add_secure_port`: mutual TLS with the current material."""
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._current),
            self._fetch,  # type: ignore[arg-type] # grpc takes None: "no change"
            require_client_authentication=True,
        )

    def replace(self, tls: ServerTLS) -> None:
        """Use `tls` (already checked) for every handshake from now on."""
        configuration = _configuration(tls)
        with self._lock:
            self._current, self._pending = tls, configuration

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc-core's question before each handshake: new material, or None."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


class CertificateReload(Service):
    """On SIGHUP, re-read and re-check the TLS files; use them if they pass.

    `load` reads and checks the files (`load_server_tls` with the start-up
    paths and listen host). `notify` is told of a reload as systemd expects
    (`RELOADING=1` then `READY=1`); it defaults to doing nothing.
    """

    def __init__(
        self,
        credentials: ReloadableCredentials,
        load: Callable[[], ServerTLS],
        *,
        notify: Callable[..., object] | None = None,
        reactor: IReactorFromThreads | None = None,
    ) -> None:
        self.credentials = credentials
        self._load = load
        self._notify = notify if notify is not None else _ignore
        self._reactor = IReactorFromThreads(or_global(reactor))
        self._previous: _Handler = None

    def startService(self) -> None:
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> None:
        if self.running:
            signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)
        super().stopService()  # type: ignore[no-untyped-call]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler may only hand work to the reactor.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        """Re-read the files now; True when new connections will use them."""
        self._notify("RELOADING=1")
        try:
            return self._reload()
        finally:
            self._notify("READY=1")

    def _reload(self) -> bool:
        tls: ServerTLS | None = None
        try:
            tls = self._load()
        except TLSConfigError as error:
            reason = str(error)
        if tls is None:
            log.error(
                "certificate reload refused, the current material stays in use:"
                " {reason}",
                reason=reason,
            )
            return False
        self.credentials.replace(tls)
        log.info(
            "certificates reloaded: new connections use them; open connections"
            " and jobs are untouched (server certificate valid until {not_after})",
            not_after=f"{tls.not_after:%Y-%m-%d %H:%M} UTC",
        )
        return True


def _ignore(*fields: str) -> None:
    return None
