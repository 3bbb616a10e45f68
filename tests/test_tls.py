"""`load_server_tls`: good material loads, each bad file is one clear error."""

from __future__ import annotations

import os

from twisted.trial import unittest

from jobworker.server import tls as tlsconfig
from jobworker.server.tls import TLSConfigError, load_server_tls
from tests import pkiutil


class LoadServerTLSTests(unittest.TestCase):
    def load(
        self,
        cert: str = "server.pem",
        key: str = "server.key",
        client_ca: str = "client-ca.pem",
        host: str = "127.0.0.1",
    ) -> tlsconfig.ServerTLS:
        return load_server_tls(
            self.path(cert), self.path(key), self.path(client_ca), host
        )

    def path(self, name: str) -> str:
        return name if os.path.isabs(name) else pkiutil.path(name)

    def refused(self, fragment: str, **files: str) -> None:
        error = self.assertRaises(TLSConfigError, self.load, **files)
        self.assertIn(fragment, str(error))
        self.assertEqual(len(str(error).splitlines()), 1)

    def write(self, *parts: bytes) -> str:
        path: str = os.path.abspath(self.mktemp())
        with open(path, "wb") as file:
            file.write(b"".join(parts))
        return path

    def test_good_material_loads_for_every_local_name(self) -> None:
        for host in ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"):
            tls = self.load(host=host)
            self.assertEqual(tls.cert_chain, pkiutil.read("server.pem"))
            self.assertEqual(tls.private_key, pkiutil.read("server.key"))
            self.assertEqual(tls.client_ca, pkiutil.read("client-ca.pem"))

    def test_missing_file_is_named(self) -> None:
        self.refused("cannot read the server key /nonexistent", key="/nonexistent")

    def test_certificate_that_is_not_pem_is_refused(self) -> None:
        self.refused("is not a PEM certificate", cert="server.key")

    def test_key_that_is_not_a_key_is_refused(self) -> None:
        self.refused("is not a PEM private key", key="server.pem")

    def test_encrypted_key_is_refused(self) -> None:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        key = serialization.load_pem_private_key(pkiutil.read("server.key"), None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.refused("is encrypted", key=self.write(encrypted))

    def test_key_of_another_certificate_is_refused(self) -> None:
        self.refused("does not match the server certificate", key="alice.key")

    def test_expired_certificate_is_refused(self) -> None:
        self.refused("expired on", cert="server-expired.pem", key="server-expired.key")

    def test_not_yet_valid_certificate_is_refused(self) -> None:
        self.refused(
            "is not valid before", cert="server-future.pem", key="server-future.key"
        )

    def test_client_certificate_as_server_is_refused(self) -> None:
        self.refused("lacks the serverAuth", cert="alice.pem", key="alice.key")
        self.refused(
            "lacks the serverAuth",
            cert="server-client-eku.pem",
            key="server-client-eku.key",
        )

    def test_certificate_for_another_name_is_refused(self) -> None:
        self.refused(
            "not valid for the listen address 'localhost'",
            cert="server-other-host.pem",
            key="server-other-host.key",
            host="localhost",
        )
        self.refused("not valid for the listen address '10.1.2.3'", host="10.1.2.3")

    def test_chain_in_the_certificate_file_must_lead_to_its_ca(self) -> None:
        good = self.write(pkiutil.read("server.pem"), pkiutil.read("server-ca.pem"))
        self.load(cert=good)
        bad = self.write(pkiutil.read("server.pem"), pkiutil.read("client-ca.pem"))
        self.refused("does not chain", cert=bad)

    def test_client_ca_must_be_a_valid_ca(self) -> None:
        self.refused("is not a CA", client_ca="leaf-as-ca.pem")
        self.refused("client CA", client_ca="expired-ca.pem")
        self.refused("is not a PEM certificate", client_ca="client-ca.key")


class GrpcEnvironmentTests(unittest.TestCase):
    def test_settings_are_defaults_that_the_environment_may_override(self) -> None:
        saved = dict(os.environ)
        self.addCleanup(os.environ.update, saved)
        self.addCleanup(os.environ.clear)
        os.environ.pop("GRPC_SSL_CIPHER_SUITES", None)
        os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "1"
        tlsconfig.configure_grpc_environment()
        self.assertEqual(os.environ["GRPC_SSL_CIPHER_SUITES"], tlsconfig.CIPHER_SUITES)
        self.assertEqual(os.environ["GRPC_ENABLE_FORK_SUPPORT"], "1")

    def test_suites_are_ecdhe_ecdsa_aead_only(self) -> None:
        for suite in tlsconfig.CIPHER_SUITES.split(":"):
            self.assertTrue(suite.startswith("ECDHE-ECDSA-"), suite)
            self.assertTrue(suite.endswith(("GCM-SHA256", "GCM-SHA384", "POLY1305")))
