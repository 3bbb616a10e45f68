"""`start -i` and `run -i`: the CLI's stdin, sent to the job's as it comes.

The bytes are read as they arrive (a terminal's line, a pipe's pieces) and
sent in one WriteInput call, which the server turns into the job's stdin;
our EOF ends the call, which is the job's EOF. `run -i` sends from a
thread while it copies the job's output, and leaves it behind once the job
has ended; `start -i` sends in the foreground, then returns.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator

from jobworker.cli.client import Client, ClientError

READ_BYTES = 64 * 1024


def stdin_pieces(fd: int | None = None) -> Iterator[bytes]:
    """What arrives on `fd` (our stdin), piece by piece, until its EOF."""
    fd = sys.stdin.fileno() if fd is None else fd
    while piece := os.read(fd, READ_BYTES):
        yield piece


class InputSender:
    """Sends our stdin to a job's in a thread; quiet once `done` is called."""

    def __init__(self, client: Client, job_id: str, say: Callable[[str], None]):
        self._client = client
        self._job_id = job_id
        self._say = say
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def start(self) -> InputSender:
        self._thread.start()
        return self

    def done(self) -> None:
        """The job has ended: what the sender meets now is no news."""
        self._done.set()

    def _send(self) -> None:
        try:
            self._client.write_input(self._job_id, stdin_pieces())
        except (ClientError, OSError) as error:
            if not self._done.is_set():
                self._say(f"cannot send input to job {self._job_id}: {error}")
