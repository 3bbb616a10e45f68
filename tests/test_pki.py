"""The development PKI: what `jobworker-pki init` and `issue` write."""

from __future__ import annotations

import datetime
import io
import os
import stat
import subprocess
import sys
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.trial import unittest

from jobworker import pki
from jobworker.server.tls import ServerTLS, TLSConfigError, load_server_tls

DAY = datetime.timedelta(days=1)


def load(directory: str, name: str) -> x509.Certificate:
    with open(os.path.join(directory, f"{name}.pem"), "rb") as file:
        return x509.load_pem_x509_certificate(file.read())


def extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(kind)


def chains(directory: str, ca: str, name: str) -> bool:
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(load(directory, ca)))
    leaf = crypto.X509.from_cryptography(load(directory, name))
    try:
        crypto.X509StoreContext(store, leaf).verify_certificate()
    except crypto.X509StoreContextError:
        return False
    return True


def server_tls(directory: str, host: str) -> ServerTLS:
    """The server material in `directory`, checked as the server does for `host`."""
    return load_server_tls(
        os.path.join(directory, "server.pem"),
        os.path.join(directory, "server.key"),
        os.path.join(directory, "client-ca.pem"),
        host,
    )


class InitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.join(os.path.abspath(self.mktemp()), "certs")
        pki.init(self.dir)

    def test_keys_are_private_and_certificates_readable(self) -> None:
        for name in ("server-ca", "client-ca", "server", "alice", "bob", "carol"):
            key_mode = stat.S_IMODE(
                os.stat(os.path.join(self.dir, f"{name}.key")).st_mode
            )
            cert_mode = stat.S_IMODE(
                os.stat(os.path.join(self.dir, f"{name}.pem")).st_mode
            )
            self.assertEqual(key_mode, 0o600, name)
            self.assertEqual(cert_mode, 0o644, name)

    def test_every_key_is_ecdsa_p256_and_signature_sha256(self) -> None:
        for name in ("server-ca", "client-ca", "server", "alice"):
            cert = load(self.dir, name)
            key = cert.public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)
            self.assertIsInstance(key.curve, ec.SECP256R1)
            self.assertIsInstance(cert.signature_hash_algorithm, hashes.SHA256)

    def test_server_and_clients_have_separate_cas(self) -> None:
        self.assertTrue(chains(self.dir, "server-ca", "server"))
        self.assertFalse(chains(self.dir, "client-ca", "server"))
        for user in ("alice", "bob", "carol"):
            self.assertTrue(chains(self.dir, "client-ca", user))
            self.assertFalse(chains(self.dir, "server-ca", user))

    def test_cas_may_sign_only_leaves(self) -> None:
        for name in ("server-ca", "client-ca"):
            cert = load(self.dir, name)
            constraints = extension(cert, x509.BasicConstraints)
            self.assertTrue(constraints.critical)
            self.assertTrue(constraints.value.ca)
            self.assertEqual(constraints.value.path_length, 0)
            usage = extension(cert, x509.KeyUsage).value
            self.assertTrue(usage.key_cert_sign and usage.crl_sign)
            self.assertFalse(usage.digital_signature)

    def test_server_certificate_is_for_servers_on_the_local_names(self) -> None:
        cert = load(self.dir, "server")
        self.assertFalse(extension(cert, x509.BasicConstraints).value.ca)
        self.assertTrue(extension(cert, x509.KeyUsage).value.digital_signature)
        usages = list(extension(cert, x509.ExtendedKeyUsage).value)
        self.assertEqual(usages, [ExtendedKeyUsageOID.SERVER_AUTH])
        names = extension(cert, x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            [str(ip) for ip in names.get_values_for_type(x509.IPAddress)],
            ["127.0.0.1", "::1"],
        )

    def test_clients_carry_identity_in_cn_and_role_in_ou(self) -> None:
        for user, role in pki.DEV_USERS:
            cert = load(self.dir, user)
            subject = cert.subject
            self.assertEqual(
                [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)],
                [user],
            )
            self.assertEqual(
                [
                    a.value
                    for a in subject.get_attributes_for_oid(
                        NameOID.ORGANIZATIONAL_UNIT_NAME
                    )
                ],
                [role],
            )
            usages = list(extension(cert, x509.ExtendedKeyUsage).value)
            self.assertEqual(usages, [ExtendedKeyUsageOID.CLIENT_AUTH])

    def test_lifetimes_are_short(self) -> None:
        for name, days in (("server-ca", 365), ("client-ca", 365), ("alice", 30)):
            cert = load(self.dir, name)
            lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
            self.assertEqual(lifetime, days * DAY, name)

    def test_init_refuses_to_overwrite_anything(self) -> None:
        before = {
            n: os.stat(os.path.join(self.dir, n)).st_mtime_ns
            for n in os.listdir(self.dir)
        }
        self.assertRaises(pki.PKIError, pki.init, self.dir)
        after = {
            n: os.stat(os.path.join(self.dir, n)).st_mtime_ns
            for n in os.listdir(self.dir)
        }
        self.assertEqual(before, after)


class IssueTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        pki.init(self.dir, days=7)
        self.patch(sys, "stdout", io.StringIO())
        self.patch(sys, "stderr", io.StringIO())

    def test_issue_adds_a_client_with_its_role(self) -> None:
        self.assertEqual(
            pki.main(
                ["issue", self.dir, "--name", "dan", "--role", "admin", "--days", "2"]
            ),
            0,
        )
        cert = load(self.dir, "dan")
        self.assertTrue(chains(self.dir, "client-ca", "dan"))
        units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        self.assertEqual([a.value for a in units], ["admin"])
        self.assertEqual(cert.not_valid_after_utc - cert.not_valid_before_utc, 2 * DAY)

    def test_issue_refuses_an_existing_name(self) -> None:
        self.assertEqual(
            pki.main(["issue", self.dir, "--name", "bob", "--role", "admin"]), 1
        )
        units = load(self.dir, "bob").subject.get_attributes_for_oid(
            NameOID.ORGANIZATIONAL_UNIT_NAME
        )
        self.assertEqual([a.value for a in units], ["user"])

    def test_issue_refuses_reserved_and_odd_names(self) -> None:
        for name in ("server", "client-ca", "../x", "a b", "", "-x"):
            self.assertRaises(pki.PKIError, pki.issue, self.dir, name, "user")

    def test_issue_refuses_an_unknown_role(self) -> None:
        self.assertRaises(pki.PKIError, pki.issue, self.dir, "eve", "root")
        self.assertRaises(
            SystemExit, pki.main, ["issue", self.dir, "--name", "eve", "--role", "root"]
        )

    def test_issue_without_a_ca_says_so(self) -> None:
        empty = os.path.abspath(self.mktemp())
        os.mkdir(empty)
        error = self.assertRaises(pki.PKIError, pki.issue, empty, "eve", "user")
        self.assertIn("client-ca", str(error))

    def test_console_script_creates_a_pki(self) -> None:
        script = os.path.join(os.path.dirname(sys.executable), "jobworker-pki")
        target = os.path.abspath(self.mktemp())
        result = subprocess.run(
            [script, "init", target], capture_output=True, check=False
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(chains(target, "server-ca", "server"))
        again = subprocess.run(
            [script, "init", target], capture_output=True, check=False
        )
        self.assertEqual(again.returncode, 1)
        self.assertIn(b"refusing to overwrite", again.stderr)


class HostTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.out, self.err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def san(self, name: str = "server") -> tuple[list[str], list[str]]:
        names = extension(load(self.dir, name), x509.SubjectAlternativeName).value
        return (
            names.get_values_for_type(x509.DNSName),
            [str(ip) for ip in names.get_values_for_type(x509.IPAddress)],
        )

    def test_init_with_hosts_names_exactly_those_dns_names_and_addresses(self) -> None:
        argv = ["init", self.dir, "--host", "Node1.example.com", "--host", "10.1.2.3"]
        self.assertEqual(pki.main([*argv, "--host", "[fd00::7]"]), 0)
        self.assertEqual(self.san(), (["node1.example.com"], ["10.1.2.3", "fd00::7"]))
        self.assertTrue(chains(self.dir, "server-ca", "server"))
        cn = load(self.dir, "server").subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
        self.assertEqual([a.value for a in cn], ["node1.example.com"])

    def test_a_server_on_a_real_address_starts_with_its_certificate(self) -> None:
        pki.init(self.dir, hosts=["10.1.2.3", "node1.example.com"])
        for host in ("10.1.2.3", "node1.example.com"):
            server_tls(self.dir, host)
        self.assertRaises(TLSConfigError, server_tls, self.dir, "127.0.0.1")

    def test_bad_hosts_are_refused_before_anything_is_written(self) -> None:
        for host in ("", "0.0.0.0", "::", "a b", "*.example.com", "-x.com", "x" * 64):
            error = self.assertRaises(pki.PKIError, pki.init, self.dir, hosts=[host])
            self.assertIn("invalid host", str(error))
            self.assertFalse(os.path.exists(self.dir))
        self.assertEqual(pki.main(["init", self.dir, "--host", "a b"]), 1)
        self.assertIn("invalid host 'a b'", self.err.getvalue())


class RenewTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        pki.init(self.dir, hosts=["node1.example.com", "10.1.2.3"], days=7)
        self.out, self.err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def subject(self, name: str) -> list[tuple[str, str]]:
        return [
            (a.oid.dotted_string, str(a.value)) for a in load(self.dir, name).subject
        ]

    def public_key(self, name: str) -> bytes:
        return (
            load(self.dir, name)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        )

    def test_renew_reissues_a_client_with_the_same_identity_and_role(self) -> None:
        old = load(self.dir, "bob")
        old_subject, old_key = self.subject("bob"), self.public_key("bob")
        self.assertEqual(
            pki.main(["renew", self.dir, "--name", "bob", "--days", "20"]), 0
        )
        self.assertIn("renewed bob", self.out.getvalue())
        new = load(self.dir, "bob")
        self.assertEqual(self.subject("bob"), old_subject)
        self.assertNotEqual(new.serial_number, old.serial_number)
        self.assertNotEqual(self.public_key("bob"), old_key)
        self.assertEqual(new.not_valid_after_utc - new.not_valid_before_utc, 20 * DAY)
        self.assertTrue(chains(self.dir, "client-ca", "bob"))
        key_path = os.path.join(self.dir, "bob.key")
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        self.assertFalse(any(n.endswith(".new") for n in os.listdir(self.dir)))
        # The new key belongs to the new certificate.
        with open(key_path, "rb") as file:
            key = serialization.load_pem_private_key(file.read(), None)
        self.assertEqual(
            key.public_key().public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            ),
            self.public_key("bob"),
        )

    def test_renew_server_keeps_its_hosts_unless_given_new_ones(self) -> None:
        self.assertEqual(pki.main(["renew", self.dir, "--name", "server"]), 0)
        names = extension(load(self.dir, "server"), x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["node1.example.com"])
        self.assertTrue(chains(self.dir, "server-ca", "server"))
        server_tls(self.dir, "10.1.2.3")
        argv = ["renew", self.dir, "--name", "server", "--host", "10.9.9.9"]
        self.assertEqual(pki.main(argv), 0)
        names = extension(load(self.dir, "server"), x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), [])
        self.assertEqual(
            [str(ip) for ip in names.get_values_for_type(x509.IPAddress)], ["10.9.9.9"]
        )

    def test_renew_refuses_what_it_cannot_reissue_as_it_was(self) -> None:
        other = pki.make_ca("another CA")
        pki.write_pair(
            self.dir, "alien", pki.make_leaf(other, "alien", units=["admin"])
        )
        client_ca = pki.load_pair(self.dir, "client-ca")
        pki.write_pair(self.dir, "noou", pki.make_leaf(client_ca, "noou"))
        cases = {
            "client-ca": "is a CA",
            "server-ca": "is a CA",
            "eve": "there is no",
            "alien": "was not issued by client-ca",
            "noou": "no single identity and role",
            "../bob": "invalid name",
        }
        for name, fragment in cases.items():
            before = os.listdir(self.dir), self.subject("bob")
            error = self.assertRaises(pki.PKIError, pki.renew, self.dir, name)
            self.assertIn(fragment, str(error))
            self.assertEqual((os.listdir(self.dir), self.subject("bob")), before)
        error = self.assertRaises(
            pki.PKIError, pki.renew, self.dir, "bob", hosts=["x.example.com"]
        )
        self.assertIn("server certificate only", str(error))
        self.assertEqual(pki.main(["renew", self.dir, "--name", "eve"]), 1)
        self.assertIn("jobworker-pki: there is no", self.err.getvalue())
