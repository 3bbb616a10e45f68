"""The PKI directory: NAME.pem and NAME.key files, written safely.

`write_pair` never overwrites (O_EXCL, O_NOFOLLOW), keys are mode 0600;
`replace_pair` replaces each file by an atomic rename.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jobworker.pki.certs import KeyPair, PKIError


def paths(directory: str, name: str) -> tuple[str, str]:
    """NAME.pem and NAME.key in `directory`."""
    return os.path.join(directory, f"{name}.pem"), os.path.join(
        directory, f"{name}.key"
    )


def refuse_existing(directory: str, names: Sequence[str]) -> None:
    """Fail if any of the NAMES has a certificate or key in `directory`."""
    for name in names:
        for path in paths(directory, name):
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
    cert_path, key_path = paths(directory, name)
    refuse_existing(directory, [name])
    cert_pem, key_pem = _pem(pair)
    _write_new(key_path, key_pem, 0o600)
    _write_new(cert_path, cert_pem, 0o644)


def replace_pair(directory: str, name: str, pair: KeyPair) -> None:
    """Replace NAME.key then NAME.pem, each by an atomic rename."""
    cert_path, key_path = paths(directory, name)
    cert_pem, key_pem = _pem(pair)
    for path, data, mode in ((key_path, key_pem, 0o600), (cert_path, cert_pem, 0o644)):
        staged = f"{path}.new"
        if os.path.lexists(staged):
            os.unlink(staged)  # left by an interrupted renew
        _write_new(staged, data, mode)
        os.replace(staged, path)


def load_pair(directory: str, name: str) -> KeyPair:
    """Read NAME.pem and NAME.key from `directory`."""
    cert_path, key_path = paths(directory, name)
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
