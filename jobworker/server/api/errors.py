"""Library exceptions to gRPC status codes, translated once, at the API edge.

A `JobWorkerError` becomes its precise code with its own message; `Refused`
carries the code chosen by the authentication layer; anything else is a
server bug: `INTERNAL` with a reference, the traceback only in the log.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

import grpc
from twisted.logger import Logger

from jobworker import errors

log = Logger()
T = TypeVar("T")

_CODES: tuple[tuple[type[errors.JobWorkerError], grpc.StatusCode], ...] = (
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.JobNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.StartFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.TooManyJobs, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ShuttingDown, grpc.StatusCode.UNAVAILABLE),
)


class Refused(Exception):
    """A call refused with a given status code (authentication, deadlines)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ClientGone(Exception):
    """The client cancelled or disconnected while the call was waiting."""


def status_for(error: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client gets for `error`."""
    if isinstance(error, Refused):
        return error.code, error.message
    if isinstance(error, ClientGone):
        return grpc.StatusCode.CANCELLED, str(error)
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code, str(error)
    reference = uuid.uuid4().hex[:12]
    log.failure(
        "internal error {reference} in {method}",
        reference=reference,
        method=method,
    )
    return grpc.StatusCode.INTERNAL, f"internal server error (reference {reference})"


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, text: str) -> NoReturn:
    """End the call with this status (grpc raises to unwind the handler)."""
    context.abort(code, text)
    raise AssertionError("grpc's abort returned")  # pragma: no cover


def _refused(
    method: str, context: grpc.ServicerContext, error: BaseException
) -> tuple[grpc.StatusCode, str]:
    """Map `error` and log the refusal with the caller's identity."""
    code, text = status_for(error, method)
    if code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED):
        # The one reading of the caller's identity (auth imports this module).
        from jobworker.server.api.auth import caller_of  # noqa: PLC0415

        try:
            identity = caller_of(context).identity
        except Refused:
            identity = "?"
        log.info(
            "{method} by {identity} refused: {code}: {text}",
            method=method,
            identity=identity,
            code=code.name,
            text=text,
        )
    return code, text


def call(method: str, context: grpc.ServicerContext, handler: Callable[[], T]) -> T:
    """Run a unary handler; any exception becomes the call's status."""
    try:
        return handler()
    except Exception as error:
        code, text = _refused(method, context, error)
    abort(context, code, text)


def stream(
    method: str, context: grpc.ServicerContext, responses: Iterator[T]
) -> Iterator[T]:
    """Relay a response stream; an exception ends it with the mapped status."""
    try:
        yield from responses
    except Exception as error:
        code, text = _refused(method, context, error)
    else:
        return
    abort(context, code, text)
