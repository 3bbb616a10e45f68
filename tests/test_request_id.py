"""Start with a request id: a retried start starts nothing, per caller.

Real processes; the restart cases make a new manager on the same state
directory, which has the ids from the journal.
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import grpc

from jobworker.errors import ExecutableNotFound, InvalidRequest
from jobworker.model import JobState
from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase
from tests.managerutil import ManagerTestCase
from tests.procutil import marker, sleepers


class RequestIdTests(ManagerTestCase):
    async def test_a_repeated_start_gives_the_first_job(self) -> None:
        tag = marker()
        command = [b"sleep", tag.encode()]
        first = await self.manager.start("alice", command, request_id="r1")
        again = await self.manager.start("alice", command, request_id="r1")
        self.assertEqual(again, self.manager.status(first.id))
        self.assertEqual(again.request_id, "r1")
        self.assertEqual(len(sleepers(tag)), 1)
        self.assertEqual(len(self.manager.list()), 1)

    async def test_starts_at_once_with_one_id_make_one_job(self) -> None:
        tag = marker()
        command = [b"sleep", tag.encode()]
        starts = [self.manager.start("alice", command, request_id="r") for _ in "ab"]
        first, second = [await start for start in starts]
        self.assertEqual(first.id, second.id)
        self.assertEqual(len(sleepers(tag)), 1)

    async def test_other_callers_ids_never_collide(self) -> None:
        command = [b"sleep", marker().encode()]
        alice = await self.manager.start("alice", command, request_id="same")
        bob = await self.manager.start("bob", command, request_id="same")
        self.assertNotEqual(alice.id, bob.id)
        self.assertEqual(bob.owner, "bob")

    async def test_an_id_used_for_another_command_is_refused(self) -> None:
        first = await self.manager.start("alice", [b"true"], request_id="r")
        error = await self.assertFailure(
            self.manager.start("alice", [b"false"], request_id="r"), InvalidRequest
        )
        self.assertIn(first.id, str(error))

    async def test_a_failed_start_leaves_its_id_free(self) -> None:
        await self.assertFailure(
            self.manager.start("alice", [b"no-such-program-jw"], request_id="r"),
            ExecutableNotFound,
        )
        started = await self.manager.start("alice", [b"true"], request_id="r")
        self.assertEqual(started.request_id, "r")

    async def test_bad_ids_are_refused(self) -> None:
        for bad in ("", "x" * 129, "line\nbreak"):
            await self.assertFailure(
                self.manager.start("alice", [b"true"], request_id=bad), InvalidRequest
            )
        self.assertEqual(self.manager.list(), [])

    async def test_ids_survive_a_restart(self) -> None:
        command = [b"sh", b"-c", b"exit 7"]
        first = await self.manager.start("alice", command, request_id="r")
        await self.manager.wait_ended(first.id)
        await self.manager.shutdown()
        manager = self.make_manager()
        again = await manager.start("alice", command, request_id="r")
        self.assertEqual(
            (again.id, again.state, again.exit_code), (first.id, JobState.EXITED, 7)
        )
        other = await manager.start("bob", command, request_id="r")
        self.assertNotEqual(other.id, first.id)


class RequestIdAPITests(APITestCase):
    async def test_a_retried_start_call_gets_the_same_job(self) -> None:
        request = pb.StartRequest(command=[b"sleep", marker().encode()], request_id="k")
        first = await self.call("alice", "Start", request)
        second = await self.call("alice", "Start", request)
        self.assertEqual(first.job.id, second.job.id)
        self.assertEqual(second.job.request_id, "k")

    async def test_a_bad_request_id_is_invalid_argument(self) -> None:
        request = pb.StartRequest(command=[b"true"], request_id="\x1b[2J")
        error = await self.error("alice", "Start", request)
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("printable", error.details() or "")
