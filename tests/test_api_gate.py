"""The gate interceptor: each method's handler is wrapped once, every call admitted.

The handler grpc calls is made the first time a method is looked up and
reused while the service hands out the same handler; each call through it
is still authenticated (here: refused for its TLS version).
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
from twisted.trial import unittest

from jobworker.server.api.gate import Gate

SERVICE = "jobworker.v1.JobWorker"
STATUS = f"/{SERVICE}/Status"


@dataclass(frozen=True)
class Details:
    method: str


class Aborted(Exception):
    pass


class TLS12Context:
    """A call over TLS 1.2: `authenticate` refuses it."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"ssl_tls_version": [b"TLSv1.2"]}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


class GateTests(unittest.TestCase):
    def setUp(self) -> None:
        self.refused: list[tuple[str, str]] = []
        self.gate = Gate(
            SERVICE,
            2,
            on_refused=lambda method, code: self.refused.append((method, code)),
        )
        self.ran = 0

    def behavior(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.ran += 1
        return request

    def lookup(self, handler: Handler) -> Handler:
        def continuation(details: grpc.HandlerCallDetails) -> Handler:
            return handler

        found = self.gate.intercept_service(
            continuation, cast(grpc.HandlerCallDetails, Details(STATUS))
        )
        assert found is not None
        return found

    def test_a_method_is_wrapped_once(self) -> None:
        handler = grpc.unary_unary_rpc_method_handler(self.behavior)
        first = self.lookup(handler)
        self.assertIsNot(first, handler)
        self.assertIs(self.lookup(handler), first)

    def test_a_new_handler_of_the_method_is_wrapped_anew(self) -> None:
        first = self.lookup(grpc.unary_unary_rpc_method_handler(self.behavior))
        other = self.lookup(grpc.unary_unary_rpc_method_handler(self.behavior))
        self.assertIsNot(other, first)

    def test_every_call_of_the_reused_handler_is_authenticated(self) -> None:
        handler = grpc.unary_unary_rpc_method_handler(self.behavior)
        context = cast(grpc.ServicerContext, TLS12Context())
        for _ in range(2):
            call = self.lookup(handler).unary_unary
            assert call is not None
            with self.assertRaises(Aborted) as raised:
                call(b"x", context)
            self.assertEqual(raised.exception.args[0], grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.ran, 0)
        self.assertEqual(self.refused, [("Status", "UNAUTHENTICATED")] * 2)
