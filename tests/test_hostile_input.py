"""Hostile input against the real server over mTLS: no INTERNAL, no crash, no leak.

Hypothesis drives Start and every call that takes a job id with random and
huge arguments, NUL bytes, invalid UTF-8 (raw request bytes), absurd limits
and graces, random ids and oversized messages. The answers may be refusals,
but never INTERNAL (a server bug), never a hang, and carol never reaches
bob's job. Commands that could run a real program are kept to /bin/true and
/bin/echo; random program names are checked not to exist first.
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import os
import socket
from collections.abc import Callable
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobworker.job.environment import job_env
from jobworker.server.api.quota import CALL_THREADS
from jobworker.server.service import UNARY_HEADROOM
from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase, shell

SERVICE = "/jobworker.v1.JobWorker/"
CALL_TIMEOUT = 15.0
EXAMPLES = 80
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
JOB_PATH = job_env("/").get("PATH", "/usr/bin:/bin").split(":")
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
ANY_CODE = set(grpc.StatusCode) - BAD
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e300, 86400.0, 86401.0]),
)
U64 = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64 - 1]),
)
ARG = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=128 * 1024 - 2, max_size=128 * 1024 + 2),
    st.text(max_size=32).map(str.encode),
)


def runnable(program: bytes) -> bool:
    """Whether execvpe in the job's PATH could find `program`."""
    if not program or b"\0" in program:
        return False
    candidates = (
        [program]
        if b"/" in program
        else [os.fsencode(d) + b"/" + program for d in JOB_PATH]
    )
    return any(os.path.lexists(path) for path in candidates)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


@st.composite
def limits(draw: st.DrawFn) -> pb.Limits:
    message = pb.Limits()
    if draw(st.booleans()):
        message.cpu = draw(NUMBERS)
    for name in ("memory_bytes", "io_read_bps", "io_write_bps", "pids"):
        if draw(st.booleans()):
            setattr(message, name, draw(U64))
    return message


@st.composite
def start_requests(draw: st.DrawFn) -> bytes:
    """Raw StartRequest bytes: safe programs with hostile args, or garbage."""
    kind = draw(st.sampled_from(["safe", "missing", "raw"]))
    if kind == "raw":
        data = draw(st.binary(max_size=256))
        try:
            parsed = pb.StartRequest.FromString(data)
        except Exception:  # unparsable is what we want
            return data
        return data if not parsed.command or not runnable(parsed.command[0]) else b""
    if kind == "safe":
        program = draw(st.sampled_from([b"/bin/true", b"true", b"/bin/echo"]))
    else:
        program = draw(
            st.binary(min_size=1, max_size=40).filter(lambda p: not runnable(p))
        )
    request = pb.StartRequest(command=[program, *draw(st.lists(ARG, max_size=6))])
    if draw(st.booleans()):
        request.limits.CopyFrom(draw(limits()))
    return request.SerializeToString()


class HostileInputTests(APITestCase):
    """Carol attacks; bob's running job must stay untouched and unseen."""

    max_followers = 8

    def raw(self, method: str, data: bytes, user: str = "carol") -> grpc.StatusCode:
        """One call with raw request bytes; its status code (streams drained)."""
        channel = self.channel_for(user)
        try:
            if method == "StreamOutput":
                stream = channel.unary_stream(SERVICE + method, None, None)(
                    data, timeout=CALL_TIMEOUT
                )
                for _ in stream:
                    pass
            else:
                channel.unary_unary(SERVICE + method, None, None)(
                    data, timeout=CALL_TIMEOUT
                )
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
        return grpc.StatusCode.OK

    def channel_for(self, user: str) -> grpc.Channel:
        if user not in self.by_user:
            self.by_user[user] = self.channel(user)
        return self.by_user[user]

    def setUp(self) -> None:
        super().setUp()
        self.by_user: dict[str, grpc.Channel] = {}

    async def victim(self) -> tuple[str, pb.JobStatus]:
        job_id = await self.start_job("bob", shell("sleep 1000"))
        response = await self.call("bob", "Status", pb.StatusRequest(job_id=job_id))
        return job_id, response.job

    async def assert_untouched(self, job_id: str, before: pb.JobStatus) -> None:
        response = await self.call("bob", "Status", pb.StatusRequest(job_id=job_id))
        self.assertEqual(response.job, before)
        await self.call("bob", "Stop", pb.StopRequest(job_id=job_id, grace_seconds=0))

    async def fuzz(self, check: Callable[[], None]) -> None:
        """Run a hypothesis check in a client thread (the reactor serves)."""
        job_id, before = await self.victim()
        await self.in_thread(check)
        listed = await self.call("alice", "List", pb.ListRequest())
        self.assertIn(job_id, [job.id for job in listed.jobs])
        await self.assert_untouched(job_id, before)

    def assert_code(self, code: grpc.StatusCode, allowed: set[grpc.StatusCode]) -> None:
        self.assertNotIn(code, BAD)
        self.assertIn(code, allowed)

    async def test_random_start_requests_are_refused_or_run_never_internal(
        self,
    ) -> None:
        allowed = {
            grpc.StatusCode.OK,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        }

        @FUZZ
        @given(start_requests())
        def check(data: bytes) -> None:
            self.assert_code(self.raw("Start", data), allowed)

        await self.fuzz(check)

    async def test_random_ids_and_arguments_never_reach_another_users_job(
        self,
    ) -> None:
        job_id, before = await self.victim()
        own = await self.start_job("carol", shell("printf 'x\\0y'"))
        await self.read_all("carol", own)
        ids = st.one_of(
            st.text(max_size=80),
            st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
            st.uuids().map(str),
            st.just(job_id),
            st.just(job_id.upper()),
            st.just(job_id + "\0"),
            st.just(own),
        )
        refused = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}
        raw_id = st.one_of(
            st.binary(max_size=60), st.just(b"\xff\xfe" + job_id.encode())
        )

        def expect(method: str, target: str | bytes, code: grpc.StatusCode) -> None:
            if target in (own, own.encode()):
                allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
            else:
                allowed = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}
            self.assertNotIn(code, BAD, f"{method} {target!r}")
            self.assertIn(code, allowed, f"{method} {target!r}")

        @FUZZ
        @given(ids, NUMBERS, U64, st.booleans())
        def by_message(
            target: str, grace: float, offset: int, with_grace: bool
        ) -> None:
            stop = pb.StopRequest(job_id=target)
            if with_grace:
                stop.grace_seconds = grace
            requests: dict[str, Any] = {
                "Status": pb.StatusRequest(job_id=target),
                "Stop": stop,
                "StreamOutput": pb.StreamOutputRequest(job_id=target, offset=offset),
            }
            for method, request in requests.items():
                code = self.raw(method, request.SerializeToString())
                expect(method, target, code)

        @FUZZ
        @given(raw_id, U64, st.binary(max_size=32))
        def by_bytes(target: bytes, number: int, tail: bytes) -> None:
            # Invalid UTF-8 in a string field, odd trailing fields, huge varints.
            body = field(1, target)
            for method, extra in (
                ("Status", b""),
                ("Stop", varint(2 << 3 | 1) + number.to_bytes(8, "little")),
                ("StreamOutput", varint(2 << 3) + varint(number)),
                ("List", b""),
            ):
                code = self.raw(method, body + extra + tail)
                data = body + extra + tail
                self.assertNotIn(code, BAD, f"{method} {data!r}")
                if method != "List":
                    self.assertIn(code, refused, f"{method} {data!r}")

        await self.in_thread(by_message)
        await self.in_thread(by_bytes)
        # Every offset into carol's own log, record starts or not.
        for offset in range(20):
            request = pb.StreamOutputRequest(job_id=own, offset=offset)
            code = await self.in_thread(
                self.raw, "StreamOutput", request.SerializeToString()
            )
            expect("StreamOutput", own, code)
        carol_sees = await self.call("carol", "List", pb.ListRequest())
        self.assertEqual([job.id for job in carol_sees.jobs], [own])
        await self.assert_untouched(job_id, before)

    async def test_oversized_messages_are_refused_cleanly(self) -> None:
        job_id, before = await self.victim()
        huge = b"a" * (5 << 20)
        cases = [
            ("Start", pb.StartRequest(command=[b"/bin/true", huge])),
            ("Start", pb.StartRequest(command=[b"/bin/true", *[b"b" * 100_000] * 12])),
            ("Start", pb.StartRequest(command=[b"/bin/true"] * 300_000)),
            # Within MAX_COMMAND, but too many arguments for execve (E2BIG).
            ("Start", pb.StartRequest(command=[b"/bin/true", *[b"x"] * 400_000])),
            ("Status", pb.StatusRequest(job_id="x" * (5 << 20))),
            ("Stop", pb.StopRequest(job_id=job_id + "y" * 100_000)),
            ("StreamOutput", pb.StreamOutputRequest(job_id="z" * 1_000_000)),
        ]
        for method, request in cases:
            code = await self.in_thread(self.raw, method, request.SerializeToString())
            self.assertIn(
                code,
                {
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION,
                },
                method,
            )
        await self.assert_untouched(job_id, before)

    async def test_stalled_handshakes_do_not_stop_others_being_served(
        self,
    ) -> None:
        job_id, before = await self.victim()
        sockets: list[socket.socket] = []

        def close_all() -> None:
            for conn in sockets:
                conn.close()

        self.addCleanup(close_all)
        # Half a TLS ClientHello record header, then nothing.
        # Nothing, half a TLS ClientHello record header, or plain garbage.
        openings = [
            b"",
            bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]),
            b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)),
        ]
        for index in range(201):
            conn = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
            conn.sendall(openings[index % 3])
            sockets.append(conn)

        def served() -> list[int]:
            request = pb.StatusRequest(job_id=job_id)
            return [
                self.stub(user).Status(request, timeout=5).job.state
                for user in ("alice", "bob")
            ]

        states = await self.in_thread(served)
        self.assertEqual(states, [pb.JOB_STATE_RUNNING] * 2)
        close_all()
        await self.assert_untouched(job_id, before)

    async def test_huge_commands_of_one_user_do_not_break_the_admins_list(
        self,
    ) -> None:
        # Five commands within MAX_COMMAND (1 MiB) make a List reply over
        # grpc's default 4 MiB receive limit; records live as long as the
        # server, so the admin's (and bob's) List fails until a restart.
        # List is paged, and a page ends early by size: every reply stays
        # far below the limit and paging still reaches every job.
        command = [b"/bin/true", *[b"a" * (128 * 1024 - 1)] * 7]
        started = [await self.start_job("bob", command) for _ in range(5)]
        for user in ("alice", "bob"):
            seen: list[str] = []
            token = ""
            while True:
                request = pb.ListRequest(page_token=token)
                listed = await self.call(user, "List", request)
                self.assertLess(listed.ByteSize(), 2 << 20)
                seen += [job.id for job in listed.jobs]
                token = listed.next_page_token
                if not token:
                    break
            self.assertEqual(seen, started, user)

    async def test_one_users_blocking_stops_do_not_lock_out_others(self) -> None:
        # Each Stop waits for the job's end, holding a server thread; bob
        # asks for as many as the server has threads, on a job that ignores
        # SIGTERM, with a grace long enough to outlast alice's List.
        job_id = await self.start_job("bob", shell("trap '' TERM; sleep 1000"))
        threads = self.max_followers + CALL_THREADS + UNARY_HEADROOM  # the pool
        stub = self.stub("bob")
        request = pb.StopRequest(job_id=job_id, grace_seconds=6)
        stops = [stub.Stop.future(request, timeout=30) for _ in range(threads)]
        try:
            # Each Stop is being served, or was refused (a fix may cap bob).
            await self.eventually(
                lambda: (
                    self.server.bridge.active + sum(stop.done() for stop in stops)
                    >= threads
                ),
                "every Stop of bob's is served or refused",
            )
            listed = await self.call("alice", "List", pb.ListRequest())
            self.assertEqual([job.id for job in listed.jobs], [job_id])
            # Start waits too: bob's share of those calls leaves room for alice.
            await self.start_job("alice", shell("true"))
        finally:
            await self.in_thread(lambda: [stop.exception() for stop in stops])
