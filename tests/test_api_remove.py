"""The Remove RPC through the real server over mTLS: who may, what is left.

alice is admin; bob and carol are users.
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import hashlib
import uuid

import grpc

from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase, shell, stream_end

QUICK = shell("echo hello")
SIZE = 32 << 20  # more than grpc buffers between the two ends


class RemoveTests(APITestCase):
    async def ended_job(self, user: str, command: list[bytes] = QUICK) -> str:
        job_id = await self.start_job(user, command)
        await self.call(user, "Wait", pb.WaitRequest(job_id=job_id))
        return job_id

    async def remove(self, user: str, job_id: str) -> pb.JobStatus:
        response = await self.call(user, "Remove", pb.RemoveRequest(job_id=job_id))
        job: pb.JobStatus = response.job
        return job

    async def assert_gone(self, job_id: str) -> None:
        for user in ("alice", "bob"):
            error = await self.error(user, "Status", pb.StatusRequest(job_id=job_id))
            self.assertEqual(error.code(), grpc.StatusCode.NOT_FOUND)
        listed = await self.call("alice", "List", pb.ListRequest())
        self.assertNotIn(job_id, [job.id for job in listed.jobs])

    async def test_the_owner_removes_an_ended_job(self) -> None:
        job_id = await self.ended_job("bob")
        removed = await self.remove("bob", job_id)
        self.assertEqual((removed.id, removed.state), (job_id, pb.JOB_STATE_EXITED))
        await self.assert_gone(job_id)
        code, _ = await self.in_thread(stream_end, self.follow("bob", job_id))
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND)

    async def test_an_admin_removes_another_users_job(self) -> None:
        job_id = await self.ended_job("bob")
        removed = await self.remove("alice", job_id)
        self.assertEqual((removed.id, removed.owner), (job_id, "bob"))
        await self.assert_gone(job_id)

    async def test_another_user_gets_not_found_as_for_no_job(self) -> None:
        job_id = await self.ended_job("bob")
        error = await self.error("carol", "Remove", pb.RemoveRequest(job_id=job_id))
        missing = str(uuid.uuid4())
        unknown = await self.error("carol", "Remove", pb.RemoveRequest(job_id=missing))
        self.assertEqual(error.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(unknown.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(
            (unknown.details() or "").replace(missing, job_id), error.details()
        )
        status = await self.call("bob", "Status", pb.StatusRequest(job_id=job_id))
        self.assertEqual(status.job.id, job_id)

    async def test_a_running_job_is_failed_precondition(self) -> None:
        job_id = await self.start_job("bob", shell("sleep 1000"))
        error = await self.error("bob", "Remove", pb.RemoveRequest(job_id=job_id))
        self.assertEqual(error.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(
            error.details(),
            f"job {job_id} is running; only an ended job can be removed"
            " (stop it first)",
        )
        await self.call("bob", "Stop", pb.StopRequest(job_id=job_id, grace_seconds=0))
        await self.remove("bob", job_id)
        await self.assert_gone(job_id)

    async def test_an_id_prefix_names_the_job(self) -> None:
        job_id = await self.ended_job("bob")
        removed = await self.remove("bob", job_id[:8])
        self.assertEqual(removed.id, job_id)
        error = await self.error("bob", "Remove", pb.RemoveRequest(job_id=job_id[:8]))
        self.assertEqual(error.code(), grpc.StatusCode.NOT_FOUND)

    async def test_a_request_id_is_free_again_after_removal(self) -> None:
        request = pb.StartRequest(command=QUICK, request_id="nightly")
        first = (await self.call("bob", "Start", request)).job.id
        await self.call("bob", "Wait", pb.WaitRequest(job_id=first))
        await self.remove("bob", first)
        second = (await self.call("bob", "Start", request)).job.id
        self.assertNotEqual(second, first)

    async def test_a_stream_begun_before_the_removal_reads_to_the_end(self) -> None:
        job_id = await self.ended_job("bob", shell(f"head -c {SIZE} /dev/zero"))
        stream = self.follow("bob", job_id)
        first = await self.in_thread(next, stream)
        self.assertLess(len(first.data), SIZE)
        await self.remove("bob", job_id)
        rest = await self.in_thread(lambda: [chunk.data for chunk in stream])
        data = first.data + b"".join(rest)
        self.assertEqual(
            hashlib.sha256(data).digest(), hashlib.sha256(bytes(SIZE)).digest()
        )
        await self.assert_gone(job_id)
