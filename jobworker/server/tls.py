"""The server's TLS material, checked before grpcio ever sees it.

`load_server_tls` reads the certificate chain, key and client CA and checks
them with pyOpenSSL and service-identity, so a bad file is one clear
start-up error (`TLSConfigError`) rather than a grpcio bind failure or a
handshake that fails for every client. `configure_grpc_environment` sets the
grpc-core variables that must be in place before grpc is first imported.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import service_identity
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.logger import Logger

from jobworker.errors import JobWorkerError

log = Logger()

# TLS 1.2 suites, should a client get that far (it is refused at the first
# call): ECDHE key exchange, ECDSA certificates, AEAD ciphers only. grpcio's
# TLS 1.3 suites are BoringSSL's fixed AEAD set and not configurable.
CIPHER_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
    ":ECDHE-ECDSA-CHACHA20-POLY1305"
)
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # noqa: S104 - names to skip, not to bind


def configure_grpc_environment() -> None:
    """Set grpc-core's fork support off and the TLS 1.2 suites (before import).

    grpc reads these once, when it initialises; an explicit setting in the
    environment wins. grpc-core's own log is cut to errors: it writes past
    twisted.logger, and refused calls are logged by the API with the caller.
    """
    settings = {
        "GRPC_ENABLE_FORK_SUPPORT": "0",
        "GRPC_SSL_CIPHER_SUITES": CIPHER_SUITES,
        "GRPC_VERBOSITY": "ERROR",
    }
    late = "grpc" in sys.modules and any(name not in os.environ for name in settings)
    for name, value in settings.items():
        os.environ.setdefault(name, value)
    if late:
        log.warn(
            "grpc was imported before jobworker.server.api: grpc-core may ignore"
            " {names}; import jobworker.server.api (or jobworker.server.service) first",
            names=", ".join(settings),
        )


class TLSConfigError(JobWorkerError):
    """The server's certificate, key or client CA cannot be used."""


@dataclass(frozen=True)
class ServerTLS:
    """Checked TLS material, as PEM bytes ready for grpc."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes
    not_after: datetime.datetime


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise TLSConfigError(
            f"cannot read the {what} {path}: {error.strerror}"
        ) from None


def _certificates(data: bytes, path: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"the {what} {path} is not a PEM certificate") from None
    return certs


def _private_key(data: bytes, path: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(
            f"the server key {path} is encrypted; jobworker needs it unencrypted"
            " (and readable only by the server)"
        ) from None
    except ValueError:
        raise TLSConfigError(
            f"the server key {path} is not a PEM private key"
        ) from None


def _check_dates(cert: x509.Certificate, path: str, what: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_before_utc > now:
        raise TLSConfigError(
            f"the {what} {path} is not valid before {cert.not_valid_before_utc:%c} UTC"
        )
    if cert.not_valid_after_utc <= now:
        raise TLSConfigError(
            f"the {what} {path} expired on {cert.not_valid_after_utc:%c} UTC"
        )


def _check_key_matches(cert: x509.Certificate, key: PrivateKeyTypes, path: str) -> None:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        context.use_certificate(crypto.X509.from_cryptography(cert))
        context.use_privatekey(crypto.PKey.from_cryptography_key(key))  # type: ignore[arg-type]
        context.check_privatekey()
    except (SSL.Error, TypeError):
        raise TLSConfigError(
            f"the server key {path} does not match the server certificate"
        ) from None


def _check_usage(cert: x509.Certificate, path: str) -> None:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        raise TLSConfigError(
            f"the server certificate {path} is not for TLS servers"
            " (it lacks the serverAuth extended key usage)"
        )


def _check_chain(chain: Sequence[x509.Certificate], path: str) -> None:
    """Check that the leaf chains to the other certificates of its file."""
    if len(chain) < 2:
        return
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(chain[-1]))
    context = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(chain[0]),
        [crypto.X509.from_cryptography(cert) for cert in chain[1:-1]],
    )
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as error:
        raise TLSConfigError(
            f"the server certificate {path} does not chain to the CA certificates"
            f" after it in the file: {error}"
        ) from None


def _check_listen_name(cert: x509.Certificate, host: str, path: str) -> None:
    if host.strip("[]") in _WILDCARD_HOSTS:
        return
    name = host.strip("[]")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        is_address = False
    else:
        is_address = True
    try:
        if is_address:
            verify_certificate_ip_address(cert, name)
        else:
            verify_certificate_hostname(cert, name)
    except (service_identity.VerificationError, service_identity.CertificateError):
        raise TLSConfigError(
            f"the server certificate {path} is not valid for the listen address"
            f" {name!r}; clients connecting to it would refuse the server"
        ) from None


def _check_client_ca(certs: Sequence[x509.Certificate], path: str) -> None:
    for cert in certs:
        _check_dates(cert, path, "client CA")
        try:
            is_ca = cert.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise TLSConfigError(
                f"the client CA {path} holds a certificate that is not a CA"
                f" ({cert.subject.rfc4514_string()})"
            )


def load_server_tls(cert: str, key: str, client_ca: str, listen_host: str) -> ServerTLS:
    """Read and check the server's TLS files; `TLSConfigError` says what is wrong.

    Checks: each file parses; the key matches the certificate; the
    certificate is within its validity period, is for TLS servers (EKU
    serverAuth), chains to any CA certificates following it in its file,
    and is valid for `listen_host` (unless that is a wildcard address); the
    client CA file holds only valid CA certificates.
    """
    chain_pem = _read(cert, "server certificate")
    key_pem = _read(key, "server key")
    ca_pem = _read(client_ca, "client CA")
    chain = _certificates(chain_pem, cert, "server certificate")
    private_key = _private_key(key_pem, key)
    _check_key_matches(chain[0], private_key, key)
    _check_dates(chain[0], cert, "server certificate")
    _check_usage(chain[0], cert)
    _check_chain(chain, cert)
    _check_listen_name(chain[0], listen_host, cert)
    _check_client_ca(_certificates(ca_pem, client_ca, "client CA"), client_ca)
    return ServerTLS(
        cert_chain=chain_pem,
        private_key=key_pem,
        client_ca=ca_pem,
        not_after=chain[0].not_valid_after_utc,
    )
