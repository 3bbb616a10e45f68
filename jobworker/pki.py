"""`jobworker-pki`: a development PKI for jobworker's mutual TLS.

Two CAs (one signs server certificates, the other client certificates),
ECDSA P-256 keys, SHA-256 signatures, short lifetimes. A client
certificate's CN is the caller's identity and its OU the role (`admin` or
`user`); the server certificate names the hosts clients connect to (`--host`).
Keys are written mode 0600. `init` and `issue` never overwrite anything;
`renew` replaces one identity's key and certificate (each file atomically)
with new ones for the same name, role or hosts, from the same CA.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 365
LEAF_DAYS = 30
ROLES = ("admin", "user")
SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")
DEV_USERS = (("alice", "admin"), ("bob", "user"), ("carol", "user"))
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_RESERVED = ("server", "server-ca", "client-ca")
_CAS = ("server-ca", "client-ca")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


class PKIError(Exception):
    """A PKI operation cannot be done; the message says why."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str | None, units: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jobworker")]
    attributes += [
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit) for unit in units
    ]
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime | None,
    days: float,
) -> x509.CertificateBuilder:
    start = not_before if not_before is not None else _now() - _CLOCK_SKEW
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    common_name: str,
    *,
    days: float = CA_DAYS,
    not_before: datetime.datetime | None = None,
) -> KeyPair:
    """A self-signed CA that may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    cert = (
        _builder(subject, subject, key, not_before, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def make_leaf(
    issuer: KeyPair,
    common_name: str | None,
    *,
    server: bool = False,
    units: Sequence[str] = (),
    hosts: Sequence[str] = (),
    days: float = LEAF_DAYS,
    not_before: datetime.datetime | None = None,
) -> KeyPair:
    """A server (serverAuth, `hosts` as SANs) or client (clientAuth) certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        _builder(_name(common_name, units), issuer.cert.subject, key, not_before, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(host) for host in hosts]),
            critical=False,
        )
    return KeyPair(builder.sign(issuer.key, hashes.SHA256()), key)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _paths(directory: str, name: str) -> tuple[str, str]:
    return os.path.join(directory, f"{name}.pem"), os.path.join(
        directory, f"{name}.key"
    )


def _refuse_existing(directory: str, names: Sequence[str]) -> None:
    for name in names:
        for path in _paths(directory, name):
            if os.path.lexists(path):
                raise PKIError(f"{path} already exists; refusing to overwrite it")


def _write_new(path: str, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise PKIError(f"{path} already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _pem(pair: KeyPair) -> tuple[bytes, bytes]:
    """The certificate and the (unencrypted) key, as PEM."""
    key_pem = pair.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pair.cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_pair(directory: str, name: str, pair: KeyPair) -> None:
    """Write NAME.key (mode 0600) then NAME.pem; fail if either exists."""
    cert_path, key_path = _paths(directory, name)
    _refuse_existing(directory, [name])
    cert_pem, key_pem = _pem(pair)
    _write_new(key_path, key_pem, 0o600)
    _write_new(cert_path, cert_pem, 0o644)


def replace_pair(directory: str, name: str, pair: KeyPair) -> None:
    """Replace NAME.key then NAME.pem, each by an atomic rename."""
    cert_path, key_path = _paths(directory, name)
    cert_pem, key_pem = _pem(pair)
    for path, data, mode in ((key_path, key_pem, 0o600), (cert_path, cert_pem, 0o644)):
        staged = f"{path}.new"
        if os.path.lexists(staged):
            os.unlink(staged)  # left by an interrupted renew
        _write_new(staged, data, mode)
        os.replace(staged, path)


def load_pair(directory: str, name: str) -> KeyPair:
    """Read NAME.pem and NAME.key from `directory`."""
    cert_path, key_path = _paths(directory, name)
    try:
        with open(cert_path, "rb") as file:
            cert = x509.load_pem_x509_certificate(file.read())
        with open(key_path, "rb") as file:
            key = serialization.load_pem_private_key(file.read(), password=None)
    except (OSError, ValueError) as error:
        raise PKIError(f"cannot read the CA {name!r} in {directory}: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path} is not an ECDSA key")
    return KeyPair(cert, key)


def check_host(text: str) -> str:
    """A host for the server certificate: a DNS name or an IP address."""
    name = text.strip("[]") if text.startswith("[") else text
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        labels = name.rstrip(".").split(".")
        if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
            raise PKIError(
                f"invalid host {text!r}: give a DNS name or an IP address"
            ) from None
        return name.rstrip(".").lower()
    if address.is_unspecified:
        raise PKIError(
            f"invalid host {text!r}: name the address clients connect to,"
            " not a wildcard"
        )
    return str(address)


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
    _refuse_existing(directory, names)
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
    _refuse_existing(directory, [name])
    client_ca = load_pair(directory, "client-ca")
    write_pair(directory, name, make_leaf(client_ca, name, units=[role], days=days))


def _values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(attribute.value) for attribute in name.get_attributes_for_oid(oid)]


def _read_issued(
    directory: str, name: str, ca: KeyPair, ca_name: str
) -> x509.Certificate:
    """NAME.pem, which must have been issued by `ca`."""
    path = _paths(directory, name)[0]
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


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3650:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (0-3650]")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobworker-pki", description="Create and extend a development PKI."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    init_cmd = commands.add_parser(
        "init", help="create both CAs, a server certificate, alice, bob and carol"
    )
    init_cmd.add_argument("directory")
    init_cmd.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME",
        help="DNS name or IP address of the server (repeatable)"
        f" [default: {', '.join(SERVER_HOSTS)}]",
    )
    init_cmd.add_argument("--ca-days", type=_days, default=CA_DAYS)
    init_cmd.add_argument("--days", type=_days, default=LEAF_DAYS)
    issue_cmd = commands.add_parser("issue", help="issue one client certificate")
    issue_cmd.add_argument("directory")
    issue_cmd.add_argument("--name", required=True, help="identity (CN)")
    issue_cmd.add_argument("--role", required=True, choices=ROLES, help="role (OU)")
    issue_cmd.add_argument("--days", type=_days, default=LEAF_DAYS)
    renew_cmd = commands.add_parser(
        "renew",
        help="re-issue a certificate (new key) for the same identity and role,"
        " or for the server the same hosts",
    )
    renew_cmd.add_argument("directory")
    renew_cmd.add_argument("--name", required=True, help="server, or a client's CN")
    renew_cmd.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME",
        help="with --name server: new hosts, instead of the old ones (repeatable)",
    )
    renew_cmd.add_argument("--days", type=_days, default=LEAF_DAYS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `jobworker-pki` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            init(
                args.directory,
                hosts=args.hosts or SERVER_HOSTS,
                ca_days=args.ca_days,
                days=args.days,
            )
            print(f"created a development PKI in {args.directory}")
        elif args.command == "renew":
            pair = renew(args.directory, args.name, days=args.days, hosts=args.hosts)
            print(
                f"renewed {args.name} in {args.directory}, valid until"
                f" {pair.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        else:
            issue(args.directory, args.name, args.role, days=args.days)
            print(f"issued {args.name} ({args.role}) in {args.directory}")
    except (PKIError, OSError) as error:
        print(f"jobworker-pki: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
