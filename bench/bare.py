"""The bare grpcio baseline server: the same mTLS, no jobworker in the way.

`python -m bench.bare CERT KEY CLIENT_CA THREADS` listens on 127.0.0.1 (a
free port, printed as one line `port N` once serving) with the server
credentials `jobworker.server.service` builds, the same thread pool size, and two
raw-bytes methods: `Echo` (unary, a reply the size of a Status reply) and
`Stream` (the request is a byte count in ASCII; the reply is that many
bytes, as 64 KiB messages sent from memory). It runs until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import BARE_SERVICE, ECHO_REPLY_BYTES, MESSAGE_BYTES, grpc
from jobworker.server.tls import load_server_tls

_MESSAGE = b"\0" * MESSAGE_BYTES
_REPLY = b"r" * ECHO_REPLY_BYTES


def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return _REPLY


def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    left = int(request)
    while left > 0:
        piece = _MESSAGE if left >= MESSAGE_BYTES else _MESSAGE[:left]
        left -= len(piece)
        yield piece


def serve(cert: str, key: str, client_ca: str, threads: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    tls = load_server_tls(cert, key, client_ca, "127.0.0.1")
    handler = grpc.method_handlers_generic_handler(
        BARE_SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    executor = ThreadPoolExecutor(threads)
    server: Any = grpc.server(
        executor, handlers=[handler], maximum_concurrent_rpcs=threads
    )
    credentials = grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    print(f"port {port}", flush=True)
    done.wait()
    server.stop(1).wait()
    executor.shutdown(wait=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
