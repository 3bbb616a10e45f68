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

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc
from twisted.logger import Logger

from jobworker.server.api.auth import AuthenticatedContext, Caller, authenticate
from jobworker.server.api.errors import Refused, abort, status_for

log = Logger()
Behavior = Callable[[Any, grpc.ServicerContext], Any]
# Admission: the caller and how to release the call, or `Refused`.
Admit = Callable[[grpc.ServicerContext], tuple[Caller, Callable[[], None]]]

_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _admitted(
    admit: Admit, context: grpc.ServicerContext, method: str
) -> tuple[grpc.ServicerContext, Callable[[], None]]:
    """Admit the call or end it with its status.

    Returns the context to hand the handler (with the caller) and how to
    release the call.
    """
    try:
        caller, release = admit(context)
        return cast(
            grpc.ServicerContext, AuthenticatedContext(context, caller)
        ), release
    except Refused as refused:
        code, text = status_for(refused, method)
    log.info(
        "refused {method} from {peer}: {code} {reason}",
        method=method,
        peer=context.peer(),
        code=code.name,
        reason=text,
    )
    abort(context, code, text)


def _unary(method: str, behavior: Behavior, admit: Admit) -> Behavior:
    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        context, release = _admitted(admit, context, method)
        try:
            return behavior(request, context)
        finally:
            release()

    return unary


def _streaming(method: str, behavior: Behavior, admit: Admit) -> Behavior:
    def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context, release = _admitted(admit, context, method)
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

    def __init__(self, own_service: str, side_streams: int) -> None:
        self._own = f"/{own_service}/"
        self._slots = threading.BoundedSemaphore(side_streams)
        self.side_streams = side_streams

    def _authenticate(
        self, context: grpc.ServicerContext
    ) -> tuple[Caller, Callable[[], None]]:
        return authenticate(context), _nothing

    def _authenticate_and_take_slot(
        self, context: grpc.ServicerContext
    ) -> tuple[Caller, Callable[[], None]]:
        caller = authenticate(context)
        if not self._slots.acquire(blocking=False):
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many health watches or reflection streams open (the server"
                f" allows {self.side_streams}); try again later",
            )
        return caller, self._slots.release

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
        long_lived = handler.request_streaming or handler.response_streaming
        admit = (
            self._authenticate_and_take_slot
            if long_lived and not method.startswith(self._own)
            else self._authenticate
        )
        wrap = _streaming if handler.response_streaming else _unary
        for kind, factory in _FACTORIES.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                return factory(
                    wrap(method, behavior, admit),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
