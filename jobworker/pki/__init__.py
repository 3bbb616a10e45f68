"""`jobworker-pki`: a development PKI for jobworker's mutual TLS.

Two CAs (one signs server certificates, the other client certificates),
ECDSA P-256 keys, SHA-256 signatures, short lifetimes. A client
certificate's CN is the caller's identity and its OU the role (`admin` or
`user`); the server certificate names the hosts clients connect to (`--host`).
Keys are written mode 0600. `init` and `issue` never overwrite anything;
`renew` replaces one identity's key and certificate (each file atomically)
with new ones for the same name, role or hosts, from the same CA.
"""

from jobworker.pki.certs import (
    DEV_USERS,
    ROLES,
    SERVER_HOSTS,
    KeyPair,
    PKIError,
    check_host,
    make_ca,
    make_leaf,
)
from jobworker.pki.cli import main
from jobworker.pki.commands import init, issue, renew
from jobworker.pki.store import load_pair, replace_pair, write_pair

__all__ = [
    "DEV_USERS",
    "ROLES",
    "SERVER_HOSTS",
    "KeyPair",
    "PKIError",
    "check_host",
    "init",
    "issue",
    "load_pair",
    "main",
    "make_ca",
    "make_leaf",
    "renew",
    "replace_pair",
    "write_pair",
]
