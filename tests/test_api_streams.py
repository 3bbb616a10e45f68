"""Output streaming through the real server: followers, disconnects, cap, shutdown."""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import itertools
import threading
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobworker.model import JobState
from jobworker.server.api.bridge import Bridge
from jobworker.server.api.servicer import (
    CHUNK_BYTES,
    CHUNK_BYTES_MIN,
    FOLLOWER_BUFFER_BYTES,
    JobWorkerService,
)
from jobworker.server.metrics import ServerMetrics
from jobworker.server.service import SIDE_STREAMS
from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase, shell, stream_end, threads_in

# Interleaved stdout/stderr, with pauses so followers join mid-stream.
CHATTY = (
    "for i in $(seq 1 40); do echo out $i; echo err $i >&2;"
    " [ $((i % 10)) = 0 ] && sleep 0.1; done; echo done"
)
SILENT = "sleep 1000"


def serving_followers() -> int:
    """Threads that are inside a StreamOutput handler right now."""
    return threads_in(JobWorkerService._chunks)


class StreamTests(APITestCase):
    max_followers = 24

    async def test_stream_tags_each_chunk_with_stream_and_offsets(self) -> None:
        job_id = await self.start_job("alice", shell("echo a; echo b >&2; echo c"))
        chunks = await self.read_all("alice", job_id)
        data = [(stream, text) for stream, _, _, text in chunks]
        joined = b"".join(text for _, text in data)
        self.assertEqual(sorted(joined.split()), [b"a", b"b", b"c"])
        self.assertIn((pb.STREAM_STDERR, b"b\n"), data)
        self.assertEqual(chunks[0][1], 0)
        for before, after in itertools.pairwise(chunks):
            self.assertEqual(before[2], after[1])

    async def test_a_lone_follower_gets_messages_of_up_to_a_mebibyte(self) -> None:
        size = 3 * CHUNK_BYTES + 5
        job_id = await self.start_job("alice", shell(f"head -c {size} /dev/zero"))
        await self.eventually(
            lambda: self.manager.status(job_id).state.ended, "the job has ended"
        )
        chunks = await self.read_all("alice", job_id)
        sizes = [len(data) for _, _, _, data in chunks]
        self.assertEqual(sum(sizes), size)
        self.assertLessEqual(max(sizes), CHUNK_BYTES)
        # Messages end on record boundaries (64 KiB records at most).
        self.assertGreater(min(sizes[:3]), CHUNK_BYTES - 64 * 1024)

    def test_messages_shrink_as_followers_are_added(self) -> None:
        unused: Any = None  # message sizes need neither manager nor reactor
        service = JobWorkerService(
            unused, Bridge(unused), max_followers=256, metrics=ServerMetrics()
        )
        sizes = {}
        for followers in (0, 1, 4, 16, 50, 64, 256):
            service._followers = followers
            sizes[followers] = service.chunk_bytes()
        self.assertEqual(sizes[0], CHUNK_BYTES)
        self.assertEqual(sizes[4], CHUNK_BYTES)
        self.assertEqual(sizes[16], FOLLOWER_BUFFER_BYTES // 16)
        self.assertEqual(sizes[50], FOLLOWER_BUFFER_BYTES // 50)
        self.assertEqual(sizes[64], CHUNK_BYTES_MIN)
        self.assertEqual(sizes[256], CHUNK_BYTES_MIN)

    async def test_stream_resumes_from_a_next_offset(self) -> None:
        job_id = await self.start_job("alice", shell("echo one; echo two >&2"))
        chunks = await self.read_all("alice", job_id)
        rest = await self.read_all("alice", job_id, chunks[0][2])
        self.assertEqual(rest, chunks[1:])

    async def test_many_concurrent_followers_get_identical_bytes(self) -> None:
        job_id = await self.start_job("alice", shell(CHATTY))
        followers = [self.read_all("alice", job_id) for _ in range(20)]
        results = [_runs(await follower) for follower in followers]
        first = results[0]
        self.assertEqual(first[-1], (pb.STREAM_STDOUT, first[-1][1]))
        self.assertTrue(first[-1][1].endswith(b"done\n"))
        text = b"".join(data for _, data in first)
        self.assertEqual(text.count(b"out "), 40)
        self.assertEqual(text.count(b"err "), 40)
        for result in results[1:]:
            self.assertEqual(result, first)

    async def test_disconnecting_follower_frees_its_thread(self) -> None:
        baseline = serving_followers()
        job_id = await self.start_job("alice", shell(SILENT))
        call = self.follow("alice", job_id)
        ended = self.in_thread(stream_end, call)
        await self.eventually(
            lambda: serving_followers() == baseline + 1, "the follower is served"
        )
        self.assertEqual(self.server.service.followers, 1)
        call.cancel()
        code, _ = await ended
        self.assertEqual(code, grpc.StatusCode.CANCELLED)
        # The job is silent: only the disconnect can have released the thread.
        await self.eventually(
            lambda: serving_followers() == baseline, "the handler thread is released"
        )
        await self.eventually(
            lambda: (
                self.server.service.followers == 0 and self.server.bridge.active == 0
            ),
            "the follower is forgotten",
        )
        status = await self.call("alice", "Status", pb.StatusRequest(job_id=job_id))
        self.assertEqual(status.job.state, pb.JOB_STATE_RUNNING)


class FollowerCapTests(APITestCase):
    max_followers = 2
    max_followers_per_user = 2

    async def test_followers_past_the_cap_are_resource_exhausted(self) -> None:
        job_id = await self.start_job("alice", shell(SILENT))
        calls = [self.follow("alice", job_id) for _ in range(2)]
        ended = [self.in_thread(stream_end, call) for call in calls]
        await self.eventually(
            lambda: self.server.service.followers == 2, "two followers are served"
        )
        code, details = await self.in_thread(stream_end, self.follow("bob", job_id))
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("too many output streams", details)
        # Unary calls are not starved by the followers.
        status = await self.call("alice", "Status", pb.StatusRequest(job_id=job_id))
        self.assertEqual(status.job.id, job_id)
        calls[0].cancel()
        await ended[0]
        await self.eventually(
            lambda: self.server.service.followers == 1, "a follower left"
        )
        again = self.follow("alice", job_id)
        ended.append(self.in_thread(stream_end, again))
        await self.eventually(
            lambda: self.server.service.followers == 2, "a new follower is served"
        )
        for call in (calls[1], again):
            call.cancel()
        for done in ended:
            await done


class SideStreamCapTests(APITestCase):
    async def test_health_watches_past_their_cap_are_resource_exhausted(self) -> None:
        def watch() -> Any:
            stub = health_pb2_grpc.HealthStub(self.channel("bob"))
            return stub.Watch(health_pb2.HealthCheckRequest(), timeout=60)

        def first(call: Any) -> Any:
            return next(call).status

        watches = [watch() for _ in range(SIDE_STREAMS)]
        for call in watches:
            status = await self.in_thread(first, call)
            self.assertEqual(status, health_pb2.HealthCheckResponse.SERVING)
        code, details = await self.in_thread(stream_end, watch())
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("health watches", details)
        response = await self.call("bob", "List", pb.ListRequest())
        self.assertEqual(list(response.jobs), [])
        watches[0].cancel()
        await self.eventually(lambda: _admits(watch()), "a watch slot is free again")
        for call in watches:
            call.cancel()


def _runs(chunks: list[Any]) -> list[tuple[int, bytes]]:
    """The output as runs of one stream (chunk boundaries depend on timing)."""
    runs: list[tuple[int, bytes]] = []
    for stream, _, _, data in chunks:
        if runs and runs[-1][0] == stream:
            runs[-1] = (stream, runs[-1][1] + data)
        else:
            runs.append((stream, data))
    return runs


def _admits(call: Any) -> bool:
    """Whether a new health watch gets its first answer."""
    try:
        next(call)
    except grpc.RpcError:
        return False
    call.cancel()
    return True


class ShutdownTests(APITestCase):
    stop_grace = 1.0

    async def test_shutdown_ends_streams_and_jobs_and_leaves_no_thread(self) -> None:
        before = {thread.ident for thread in threading.enumerate()}
        jobs = [await self.start_job("alice", shell(SILENT)) for _ in range(2)]
        # A job that ignores SIGTERM must be killed after the grace period.
        jobs.append(await self.start_job("bob", shell("trap '' TERM; sleep 1000")))
        calls = [self.follow("alice", job_id) for job_id in jobs]
        streams = [self.in_thread(stream_end, call) for call in calls]
        await self.eventually(
            lambda: self.server.service.followers == 3, "three followers are served"
        )
        stopping = self.stop_server()
        for method, request in (
            ("Status", pb.StatusRequest(job_id=jobs[2])),
            ("List", pb.ListRequest()),
        ):
            error = await self.error("bob", method, request)
            self.assertEqual(
                (error.code(), error.details()),
                (grpc.StatusCode.UNAVAILABLE, "server shutting down"),
            )
        await stopping
        for stream in streams:
            code, details = await stream
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
            self.assertEqual(details, "server shutting down")
        for job_id in jobs:
            self.assertTrue(self.manager.status(job_id).state.ended)
        self.assertEqual(self.manager.status(jobs[2]).state, JobState.KILLED)

        def left() -> list[str]:
            return [
                thread.name
                for thread in threading.enumerate()
                # Twisted's pools (the test's clients, the reactor's) persist
                # by design.
                if thread.ident not in before
                and not thread.name.startswith("PoolThread-")
            ]

        # grpc's `cancel_all_calls_after_grace` thread sets the shutdown
        # event we wait for, then returns: it may still be ending just now.
        await self.eventually(lambda: left() == [], "no new thread but the pools")
        self.assertEqual(left(), [])
        code, _ = await self.in_thread(stream_end, self.follow("alice", jobs[0]))
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
