"""Factories shared by tests: a small panel, a fitted naive forecaster, a published
version, a pickle that leaves a marker file when it is unpickled, and a bounded wait."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sktime.forecasting.naive import NaiveForecaster

from service.forecasting.publishing import PublishRequest, publish_version
from service.registry.store import Registry
from service.tables import Schema, canonical_table, to_sktime

SCHEMA = Schema(kind="panel", keys=("series",), time="month", targets=("y",), freq="M")


def small_panel(n_series: int = 3, length: int = 36, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    months = pd.period_range("2015-01", periods=length, freq="M")
    frames = [
        pd.DataFrame({"series": f"s{i}", "month": months, "y": 100 + rng.normal(size=length).cumsum()})
        for i in range(n_series)
    ]
    return canonical_table(pd.concat(frames, ignore_index=True), SCHEMA, what="test data")


def fit_naive(table: pd.DataFrame) -> NaiveForecaster:
    y, _ = to_sktime(table, SCHEMA)
    forecaster = NaiveForecaster(strategy="last")
    forecaster.fit(y, fh=[1, 2, 3])
    return forecaster


def publish_naive(registry: Registry, name: str = "toy", seed: int = 0) -> int:
    table = small_panel(seed=seed)
    return publish_version(registry, name, fit_naive(table), PublishRequest(training=table, schema=SCHEMA, horizon=3))


class Boom:
    """Unpickling this creates a marker file: proof that bytes were (not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (self.marker,))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.05)
