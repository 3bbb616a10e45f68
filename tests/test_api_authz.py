"""Authorization through the real server: role x verb x own or other's job.

alice is admin; bob and carol are users. A user's view of another user's
job is NOT_FOUND, word for word what a job that does not exist gives.
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import uuid
from typing import Any, cast

import grpc
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from jobworker.job.events import LoggingJobEvents
from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase, shell, stream_end

QUICK = shell("echo hello")
LONG = shell("sleep 1000")


class AuthorizationMatrixTests(APITestCase):
    """Every verb, for the owner, another user and an admin."""

    async def allowed(self, user: str, verb: str, job_id: str) -> None:
        """`user` may do `verb` on the job."""
        if verb == "Status":
            response = await self.call(user, "Status", pb.StatusRequest(job_id=job_id))
            self.assertEqual(response.job.id, job_id)
        elif verb == "Stop":
            response = await self.call(
                user, "Stop", pb.StopRequest(job_id=job_id, grace_seconds=0)
            )
            self.assertIn(
                response.job.state, (pb.JOB_STATE_KILLED, pb.JOB_STATE_EXITED)
            )
        else:
            chunks = await self.read_all(user, job_id)
            self.assertEqual(b"".join(c[3] for c in chunks), b"hello\n")

    async def refused(self, user: str, verb: str, job_id: str) -> tuple[Any, str]:
        """`user` gets NOT_FOUND for the job; return the code and details."""
        if verb == "StreamOutput":
            return await self.in_thread(stream_end, self.follow(user, job_id))
        request: Any = (
            pb.StatusRequest(job_id=job_id)
            if verb == "Status"
            else pb.StopRequest(job_id=job_id, grace_seconds=0)
        )
        error = await self.error(user, verb, request)
        return error.code(), error.details() or ""

    async def check_verb(self, verb: str) -> None:
        command = QUICK if verb == "StreamOutput" else LONG
        for owner, other, admin in (
            ("bob", "carol", "alice"),
            ("carol", "bob", "alice"),
        ):
            job_id = await self.start_job(owner, command)
            code, details = await self.refused(other, verb, job_id)
            self.assertEqual(code, grpc.StatusCode.NOT_FOUND)
            missing = str(uuid.uuid4())
            missing_code, missing_details = await self.refused(other, verb, missing)
            self.assertEqual(missing_code, code)
            self.assertEqual(missing_details.replace(missing, job_id), details)
            await self.allowed(admin, verb, job_id)
            await self.allowed(owner, verb, job_id)
        admin_job = await self.start_job("alice", command)
        code, _ = await self.refused("bob", verb, admin_job)
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND)
        await self.allowed("alice", verb, admin_job)

    async def test_status_of_others_jobs_is_admin_only(self) -> None:
        await self.check_verb("Status")

    async def test_stop_of_others_jobs_is_admin_only(self) -> None:
        await self.check_verb("Stop")

    async def test_stream_of_others_jobs_is_admin_only(self) -> None:
        await self.check_verb("StreamOutput")

    async def test_users_and_admins_may_start_jobs_they_then_own(self) -> None:
        for user in ("alice", "bob", "carol", "dave"):
            response = await self.call(user, "Start", pb.StartRequest(command=QUICK))
            self.assertEqual(response.job.owner, user)

    async def test_list_shows_users_their_own_jobs_and_admins_all(self) -> None:
        owned = {
            user: await self.start_job(user, QUICK)
            for user in ("alice", "bob", "carol")
        }
        for user in ("bob", "carol"):
            response = await self.call(user, "List", pb.ListRequest())
            self.assertEqual([job.id for job in response.jobs], [owned[user]])
        response = await self.call("alice", "List", pb.ListRequest())
        self.assertEqual({job.id for job in response.jobs}, set(owned.values()))
        response = await self.call("dave", "List", pb.ListRequest())
        self.assertEqual(list(response.jobs), [])


class RefusalLogTests(APITestCase):
    """A refused call by a known caller is logged once, with the identity."""

    async def test_refused_call_is_logged_with_the_identity(self) -> None:
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            events.append(event)

        globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, observe)  # type: ignore[arg-type]
        missing = str(uuid.uuid4())
        error = await self.error("bob", "Status", pb.StatusRequest(job_id=missing))
        self.assertEqual(error.code(), grpc.StatusCode.NOT_FOUND)
        refusals = [e for e in events if e.get("method") == "Status"]
        self.assertEqual(len(refusals), 1)
        self.assertEqual(refusals[0]["caller"], "bob")
        self.assertEqual(refusals[0]["code"], "NOT_FOUND")
        self.assertIn(missing, refusals[0]["text"])


class StartRefusalLogTests(APITestCase):
    """A refused Start is logged once, where its refusal is known best."""

    events_class = LoggingJobEvents

    def setUp(self) -> None:
        super().setUp()
        self.lines: list[tuple[str, str]] = []

        def observe(event: LogEvent) -> None:
            self.lines.append((event.get("log_namespace", ""), formatEvent(event)))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def refusals(self) -> list[tuple[str, str]]:
        return [line for line in self.lines if "refused" in line[1]]

    async def test_start_the_manager_refuses_is_logged_once_with_its_command(
        self,
    ) -> None:
        request = pb.StartRequest(command=[b"/nonexistent/program"])
        error = await self.error("bob", "Start", request)
        self.assertEqual(error.code(), grpc.StatusCode.FAILED_PRECONDITION)
        [(namespace, line)] = self.refusals()
        self.assertEqual(namespace, "jobworker.job.events")
        self.assertTrue(
            line.startswith("job start refused for bob: /nonexistent/program:"), line
        )

    async def test_start_the_api_refuses_is_logged_once_with_the_identity(
        self,
    ) -> None:
        raw = self.channel("bob").unary_unary(
            "/jobworker.v1.JobWorker/Start",
            request_serializer=None,
            response_deserializer=None,
        )
        with self.assertRaises(grpc.RpcError):
            await self.in_thread(raw, b"\xff\xff\xff\xff", timeout=10)
        [(namespace, line)] = self.refusals()
        self.assertEqual(namespace, "jobworker.server.api.errors")
        self.assertTrue(line.startswith("Start by bob ("), line)
        self.assertIn("refused: INVALID_ARGUMENT: malformed StartRequest", line)
