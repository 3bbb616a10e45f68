"""Certificates for jobworker's PKI: the two CAs and their leaves.

ECDSA P-256 keys, SHA-256 signatures, short lifetimes, a few minutes of
back-dating for clock skew. A client certificate's CN is the caller's
identity and its OU the role; a server certificate names its hosts as SANs.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 365
LEAF_DAYS = 30
ROLES = ("admin", "user")
SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")
DEV_USERS = (("alice", "admin"), ("bob", "user"), ("carol", "user"))
_CLOCK_SKEW = datetime.timedelta(minutes=5)
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
