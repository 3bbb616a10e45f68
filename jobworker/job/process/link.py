"""The server's end of a live-restore helper's control socket (`keeper.py`).

`HelperLink` is a thin line protocol: it checks the helper's greeting (its
protocol version, and that the peer is the process the job's pid file
names), turns the helper's lines into calls on a `LinkEvents` (the job)
and sends "drop" when the owner's storage is used up. `connect_helper`
connects one over the reactor's UNIX endpoint.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorUNIX
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from jobworker.job.process.keeper import MAX_LINE, PROTOCOL, SOCKET, short_path

CONNECT_TIMEOUT = 5.0
T = TypeVar("T")
_PEERCRED = struct.Struct("3i")  # pid, uid, gid
_log = Logger()


class LinkEvents(Protocol):
    """What a job hears from its live-restore helper."""

    def log_grew(self, size: int) -> None:
        """The helper has written the output log up to `size` bytes."""

    def log_truncated(self, why: str) -> None:
        """The helper stores no more output, because of `why`."""

    def helper_ended(self, wait_status: int) -> None:
        """The command ended with `wait_status`; the exit file holds it."""

    def link_lost(self) -> None:
        """The connection is gone (after "ended", or not)."""


class HelperLink(LineOnlyReceiver):
    """One connection to a job's helper."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, events: LinkEvents, helper_pid: int | None = None) -> None:
        """`helper_pid`: the pid the peer must have (checked on real sockets)."""
        self.events = events
        self.helper_pid = helper_pid
        self.greeted = False

    def connectionMade(self) -> None:
        peer = _peer_pid(self.transport)
        if peer is not None and self.helper_pid is not None and peer != self.helper_pid:
            _log.warn(
                "helper socket answered by pid {peer}, not {pid}: refused",
                peer=peer,
                pid=self.helper_pid,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]

    def lineReceived(self, line: bytes) -> None:
        word, _, rest = line.decode("ascii", "replace").partition(" ")
        if not self.greeted:
            self._greeting(word, rest)
            return
        try:
            if word == "size":
                self.events.log_grew(int(rest))
            elif word == "truncated":
                self.events.log_truncated(rest)
            elif word == "ended":
                self.events.helper_ended(int(rest))
        except ValueError as error:
            _log.warn("helper said {line!r}: {error}", line=line, error=error)
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _greeting(self, word: str, rest: str) -> None:
        if word == "hello" and rest.partition(" ")[0] == str(PROTOCOL):
            self.greeted = True
            return
        _log.warn(
            "helper said {word!r}, not hello {protocol}: refused",
            word=word,
            protocol=PROTOCOL,
        )
        self.transport.loseConnection()  # type: ignore[union-attr]

    def lineLengthExceeded(self, line: bytes) -> None:
        _log.warn("helper sent a line longer than {max}", max=self.MAX_LENGTH)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # Twisted's default
        self.events.link_lost()

    def drop(self, why: str) -> None:
        """Ask the helper to store no more output (and close the job's pipes)."""
        self._send(b"drop " + why.encode("ascii", "replace"))

    def stop(self) -> None:
        """SIGTERM to the job (its process group)."""
        self._send(b"stop")

    def kill(self) -> None:
        """Kill every process of the job now."""
        self._send(b"kill")

    def _send(self, line: bytes) -> None:
        self.sendLine(line)  # type: ignore[no-untyped-call]  # Twisted: unannotated


def _peer_pid(transport: object) -> int | None:
    """The pid of a UNIX socket's peer (SO_PEERCRED), if it is one."""
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, socket.socket) or handle.family != socket.AF_UNIX:
        return None
    raw = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid: int = _PEERCRED.unpack(raw)[0]
    return pid


def connect_helper(
    reactor: IReactorUNIX, directory: str, link: HelperLink
) -> Deferred[HelperLink]:
    """Connect `link` to the helper's socket in its live `directory`.

    Through /proc/self/fd: a socket's path is limited to 108 bytes, a
    state directory's is not. Raises `OSError` if the directory is gone.
    """
    dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    path = short_path(dir_fd, SOCKET)
    endpoint = UNIXClientEndpoint(reactor, path, timeout=CONNECT_TIMEOUT)  # type: ignore[no-untyped-call]  # Twisted: unannotated
    connected: Deferred[HelperLink] = connectProtocol(endpoint, link)  # type: ignore[no-untyped-call]  # Twisted: unannotated

    def close_dir(result: T) -> T:
        os.close(dir_fd)
        return result

    return connected.addBoth(close_dir)
