"""StreamOutput from the log's end, since a time, with times, without following."""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import os
import time
from typing import Any

import grpc

from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase, shell


class TailAPITests(APITestCase):
    async def ended_job(self, script: str) -> str:
        job_id = await self.start_job("alice", shell(script))
        await self.call("alice", "Wait", pb.WaitRequest(job_id=job_id))
        return job_id

    def flag_path(self) -> str:
        """A path the job polls for; the test creates it."""
        flag: str = os.path.abspath(self.mktemp())
        os.chmod(os.path.dirname(flag), 0o755)  # the job user must see it
        return flag

    async def chunks(self, **fields: Any) -> list[pb.OutputChunk]:
        request = pb.StreamOutputRequest(**fields)

        def collect() -> list[pb.OutputChunk]:
            return list(self.stub("alice").StreamOutput(request, timeout=60))

        return await self.in_thread(collect)

    async def test_tail_sends_only_the_last_lines(self) -> None:
        job_id = await self.ended_job("seq 1 200000; echo last >&2")
        chunks = await self.chunks(job_id=job_id, tail_lines=3)
        self.assertEqual(b"".join(c.data for c in chunks), b"199999\n200000\nlast\n")
        self.assertEqual(
            [c.stream for c in chunks], [pb.STREAM_STDOUT, pb.STREAM_STDERR]
        )
        # Resuming from the last chunk's next_offset: nothing more.
        rest = await self.chunks(job_id=job_id, offset=chunks[-1].next_offset)
        self.assertEqual(rest, [])

    async def test_tail_of_a_running_job_then_follows_it(self) -> None:
        flag = self.flag_path()
        script = f"echo a; echo b; while [ ! -e {flag} ]; do sleep 0.05; done; echo c"
        job_id = await self.start_job("alice", shell(script))
        await self.eventually(
            lambda: self.manager.status(job_id).output_bytes >= 4, "two lines"
        )
        call = self.stub("alice").StreamOutput(
            pb.StreamOutputRequest(job_id=job_id, tail_lines=1), timeout=60
        )
        first = await self.in_thread(lambda: next(iter(call)))
        self.assertEqual(first.data, b"b\n")
        open(flag, "w").close()
        rest = await self.in_thread(lambda: [c.data for c in call])
        self.assertEqual(b"".join(rest), b"c\n")

    async def test_chunks_carry_times_within_the_jobs_life(self) -> None:
        job_id = await self.ended_job("echo one; echo two >&2")
        status = self.manager.status(job_id)
        chunks = await self.chunks(job_id=job_id, timestamps=True)
        self.assertEqual([c.data for c in chunks], [b"one\n", b"two\n"])
        for chunk in chunks:
            self.assertTrue(chunk.HasField("time"))
            seconds = chunk.time.ToNanoseconds() / 1e9
            self.assertTrue(status.started_at <= seconds <= (status.ended_at or 0))

    async def test_since_sends_what_was_read_from_then_on(self) -> None:
        flag = self.flag_path()
        script = f"echo early; while [ ! -e {flag} ]; do sleep 0.05; done; echo late"
        job_id = await self.start_job("alice", shell(script))
        await self.eventually(
            lambda: self.manager.status(job_id).output_bytes >= 6, "early output"
        )
        between = time.time()
        open(flag, "w").close()
        await self.call("alice", "Wait", pb.WaitRequest(job_id=job_id))
        request = pb.StreamOutputRequest(job_id=job_id)
        request.since.FromNanoseconds(round(between * 1e9))
        chunks = await self.chunks(job_id=job_id, since=request.since)
        self.assertEqual(b"".join(c.data for c in chunks), b"late\n")
        request.since.FromNanoseconds(round((between + 3600) * 1e9))
        self.assertEqual(await self.chunks(job_id=job_id, since=request.since), [])

    async def test_no_follow_ends_at_the_output_there_is(self) -> None:
        job_id = await self.start_job("alice", shell("echo now; exec sleep 1000"))
        await self.eventually(
            lambda: self.manager.status(job_id).output_bytes >= 4, "output"
        )
        chunks = await self.chunks(job_id=job_id, no_follow=True)
        self.assertEqual(b"".join(c.data for c in chunks), b"now\n")
        await self.call("alice", "Stop", pb.StopRequest(job_id=job_id))

    async def test_an_offset_inside_a_record_is_invalid_even_with_a_tail(self) -> None:
        job_id = await self.ended_job("echo hello")
        try:
            await self.chunks(job_id=job_id, offset=2, tail_lines=1)
        except grpc.RpcError as failed:
            error = failed
        else:
            self.fail("an offset inside a record was accepted")
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("not a record start", error.details())
