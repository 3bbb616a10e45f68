"""The job limits as one table: each `Limits` field's flag, help, parser and format.

`LIMITS` has one row per field of `jobworker.model.Limits`, in field order;
the protobuf `Limits` message has the same field names. The CLI's limit
options, the server's `--default-*`/`--max-*` options, the protobuf
conversion and the two texts that show limits are all generated from it, so
a new limit is a field, a row and its cgroup files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

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

    def parse(self, text: str) -> Value:
        """A value of this limit as typed; raises `InvalidNumber`."""
        return self.unit.parse(text)

    def format(self, value: Value) -> str:
        """A value of this limit as people read it (see `Unit.format`)."""
        return self.unit.format(value)


# By `Limits` field: flag, label, help, example, unit.
_ROWS = {
    "cpu": ("cpu", "cpu", "CPUs", "0.5", CPUS),
    "memory_bytes": ("memory", "memory", "memory", "256M", BYTES),
    "io_read_bps": ("io-read-bps", "io-read", "disk reads/s", "10M", BYTE_RATE),
    "io_write_bps": ("io-write-bps", "io-write", "disk writes/s", "10M", BYTE_RATE),
    "pids": ("pids", "pids", "processes and threads", "64", COUNT),
}
LIMITS: tuple[Limit, ...] = tuple(
    Limit(field.name, *_ROWS[field.name]) for field in fields(Limits)
)


def limits_text(limits: Limits) -> str:
    """For people (`jobworker status`): every limit, "unlimited" spelled out.

    "cpu 1, memory 512M, io-read unlimited, io-write 10M/s, pids 1024".
    """
    parts = []
    for limit in LIMITS:
        value = getattr(limits, limit.name)
        shown = "unlimited" if value is None else limit.format(value) + limit.unit.per
        parts.append(f"{limit.label} {shown}")
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
