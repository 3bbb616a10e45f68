"""What `jobworker logs` needs besides the API: `--since` and `--timestamps`.

`parse_since` reads a duration ("90s", "5m", "1h30m": that long before
now) or a time (ISO 8601, "2024-05-01T12:00:00Z"; without a zone, local
time). `LinePrefixer` puts the time the server read each line (of each
stream) in front of it, as `docker logs -t` does, in UTC to the millisecond.
"""

from __future__ import annotations

from datetime import UTC, datetime

from jobworker.model import Stream
from jobworker.units import InvalidDuration, parse_duration


class InvalidSince(ValueError):
    """A `--since` that is neither a duration nor a time."""


def parse_since(text: str, now: float) -> float:
    """The time `text` means, in seconds since the epoch."""
    spec = text.strip()
    try:
        return now - parse_duration(spec)
    except InvalidDuration:
        pass
    try:
        when = datetime.fromisoformat(spec)
    except ValueError:
        raise InvalidSince(
            f"{text!r} is neither a duration (90s, 5m, 1h30m, 2d) nor a time"
            " (2024-05-01T12:00:00Z, 2024-05-01 12:00)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return when.timestamp()


def time_text(seconds: float) -> str:
    """ "2024-05-01T12:00:00.123Z": UTC, to the millisecond."""
    when = datetime.fromtimestamp(seconds, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class LinePrefixer:
    """Each stream's lines, with the time of the chunk each line began in."""

    def __init__(self) -> None:
        self._at_line_start = {Stream.STDOUT: True, Stream.STDERR: True}

    def prefixed(self, stream: Stream, data: bytes, time: float | None) -> bytes:
        """`data` of `stream` with "TIME " at the start of each of its lines."""
        if not data:
            return data
        prefix = b"" if time is None else time_text(time).encode() + b" "
        out: list[bytes] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start) + 1 or len(data)
            if self._at_line_start[stream]:
                out.append(prefix)
            out.append(data[start:end])
            self._at_line_start[stream] = data[end - 1] == 0x0A
            start = end
        return b"".join(out)
