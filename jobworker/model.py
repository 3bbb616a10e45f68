"""Plain values shared by the library, the API and the CLI.

Nothing here does I/O: limits and their policy, job states and the
immutable status snapshot of a job, and output chunks.
"""

from __future__ import annotations

import enum
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

from jobworker.errors import InvalidRequest

# Hard sanity bounds, whatever the server's configured maximums say.
_MAX_BYTES = 1 << 62
_MAX_PIDS = 1 << 22
_MAX_CPU = 4096.0
_MIN_CPU = 0.001  # cgroup CPU quota granularity (1 ms per 1 s period)
_MIN_MEMORY = 1 << 20  # below 1 MiB a job cannot even exec


@dataclass(frozen=True)
class Limits:
    """Resource limits of one job; `None` means "not limited" (or "default")."""

    cpu: float | None = None
    memory_bytes: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    pids: int | None = None

    def validate(self) -> None:
        """Raise `InvalidRequest` if any value is out of its sane range."""
        if self.cpu is not None and not (
            math.isfinite(self.cpu) and _MIN_CPU <= self.cpu <= _MAX_CPU
        ):
            raise InvalidRequest(
                f"cpu must be between {_MIN_CPU} and {_MAX_CPU} CPUs, got {self.cpu}"
            )
        if self.memory_bytes is not None and not (
            _MIN_MEMORY <= self.memory_bytes <= _MAX_BYTES
        ):
            raise InvalidRequest(
                f"memory must be between {_MIN_MEMORY} and {_MAX_BYTES} bytes,"
                f" got {self.memory_bytes}"
            )
        for name in ("io_read_bps", "io_write_bps"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= _MAX_BYTES:
                raise InvalidRequest(
                    f"{name} must be between 1 and {_MAX_BYTES}, got {value}"
                )
        if self.pids is not None and not 1 <= self.pids <= _MAX_PIDS:
            raise InvalidRequest(
                f"pids must be between 1 and {_MAX_PIDS}, got {self.pids}"
            )


@dataclass(frozen=True)
class LimitPolicy:
    """Server-side defaults and maximums for job limits.

    A requested limit must not exceed the maximum; an unrequested one takes
    the default (which itself may be `None`: unlimited, allowed only when
    there is no maximum).
    """

    defaults: Limits = Limits()
    maximums: Limits = Limits()

    def __post_init__(self) -> None:
        self.defaults.validate()
        self.maximums.validate()
        for field in fields(Limits):
            default = getattr(self.defaults, field.name)
            maximum = getattr(self.maximums, field.name)
            if maximum is not None and (default is None or default > maximum):
                raise InvalidRequest(
                    f"default {field.name} must be set and at most the maximum"
                    f" ({maximum})"
                )

    def resolve(self, requested: Limits | None) -> Limits:
        """The limits a job gets: the request checked, defaults filled in."""
        requested = requested or Limits()
        requested.validate()
        resolved = requested
        for field in fields(Limits):
            value = getattr(requested, field.name)
            maximum = getattr(self.maximums, field.name)
            if value is None:
                resolved = replace(
                    resolved, **{field.name: getattr(self.defaults, field.name)}
                )
            elif maximum is not None and value > maximum:
                raise InvalidRequest(
                    f"{field.name} {value} is above the server's maximum {maximum}"
                )
        return resolved


class JobState(enum.Enum):
    """Where a job is in its life."""

    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    KILLED = "killed"

    @property
    def ended(self) -> bool:
        return self in (JobState.EXITED, JobState.KILLED)


class Stream(enum.IntEnum):
    """Which of the job's output streams a chunk of output came from."""

    STDOUT = 1
    STDERR = 2


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


def command_text(command: Sequence[bytes]) -> str:
    """The command as one shell-quoted string, invalid UTF-8 shown as \\xXX.

    The same for people (the CLI) and for the server's log lines.
    """
    return shlex.join(arg.decode("utf-8", "backslashreplace") for arg in command)


@dataclass(frozen=True)
class OutputChunk:
    """A run of bytes from one stream, at `offset` in the job's output log.

    `next_offset` is where the following chunk starts: the cursor a reader
    passes to continue after this chunk.
    """

    stream: Stream
    offset: int
    next_offset: int
    data: bytes


@dataclass(frozen=True)
class OutputState:
    """How much of a job's output log is readable, and whether it is final."""

    size: int
    complete: bool
