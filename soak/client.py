"""gRPC clients of the soak: one mTLS channel (one TCP connection) per name."""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc

# Every channel gets its own connection, as separate clients would.
OPTIONS: list[tuple[str, int | str]] = [("grpc.use_local_subchannel_pool", 1)]


def credentials(pki_dir: str, user: str) -> grpc.ChannelCredentials:
    def read(name: str) -> bytes:
        with open(f"{pki_dir}/{name}", "rb") as file:
            return file.read()

    return grpc.ssl_channel_credentials(
        read("server-ca.pem"), read(f"{user}.key"), read(f"{user}.pem")
    )


@dataclass
class Output:
    """A job's output as one follower received it."""

    stdout: bytes = b""
    stderr: bytes = b""
    chunks: int = 0

    def add(self, chunk: pb.OutputChunk) -> None:
        self.chunks += 1
        if chunk.stream == pb.STREAM_STDERR:
            self.stderr += chunk.data
        else:
            self.stdout += chunk.data


def collect(chunks: Iterable[pb.OutputChunk]) -> Output:
    output = Output()
    for chunk in chunks:
        output.add(chunk)
    return output


class Clients:
    """Channels to one server, made on demand and closed together."""

    def __init__(self, target: str, pki_dir: str) -> None:
        self.target, self.pki_dir = target, pki_dir
        self._lock = threading.Lock()
        self._channels: list[grpc.Channel] = []

    def channel(self, user: str, target: str | None = None) -> grpc.Channel:
        """A new channel (its own connection) as `user`."""
        options: list[tuple[str, int | str]] = [*OPTIONS]
        if target is not None:
            # Through a proxy: the certificate still names localhost.
            options.append(("grpc.ssl_target_name_override", "localhost"))
        channel = grpc.secure_channel(
            target or self.target, credentials(self.pki_dir, user), options=options
        )
        with self._lock:
            self._channels.append(channel)
        return channel

    def stub(self, user: str, target: str | None = None) -> Any:
        return pb_grpc.JobWorkerStub(self.channel(user, target))

    def ready(self) -> bool:
        """Whether the server answers a List call over mTLS."""
        try:
            self.stub("alice").List(pb.ListRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            channels, self._channels = self._channels, []
        for channel in channels:
            channel.close()
