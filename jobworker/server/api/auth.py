"""Who is calling: TLS 1.3 and a client certificate with one CN and one role.

grpcio has already verified the certificate chain (client CA, validity,
clientAuth purpose) at the handshake. What it cannot do is refuse TLS 1.2
there, or know our naming rules; `authenticate` does both, and the server's
one interceptor (`jobworker.server.api.gate`) runs it before every handler of every
service: below TLS 1.3 is UNAUTHENTICATED, a certificate without exactly one
CN and exactly one known role (OU) is PERMISSION_DENIED. The interceptor
hands the `Caller` it found to the handler in an `AuthenticatedContext`,
so a call is authenticated once; `caller_of` reads it there.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jobworker.model import JobStatus
from jobworker.server.api.errors import Refused
from jobworker.untrusted import shown

TLS_VERSION = b"TLSv1.3"


class Role(enum.Enum):
    """What a caller may do: `admin` sees every job, `user` only its own."""

    ADMIN = "admin"
    USER = "user"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its identity (CN) and role (OU)."""

    identity: str
    role: Role

    def may_see(self, job: JobStatus) -> bool:
        """Whether this caller may see, stop and follow `job`."""
        return self.role is Role.ADMIN or job.owner == self.identity


def _denied(reason: str) -> Refused:
    return Refused(grpc.StatusCode.PERMISSION_DENIED, f"client certificate {reason}")


@functools.lru_cache(maxsize=256)
def _parse(pem: bytes) -> Caller | Refused:
    """The caller named by a (verified) client certificate, or why not."""
    cert = x509.load_pem_x509_certificate(pem)
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    units = [
        a.value
        for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    ]
    try:
        usages = list(
            cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        usages = []
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return _denied("is not for TLS clients (no clientAuth extended key usage)")
    if len(names) != 1 or not isinstance(names[0], str) or not names[0]:
        return _denied("must have exactly one non-empty common name (CN)")
    roles = ", ".join(role.value for role in Role)
    if len(units) != 1:
        return _denied(f"must have exactly one role (OU), one of {roles}")
    try:
        role = Role(units[0])
    except ValueError:
        return _denied(
            f"has an unknown role (OU) '{shown(str(units[0]))}'; use one of {roles}"
        )
    return Caller(identity=names[0], role=role)


def authenticate(context: grpc.ServicerContext) -> Caller:
    """The caller of this call; raises `Refused` if it may not call at all."""
    # grpc-stubs says Mapping[str, bytes]; grpcio gives a list of values.
    auth = cast(Mapping[str, Sequence[bytes]], context.auth_context())
    versions = list(auth.get("ssl_tls_version", ()))
    if versions != [TLS_VERSION]:
        used = b", ".join(versions).decode("ascii", "replace") or "no TLS"
        raise Refused(
            grpc.StatusCode.UNAUTHENTICATED,
            f"TLS 1.3 is required; this connection uses {used}",
        )
    pems = list(auth.get("x509_pem_cert", ()))
    if len(pems) != 1:
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
    verdict = _parse(pems[0])
    if isinstance(verdict, Refused):
        raise verdict
    return verdict


class AuthenticatedContext:
    """A call's grpc context, carrying the `Caller` the interceptor found.

    Everything else is the wrapped context's (abort, add_callback, ...).
    """

    def __init__(self, context: grpc.ServicerContext, caller: Caller) -> None:
        self.context = context
        self.caller = caller

    def __getattr__(self, name: str) -> Any:
        return getattr(self.context, name)


def caller_of(context: grpc.ServicerContext) -> Caller:
    """The caller of this call: the interceptor's finding, else `authenticate`."""
    if isinstance(context, AuthenticatedContext):
        return context.caller
    return authenticate(context)
