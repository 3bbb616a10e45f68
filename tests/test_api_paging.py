"""List pages: sizes, opaque tokens, the byte budget, and visibility.

`PageRequest` is checked on plain job snapshots, then the same rules
through the real server over mTLS, where a token is tried by a caller who
did not get it.
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import base64
import random
import struct
import uuid

import grpc
from twisted.trial import unittest

from jobworker.cli.client import list_all
from jobworker.errors import InvalidRequest
from jobworker.job.manager import MAX_COMMAND
from jobworker.model import JobState, JobStatus, Limits
from jobworker.server.api import paging
from jobworker.server.api.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    PAGE_BYTES,
    PageRequest,
    encode_token,
    job_key,
)
from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase, shell

# Seven arguments of 128 KiB: just within the server's 1 MiB command cap.
HUGE = [b"/bin/true", *[b"a" * (128 * 1024 - 1)] * 7]
# Room for the next_page_token next to the jobs of a page.
TOKEN_ROOM = 256


def snapshot(started_at: float, owner: str = "bob", size: int = 0) -> JobStatus:
    return JobStatus(
        id=str(uuid.uuid4()),
        owner=owner,
        command=(b"/bin/true", b"a" * size) if size else (b"/bin/true",),
        state=JobState.EXITED,
        limits=Limits(),
        started_at=started_at,
        ended_at=started_at + 1,
        exit_code=0,
    )


def pages(jobs: list[JobStatus], size: int = 0) -> list[pb.ListResponse]:
    """Every page of `jobs`, asking for `size` each time."""
    replies: list[pb.ListResponse] = []
    token = ""
    while True:
        request = pb.ListRequest(page_size=size, page_token=token)
        replies.append(PageRequest.from_pb(request).page(jobs))
        token = replies[-1].next_page_token
        if not token:
            return replies


def ids(replies: list[pb.ListResponse]) -> list[str]:
    return [job.id for reply in replies for job in reply.jobs]


def expected_order(jobs: list[JobStatus]) -> list[str]:
    return [job.id for job in sorted(jobs, key=job_key)]


class PageRequestTests(unittest.TestCase):
    """The paging rules on job snapshots, without a server."""

    def test_pages_return_each_job_once_in_start_order(self) -> None:
        # Many jobs share a start time: ties are ordered by id.
        jobs = [snapshot(float(n // 4)) for n in range(250)]
        shuffled = random.Random(1).sample(jobs, len(jobs))
        replies = pages(shuffled, size=7)
        self.assertEqual(ids(replies), expected_order(jobs))
        self.assertEqual(len(replies), 36)
        self.assertTrue(all(len(reply.jobs) <= 7 for reply in replies))

    def test_zero_page_size_is_the_default_and_a_large_one_is_capped(self) -> None:
        jobs = [snapshot(float(n)) for n in range(MAX_PAGE_SIZE + 500)]
        for asked, got in ((0, DEFAULT_PAGE_SIZE), (1, 1), (2**31 - 1, MAX_PAGE_SIZE)):
            reply = PageRequest.from_pb(pb.ListRequest(page_size=asked)).page(jobs)
            self.assertEqual(len(reply.jobs), got, asked)
            self.assertNotEqual(reply.next_page_token, "")

    def test_last_page_has_no_token(self) -> None:
        jobs = [snapshot(float(n)) for n in range(3)]
        for size in (3, 4):
            reply = PageRequest.from_pb(pb.ListRequest(page_size=size)).page(jobs)
            self.assertEqual(len(reply.jobs), 3)
            self.assertEqual(reply.next_page_token, "")
        reply = PageRequest.from_pb(pb.ListRequest()).page([])
        self.assertEqual((list(reply.jobs), reply.next_page_token), ([], ""))

    def test_negative_page_size_is_invalid(self) -> None:
        for size in (-1, -(2**31)):
            error = self.assertRaises(
                InvalidRequest, PageRequest.from_pb, pb.ListRequest(page_size=size)
            )
            self.assertIn("page_size", str(error))

    def test_malformed_tokens_are_invalid(self) -> None:
        # 45 bytes: 60 characters, no padding; a truncated token may decode
        # to another valid key, which only moves where paging resumes.
        good = encode_token((12.5, "4c0ba1f6-5ac0-4b93-9b3c-5d0b3e0e9f51"))

        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        header = struct.Struct(">Bd")
        bad = [
            "x",
            "!!!!",
            good + "=",
            good + "A",
            good.replace("-", "+").replace("_", "/") + "+/",
            "\N{SNOWMAN}" + good,
            b64(b"\x01"),
            b64(header.pack(1, 1.0)),  # no id
            b64(header.pack(2, 1.0) + b"id"),  # unknown version
            b64(header.pack(1, float("nan")) + b"id"),
            b64(header.pack(1, float("inf")) + b"id"),
            b64(header.pack(1, 1.0) + b"\xff\xfe"),
            b64(header.pack(1, 1.0) + b"i" * 4096),
        ]
        for token in bad:
            error = self.assertRaises(
                InvalidRequest, PageRequest.from_pb, pb.ListRequest(page_token=token)
            )
            self.assertIn("page_token", str(error), token)
        self.assertEqual(
            PageRequest.from_pb(pb.ListRequest(page_token=good)).after[0],  # type: ignore[index]
            12.5,
        )

    def test_jobs_started_between_pages_do_not_shift_the_paging(self) -> None:
        jobs = [snapshot(float(n)) for n in range(10)]
        first = PageRequest.from_pb(pb.ListRequest(page_size=4)).page(jobs)
        # New jobs start: the next page goes on after the last job seen.
        later = jobs + [snapshot(100.0 + n) for n in range(3)]
        random.Random(2).shuffle(later)
        rest = pages_from(later, first.next_page_token, size=4)
        seen = [job.id for job in first.jobs] + ids(rest)
        self.assertEqual(seen, expected_order(later))

    def test_huge_commands_end_a_page_by_size_with_one_job_at_least(self) -> None:
        big = MAX_COMMAND - 16
        jobs = [snapshot(float(n), size=big) for n in range(4)]
        jobs += [snapshot(10.0 + n, size=300 * 1024) for n in range(6)]
        replies = pages(jobs, size=MAX_PAGE_SIZE)
        self.assertEqual(ids(replies), expected_order(jobs))
        self.assertEqual([len(r.jobs) for r in replies], [1, 1, 1, 1, 3, 3])
        for reply in replies:
            self.assertLessEqual(reply.ByteSize(), max(PAGE_BYTES, MAX_COMMAND + 1024))
        small = [len(r.SerializeToString()) for r in replies[4:]]
        self.assertTrue(all(size <= PAGE_BYTES + TOKEN_ROOM for size in small), small)

    def test_token_only_resumes_within_the_jobs_given(self) -> None:
        # Visibility is applied before paging: a token from a wider view
        # resumes at its position among the narrower view's jobs.
        everyone = [snapshot(float(n), owner=("bob", "carol")[n % 2]) for n in range(9)]
        admin_page = PageRequest.from_pb(pb.ListRequest(page_size=3)).page(everyone)
        carols = [job for job in everyone if job.owner == "carol"]
        replies = pages_from(carols, admin_page.next_page_token)
        self.assertEqual(
            ids(replies), [job.id for job in carols if job.started_at > 2.0]
        )


def pages_from(
    jobs: list[JobStatus], token: str, size: int = 0
) -> list[pb.ListResponse]:
    """The pages of `jobs` that follow `token`."""
    replies: list[pb.ListResponse] = []
    while token:
        request = pb.ListRequest(page_size=size, page_token=token)
        replies.append(PageRequest.from_pb(request).page(jobs))
        token = replies[-1].next_page_token
    return replies


class ListPagingTests(APITestCase):
    """Paging through the real server."""

    async def list_all(
        self, user: str, size: int = 0, token: str = ""
    ) -> list[pb.ListResponse]:
        """Every page `user` gets from `token` on (the first page if empty)."""
        replies: list[pb.ListResponse] = []
        while True:
            request = pb.ListRequest(page_size=size, page_token=token)
            replies.append(await self.call(user, "List", request))
            token = replies[-1].next_page_token
            if not token:
                return replies

    async def test_paging_returns_every_visible_job_once_in_start_order(self) -> None:
        started = [
            (user, await self.start_job(user, shell("true")))
            for user in ["bob", "carol", "alice"] * 4
        ]
        replies = await self.list_all("alice", size=5)
        self.assertEqual([len(r.jobs) for r in replies], [5, 5, 2])
        self.assertEqual(ids(replies), [job_id for _, job_id in started])
        replies = await self.list_all("bob", size=1)
        bobs = [job_id for user, job_id in started if user == "bob"]
        self.assertEqual(ids(replies), bobs)
        self.assertEqual(len(replies), 4)
        replies = await self.list_all("dave")
        self.assertEqual((ids(replies), len(replies)), ([], 1))

    async def test_page_size_is_capped_at_the_servers_maximum(self) -> None:
        self.patch(paging, "MAX_PAGE_SIZE", 2)
        for _ in range(3):
            await self.start_job("bob", shell("true"))
        replies = await self.list_all("bob", size=1000)
        self.assertEqual([len(r.jobs) for r in replies], [2, 1])

    async def test_client_list_all_fetches_every_page(self) -> None:
        self.patch(paging, "MAX_PAGE_SIZE", 2)
        started = [await self.start_job("bob", shell("true")) for _ in range(5)]
        jobs = await self.in_thread(list_all, self.stub("bob"), timeout=30)
        self.assertEqual([job.id for job in jobs], started)

    async def test_a_users_token_never_reveals_other_users_jobs(self) -> None:
        started = [
            (user, await self.start_job(user, shell("true")))
            for user in ["bob", "carol"] * 3
        ]
        first = await self.call("alice", "List", pb.ListRequest(page_size=1))
        self.assertEqual(first.jobs[0].id, started[0][1])
        replies = await self.list_all("carol", token=first.next_page_token)
        carols = [job_id for user, job_id in started if user == "carol"]
        self.assertEqual(ids(replies), carols)
        # bob's own token, used by carol: still only carol's jobs after it.
        bobs = await self.call("bob", "List", pb.ListRequest(page_size=2))
        replies = await self.list_all("carol", token=bobs.next_page_token)
        self.assertEqual(ids(replies), carols[1:])
        self.assertTrue(all(job.owner == "carol" for r in replies for job in r.jobs))

    async def test_bad_token_or_negative_size_is_invalid_argument(self) -> None:
        await self.start_job("bob", shell("true"))
        for request, word in (
            (pb.ListRequest(page_token="not a token"), "page_token"),
            (pb.ListRequest(page_token=str(uuid.uuid4())), "page_token"),
            (pb.ListRequest(page_size=-1), "page_size"),
        ):
            error = await self.error("bob", "List", request)
            self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT, request)
            self.assertIn(word, error.details())

    async def test_huge_commands_are_split_into_pages_under_the_byte_budget(
        self,
    ) -> None:
        started = [await self.start_job("bob", HUGE) for _ in range(5)]
        for user in ("alice", "bob"):
            replies = await self.list_all(user)
            self.assertEqual(ids(replies), started)
            sizes = [reply.ByteSize() for reply in replies]
            self.assertTrue(all(s <= PAGE_BYTES + TOKEN_ROOM for s in sizes), sizes)
