"""The reactor bridge: every wait ends, and what it waited for is cancelled.

A fake reactor runs `callFromThread` calls at once, in the calling thread,
so each path (result, failure, timeout, client gone, server closing) is
checked without threads or real time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.trial import unittest

from jobworker.errors import JobNotFound, ShuttingDown
from jobworker.server.api.bridge import Bridge
from jobworker.server.api.errors import ClientGone, Refused


class ImmediateReactor:
    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        function(*args)


class FakeContext:
    """The part of grpc.ServicerContext the bridge uses."""

    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.callbacks: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self.active:
            self.callbacks.append(callback)
        return self.active

    def disconnect(self) -> None:
        for callback in self.callbacks:
            callback()


class Pending:
    """A Deferred that never fires by itself; records its cancellation."""

    def __init__(self) -> None:
        self.cancelled = False
        self.deferred: Deferred[Any] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[Any]) -> None:
        self.cancelled = True


class BridgeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.bridge = Bridge(cast(IReactorFromThreads, ImmediateReactor()))
        self.context = FakeContext()
        self.waiter = self.bridge.waiter(self.context)  # type: ignore[arg-type]

    def test_result_is_returned(self) -> None:
        self.assertEqual(self.waiter.wait(lambda: 42), 42)
        self.assertEqual(self.waiter.wait(succeed, "yes"), "yes")

    def test_library_error_is_raised_in_the_grpc_thread(self) -> None:
        self.assertRaises(JobNotFound, self.waiter.wait, fail, JobNotFound("x"))

    def test_timeout_is_deadline_exceeded_and_cancels(self) -> None:
        pending = Pending()
        error = self.assertRaises(
            Refused, self.waiter.wait, lambda: pending.deferred, timeout=0.001
        )
        self.assertEqual(error.code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertTrue(pending.cancelled)

    def test_client_leaving_releases_the_wait_and_cancels(self) -> None:
        pending = Pending()

        def start() -> Deferred[Any]:
            # The client goes away while we wait (here: as soon as we start).
            self.context.disconnect()
            return pending.deferred

        self.assertRaises(ClientGone, self.waiter.wait, start)
        self.assertTrue(pending.cancelled)
        self.assertRaises(ClientGone, self.waiter.wait, lambda: 1)

    def test_operation_that_must_finish_is_not_cancelled(self) -> None:
        pending = Pending()

        def start() -> Deferred[Any]:
            self.context.disconnect()
            return pending.deferred

        self.assertRaises(ClientGone, self.waiter.wait, start, cancel_on_end=False)
        self.assertFalse(pending.cancelled)

    def test_closing_ends_open_waits_and_refuses_new_calls(self) -> None:
        pending = Pending()

        def start() -> Deferred[Any]:
            self.bridge.close()
            return pending.deferred

        error = self.assertRaises(ShuttingDown, self.waiter.wait, start)
        self.assertEqual(str(error), "server shutting down")
        self.assertTrue(pending.cancelled)
        self.assertRaises(ShuttingDown, self.bridge.waiter, FakeContext())

    def test_call_already_over_is_ended_at_once(self) -> None:
        waiter = self.bridge.waiter(FakeContext(active=False))  # type: ignore[arg-type]
        self.assertRaises(ClientGone, waiter.wait, lambda: 1)

    def test_finished_calls_are_forgotten(self) -> None:
        self.assertEqual(self.bridge.active, 1)
        self.bridge.done(self.waiter)
        self.assertEqual(self.bridge.active, 0)
