"""Plain values shared by the library, the API and the CLI.

Nothing here does I/O: limits, job states and the
immutable status snapshot of a job, and output chunks.
"""

from __future__ import annotations

import enum
import shlex
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Resource limits of one job; `None` means "not limited" (or "default").

    What values are allowed, and the server's defaults and maximums, are in
    `jobworker.limits` (`check`, `LimitPolicy`).
    """

    cpu: float | None = None
    memory_bytes: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    pids: int | None = None


class JobState(enum.Enum):
    """Where a job is in its life."""

    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    KILLED = "killed"
    LOST = "lost"
    """Ended while no server watched it: neither an exit status nor a kill
    by the server is known (the server crashed, or was killed, while it ran)."""

    @property
    def ended(self) -> bool:
        return self in (JobState.EXITED, JobState.KILLED, JobState.LOST)


class Stream(enum.IntEnum):
    """Which of the job's output streams a chunk of output came from."""

    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True)
class Usage:
    """What a job has used, as its cgroup counts it; None where not known.

    Unknown without isolation, and where the kernel lacks the counter
    (see doc/isolation.md, "Usage").
    """

    cpu_seconds: float | None = None
    memory_peak_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    pids_peak: int | None = None


@dataclass(frozen=True)
class JobStatus:
    """An immutable snapshot of one job."""

    id: str
    owner: str
    command: tuple[bytes, ...]
    state: JobState
    limits: Limits
    started_at: float
    ended_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    stop_requested: bool = False
    output_bytes: int = 0
    output_truncated: bool = False
    output_truncated_by: str = ""
    """What truncated the output: a cap's option ("output-cap",
    "user-output-quota", "min-free-disk") or the write's error; "" if none."""
    usage: Usage = Usage()
    """So far while the job runs (on Status), final once it has ended."""
    request_id: str | None = None
    """The caller's key that made its Start idempotent, if it gave one."""


def command_text(command: Sequence[bytes]) -> str:
    """The command as one shell-quoted string, invalid UTF-8 shown as \\xXX.

    The same for people (the CLI) and for the server's log lines.
    """
    return shlex.join(arg.decode("utf-8", "backslashreplace") for arg in command)


@dataclass(frozen=True)
class OutputChunk:
    """A run of bytes from one stream, at `offset` in the job's output log.

    `next_offset` is where the following chunk starts: the cursor a reader
    passes to continue after this chunk. `time` is when the server read its
    first byte (seconds since the epoch; None for a log without times).
    """

    stream: Stream
    offset: int
    next_offset: int
    data: bytes
    time: float | None = None


@dataclass(frozen=True)
class OutputState:
    """How much of a job's output log is readable, and whether it is final."""

    size: int
    complete: bool
