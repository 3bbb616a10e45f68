"""Readiness for systemd (`Type=notify`): `sd_notify` and the service that uses it.

`sd_notify` sends one datagram of `KEY=value` lines to `$NOTIFY_SOCKET`, as
systemd's own sd_notify(3) does, and does nothing when it is unset.
`Readiness` is the last service of the server: it says `READY=1` once the
reactor runs (the API port listens by then, and twistd's SIGTERM handler is
in place) and `STOPPING=1` when shutdown begins.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

from jobworker.reactors import or_global

log = Logger()


def sd_notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Tell the service manager `fields`; True when a message was sent.

    `RELOADING=1` is sent with the `MONOTONIC_USEC` stamp systemd asks for.
    A failure is logged, never raised: the server runs on without it.
    """
    target = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not target:
        return False
    if target.startswith("@"):
        address = "\0" + target[1:]  # an abstract socket
    elif target.startswith("/"):
        address = target
    else:
        log.warn(
            "NOTIFY_SOCKET {target!r} is not a unix socket; ignored", target=target
        )
        return False
    if "RELOADING=1" in fields:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields = (*fields, f"MONOTONIC_USEC={now}")
    message = "\n".join(fields).encode()
    try:
        with socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
        ) as s:
            s.sendto(message, address)
    except OSError as error:
        log.warn(
            "cannot notify the service manager at {target}: {error}",
            target=target,
            error=error.strerror or str(error),
        )
        return False
    return True


class Readiness(Service):
    """`READY=1` (and `status()` as STATUS) once running, `STOPPING=1` at stop."""

    def __init__(
        self,
        status: Callable[[], str],
        *,
        notify: Callable[..., object] = sd_notify,
        reactor: IReactorCore | None = None,
    ) -> None:
        self._status = status
        self._notify = notify
        self._reactor = IReactorCore(or_global(reactor))

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        if self.running:
            self._notify("READY=1", f"STATUS={self._status()}")

    def stopService(self) -> None:
        if self.running:
            self._notify("STOPPING=1", "STATUS=stopping every job")
        super().stopService()  # type: ignore[no-untyped-call]
