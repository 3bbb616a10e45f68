"""Job ids and their prefixes, resolved among the jobs a caller may see."""

from __future__ import annotations

from twisted.trial import unittest

from jobworker.errors import JobNotFound
from jobworker.job.board import StatusBoard
from jobworker.model import JobState, JobStatus, Limits
from jobworker.server.api.auth import Caller, Role
from jobworker.server.api.ids import AmbiguousJobId, resolve

ALICE = Caller("alice", Role.ADMIN)
BOB = Caller("bob", Role.USER)


def _board(*jobs: tuple[str, str]) -> StatusBoard:
    board = StatusBoard()
    for at, (job_id, owner) in enumerate(jobs):
        board.publish(
            JobStatus(job_id, owner, (b"true",), JobState.RUNNING, Limits(), at)
        )
    return board


class ResolveTests(unittest.TestCase):
    def test_a_whole_id_is_resolved_even_when_shorter_than_a_prefix(self) -> None:
        board = _board(("ab", "bob"))
        self.assertEqual(resolve(board, BOB, "ab").id, "ab")

    def test_a_unique_prefix_is_resolved(self) -> None:
        board = _board(("abcd-1", "bob"), ("abce-2", "bob"))
        self.assertEqual(resolve(board, BOB, "abcd").id, "abcd-1")

    def test_other_users_jobs_neither_match_nor_make_it_ambiguous(self) -> None:
        board = _board(("abcd-1", "bob"), ("abcd-2", "carol"))
        self.assertEqual(resolve(board, BOB, "abcd").id, "abcd-1")
        self.assertRaises(JobNotFound, resolve, board, BOB, "abcd-2")
        self.assertRaises(
            JobNotFound, resolve, board, Caller("dave", Role.USER), "abcd"
        )

    def test_an_admin_resolves_among_every_job(self) -> None:
        board = _board(("abcd-1", "bob"), ("abcd-2", "carol"))
        error = self.assertRaises(AmbiguousJobId, resolve, board, ALICE, "abcd")
        self.assertEqual(
            str(error),
            "job id prefix 'abcd' matches 2 jobs: abcd-1, abcd-2; give more of the id",
        )

    def test_a_short_prefix_is_not_found(self) -> None:
        board = _board(("abcd-1", "bob"))
        self.assertRaises(JobNotFound, resolve, board, BOB, "abc")

    def test_many_matches_are_counted_not_all_listed(self) -> None:
        board = _board(*((f"abcd-{n:02}", "bob") for n in range(12)))
        error = self.assertRaises(AmbiguousJobId, resolve, board, BOB, "abcd-")
        self.assertIn("matches 12 jobs: abcd-00,", str(error))
        self.assertTrue(str(error).endswith("abcd-09 and 2 more; give more of the id"))
