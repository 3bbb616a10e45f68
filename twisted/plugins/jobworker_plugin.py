"""The `twistd jobworker` plugin: a pointer to `jobworker.server.tap`."""

from twisted.application.service import ServiceMaker

jobworker = ServiceMaker(  # type: ignore[no-untyped-call]
    "jobworker",
    "jobworker.server.tap",
    "Run Linux processes for remote clients over a mutual-TLS gRPC API.",
    "jobworker",
)
