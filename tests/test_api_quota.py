"""Tests for jobworker.server.api.quota: calls that wait are budgeted per caller."""

from __future__ import annotations

from twisted.trial import unittest

from jobworker.errors import TooManyJobs
from jobworker.server.api.quota import WaitingCalls


class WaitingCallsTests(unittest.TestCase):
    def test_calls_past_a_callers_share_are_refused_for_that_caller(self) -> None:
        calls = WaitingCalls(total=10, per_caller=2)
        with calls.hold("bob"), calls.hold("bob"):
            error = self.assertRaises(TooManyJobs, calls.hold("bob").__enter__)
            self.assertIn("bob has 2 Start/Stop calls in progress", str(error))
            with calls.hold("alice"):
                self.assertEqual(calls.held("alice"), 1)
                self.assertEqual(calls.held(), 3)
        self.assertEqual((calls.held("bob"), calls.held()), (0, 0))

    def test_calls_past_the_total_are_refused_for_everyone(self) -> None:
        calls = WaitingCalls(total=2, per_caller=2)
        with calls.hold("bob"), calls.hold("carol"):
            error = self.assertRaises(TooManyJobs, calls.hold("alice").__enter__)
            self.assertIn("the server has 2 Start/Stop calls", str(error))

    def test_a_failing_call_gives_its_slot_back(self) -> None:
        calls = WaitingCalls(total=1, per_caller=1)

        def fail() -> None:
            with calls.hold("bob"):
                raise ValueError("boom")

        self.assertRaises(ValueError, fail)
        self.assertEqual(calls.held(), 0)
        with calls.hold("bob"):
            pass

    def test_no_entry_is_kept_for_idle_callers(self) -> None:
        calls = WaitingCalls()
        for n in range(100):
            with calls.hold(f"user{n}"):
                pass
        self.assertEqual(calls._held, {})
