"""Start-up failures as one line: `jobworker: cannot start: <reason>`, exit 1.

A failure found before twistd starts logging (a usage error, bad TLS
material, isolation missing) is `cannot_start`: a `SystemExit` whose
message Python prints on stderr. One found once logging has begun (the API
port cannot be bound) happens in `startService`; `CheckedStart` logs it as
one critical event with the same words, then exits 1, instead of the
traceback twistd would print.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from jobworker.errors import JobWorkerError

log = Logger()
PREFIX = "jobworker: cannot start: "


def cannot_start(reason: object) -> SystemExit:
    """The exit for a start-up failure: one line on stderr, status 1."""
    return SystemExit(f"{PREFIX}{reason}")


class CheckedStart(MultiService):
    """A MultiService whose start-up failure is one log line and exit 1."""

    def startService(self) -> None:
        try:
            super().startService()  # type: ignore[no-untyped-call]
        except (JobWorkerError, OSError, CannotListenError) as error:
            log.critical(PREFIX + "{reason}", reason=str(error), outcome="failed")
            raise SystemExit(1) from None
