"""Small statistics without numpy (the load generator subprocess imports this too)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the values themselves (one per repeat)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "repeats": len(values), "values": list(values)}
    return {
        "median": statistics.median(finite),
        "min": min(finite),
        "max": max(finite),
        "repeats": len(values),
        "values": [round(v, 6) for v in values],
    }


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when undefined."""
    if denominator == 0 or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator
