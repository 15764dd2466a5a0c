"""sktime called directly in this process on the same fitted object the server loads: the
cost our live path wraps, and the cost the fast path avoids."""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

Call = Callable[[], Any]


@dataclass
class SktimeCase:
    """The fitted forecaster and the inputs of one request, prepared outside any timer."""

    forecaster: Any
    fh: np.ndarray
    coverage: list[float]
    y_new: pd.DataFrame
    refit: bool = False  # the version's observations mode is refit (update_params=True), as served


def load_case(
    registry: Path, name: str, horizon: int, coverage: list[float], observations: dict[str, list]
) -> SktimeCase:
    """Load version 1 of ``name`` as the server does; turn ``observations`` into sktime's y."""
    from service.registry.store import Registry
    from service.tables import Schema, canonical_table, to_sktime

    loaded = Registry(registry).load(name, 1)
    schema = Schema.from_dict(loaded.manifest["schema"])
    table = canonical_table(pd.DataFrame(observations), schema, what="observations")
    y_new, _ = to_sktime(table, schema)
    refit = (loaded.manifest.get("observations") or {}).get("mode") == "refit"
    return SktimeCase(loaded.forecaster, np.arange(1, horizon + 1), list(coverage), y_new, refit)


def timed(call: Call) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def predict_point(case: SktimeCase) -> Call:
    """``predict(fh)`` on the shared fitted object."""
    return lambda: case.forecaster.predict(fh=case.fh)


def predict_with_intervals(case: SktimeCase) -> Call:
    """``predict`` + ``predict_interval``: what one fast-path answer would cost computed live."""

    def call() -> None:
        case.forecaster.predict(fh=case.fh)
        case.forecaster.predict_interval(fh=case.fh, coverage=case.coverage)

    return call


def update_then_predict(case: SktimeCase) -> Call:
    """``update`` with the new actuals in the version's mode (state or refit, as the server does),
    then ``predict`` + ``predict_interval``, on a fresh copy made before the timer starts (the
    served model never mutates)."""
    private = copy.deepcopy(case.forecaster)

    def call() -> None:
        private.update(case.y_new, update_params=case.refit)
        private.predict(fh=case.fh)
        private.predict_interval(fh=case.fh, coverage=case.coverage)

    return call


def deep_copy(case: SktimeCase) -> Call:
    """``copy.deepcopy`` of the fitted forecaster (the live path pays it per request)."""
    return lambda: copy.deepcopy(case.forecaster)


VARIANTS: dict[str, Callable[[SktimeCase], Call]] = {
    "predict": predict_point,
    "predict_interval": predict_with_intervals,
    "update_predict": update_then_predict,
    "deepcopy": deep_copy,
}


def median_call_ms(case: SktimeCase, variant: str, calls: int) -> float:
    """Median milliseconds of ``calls`` calls (a fresh call object each, built untimed)."""
    make = VARIANTS[variant]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make(case)()  # warm-up
        times = [timed(make(case)) for _ in range(max(1, calls))]
    return statistics.median(times) * 1000


def time_variants(case: SktimeCase, calls: int) -> dict[str, float]:
    """One repeat: the median milliseconds per call of every variant."""
    return {variant: median_call_ms(case, variant, calls) for variant in VARIANTS}
