"""grpcio handler threads calling into the reactor thread, and waiting safely.

Every wait has a way out: a bounded timeout, the client going away
(`context.add_callback`), or the server closing. In each case the waiting
thread is released at once and the pending Deferred is cancelled on the
reactor thread, which releases whatever the library held for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, overload

import grpc
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from jobworker.errors import ShuttingDown
from jobworker.server.api.errors import ClientGone, Refused

T = TypeVar("T")


class Bridge:
    """Runs library calls on the reactor; tracks waiting calls to end them."""

    def __init__(self, reactor: IReactorFromThreads) -> None:
        self._reactor = reactor
        self._lock = threading.Lock()
        self._calls: set[CallWaiter] = set()
        self.closed = False

    def waiter(self, context: grpc.ServicerContext) -> CallWaiter:
        """A waiter for one RPC; released when the client goes or we close."""
        waiter = CallWaiter(self._reactor)
        with self._lock:
            self.check_open()
            self._calls.add(waiter)
        if not context.add_callback(waiter.client_gone):
            waiter.client_gone()
        return waiter

    @contextmanager
    def waiting(self, context: grpc.ServicerContext) -> Iterator[CallWaiter]:
        """A `waiter` for the body of the `with`, forgotten when it is done."""
        waiter = self.waiter(context)
        try:
            yield waiter
        finally:
            self.done(waiter)

    def post(self, function: Callable[..., object], *args: Any) -> None:
        """Call `function(*args)` on the reactor, without waiting for it."""
        self._reactor.callFromThread(function, *args)

    def check_open(self) -> None:
        """Raise `ShuttingDown` once the server has begun to close."""
        if self.closed:
            raise ShuttingDown("server shutting down")

    def done(self, waiter: CallWaiter) -> None:
        """Forget a finished call."""
        with self._lock:
            self._calls.discard(waiter)

    def close(self) -> None:
        """Refuse new calls and end every wait in progress with ShuttingDown."""
        with self._lock:
            self.closed = True
            calls = list(self._calls)
        for waiter in calls:
            waiter.end(ShuttingDown("server shutting down"))

    @property
    def active(self) -> int:
        """How many calls are in progress."""
        with self._lock:
            return len(self._calls)


class CallWaiter:
    """One RPC's waits on the reactor; ended by a disconnect or a close."""

    def __init__(self, reactor: IReactorFromThreads) -> None:
        self._reactor = reactor
        self._lock = threading.Lock()
        self._ended: BaseException | None = None
        self._pending: Deferred[Any] | None = None
        self._wake: threading.Event | None = None

    def client_gone(self) -> None:
        """grpc's termination callback: the call is over for the client."""
        self.end(ClientGone("the client went away"))

    def end(self, reason: BaseException) -> None:
        """Release the waiting thread now; cancel the pending Deferred."""
        with self._lock:
            if self._ended is None:
                self._ended = reason
            pending, wake = self._pending, self._wake
        if wake is not None:
            wake.set()
        if pending is not None:
            self._reactor.callFromThread(pending.cancel)

    def _reason(self) -> BaseException | None:
        return self._ended

    def park(self, ready: threading.Event, timeout: float) -> None:
        """Block until `ready` is set or `timeout` passes (on this thread).

        Raises the reason if the call ends first (client gone, closing).
        """
        with self._lock:
            if self._ended is not None:
                raise self._ended
            self._wake = ready
        try:
            ready.wait(timeout)
        finally:
            with self._lock:
                self._wake = None
                ended = self._ended
        if ended is not None:
            raise ended

    @overload
    def wait(
        self,
        function: Callable[..., Deferred[T]],
        *args: Any,
        timeout: float | None = None,
        cancel_on_end: bool = True,
    ) -> T: ...

    @overload
    def wait(
        self,
        function: Callable[..., T],
        *args: Any,
        timeout: float | None = None,
        cancel_on_end: bool = True,
    ) -> T: ...

    def wait(
        self,
        function: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        cancel_on_end: bool = True,
    ) -> Any:
        """Call `function(*args)` on the reactor and wait for its result.

        Raises its exception; `ClientGone` or `ShuttingDown` when the call
        ends first; `Refused(DEADLINE_EXCEEDED)` after `timeout` seconds. The
        Deferred is cancelled in each of those cases, unless `cancel_on_end`
        is false (an operation that should complete even if nobody waits).
        """
        wake = threading.Event()
        outcome: list[Any] = []
        gave_up = threading.Event()

        def finished(result: object) -> None:
            with self._lock:
                outcome.append(result)
            wake.set()

        def begin() -> None:
            with self._lock:
                if self._ended is not None or gave_up.is_set():
                    return
            d: Deferred[Any] = maybeDeferred(function, *args)
            with self._lock:
                late = self._ended is not None or gave_up.is_set()
                if cancel_on_end and not late:
                    self._pending = d
            d.addBoth(finished)
            if late and cancel_on_end:
                d.cancel()

        with self._lock:
            if self._ended is not None:
                raise self._ended
            self._wake = wake
        self._reactor.callFromThread(begin)
        wake.wait(timeout)
        with self._lock:
            self._wake = None
            pending, self._pending = self._pending, None
            ended = self._reason()
            results = list(outcome)
            if not results:
                gave_up.set()
        if results:
            result = results[0]
            if not isinstance(result, Failure):
                return result
            if ended is None or not isinstance(result.value, CancelledError):
                result.raiseException()
        if pending is not None:
            self._reactor.callFromThread(pending.cancel)
        if ended is not None:
            raise ended
        raise Refused(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the server did not finish within {timeout:g} seconds",
        )
