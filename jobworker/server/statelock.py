"""One server per state directory: an exclusive lock held while it runs.

A second server on the same state directory would take the first one's job
cgroups for stale ones and kill its jobs; it refuses to start instead.
"""

from __future__ import annotations

import fcntl
import os

from twisted.application.service import Service

from jobworker.errors import JobWorkerError

LOCK_NAME = "jobworker.lock"


class StateDirBusy(JobWorkerError):
    """Another running server holds the state directory."""


class StateDirLock(Service):
    """Holds `<state_dir>/jobworker.lock` from construction to stopService."""

    def __init__(self, state_dir: str) -> None:
        path = os.path.join(state_dir, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise StateDirBusy(
                f"another jobworker server (pid {holder or '?'}) is using the"
                f" state directory {state_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another server use the state directory."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.release()
