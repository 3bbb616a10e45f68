"""SIGHUP certificate reload on a real mutual-TLS server, with a follower open."""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import functools
import os
import shutil
import signal
import socket
import ssl
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial import unittest

from jobworker import pki
from jobworker.server.reload import CertificateReload, ReloadableCredentials
from jobworker.server.tls import ServerTLS, load_server_tls
from jobworker.v1 import jobworker_pb2 as pb
from tests import pkiutil
from tests.apiutil import APITestCase, shell, stream_end

FILES = ("server.pem", "server.key", "client-ca.pem")


def presented_certificate(port: int) -> bytes:
    """The DER certificate the server shows a new connection (as alice)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(pkiutil.path("alice.pem"), pkiutil.path("alice.key"))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(pem_path: str) -> bytes:
    with open(pem_path, "rb") as file:
        cert = x509.load_pem_x509_certificate(file.read())
    return cert.public_bytes(serialization.Encoding.DER)


class SighupReloadTests(APITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.files = os.path.abspath(self.mktemp())
        os.mkdir(self.files)
        for name in FILES:
            shutil.copy(pkiutil.path(name), self.file(name))
        self.reloader = CertificateReload(
            self.server.credentials,
            functools.partial(
                load_server_tls,
                self.file("server.pem"),
                self.file("server.key"),
                self.file("client-ca.pem"),
                "127.0.0.1",
            ),
        )
        self.reloader.startService()
        self.addCleanup(self.reloader.stopService)
        self.errors: list[dict[str, Any]] = []

        def collect(event: dict[str, Any]) -> None:
            if (
                event.get("log_namespace") == "jobworker.server.reload"
                and event.get("log_level") == LogLevel.error
            ):
                self.errors.append(event)

        observe = cast(ILogObserver, collect)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def file(self, name: str) -> str:
        return os.path.join(self.files, name)

    def new_server_certificate(self) -> str:
        """Put a fresh server certificate and key in place; its .pem path."""
        staging = os.path.abspath(self.mktemp())
        os.mkdir(staging)
        server_ca = pki.load_pair(pkiutil.pki_dir(), "server-ca")
        leaf = pki.make_leaf(
            server_ca, "localhost", server=True, hosts=pki.SERVER_HOSTS
        )
        pki.write_pair(staging, "server", leaf)
        for name in ("server.key", "server.pem"):
            os.replace(os.path.join(staging, name), self.file(name))
        return self.file("server.pem")

    async def sighup(self) -> None:
        """Send this process SIGHUP and let the reactor run the reload."""
        before = len(self.errors), self.server.credentials.current
        os.kill(os.getpid(), signal.SIGHUP)
        await self.eventually(
            lambda: (len(self.errors), self.server.credentials.current) != before,
            "the reload ran",
        )

    async def test_new_connections_get_the_new_certificate_while_a_follower_streams(
        self,
    ) -> None:
        flag = os.path.abspath(self.mktemp())
        os.chmod(os.path.dirname(flag), 0o755)  # the job user must see it
        job_id = await self.start_job(
            "alice",
            shell(
                f"echo before; while [ ! -e {flag} ]; do sleep 0.05; done; echo after"
            ),
        )
        follower = self.follow("alice", job_id)
        first = await self.in_thread(next, follower)
        self.assertEqual(first.data, b"before\n")
        old = await self.in_thread(presented_certificate, self.server.port)
        self.assertEqual(old, der(pkiutil.path("server.pem")))

        new_pem = self.new_server_certificate()
        await self.sighup()
        self.assertEqual(self.errors, [])
        presented = await self.in_thread(presented_certificate, self.server.port)
        self.assertEqual(presented, der(new_pem))
        self.assertNotEqual(presented, old)
        status = await self.call("alice", "Status", pb.StatusRequest(job_id=job_id))
        self.assertEqual(status.job.state, pb.JOB_STATE_RUNNING)

        open(flag, "w").close()
        rest = await self.in_thread(lambda: [chunk.data for chunk in follower])
        self.assertEqual(b"".join(rest), b"after\n")
        self.assertEqual(
            await self.in_thread(stream_end, follower), (grpc.StatusCode.OK, "")
        )
        await self.eventually(
            lambda: self.manager.status(job_id).state.ended, "the job has ended"
        )
        self.assertEqual(self.manager.status(job_id).exit_code, 0)

    async def test_a_bad_certificate_is_refused_with_one_line_and_the_old_stays(
        self,
    ) -> None:
        shutil.copy(pkiutil.path("server-expired.pem"), self.file("server.pem"))
        shutil.copy(pkiutil.path("server-expired.key"), self.file("server.key"))
        await self.sighup()
        self.assertEqual(len(self.errors), 1)
        message = self.errors[0]["reason"]
        self.assertIn("expired on", message)
        self.assertEqual(len(message.splitlines()), 1)
        presented = await self.in_thread(presented_certificate, self.server.port)
        self.assertEqual(presented, der(pkiutil.path("server.pem")))
        job_id = await self.start_job("alice", shell("true"))
        self.assertTrue(job_id)

    async def test_a_key_that_does_not_match_is_refused(self) -> None:
        shutil.copy(pkiutil.path("alice.key"), self.file("server.key"))
        await self.sighup()
        self.assertEqual(len(self.errors), 1)
        self.assertIn("does not match", self.errors[0]["reason"])
        self.assertEqual(
            self.server.credentials.current.private_key, pkiutil.read("server.key")
        )

    async def test_a_new_client_ca_decides_who_may_connect(self) -> None:
        shutil.copy(pkiutil.path("other-ca.pem"), self.file("client-ca.pem"))
        await self.sighup()
        self.assertEqual(self.errors, [])
        # "alien" is alice signed by the other CA: now accepted, alice refused.
        listing = await self.call("alien", "List", pb.ListRequest())
        self.assertEqual(list(listing.jobs), [])
        error = await self.error("alice", "List", pb.ListRequest())
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)


class ReloadableCredentialsTests(unittest.TestCase):
    def server_tls(self) -> ServerTLS:
        return load_server_tls(
            pkiutil.path("server.pem"),
            pkiutil.path("server.key"),
            pkiutil.path("client-ca.pem"),
            "127.0.0.1",
        )

    def test_grpc_is_handed_new_material_once_then_nothing(self) -> None:
        tls = self.server_tls()
        credentials = ReloadableCredentials(tls)
        self.assertIsNone(credentials._fetch())
        credentials.replace(tls)
        self.assertIsNotNone(credentials._fetch())
        self.assertIsNone(credentials._fetch())
