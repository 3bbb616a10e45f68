"""The job limits as one table: each `Limits` field's flag, help, parser and format.

`LIMITS` has one row per field of `jobworker.model.Limits`, in field order;
the protobuf `Limits` message has the same field names. The CLI's limit
options, the server's `--default-*`/`--max-*` options, the protobuf
conversion and the two texts that show limits are all generated from it, so
a new limit is a field, a row and its cgroup files. Each row also holds
the values any job may have at all (`check`), whatever a server allows
(`LimitPolicy`), and every message about a value shows it as people type
it: "memory 1 is below the minimum, 1M".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from jobworker.errors import InvalidRequest
from jobworker.model import Limits
from jobworker.units import format_size, positive, positive_size
from jobworker.v1 import jobworker_pb2 as pb

Value = float | int


@dataclass(frozen=True)
class Unit:
    """What a limit counts: how it is typed, parsed and shown."""

    metavar: str
    parse: Callable[[str], Value]
    """Text as typed to a value; raises `InvalidNumber` saying what is wrong."""
    format: Callable[[Value], str]
    """A value for people, as `parse` reads it: "0.5", "512M", "1024".

    Exact, except a size that is no whole number of K, M, G or T and at
    least 1K, which is rounded ("1.1K").
    """
    per: str = ""
    """What people see after a value: "/s" for a rate."""


CPUS = Unit("CPUS", positive(float), lambda value: f"{value:g}")
BYTES = Unit("SIZE", positive_size, lambda value: format_size(int(value)))
BYTE_RATE = Unit("SIZE", positive_size, BYTES.format, per="/s")
COUNT = Unit("N", positive(int), lambda value: str(int(value)))


@dataclass(frozen=True)
class Limit:
    """One row of the table: a `Limits` field and how people write it."""

    name: str
    """The field of `Limits` and of the protobuf `Limits` message."""
    flag: str
    """The option stem: `--memory` (CLI), `--default-memory`, `--max-memory`."""
    label: str
    """The limit's name in `jobworker status`: "memory", "io-read"."""
    help: str
    """What it limits, for the options' help: "disk reads/s"."""
    example: str
    """A value to show in the CLI's help."""
    unit: Unit
    minimum: Value
    """The least value any job may have: below 1M of memory nothing execs."""
    ceiling: Value
    """The most any job may have, whatever the server's maximum says."""

    def parse(self, text: str) -> Value:
        """A value of this limit as typed; raises `InvalidNumber`."""
        return self.unit.parse(text)

    def format(self, value: Value) -> str:
        """A value of this limit as people read it (see `Unit.format`)."""
        return self.unit.format(value)

    def shown(self, value: Value | None) -> str:
        """A value with what it is per: "512M", "10M/s", "unlimited"."""
        if value is None:
            return "unlimited"
        return self.format(value) + self.unit.per

    def out_of_range(self, value: Value) -> str | None:
        """Why no job may have `value` ("is below the minimum, 1M"), or None."""
        if not math.isfinite(value):
            return "is not a number"
        if value < self.minimum:
            return f"is below the minimum, {self.shown(self.minimum)}"
        if value > self.ceiling:
            return f"is above the most jobworker allows, {self.shown(self.ceiling)}"
        return None


_MAX_BYTES = 1 << 62
# By `Limits` field: flag, label, help, example, unit, minimum, ceiling. The
# CPU minimum is the cgroup quota's granularity (1 ms per 1 s period).
_ROWS = {
    "cpu": ("cpu", "cpu", "CPUs", "0.5", CPUS, 0.001, 4096.0),
    "memory_bytes": ("memory", "memory", "memory", "256M", BYTES, 1 << 20, _MAX_BYTES),
    "io_read_bps": (
        "io-read-bps",
        "io-read",
        "disk reads/s",
        "10M",
        BYTE_RATE,
        1,
        _MAX_BYTES,
    ),
    "io_write_bps": (
        "io-write-bps",
        "io-write",
        "disk writes/s",
        "10M",
        BYTE_RATE,
        1,
        _MAX_BYTES,
    ),
    "pids": ("pids", "pids", "processes and threads", "64", COUNT, 1, 1 << 22),
}
LIMITS: tuple[Limit, ...] = tuple(
    Limit(field.name, *_ROWS[field.name]) for field in fields(Limits)
)


_MINIMUMS: dict[str, Any] = {limit.name: limit.minimum for limit in LIMITS}
MINIMUMS = Limits(**_MINIMUMS)
"""The least value of each limit any job may have."""


def check(limits: Limits) -> None:
    """Raise `InvalidRequest` for a value no job may have, in people's units.

    "memory 1 is below the minimum, 1M".
    """
    for limit in LIMITS:
        value = getattr(limits, limit.name)
        if value is not None and (why := limit.out_of_range(value)) is not None:
            raise InvalidRequest(f"{limit.label} {limit.shown(value)} {why}")


@dataclass(frozen=True)
class LimitPolicy:
    """Server-side defaults and maximums for job limits.

    A requested limit must not exceed the maximum; an unrequested one takes
    the default (which itself may be `None`: unlimited, allowed only when
    there is no maximum).
    """

    defaults: Limits = field(default_factory=Limits)
    maximums: Limits = field(default_factory=Limits)
    min_io_bps: int = 1
    """The lowest IO limit a job may have (`--min-io-bps`): below it, a
    throttled job's writes sit in D state past SIGKILL and stall the host's
    sync."""

    def __post_init__(self) -> None:
        check(self.defaults)
        check(self.maximums)
        self._check_io_floor(self.defaults)
        self._check_io_floor(self.maximums)
        for limit in LIMITS:
            default = getattr(self.defaults, limit.name)
            maximum = getattr(self.maximums, limit.name)
            if maximum is not None and (default is None or default > maximum):
                raise InvalidRequest(
                    f"the default {limit.label} must be set and at most the"
                    f" maximum, {limit.shown(maximum)}"
                )

    def resolve(self, requested: Limits | None) -> Limits:
        """The limits a job gets: the request checked, defaults filled in."""
        requested = requested or Limits()
        check(requested)
        self._check_io_floor(requested)
        resolved = requested
        for limit in LIMITS:
            value = getattr(requested, limit.name)
            maximum = getattr(self.maximums, limit.name)
            if value is None:
                resolved = replace(
                    resolved, **{limit.name: getattr(self.defaults, limit.name)}
                )
            elif maximum is not None and value > maximum:
                raise InvalidRequest(
                    f"{limit.label} {limit.shown(value)} is above this server's"
                    f" maximum, {limit.shown(maximum)}"
                )
        return resolved

    def _check_io_floor(self, limits: Limits) -> None:
        for limit in LIMITS:
            value = getattr(limits, limit.name)
            if (
                limit.unit is BYTE_RATE
                and value is not None
                and value < self.min_io_bps
            ):
                raise InvalidRequest(
                    f"{limit.label} {limit.shown(value)} is below this server's"
                    f" floor, {limit.shown(self.min_io_bps)} (--min-io-bps)"
                )


def limits_text(limits: Limits) -> str:
    """For people (`jobworker status`): every limit, "unlimited" spelled out.

    "cpu 1, memory 512M, io-read unlimited, io-write 10M/s, pids 1024".
    """
    parts = [
        f"{limit.label} {limit.shown(getattr(limits, limit.name))}" for limit in LIMITS
    ]
    return ", ".join(parts)


def limits_for_log(limits: Limits) -> str:
    """For log lines: only the limits set, as compact `key=value` words.

    "cpu=1 memory=512M pids=1024", "none" when nothing is limited; the key is
    the field name (memory's without its unit).
    """
    parts = [
        f"{limit.name.removesuffix('_bytes')}={limit.format(value)}"
        for limit in LIMITS
        if (value := getattr(limits, limit.name)) is not None
    ]
    return " ".join(parts) or "none"


def limits_from_pb(message: pb.Limits) -> Limits:
    """The limits of a protobuf message; unset fields stay `None`."""
    values = {
        limit.name: getattr(message, limit.name)
        if message.HasField(limit.name)  # type: ignore[arg-type] # a field name
        else None
        for limit in LIMITS
    }
    return Limits(**values)


def limits_to_pb(limits: Limits) -> pb.Limits:
    """The protobuf message of `limits`; `None` fields are left unset."""
    message = pb.Limits()
    for limit in LIMITS:
        value = getattr(limits, limit.name)
        if value is not None:
            setattr(message, limit.name, value)
    return message
