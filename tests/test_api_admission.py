"""Admission over the real API: bursts wait their turn, caps name themselves.

The CLI's client (`jobworker.cli.client.Client`, with grpc's retry policy)
is used where retries matter; the raw stubs elsewhere.
"""

from __future__ import annotations

import os
import uuid

import grpc
from twisted.trial import unittest

from jobworker.cli.client import Client, ClientConfig, ClientError
from jobworker.errors import ExecutableNotFound, TooManyJobs
from jobworker.job.events import LoggingJobEvents
from jobworker.job.manager import JobManager
from jobworker.job.storage import StorageGuard
from jobworker.server.api.quota import WaitingCalls
from jobworker.v1 import jobworker_pb2 as pb
from tests import pkiutil
from tests.apiutil import APITestCase, shell, stream_end

SLEEP = shell("sleep 600")


class AdmissionTestCase(APITestCase):
    events_class = LoggingJobEvents
    max_jobs_per_user: int | None = 256

    def setUp(self) -> None:
        super().setUp()
        self.manager.running.cap = self.max_jobs_per_user
        self.lines = self.capture_log()

    def client(self, user: str) -> Client:
        config = ClientConfig(
            server=f"localhost:{self.server.port}",
            ca=pkiutil.path("server-ca.pem"),
            cert=pkiutil.path(f"{user}.pem"),
            key=pkiutil.path(f"{user}.key"),
        )
        client = Client(config)
        self.addCleanup(client.close)
        return client

    def refusals(self, fragment: str) -> int:
        return sum("refused" in line and fragment in line for line in self.lines)


class BurstTests(AdmissionTestCase):
    async def test_200_concurrent_starts_from_one_user_all_succeed(self) -> None:
        client = self.client("bob")
        starts = [self.in_thread(client.start, SLEEP, pb.Limits()) for _ in range(200)]
        jobs = [await start for start in starts]
        self.assertEqual(len({job.id for job in jobs}), 200)
        self.assertEqual(self.refusals("Start"), 0)
        listed = await self.call("bob", "List", pb.ListRequest(page_size=1000))
        running = [job for job in listed.jobs if job.state == pb.JOB_STATE_RUNNING]
        self.assertEqual(len(running), 200)

    async def test_a_busy_refusal_is_retried_by_the_cli(self) -> None:
        # No line at all and one turn for bob: his Start is refused while
        # his Stop holds the turn, and the CLI retries it until it has one
        # (alice, an admin, ends the job).
        self.server.service.waiting_calls = WaitingCalls(
            per_caller=1, queued=0, queued_per_caller=0
        )
        job_id = await self.start_job("bob", shell("trap '' TERM; sleep 600"))
        stop = self.stub("bob").Stop.future(
            pb.StopRequest(job_id=job_id, grace_seconds=600), timeout=60
        )
        self.addCleanup(stop.exception)
        await self.eventually(
            lambda: self.server.service.waiting_calls.held("bob") == 1,
            "bob's Stop holds his turn",
        )
        started = self.in_thread(self.client("bob").start, SLEEP, pb.Limits())
        await self.eventually(
            lambda: self.refusals("server busy") >= 1, "bob's Start is refused busy"
        )
        await self.call("alice", "Stop", pb.StopRequest(job_id=job_id, grace_seconds=0))
        job = await started
        self.assertEqual(job.state, pb.JOB_STATE_RUNNING)


class JobCapTests(AdmissionTestCase):
    max_jobs_per_user = 2

    async def test_starts_past_a_users_running_jobs_are_refused_naming_the_cap(
        self,
    ) -> None:
        first = await self.start_job("bob", SLEEP)
        await self.start_job("bob", SLEEP)
        client = self.client("bob")
        error = await self.assertFailure(
            self.in_thread(client.start, SLEEP, pb.Limits()), ClientError
        )
        self.assertIn("bob has 2 jobs running", str(error))
        self.assertIn("max-jobs-per-user 2", str(error))
        # The cap is final: the CLI did not retry it.
        self.assertEqual(self.refusals("bob has 2 jobs running"), 1)
        await self.start_job("carol", SLEEP)  # another user is not held back
        await self.call("bob", "Stop", pb.StopRequest(job_id=first, grace_seconds=0))
        await self.start_job("bob", SLEEP)  # an ended job frees its slot


class StorageTests(AdmissionTestCase):
    async def test_a_start_past_the_users_output_quota_is_refused_naming_it(
        self,
    ) -> None:
        quota = StorageGuard("/", 1000, 1 << 30, free=lambda: 1 << 40)
        self.manager.storage = quota
        job_id = await self.start_job("bob", shell("cat /dev/zero"))
        await self.manager.wait_ended(job_id)
        client = self.client("bob")
        error = await self.assertFailure(
            self.in_thread(client.start, SLEEP, pb.Limits()), ClientError
        )
        self.assertIn("(user-output-quota 1000)", str(error))
        self.assertEqual(self.refusals("user-output-quota"), 1)  # not retried
        await self.start_job("carol", SLEEP)  # another user's quota is untouched
        quota.min_free = 1 << 41  # the disk below its floor: nobody starts
        error = await self.assertFailure(
            self.in_thread(self.client("carol").start, SLEEP, pb.Limits()),
            ClientError,
        )
        self.assertIn("below min-free-disk 2T free", str(error))


class FollowerShareTests(AdmissionTestCase):
    max_followers = 4

    async def test_one_user_cannot_take_every_follower_slot(self) -> None:
        self.assertEqual(self.server.service.max_followers_per_user, 2)
        job_id = await self.start_job("bob", SLEEP)
        calls = [self.follow("bob", job_id) for _ in range(2)]
        ended = [self.in_thread(stream_end, call) for call in calls]
        await self.eventually(
            lambda: self.server.service.followers == 2, "two followers are served"
        )
        code, details = await self.in_thread(stream_end, self.follow("bob", job_id))
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("bob has 2 output streams open", details)
        self.assertIn("max-followers-per-user 2", details)
        other = self.follow("carol", str(uuid.uuid4()))
        code, _ = await self.in_thread(stream_end, other)
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND)  # carol was let in
        for call in calls:
            call.cancel()
        for done in ended:
            await done


class ManagerCapTests(unittest.TestCase):
    def test_the_library_default_cap_is_128_running_jobs(self) -> None:
        manager = JobManager(self.mktemp())
        self.assertEqual(manager.running.cap, 128)

    async def test_a_start_that_fails_frees_its_slot(self) -> None:
        state_dir = self.mktemp()
        os.makedirs(state_dir)
        manager = JobManager(state_dir, job_user="root", max_jobs_per_owner=1)
        self.addCleanup(manager.shutdown)
        for _ in range(3):
            with self.assertRaises(ExecutableNotFound):
                await manager.start("bob", [b"/nonexistent/program"])
        self.assertEqual(manager.running.count("bob"), 0)
        job = await manager.start("bob", [b"sleep", b"600"])
        with self.assertRaises(TooManyJobs):
            await manager.start("bob", [b"true"])
        await manager.stop(job.id, grace=0)
        self.assertEqual(manager.running.count("bob"), 0)
