"""Library errors become precise gRPC codes with readable messages."""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
from typing import Any

import grpc
from twisted.trial import unittest

from jobworker import errors
from jobworker.server.api.errors import ClientGone, Refused, status_for
from jobworker.server.service import JobWorkerServer, ListenFailed
from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from tests.apiutil import APITestCase, shell, stream_end


class StatusForTests(unittest.TestCase):
    """The mapping itself."""

    def test_each_library_error_has_its_code_and_message(self) -> None:
        cases = [
            (errors.InvalidRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT),
            (errors.JobNotFound("x"), grpc.StatusCode.NOT_FOUND),
            (errors.ExecutableNotFound("no"), grpc.StatusCode.FAILED_PRECONDITION),
            (errors.BadUser("who"), grpc.StatusCode.FAILED_PRECONDITION),
            (errors.TooManyJobs("many"), grpc.StatusCode.RESOURCE_EXHAUSTED),
            (errors.ShuttingDown("bye"), grpc.StatusCode.UNAVAILABLE),
            (
                Refused(grpc.StatusCode.UNAUTHENTICATED, "tls"),
                grpc.StatusCode.UNAUTHENTICATED,
            ),
            (ClientGone("gone"), grpc.StatusCode.CANCELLED),
        ]
        for error, code in cases:
            self.assertEqual(status_for(error, "M"), (code, str(error)))

    def test_unexpected_error_is_internal_with_a_reference_and_is_logged(
        self,
    ) -> None:
        try:
            raise KeyError("secret detail")
        except KeyError as error:
            code, message = status_for(error, "Start")
        self.assertEqual(code, grpc.StatusCode.INTERNAL)
        self.assertNotIn("secret", message)
        self.assertIn("reference", message)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class ServerErrorTests(APITestCase):
    """The same, through the real server."""

    async def assert_code(
        self, method: str, request: Any, code: grpc.StatusCode, fragment: str
    ) -> None:
        error = await self.error("alice", method, request)
        self.assertEqual(error.code(), code, error.details())
        self.assertIn(fragment, error.details())

    async def test_malformed_request_bytes_are_invalid_argument(self) -> None:
        error = await self.raw_error("alice", "Start", b"\xff\xff\xff\xff")
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("malformed StartRequest", error.details())

    async def test_empty_command_is_invalid_argument(self) -> None:
        await self.assert_code(
            "Start",
            pb.StartRequest(command=[]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty",
        )

    async def test_out_of_range_limit_is_invalid_argument(self) -> None:
        request = pb.StartRequest(command=[b"true"], limits=pb.Limits(cpu=-1))
        await self.assert_code(
            "Start", request, grpc.StatusCode.INVALID_ARGUMENT, "cpu"
        )

    async def test_missing_program_is_failed_precondition(self) -> None:
        request = pb.StartRequest(command=[b"no-such-program-here"])
        await self.assert_code(
            "Start", request, grpc.StatusCode.FAILED_PRECONDITION, "not found"
        )

    async def test_unknown_job_is_not_found(self) -> None:
        await self.assert_code(
            "Status", pb.StatusRequest(job_id="nope"), grpc.StatusCode.NOT_FOUND, "nope"
        )

    async def test_negative_grace_is_invalid_argument(self) -> None:
        job_id = await self.start_job("alice", shell("sleep 1000"))
        request = pb.StopRequest(job_id=job_id, grace_seconds=-1)
        await self.assert_code(
            "Stop", request, grpc.StatusCode.INVALID_ARGUMENT, "grace"
        )
        await self.call("alice", "Stop", pb.StopRequest(job_id=job_id, grace_seconds=0))

    async def test_offset_inside_a_record_is_invalid_argument(self) -> None:
        job_id = await self.start_job("alice", shell("echo hello"))
        await self.read_all("alice", job_id)

        call = self.follow("alice", job_id, offset=2)
        code, details = await self.in_thread(stream_end, call)
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("offset 2", details)

    async def test_server_bug_is_internal_without_traceback(self) -> None:
        def broken() -> list[Any]:
            raise ZeroDivisionError("internal detail")

        self.patch(self.manager.board, "all", broken)
        error = await self.error("alice", "List", pb.ListRequest())
        self.assertEqual(error.code(), grpc.StatusCode.INTERNAL)
        self.assertNotIn("Traceback", error.details())
        self.assertNotIn("internal detail", error.details())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_port_in_use_is_a_clear_start_up_error(self) -> None:
        second = JobWorkerServer(
            self.manager,
            listen=f"127.0.0.1:{self.server.port}",
            tls=self.server.tls,
        )
        error = self.assertRaises(ListenFailed, second.startService)
        self.assertIn(f"cannot listen on 127.0.0.1:{self.server.port}", str(error))
        self.assertFalse(second.running)

    async def test_server_listens_on_ipv6_loopback(self) -> None:
        server = JobWorkerServer(self.manager, listen="[::1]:0", tls=self.server.tls)
        server.startService()
        self.addCleanup(server.stopService)
        stub = pb_grpc.JobWorkerStub(self.channel("bob", f"[::1]:{server.port}"))
        response = await self.in_thread(stub.List, pb.ListRequest(), timeout=10)
        self.assertEqual(list(response.jobs), [])

    async def test_calls_after_shutdown_are_unavailable(self) -> None:
        stopping = self.stop_server()
        request = pb.StartRequest(command=[b"true"])
        error = await self.error("alice", "Start", request)
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        await stopping
