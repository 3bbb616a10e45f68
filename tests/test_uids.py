"""Tests for jobworker.isolation.uids: one uid per running job."""

from __future__ import annotations

from twisted.trial import unittest

from jobworker.errors import IsolationUnavailable, JobUidsExhausted
from jobworker.isolation.uids import UidPool, parse_range


class UidPoolTests(unittest.TestCase):
    def test_running_jobs_never_share_a_uid(self) -> None:
        pool = UidPool(70000, 70009)
        leased = [pool.lease().uid for _ in range(10)]
        self.assertEqual(sorted(leased), list(range(70000, 70010)))
        self.assertRaises(JobUidsExhausted, pool.lease)

    def test_the_gid_is_the_uid_and_there_are_no_groups(self) -> None:
        user = UidPool(70000, 70000).lease()
        self.assertEqual((user.uid, user.gid, user.groups), (70000, 70000, ()))

    def test_a_freed_uid_is_the_last_to_come_back(self) -> None:
        pool = UidPool(70000, 70002)
        first = pool.lease().uid
        pool.release(first, gone=True)
        self.assertEqual([pool.lease().uid for _ in range(3)], [70001, 70002, first])

    def test_a_uid_whose_job_may_still_run_is_held_back(self) -> None:
        pool = UidPool(70000, 70001)
        stuck = pool.lease().uid
        pool.release(stuck, gone=False)
        self.assertIn(stuck, pool.in_use)
        other = pool.lease().uid
        pool.release(other, gone=True)
        self.assertEqual(pool.lease().uid, other)
        self.assertRaises(JobUidsExhausted, pool.lease)

    def test_numbers_of_accounts_and_groups_are_skipped(self) -> None:
        # 65534 is "nobody" (and "nogroup") on every Debian system.
        pool = UidPool(65533, 65535)
        self.assertEqual({pool.lease().uid, pool.lease().uid}, {65533, 65535})
        self.assertRaises(JobUidsExhausted, pool.lease)

    def test_bad_ranges_are_refused(self) -> None:
        self.assertRaises(IsolationUnavailable, UidPool, 10, 9)
        self.assertEqual(parse_range("61184-65519"), (61184, 65519))
        for bad in ("", "1", "-5", "0-4", "9-1", "x-y", "1-4294967295"):
            self.assertRaises(ValueError, parse_range, bad)
