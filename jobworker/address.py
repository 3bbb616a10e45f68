"""HOST:PORT addresses, as the server's --listen and the CLI's --server take them.

IPv6 hosts are written in brackets: "[::1]:7443".
"""

from __future__ import annotations

import re
import socket

_ADDRESS = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^\s\[\]:]+)):(?P<port>\d+)"
)


class InvalidAddress(ValueError):
    """An address that is not HOST:PORT (or [IPV6]:PORT) with a valid port."""


def parse_address(text: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split "HOST:PORT" or "[IPV6]:PORT" into the bare host and the port."""
    match = _ADDRESS.fullmatch(text)
    if match is None:
        raise InvalidAddress(
            f"invalid address {text!r}: use HOST:PORT, e.g. 127.0.0.1:7443"
            " or [::1]:7443"
        )
    host = match.group("v6") or match.group("host")
    port = int(match.group("port"))
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= 65535:
        raise InvalidAddress(
            f"invalid port in {text!r}: must be between {lowest} and 65535"
        )
    return host, port


def format_address(host: str, port: int) -> str:
    """Join a host and a port, bracketing an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_error(text: str) -> OSError | None:
    """Why no address that `text` (HOST:PORT) resolves to can be bound, or None.

    A quick probe before grpcio binds, for a precise reason ("Address already
    in use"): grpcio says only that it added no address, and logs its own
    error line past twisted.logger. Port 0 always binds. Like grpcio, one
    address that binds is enough.
    """
    host, port = parse_address(text, allow_port_zero=True)
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        return error
    first: OSError | None = None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # As grpcio binds: a killed server's connections in TIME_WAIT do
            # not hold the port, a listening socket does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                first = first or error
                continue
        return None
    return first
