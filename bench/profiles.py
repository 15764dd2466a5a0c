"""Sizes and durations of a benchmark run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    """How long and how often each figure is measured, and on which sizes."""

    name: str
    duration_s: float  # one load run
    warmup_s: float  # one discarded run per scenario before the repeats
    repeats: int  # load runs per scenario (interleaved across scenarios)
    max_requests: int  # cap of one load run, besides its duration
    panel_series: int
    panel_length: int
    sktime_calls: int  # in-process calls per variant and repeat
    concurrency: tuple[int, ...] = (1, 32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QUICK = Profile(
    name="quick",
    duration_s=3.0,
    warmup_s=1.0,
    repeats=3,
    max_requests=200_000,
    panel_series=1000,
    panel_length=120,
    sktime_calls=30,
)

FULL = Profile(
    name="full",
    duration_s=10.0,
    warmup_s=2.0,
    repeats=5,
    max_requests=1_000_000,
    panel_series=1000,
    panel_length=120,
    sktime_calls=100,
)

PROFILES = {p.name: p for p in (QUICK, FULL)}
