"""Authentication of the real server over real mutual TLS on 127.0.0.1.

Each refusal is asserted where it happens: at the TLS handshake (the server
never answers our HTTP/2 preface) or at the call (a gRPC status code).
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from OpenSSL import SSL

from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from tests import tlsprobe
from tests.apiutil import APITestCase, reactor


class HandshakeTests(APITestCase):
    """What the TLS handshake lets through."""

    async def handshake(self, cert: str | None, **options: Any) -> tlsprobe.Outcome:
        return await self.in_thread(
            tlsprobe.handshake, self.server.port, cert, **options
        )

    async def test_valid_client_certificate_is_accepted_over_tls_1_3(self) -> None:
        outcome = await self.handshake("alice")
        self.assertTrue(outcome.accepted, outcome)
        self.assertEqual(outcome.version, "TLSv1.3")

    async def assert_refused(self, cert: str | None, **options: Any) -> None:
        outcome = await self.handshake(cert, **options)
        self.assertFalse(outcome.accepted, outcome)
        self.assertIsNotNone(outcome.error)

    async def test_no_client_certificate_is_refused_at_handshake(self) -> None:
        await self.assert_refused(None)

    async def test_certificate_from_another_ca_is_refused_at_handshake(self) -> None:
        await self.assert_refused("alien")

    async def test_expired_certificate_is_refused_at_handshake(self) -> None:
        await self.assert_refused("expired")

    async def test_not_yet_valid_certificate_is_refused_at_handshake(self) -> None:
        await self.assert_refused("future")

    async def test_server_certificate_as_client_is_refused_at_handshake(self) -> None:
        await self.assert_refused("server")

    async def test_server_auth_certificate_of_client_ca_is_refused_at_handshake(
        self,
    ) -> None:
        await self.assert_refused("serverish")

    async def test_tls_1_1_is_refused_at_handshake(self) -> None:
        await self.assert_refused(
            "alice",
            min_version=SSL.TLS1_VERSION,
            max_version=SSL.TLS1_1_VERSION,
            ciphers=b"DEFAULT:@SECLEVEL=0",
        )

    async def test_tls_1_2_without_ecdhe_ecdsa_aead_suite_is_refused_at_handshake(
        self,
    ) -> None:
        for suite in (b"ECDHE-ECDSA-AES128-SHA256", b"ECDHE-ECDSA-AES256-SHA"):
            await self.assert_refused(
                "alice", max_version=SSL.TLS1_2_VERSION, ciphers=suite
            )

    async def test_tls_1_2_handshake_passes_with_an_ecdhe_ecdsa_aead_suite(
        self,
    ) -> None:
        """grpcio cannot refuse TLS 1.2 at the handshake (the call does)."""
        outcome = await self.handshake("alice", max_version=SSL.TLS1_2_VERSION)
        self.assertTrue(outcome.accepted, outcome)
        self.assertEqual(outcome.version, "TLSv1.2")
        self.assertIn(
            outcome.cipher,
            (
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
            ),
        )

    async def test_tls_1_2_suites_are_jobworkers_not_grpcs_defaults(self) -> None:
        """ChaCha20 is in our list only: seeing it proves the setting took."""
        outcome = await self.handshake(
            "alice",
            max_version=SSL.TLS1_2_VERSION,
            ciphers=b"ECDHE-ECDSA-CHACHA20-POLY1305",
        )
        self.assertTrue(outcome.accepted, outcome)
        self.assertEqual(outcome.cipher, "ECDHE-ECDSA-CHACHA20-POLY1305")

    async def test_plaintext_is_refused_at_handshake(self) -> None:
        answer = await self.in_thread(tlsprobe.plaintext_answer, self.server.port)
        self.assertEqual(answer, b"", "the server answered plaintext HTTP/2")
        channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.channels.append(channel)
        call = pb_grpc.JobWorkerStub(channel).List
        try:
            await self.in_thread(call, pb.ListRequest(), timeout=5)
        except grpc.RpcError as error:
            self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        else:
            self.fail("a plaintext call succeeded")


class CallTests(APITestCase):
    """What the interceptor refuses once a connection is up."""

    def relay_channel(self, max_version: Any) -> grpc.Channel:
        port = tlsprobe.tls_relay(reactor, self.server.port, "alice", max_version)
        self.addCleanup(port.stopListening)
        channel = grpc.insecure_channel(f"127.0.0.1:{port.getHost().port}")
        self.channels.append(channel)
        return channel

    async def relay_call(self, max_version: Any) -> Any:
        channel = self.relay_channel(max_version)
        return await self.in_thread(
            pb_grpc.JobWorkerStub(channel).List, pb.ListRequest(), timeout=10
        )

    async def test_call_over_tls_1_3_through_the_relay_succeeds(self) -> None:
        """The control for the TLS 1.2 test: the relay itself works."""
        response = await self.relay_call(tlsprobe.TLS_1_3)
        self.assertEqual(list(response.jobs), [])

    async def test_call_over_tls_1_2_is_unauthenticated(self) -> None:
        try:
            await self.relay_call(tlsprobe.TLS_1_2)
        except grpc.RpcError as error:
            self.assertEqual(error.code(), grpc.StatusCode.UNAUTHENTICATED)
            self.assertIn("TLS 1.3 is required", error.details())
            self.assertIn("TLSv1.2", error.details())
        else:
            self.fail("a call over TLS 1.2 succeeded")

    async def test_health_check_over_tls_1_2_is_unauthenticated(self) -> None:
        check = health_pb2_grpc.HealthStub(self.relay_channel(tlsprobe.TLS_1_2)).Check
        try:
            await self.in_thread(check, health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as error:
            self.assertEqual(error.code(), grpc.StatusCode.UNAUTHENTICATED)
        else:
            self.fail("a health check over TLS 1.2 succeeded")

    async def assert_denied(self, user: str, fragment: str) -> None:
        error = await self.error(user, "List", pb.ListRequest())
        self.assertEqual(error.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn(fragment, error.details())
        # Every service, health included, is behind the same check.
        check = health_pb2_grpc.HealthStub(self.channel(user)).Check
        try:
            await self.in_thread(check, health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as health_error:
            self.assertEqual(health_error.code(), grpc.StatusCode.PERMISSION_DENIED)
        else:
            self.fail(f"health check as {user} succeeded")

    async def test_certificate_without_role_is_permission_denied(self) -> None:
        await self.assert_denied("noou", "exactly one role")

    async def test_certificate_with_two_roles_is_permission_denied(self) -> None:
        await self.assert_denied("twoous", "exactly one role")

    async def test_certificate_with_unknown_role_is_permission_denied(self) -> None:
        await self.assert_denied("badrole", "unknown role (OU) 'root'")

    async def test_certificate_without_common_name_is_permission_denied(self) -> None:
        await self.assert_denied("nocn", "common name")

    async def test_each_call_is_authenticated_once(self) -> None:
        from jobworker.server.api import auth, gate  # noqa: PLC0415

        seen: list[str] = []
        real = auth.authenticate

        def counted(context: grpc.ServicerContext) -> auth.Caller:
            caller = real(context)
            seen.append(caller.identity)
            return caller

        self.patch(gate, "authenticate", counted)
        self.patch(auth, "authenticate", counted)
        job_id = await self.start_job("alice", [b"true"])
        await self.call("alice", "Status", pb.StatusRequest(job_id=job_id))
        await self.call("alice", "List", pb.ListRequest())
        error = await self.error("bob", "Status", pb.StatusRequest(job_id=job_id))
        self.assertEqual(error.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(seen, ["alice", "alice", "alice", "bob"])

    async def test_health_service_answers_an_authenticated_caller(self) -> None:
        check = health_pb2_grpc.HealthStub(self.channel("bob")).Check
        request = health_pb2.HealthCheckRequest(service="jobworker.v1.JobWorker")
        response = await self.in_thread(check, request, timeout=10)
        self.assertEqual(response.status, health_pb2.HealthCheckResponse.SERVING)

    async def test_reflection_lists_the_services(self) -> None:
        from grpc_reflection.v1alpha import (  # noqa: PLC0415
            reflection_pb2,
            reflection_pb2_grpc,
        )

        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel("bob"))
        request = reflection_pb2.ServerReflectionRequest(list_services="")

        def ask() -> list[str]:
            replies = stub.ServerReflectionInfo(iter([request]), timeout=10)
            reply = next(iter(replies))
            return [s.name for s in reply.list_services_response.service]

        names = await self.in_thread(ask)
        self.assertIn("jobworker.v1.JobWorker", names)
        self.assertIn("grpc.health.v1.Health", names)


class NegotiationTests(APITestCase):
    """What a grpc client and the server really negotiate, read off the wire."""

    async def test_grpc_client_negotiates_tls_1_3_with_an_aead_suite(self) -> None:
        port, relay = tlsprobe.sniffing_relay(reactor, self.server.port)
        self.addCleanup(port.stopListening)
        address = f"localhost:{port.getHost().port}"
        stub = pb_grpc.JobWorkerStub(self.channel("alice", address))
        await self.in_thread(stub.List, pb.ListRequest(), timeout=10)
        hello = tlsprobe.parse_server_hello(relay.from_server)
        self.assertEqual(hello.version, 0x0304)
        self.assertIn(hello.cipher, tlsprobe.CIPHERS.values())
        self.assertIn(hello.group, tlsprobe.GROUPS.values())
        # Recorded for the RFD (see the test log).
        print(f"negotiated: TLS 1.3, {hello.cipher}, key exchange {hello.group}")
