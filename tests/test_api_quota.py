"""Tests for jobworker.server.api.quota: Start/Stop turns, waited for fairly."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack

from twisted.trial import unittest

from jobworker.errors import ServerBusy
from jobworker.server.api.errors import ClientGone
from jobworker.server.api.quota import WaitingCalls


def never_ready(ready: threading.Event, timeout: float) -> None:
    """A park whose wait ends at once: the turn did not come in time."""


class Gone:
    """A park for a call whose client goes away while it waits."""

    def __call__(self, ready: threading.Event, timeout: float) -> None:
        raise ClientGone("the client went away")


class WaitingCallsTests(unittest.TestCase):
    def test_calls_within_a_callers_share_go_at_once(self) -> None:
        calls = WaitingCalls(total=10, per_caller=2)
        with calls.hold("bob"), calls.hold("bob"), calls.hold("alice"):
            self.assertEqual(calls.held("alice"), 1)
            self.assertEqual(calls.held("bob"), 2)
            self.assertEqual(calls.held(), 3)
        self.assertEqual((calls.held("bob"), calls.held()), (0, 0))

    def test_a_call_past_a_callers_share_waits_for_its_turn(self) -> None:
        calls = WaitingCalls(total=10, per_caller=1)
        first = calls.hold("bob")
        first.__enter__()
        entered, done = threading.Event(), threading.Event()

        def second() -> None:
            with calls.hold("bob"):
                entered.set()
            done.set()

        thread = threading.Thread(target=second)
        thread.start()
        self.addCleanup(thread.join, 30)
        self.assertTrue(_until(lambda: calls.waiting("bob") == 1))
        self.assertFalse(entered.is_set())
        first.__exit__(None, None, None)
        self.assertTrue(done.wait(30))
        self.assertTrue(entered.is_set())
        self.assertEqual((calls.held(), calls.waiting()), (0, 0))

    def test_freed_turns_go_round_the_callers_in_line(self) -> None:
        calls = WaitingCalls(total=2, per_caller=1)
        bob = calls._enter("bob")
        alice = calls._enter("alice")
        waiting = [calls._enter(who) for who in ("bob", "bob", "carol")]
        self.assertTrue(bob.granted and alice.granted)
        self.assertFalse(any(ticket.granted for ticket in waiting))
        calls._leave("bob")
        self.assertEqual([t.granted for t in waiting], [True, False, False])
        calls._leave("alice")  # carol's turn, before bob's second
        self.assertEqual([t.granted for t in waiting], [True, False, True])
        calls._leave("bob")
        self.assertEqual([t.granted for t in waiting], [True, True, True])

    def test_a_caller_past_its_line_is_busy_naming_it(self) -> None:
        calls = WaitingCalls(total=10, per_caller=1, queued_per_caller=1)
        with calls.hold("bob"):
            calls._enter("bob")
            error = self.assertRaises(ServerBusy, calls._enter, "bob")
            self.assertIn(
                "server busy: bob has 1 Start/Stop/Remove calls in progress", str(error)
            )
            self.assertIn("1 waiting", str(error))

    def test_calls_past_the_whole_line_are_busy_for_everyone(self) -> None:
        calls = WaitingCalls(total=1, per_caller=1, queued=1)
        with calls.hold("bob"):
            calls._enter("carol")
            error = self.assertRaises(ServerBusy, calls._enter, "alice")
            waiting = "1 Start/Stop/Remove calls are waiting their turn"
            self.assertIn(waiting, str(error))

    def test_a_wait_is_bounded_by_the_server_and_the_call(self) -> None:
        calls = WaitingCalls(total=1, per_caller=1, max_wait=60)
        bounds: list[float] = []

        def park(ready: threading.Event, timeout: float) -> None:
            bounds.append(timeout)

        with calls.hold("bob"):
            for timeout in (None, 5.0, 1e9):
                with self.assertRaises(ServerBusy), calls.hold("alice", park, timeout):
                    pass
        self.assertEqual(bounds, [60, 5.0, 60])
        self.assertEqual((calls.held(), calls.waiting()), (0, 0))

    def test_a_call_that_ends_while_waiting_leaves_the_line(self) -> None:
        calls = WaitingCalls(total=1, per_caller=1)
        with calls.hold("bob"):
            with self.assertRaises(ClientGone), calls.hold("alice", Gone()):
                pass
            self.assertEqual(calls.waiting(), 0)
        self.assertEqual(calls.held(), 0)

    def test_a_turn_that_comes_as_the_call_ends_is_passed_on(self) -> None:
        calls = WaitingCalls(total=1, per_caller=1)
        first = calls.hold("bob")
        first.__enter__()
        carol = calls._enter("carol")

        def park(ready: threading.Event, timeout: float) -> None:
            first.__exit__(None, None, None)  # alice's turn comes...
            raise ClientGone("...and alice is gone")

        with self.assertRaises(ClientGone), calls.hold("alice", park):
            pass
        self.assertTrue(carol.granted)
        self.assertEqual(calls.held("carol"), 1)
        self.assertEqual(calls.held("alice"), 0)

    def test_a_failing_call_gives_its_turn_back(self) -> None:
        calls = WaitingCalls(total=1, per_caller=1)

        def fail() -> None:
            with calls.hold("bob"):
                raise ValueError("boom")

        self.assertRaises(ValueError, fail)
        self.assertEqual(calls.held(), 0)
        with calls.hold("bob"):
            pass

    def test_no_entry_is_kept_for_idle_callers(self) -> None:
        calls = WaitingCalls(total=1, per_caller=1)
        with ExitStack() as stack:
            stack.enter_context(calls.hold("user"))
            for n in range(100):
                with self.assertRaises(ServerBusy):
                    stack.enter_context(calls.hold(f"user{n}", never_ready, 1))
        self.assertEqual((calls._held, calls._lines, list(calls._round)), ({}, {}, []))


def _until(predicate: Callable[[], bool]) -> bool:
    event = threading.Event()
    for _ in range(3000):
        if predicate():
            return True
        event.wait(0.01)
    return False
