"""The `twistd jobworker` plugin: a pointer to `jobworker.server.tap`.

twistd parses `TwistdOptions`, which end a usage error with one line.
"""

from twisted.application.service import ServiceMaker
from twisted.python.reflect import namedAny


class _JobWorkerMaker(ServiceMaker):
    @property
    def options(self) -> object:
        return namedAny(f"{self.module}.TwistdOptions")  # type: ignore[no-untyped-call]


jobworker = _JobWorkerMaker(  # type: ignore[no-untyped-call]
    "jobworker",
    "jobworker.server.tap",
    "Run Linux processes for remote clients over a mutual-TLS gRPC API.",
    "jobworker",
)
