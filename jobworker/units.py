"""Sizes as people type them: "512M", "4G", "1048576" (K/M/G/T, base 1024).

Shared by the server's options (`jobworker.server.tap`) and the CLI's limits.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


class InvalidSize(ValueError):
    """A size that is not a whole number of bytes, with an optional suffix."""


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
