"""Library exceptions to gRPC status codes, translated once, at the API edge.

A `JobWorkerError` becomes its precise code with its own message; `Refused`
carries the code chosen by the authentication layer; anything else is a
server bug: `INTERNAL` with a reference, the traceback only in the log.
`refuse` is the one place a refused call is logged: its client-supplied
parts cut and escaped (`jobworker.untrusted`), and a burst of refusals of
one caller summarised (`jobworker.logbursts`). This module knows nothing of
callers (`auth` imports it, not the other way round).
"""

from __future__ import annotations

import uuid
from typing import NoReturn

import grpc
from twisted.logger import Logger

from jobworker import errors
from jobworker.logbursts import Bursts
from jobworker.untrusted import shown

log = Logger()
# A refusal's message is the server's words with client values already cut;
# the whole is bounded again, more loosely, for the log.
LOGGED_TEXT_CHARS = 600


def refusal_bursts() -> Bursts:
    """A server's summariser of refusal bursts, shared by all its calls."""
    return Bursts(log, "refused calls")


_CODES: tuple[tuple[type[errors.JobWorkerError], grpc.StatusCode], ...] = (
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.JobNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.StartFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.JobNotEnded, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.TooManyJobs, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.InputClosed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InputTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
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


class AlreadyLogged(Exception):
    """A library error already logged where it happened, with more detail.

    A Start the manager refuses is logged by the job events log with its
    command (`jobworker.job.events`); the call maps `error` as usual and
    `refuse` does not log it a second time.
    """

    def __init__(self, error: errors.JobWorkerError) -> None:
        super().__init__(str(error))
        self.error = error


# What a call may fail with on purpose; anything else is a bug.
EXPECTED = (errors.JobWorkerError, Refused, ClientGone, AlreadyLogged)


def status_for(error: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client gets for `error`."""
    if isinstance(error, AlreadyLogged):
        return status_for(error.error, method)
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


def refuse(
    method: str, identity: str, peer: str, error: BaseException, bursts: Bursts
) -> tuple[grpc.StatusCode, str]:
    """The status for `error`, the refusal logged once with who was refused.

    A bug is logged by `status_for` (with its traceback), a client that
    went away is not a refusal, and an `AlreadyLogged` error was logged.
    Past a burst of refusals of one caller, `bursts` counts them instead.
    """
    code, text = status_for(error, method)
    quiet = (grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED)
    if code not in quiet and not isinstance(error, AlreadyLogged):
        who = shown(identity)
        what = f"{shown(method)}: {code.name}: {shown(text, LOGGED_TEXT_CHARS)}"
        if bursts.admit(who, what):
            log.info(
                "{method} by {caller} ({peer}) refused: {code}: {text}",
                method=shown(method),
                caller=who,
                peer=shown(peer),
                code=code.name,
                outcome="refused",
                text=shown(text, LOGGED_TEXT_CHARS),
            )
    return code, text


def final(error: BaseException) -> bool:
    """Whether a `RESOURCE_EXHAUSTED` refusal is one clients must not retry.

    A cap (`TooManyJobs`: running jobs per user, a follower share, a
    quota) stays reached for a while; only `ServerBusy` is worth retrying.
    """
    if isinstance(error, AlreadyLogged):
        error = error.error
    return isinstance(error, errors.TooManyJobs) and not isinstance(
        error, errors.ServerBusy
    )


# grpc's retry policy does not retry a call whose trailers carry this
# pushback with a negative value (gRFC A6).
NO_RETRY = (("grpc-retry-pushback-ms", "-1"),)


def abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    text: str,
    *,
    retry: bool = True,
) -> NoReturn:
    """End the call with this status (grpc raises to unwind the handler).

    `retry=False` tells a client's retry policy not to retry it.
    """
    if not retry:
        context.set_trailing_metadata(NO_RETRY)
    context.abort(code, text)
    raise AssertionError("grpc's abort returned")  # pragma: no cover
