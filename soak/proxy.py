"""A one-connection TCP relay on 127.0.0.1 that can end its connection with a RST.

The soak's "TCP reset" follower talks to the server through it; `reset()`
sets SO_LINGER to zero on the server-side socket and closes it, so the
kernel sends the server a RST instead of an orderly FIN.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class ResettingProxy:
    """Relays one accepted connection to `port`; `reset()` aborts it."""

    def __init__(self, port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._target = port
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", self._target))
        with self._lock:
            self._sockets += [client, upstream]
        self.connected.set()
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def reset(self) -> None:
        """Abort both sides: RST to the server, then close the client side."""
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                # Wakes the relay thread blocked in recv(), which holds the
                # socket open: only the last close sends the RST.
                sock.shutdown(socket.SHUT_RD)
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        return
