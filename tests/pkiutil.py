"""One PKI per test run, shared by every test module that needs certificates.

`pki_dir()` makes it on first use (with `jobworker.pki`, the code behind
`jobworker-pki init`) in a temporary directory removed when the run exits,
then adds the odd certificates the TLS and authorization tests need: expired,
not yet valid, from another CA, a server certificate issued by the client
CA, no OU, two OUs, an unknown role, no CN, and broken server material.
"""

from __future__ import annotations

import atexit
import datetime
import os
import shutil
import tempfile

from jobworker import pki

_state: dict[str, str] = {}

# Client certificates made by the client CA: name -> (CN, OUs).
ODD_CLIENTS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "dave": ("dave", ("user",)),
    "noou": ("noou", ()),
    "twoous": ("twoous", ("admin", "user")),
    "badrole": ("badrole", ("root",)),
    "nocn": (None, ("admin",)),
    # A CN a terminal would obey if printed raw: escape sequence, newline.
    "escaper": ("evil\x1b[2J\nrow", ("user",)),
}


def pki_dir() -> str:
    """The directory holding this run's PKI; created on the first call."""
    if "dir" not in _state:
        top = tempfile.mkdtemp(prefix="jobworker-test-pki-")
        atexit.register(shutil.rmtree, top, True)
        directory = os.path.join(top, "pki")
        pki.init(directory)
        _add_odd_certificates(directory)
        _state["dir"] = directory
    return _state["dir"]


def path(name: str) -> str:
    """The path of one file of this run's PKI, e.g. path('alice.pem')."""
    return os.path.join(pki_dir(), name)


def read(name: str) -> bytes:
    """The bytes of one file of this run's PKI."""
    with open(path(name), "rb") as file:
        return file.read()


def _ago(days: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)


def _add_odd_certificates(directory: str) -> None:
    client_ca = pki.load_pair(directory, "client-ca")
    server_ca = pki.load_pair(directory, "server-ca")

    def client(name: str, cn: str | None, units: tuple[str, ...], **kw: object) -> None:
        pki.write_pair(
            directory,
            name,
            pki.make_leaf(client_ca, cn, units=units, **kw),  # type: ignore[arg-type]
        )

    for name, (cn, units) in ODD_CLIENTS.items():
        client(name, cn, units)
    client("expired", "expired", ("admin",), not_before=_ago(40), days=30)
    client("future", "future", ("admin",), not_before=_ago(-1), days=30)
    # A serverAuth certificate with a valid role, from the client CA.
    pki.write_pair(
        directory,
        "serverish",
        pki.make_leaf(client_ca, "serverish", units=["admin"], server=True),
    )
    # "alice" again, but signed by a CA the server does not trust.
    other_ca = pki.make_ca("another client CA")
    pki.write_pair(directory, "other-ca", other_ca)
    pki.write_pair(
        directory, "alien", pki.make_leaf(other_ca, "alice", units=["admin"])
    )
    # Server material that load_server_tls must refuse.
    hosts = pki.SERVER_HOSTS

    def server(name: str, issuer: pki.KeyPair, **kw: object) -> None:
        pki.write_pair(
            directory,
            name,
            pki.make_leaf(issuer, "localhost", **kw),  # type: ignore[arg-type]
        )

    server("server-expired", server_ca, server=True, hosts=hosts, not_before=_ago(40))
    server("server-future", server_ca, server=True, hosts=hosts, not_before=_ago(-1))
    server("server-client-eku", server_ca, server=False, hosts=hosts)
    server("server-other-host", server_ca, server=True, hosts=["example.com"])
    expired_ca = pki.make_ca("expired client CA", not_before=_ago(400), days=365)
    pki.write_pair(directory, "expired-ca", expired_ca)
    # A leaf where a CA is expected, for the client CA check.
    os.symlink("alice.pem", os.path.join(directory, "leaf-as-ca.pem"))
