"""Start takes the command as UTF-8 text too: what grpcurl's JSON can say."""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import grpc
from google.protobuf import json_format

from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase


class CommandTextTests(APITestCase):
    async def test_a_json_command_text_runs_as_given(self) -> None:
        # What `grpcurl -d '{"command_text": ["echo", "hi"]}' ... Start` sends.
        request = json_format.Parse(
            '{"command_text": ["echo", "h\\u00e9"]}', pb.StartRequest()
        )
        response = await self.call("alice", "Start", request)
        self.assertEqual(list(response.job.command), [b"echo", "hé".encode()])
        ended = await self.call("alice", "Wait", pb.WaitRequest(job_id=response.job.id))
        self.assertEqual(ended.job.exit_code, 0)
        chunks = await self.read_all("alice", response.job.id)
        self.assertEqual(b"".join(chunk[3] for chunk in chunks), "hé\n".encode())

    async def test_command_and_command_text_together_are_invalid(self) -> None:
        request = pb.StartRequest(command=[b"true"], command_text=["true"])
        error = await self.error("alice", "Start", request)
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("not both", error.details())

    async def test_command_text_that_is_not_utf8_is_invalid(self) -> None:
        # Field 3 (command_text), length 2: b"\xff\xfe" is no UTF-8.
        error = await self.raw_error("alice", "Start", b"\x1a\x02\xff\xfe")
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("malformed StartRequest", error.details())
