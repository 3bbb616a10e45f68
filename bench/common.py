"""What the orchestrator and the client processes share: endpoints and messages.

Client processes (`bench.worker`) are told what to do with one JSON
argument, say `{"ready": ...}` when connected, wait for a `go` line on
stdin, and report their results as one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

# Before grpc is imported anywhere in a bench process: the same grpc-core
# settings as the server (fork support off, TLS 1.2 suites restricted).
from jobworker.server.tls import configure_grpc_environment

configure_grpc_environment()
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402

__all__ = [
    "BARE_ECHO",
    "BARE_SERVICE",
    "BARE_STREAM",
    "ECHO_REPLY_BYTES",
    "GIB",
    "MESSAGE_BYTES",
    "MIB",
    "Endpoint",
    "grpc",
    "open_channel",
    "say",
]

MIB = 1 << 20
GIB = 1 << 30
# The bare baseline server's methods; messages are raw bytes.
BARE_SERVICE = "bench.Bare"
BARE_ECHO = f"/{BARE_SERVICE}/Echo"
BARE_STREAM = f"/{BARE_SERVICE}/Stream"
MESSAGE_BYTES = 64 * 1024
# The size of the bare Echo reply: about that of a Status reply.
ECHO_REPLY_BYTES = 200


@dataclass(frozen=True)
class Endpoint:
    """A server address and the client TLS files to reach it with."""

    address: str
    ca: str
    cert: str
    key: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Endpoint:
        return cls(**data)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def open_channel(endpoint: Endpoint, timeout: float = 30.0) -> grpc.Channel:
    """A connected mTLS channel (its own TCP connection)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(endpoint.ca),
        private_key=_read(endpoint.key),
        certificate_chain=_read(endpoint.cert),
    )
    # A private subchannel pool: every channel is its own connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channel = grpc.secure_channel(endpoint.address, credentials, options=options)
    grpc.channel_ready_future(channel).result(timeout=timeout)
    return channel


def say(message: dict[str, Any]) -> None:
    """One JSON line to the orchestrator (on the original stdout)."""
    sys.__stdout__.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
    sys.__stdout__.flush()  # type: ignore[union-attr]
