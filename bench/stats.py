"""Small statistics: percentiles and median-of-runs summaries."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` (0..1) percentile by linear interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """The median of several runs, with the smallest and largest."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("no runs")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def scaled(self, factor: float) -> Summary:
        """The same summary in other units (`factor` must be positive)."""
        return Summary(
            self.median * factor, self.low * factor, self.high * factor, self.runs
        )

    def text(self, digits: int = 0) -> str:
        """`median (min-max)`, e.g. `512 (498-530)`."""
        if self.runs == 1:
            return f"{self.median:,.{digits}f}"
        return (
            f"{self.median:,.{digits}f}"
            f" ({self.low:,.{digits}f}-{self.high:,.{digits}f})"
        )
