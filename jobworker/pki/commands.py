"""What `jobworker-pki` does: init, issue and renew.

`init` and `issue` never overwrite anything; `renew` replaces one
identity's key and certificate with new ones for the same name, role or
hosts, from the same CA.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from jobworker.pki.certs import (
    CA_DAYS,
    DEV_USERS,
    LEAF_DAYS,
    ROLES,
    SERVER_HOSTS,
    KeyPair,
    PKIError,
    check_host,
    make_ca,
    make_leaf,
)
from jobworker.pki.store import (
    load_pair,
    paths,
    refuse_existing,
    replace_pair,
    write_pair,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_RESERVED = ("server", "server-ca", "client-ca")
_CAS = ("server-ca", "client-ca")


def _server_leaf(
    server_ca: KeyPair, hosts: Sequence[str], common_name: str | None, days: float
) -> KeyPair:
    if common_name is None:
        common_name = hosts[0] if len(hosts[0]) <= 64 else "jobworker server"
    return make_leaf(server_ca, common_name, server=True, hosts=hosts, days=days)


def init(
    directory: str,
    *,
    hosts: Sequence[str] = SERVER_HOSTS,
    ca_days: float = CA_DAYS,
    days: float = LEAF_DAYS,
) -> None:
    """Create both CAs, the server certificate (for `hosts`) and the dev users."""
    hosts = list(dict.fromkeys(check_host(host) for host in hosts))
    if not hosts:
        raise PKIError("the server certificate needs at least one host")
    names = ["server-ca", "client-ca", "server", *(name for name, _ in DEV_USERS)]
    os.makedirs(directory, mode=0o700, exist_ok=True)
    refuse_existing(directory, names)
    server_ca = make_ca("jobworker server CA", days=ca_days)
    client_ca = make_ca("jobworker client CA", days=ca_days)
    write_pair(directory, "server-ca", server_ca)
    write_pair(directory, "client-ca", client_ca)
    write_pair(directory, "server", _server_leaf(server_ca, hosts, None, days))
    for name, role in DEV_USERS:
        write_pair(directory, name, make_leaf(client_ca, name, units=[role], days=days))


def issue(directory: str, name: str, role: str, *, days: float = LEAF_DAYS) -> None:
    """Issue a client certificate NAME (CN) with role ROLE (OU)."""
    if not _NAME.match(name) or name in _RESERVED:
        raise PKIError(
            f"invalid name {name!r}: use letters, digits, '.', '_' or '-'"
            f" (not {', '.join(_RESERVED)})"
        )
    if role not in ROLES:
        raise PKIError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    refuse_existing(directory, [name])
    client_ca = load_pair(directory, "client-ca")
    write_pair(directory, name, make_leaf(client_ca, name, units=[role], days=days))


def _values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(attribute.value) for attribute in name.get_attributes_for_oid(oid)]


def _read_issued(
    directory: str, name: str, ca: KeyPair, ca_name: str
) -> x509.Certificate:
    """NAME.pem, which must have been issued by `ca`."""
    path = paths(directory, name)[0]
    try:
        with open(path, "rb") as file:
            cert = x509.load_pem_x509_certificate(file.read())
    except FileNotFoundError:
        raise PKIError(f"there is no {path} to renew; create it with issue") from None
    except (OSError, ValueError) as error:
        raise PKIError(f"cannot read {path}: {error}") from None
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(
            f"{path} was not issued by {ca_name} in {directory};"
            " refusing to re-issue it"
        ) from None
    return cert


def renew(
    directory: str,
    name: str,
    *,
    days: float = LEAF_DAYS,
    hosts: Sequence[str] | None = None,
) -> KeyPair:
    """Re-issue NAME with a new key: the same CN and role (OU) from the client
    CA, or for `server` the same hosts (or `hosts`) from the server CA."""
    if name in _CAS:
        raise PKIError(
            f"{name} is a CA; renew re-issues server and client certificates"
            " (new CAs mean a new PKI: init in another directory)"
        )
    if not _NAME.match(name):
        raise PKIError(f"invalid name {name!r}")
    server = name == "server"
    ca_name = "server-ca" if server else "client-ca"
    ca = load_pair(directory, ca_name)
    old = _read_issued(directory, name, ca, ca_name)
    common_names = _values(old.subject, NameOID.COMMON_NAME)
    if server:
        if hosts is None:
            names = old.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
            hosts = [str(value) for value in names.get_values_for_type(x509.DNSName)]
            hosts += [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
            keep = common_names[0] if common_names else None
        else:
            hosts = list(dict.fromkeys(check_host(host) for host in hosts))
            keep = None
        if not hosts:
            raise PKIError("the server certificate needs at least one host")
        pair = _server_leaf(ca, hosts, keep, days)
    else:
        if hosts is not None:
            raise PKIError("--host is for the server certificate only")
        roles = _values(old.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        if len(common_names) != 1 or len(roles) != 1 or roles[0] not in ROLES:
            raise PKIError(
                f"{name} has no single identity and role ({', '.join(ROLES)});"
                " issue a new certificate instead"
            )
        pair = make_leaf(ca, common_names[0], units=roles, days=days)
    replace_pair(directory, name, pair)
    return pair
