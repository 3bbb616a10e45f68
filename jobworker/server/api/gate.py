"""The server's one interceptor: authentication, then admission, for every call.

Every method of every service (JobWorker, health, reflection) first passes
`authenticate` (TLS 1.3, one CN, one known role); the handler gets the
`Caller` with its context (`AuthenticatedContext`), not to do it again.
Long-lived calls of the other services (health `Watch`, reflection) hold a
grpc thread each, like followers; they get a small cap of their own so
that they, too, cannot take the threads Start/Stop/Status need.
(JobWorker's followers are capped by the service, with a clearer message.)
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc

from jobworker.logbursts import Bursts
from jobworker.server.api.auth import AuthenticatedContext, authenticate
from jobworker.server.api.errors import Refused, abort, refusal_bursts, refuse

Behavior = Callable[[Any, grpc.ServicerContext], Any]
# Admission: the context to hand the handler and how to release the call.
Admit = Callable[
    [grpc.ServicerContext], tuple[grpc.ServicerContext, Callable[[], None]]
]

_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _unary(behavior: Behavior, admit: Admit) -> Behavior:
    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        context, release = admit(context)
        try:
            return behavior(request, context)
        finally:
            release()

    return unary


def _streaming(behavior: Behavior, admit: Admit) -> Behavior:
    def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context, release = admit(context)
        try:
            yield from behavior(request, context)
        finally:
            release()

    return streaming


def _nothing() -> None:
    return None


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:  # grpcio's class is not generic at run time, only in grpc-stubs
    _Interceptor = grpc.ServerInterceptor


class Gate(_Interceptor):
    """Authenticates every call; caps long-lived calls outside `own_service`."""

    def __init__(
        self,
        own_service: str,
        side_streams: int,
        on_refused: Callable[[str, str], None] = lambda method, code: None,
        refusals: Bursts | None = None,
    ) -> None:
        """`on_refused(method, code name)` hears of every call refused here
        (`own_service`'s methods by name, the others by their whole path);
        `refusals` summarises bursts of them in the log."""
        self._own = f"/{own_service}/"
        self._on_refused = on_refused
        self._refusals = refusals or refusal_bursts()
        self._slots = threading.BoundedSemaphore(side_streams)
        self.side_streams = side_streams
        # Method path -> (the service's handler, ours around it): both are
        # the same for every call of a method, so ours is made once.
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def _take_slot(self) -> Callable[[], None]:
        """A slot for a long-lived call, and how to give it back."""
        if not self._slots.acquire(blocking=False):
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many health watches or reflection streams open (the server"
                f" allows {self.side_streams}); try again later",
            )
        return self._slots.release

    def _admit(
        self, context: grpc.ServicerContext, method: str, capped: bool
    ) -> tuple[grpc.ServicerContext, Callable[[], None]]:
        """Authenticate (and, if `capped`, take a slot) or end the call.

        Returns the context to hand the handler (with the caller) and how to
        release the call.
        """
        identity = "?"
        try:
            caller = authenticate(context)
            identity = caller.identity
            release = self._take_slot() if capped else _nothing
        except Refused as refused:
            code, text = refuse(
                method, identity, context.peer(), refused, self._refusals
            )
            # JobWorker's methods by name, as the servicer counts them.
            self._on_refused(method.removeprefix(self._own), code.name)
            abort(context, code, text)
        authenticated = AuthenticatedContext(context, caller)
        return cast(grpc.ServicerContext, authenticated), release

    def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        made = self._wrapped.get(method)
        if made is not None and made[0] is handler:
            return made[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` with every call of it admitted first."""
        long_lived = handler.request_streaming or handler.response_streaming
        capped = long_lived and not method.startswith(self._own)
        admit = functools.partial(self._admit, method=method, capped=capped)
        wrap = _streaming if handler.response_streaming else _unary
        for kind, factory in _FACTORIES.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                return factory(
                    wrap(behavior, admit),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
