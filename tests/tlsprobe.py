"""Drive TLS by hand against a real server: raw handshakes and two relays.

- `handshake()`: pyOpenSSL as a raw TLS client (any version, suites, client
  certificate), then the HTTP/2 preface. "Accepted" means the server answered
  with an HTTP/2 frame, i.e. it accepted the connection, not merely that our
  side finished its handshake (in TLS 1.3 the server checks the client
  certificate after the client considers the handshake done).
- `TLSRelay`: a grpc client speaks plaintext HTTP/2 to it and it carries the
  bytes to the server over TLS with a chosen maximum version and a client
  certificate: a real gRPC call made over TLS 1.2.
- `SniffingRelay`: a plain TCP relay that keeps the server's first bytes, so
  the ServerHello of a real grpc client's handshake can be read.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)

from tests import pkiutil

H2_PREFACE = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
)
SETTINGS_FRAME = 0x04
CIPHERS = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
}
GROUPS = {0x001D: "x25519", 0x0017: "secp256r1", 0x11EC: "X25519MLKEM768"}


@dataclass
class Outcome:
    """What the server did with one raw connection."""

    accepted: bool
    version: str | None = None
    cipher: str | None = None
    group: str | None = None
    error: str | None = None


def handshake(
    port: int,
    cert: str | None = "alice",
    *,
    max_version: int | None = None,
    min_version: int | None = None,
    ciphers: bytes | None = None,
) -> Outcome:
    """Connect with pyOpenSSL, send the HTTP/2 preface, see if the server answers."""
    context = SSL.Context(SSL.TLS_METHOD)
    if cert is not None:
        context.use_certificate_file(pkiutil.path(f"{cert}.pem"))
        context.use_privatekey_file(pkiutil.path(f"{cert}.key"))
    if min_version is not None:
        context.set_min_proto_version(min_version)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    if ciphers is not None:
        context.set_cipher_list(ciphers)
    context.set_alpn_protos([b"h2"])
    context.load_verify_locations(pkiutil.path("server-ca.pem"))
    context.set_verify(SSL.VERIFY_PEER)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        # Blocking (OpenSSL needs it), but a silent server cannot hang us.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
        connection = SSL.Connection(context, sock)
        connection.set_connect_state()
        connection.set_tlsext_host_name(b"localhost")
        outcome = Outcome(accepted=False)
        try:
            connection.do_handshake()
            outcome.version = connection.get_protocol_version_name()
            outcome.cipher = connection.get_cipher_name()
            outcome.group = connection.get_group_name()
            connection.sendall(H2_PREFACE)
            frame = connection.recv(9)
        except SSL.Error as error:
            outcome.error = repr(error)
            return outcome
        outcome.accepted = len(frame) == 9 and frame[3] == SETTINGS_FRAME
        return outcome


def plaintext_answer(port: int) -> bytes:
    """Send the HTTP/2 preface without TLS; return what the server sends back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(H2_PREFACE)
        chunks: list[bytes] = []
        while True:
            data = sock.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


class _Pipe(protocol.Protocol):
    """One side of a relay; forwards what it receives to its peer."""

    peer: _Pipe | None = None
    buffer: bytes = b""

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.peer.transport if self.peer is not None else None
        if transport is None:
            self.buffer += data
        else:
            transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        transport: Any = self.peer.transport if self.peer is not None else None
        if transport is not None:
            # Not loseConnection: a TLS one would wait for the server's
            # close_notify, keeping the server's shutdown waiting.
            transport.abortConnection()


class _Upstream(_Pipe):
    def __init__(self, relay: _RelayFactory, downstream: _Pipe) -> None:
        self.relay = relay
        self.peer = downstream

    def dataReceived(self, data: bytes) -> None:
        self.relay.from_server += data
        super().dataReceived(data)

    def connectionMade(self) -> None:
        downstream: Any = self.peer
        downstream.peer = self
        if downstream.buffer:
            transport: Any = self.transport
            transport.write(downstream.buffer)
            downstream.buffer = b""


class _Downstream(_Pipe):
    def __init__(self, relay: _RelayFactory) -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        endpoint = self.relay.endpoint()
        d = endpoint.connect(
            protocol.Factory.forProtocol(lambda: _Upstream(self.relay, self))
        )
        transport: Any = self.transport
        d.addErrback(lambda _: transport.loseConnection())


class _RelayFactory(protocol.Factory):
    def __init__(self, reactor: Any, port: int, tls: Any = None) -> None:
        self.reactor = reactor
        self.port = port
        self.tls = tls
        self.from_server = b""

    def endpoint(self) -> Any:
        tcp: Any = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port)
        return tcp if self.tls is None else wrapClientTLS(self.tls, tcp)

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return _Downstream(self)


def tls_relay(reactor: Any, port: int, cert: str, max_version: Any) -> Any:
    """Listen on 127.0.0.1 (plaintext in); carry to `port` over TLS as `cert`."""
    with open(pkiutil.path(f"{cert}.pem")) as c, open(pkiutil.path(f"{cert}.key")) as k:
        client = PrivateCertificate.loadPEM(c.read() + k.read())
    options = optionsForClientTLS(
        "localhost",
        trustRoot=Certificate.loadPEM(pkiutil.read("server-ca.pem")),
        clientCertificate=client,
        acceptableProtocols=[b"h2"],
        extraCertificateOptions={"lowerMaximumSecurityTo": max_version},
    )
    return reactor.listenTCP(
        0, _RelayFactory(reactor, port, options), interface="127.0.0.1"
    )


def sniffing_relay(reactor: Any, port: int) -> tuple[Any, _RelayFactory]:
    """A plain TCP relay to `port`; the factory keeps what the server sent."""
    factory = _RelayFactory(reactor, port)
    return reactor.listenTCP(0, factory, interface="127.0.0.1"), factory


TLS_1_2 = TLSVersion.TLSv1_2
TLS_1_3 = TLSVersion.TLSv1_3


@dataclass
class ServerHello:
    """What a TLS ServerHello says, read off the wire."""

    version: int
    cipher: str
    group: str | None


def parse_server_hello(data: bytes) -> ServerHello:
    """Parse the first TLS record from a server (a ServerHello)."""
    content, _, length = struct.unpack(">BHH", data[:5])
    if content != 0x16 or data[5] != 0x02:
        raise ValueError("not a ServerHello")
    body = data[9 : 5 + length]
    version = struct.unpack(">H", body[:2])[0]
    pos = 2 + 32
    pos += 1 + body[pos]  # session id
    cipher = struct.unpack(">H", body[pos : pos + 2])[0]
    pos += 3  # cipher suite, compression method
    (ext_total,) = struct.unpack(">H", body[pos : pos + 2])
    pos += 2
    group = None
    end = pos + ext_total
    while pos < end:
        kind, size = struct.unpack(">HH", body[pos : pos + 4])
        value = body[pos + 4 : pos + 4 + size]
        if kind == 0x002B:  # supported_versions
            version = struct.unpack(">H", value[:2])[0]
        elif kind == 0x0033:  # key_share
            code = struct.unpack(">H", value[:2])[0]
            group = GROUPS.get(code, hex(code))
        pos += 4 + size
    return ServerHello(version, CIPHERS.get(cipher, hex(cipher)), group)
