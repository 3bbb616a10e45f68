"""Numbers, sizes and durations as people type them: "0.5", "512M", "90s", "7d".

Sizes take K/M/G/T (base 1024); durations are runs of a number and a unit,
ms, s, m, h or d ("1h30m"). Shared by the server's options
(`jobworker.server.tap`), the CLI's and the limits table (`jobworker.limits`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


class InvalidNumber(ValueError):
    """Text that is not a number of the kind wanted, or not in its range."""


class InvalidSize(InvalidNumber):
    """A size that is not a whole number of bytes, with an optional suffix."""


class InvalidDuration(InvalidNumber):
    """Text that is not a duration such as 90s, 5m, 1h30m or 7d."""


def parse_duration(text: str) -> float:
    """Parse "1h30m" into 5400.0 seconds: numbers each with ms, s, m, h or d."""
    spec = text.strip()
    parts = _DURATION.findall(spec)
    if not spec or "".join(n + u for n, u in parts) != spec:
        raise InvalidDuration(
            f"{text!r} is not a duration: use a number with ms, s, m, h or d,"
            " e.g. 90s, 5m, 1h30m, 7d"
        )
    return sum(float(n) * _SECONDS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """Seconds as `parse_duration` reads them, in the largest exact unit: "7d"."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """A parser of finite `kind` numbers more than 0: "0.5", "64"."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise InvalidNumber(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise InvalidNumber(f"{text!r} must be more than 0")
        return value

    return parse


def positive_size(text: str) -> int:
    """`parse_size`, and at least 1 byte."""
    size = parse_size(text)
    if size < 1:
        raise InvalidSize("must be at least 1 byte")
    return size


def parse_size(text: str) -> int:
    """Parse "512M" into 536870912: bytes, or with a K/M/G/T suffix (base 1024).

    A fraction is allowed with a suffix ("1.5G") as long as it comes out as a
    whole number of bytes; "KiB"/"MB"-style spellings mean the same as "K"/"M".
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InvalidSize(
            f"invalid size {text!r}: use bytes or a number with K, M, G or T"
            " (base 1024), e.g. 512M"
        )
    number, unit = match.groups()
    try:
        value = Decimal(number) * _UNITS[unit.upper()]
    except InvalidOperation as error:  # pragma: no cover - the regex forbids it
        raise InvalidSize(f"invalid size {text!r}") from error
    if value != value.to_integral_value():
        raise InvalidSize(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)


def format_size(size: int) -> str:
    """Format bytes the way `parse_size` reads them: exact when possible."""
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit]
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return str(size)


def round_size(size: int) -> str:
    """A measured size for people, in its largest unit: "18.1M", "512", "2.0G"."""
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit]
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return str(size)
