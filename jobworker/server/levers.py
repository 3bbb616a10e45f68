"""The operator's levers against one user starving the others or the host.

One table (`PARAMETERS`, usage.Options' `optParameters`) of the server's
per-user caps, each with its parser; `twistd jobworker --help` shows them
from here. See doc/security.md ("Denial of service") for what each bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python import usage

from jobworker.job.admission import MAX_JOBS_PER_OWNER


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise usage.UsageError(f"{text!r} is not a whole number {low}..{high}")
        return int(text)

    parse.coerceDoc = f"{low}..{high}."  # type: ignore[attr-defined]
    return parse


def _option(
    name: str, default: Any, help: str, parse: Callable[[str], Any]
) -> list[Any]:
    """One row of `PARAMETERS`: a parse error names the option."""

    def coerce(text: str) -> Any:
        try:
            return parse(text)
        except usage.UsageError as error:
            raise usage.UsageError(f"--{name}: {error}") from None

    coerce.coerceDoc = getattr(parse, "coerceDoc", "")  # type: ignore[attr-defined]
    return [name, None, default, help, coerce]


# As usage.Options' optParameters: name, short, default, help, parser.
PARAMETERS: list[list[Any]] = [
    _option(
        "max-jobs-per-user",
        MAX_JOBS_PER_OWNER,
        "Jobs one user may have running at once.",
        _count(1, 1_000_000),
    ),
    _option(
        "max-followers-per-user",
        None,
        "Output streams one user may have open [default: half of --max-followers].",
        _count(1, 10_000),
    ),
]
