"""bench.accuracy's metrics, bars and plans, on small numbers: nothing here uploads, fits or
starts a server (the benchmark itself is `make bench`, never the test suite)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sktime.performance_metrics.forecasting import MeanAbsolutePercentageError

from bench.__main__ import parse_args
from bench.accuracy import (
    PLANS,
    accuracy_checks,
    format_accuracy,
    merge_accuracy,
    parse_plan,
    score,
    spec_horizon,
)

ACTUAL = {"a": np.array([100.0, 120.0, 90.0, 80.0]), "b": np.array([5.0, 4.0, 6.0, 3.0])}
FORECAST = {"a": np.array([110.0, 100.0, 95.0, 60.0, 999.0]), "b": np.array([4.0, 5.0, 6.0, 2.0])}


@pytest.mark.parametrize(("metric", "symmetric"), [("MAPE", False), ("sMAPE", True)])
def test_metrics_are_sktimes_percentage_errors_times_100(metric: str, symmetric: bool) -> None:
    """MAPE 100|y-f|/|y|, sMAPE 200|y-f|/(|y|+|f|), averaged over every series and step
    (the series have equal test lengths, so that is the mean of the per-series means);
    a forecast longer than the test part is cut to it."""
    sktime_metric = MeanAbsolutePercentageError(symmetric=symmetric)
    per_series = [100 * sktime_metric(pd.Series(ACTUAL[k]), pd.Series(FORECAST[k][: len(ACTUAL[k])])) for k in ACTUAL]
    assert score(metric, ACTUAL, FORECAST) == pytest.approx(np.mean(per_series), rel=1e-12)


def test_the_spec_horizon_leaves_two_horizons_of_history_in_the_shortest_series() -> None:
    table = pd.DataFrame({"series": ["a"] * 30 + ["b"] * 60, "value": 1.0})
    assert spec_horizon(table, 18) == 15
    assert spec_horizon(table, 12) == 12


def test_bars_become_checks_with_verdicts_and_rows_merge_per_method() -> None:
    def row(value: float, job: float | None, ok: bool | None) -> dict[str, float | bool | None]:
        return {"MAPE": value, "fit_seconds": 1.0, "job_seconds": job, "published": None, "ok": ok}

    earlier = {
        "mode": "http",
        "machine": {"nproc": 2},
        "tourism": {"series": 366, "horizon": 24, "metric": "MAPE", "methods": {"auto": row(20.2, 700.0, True)}},
    }
    now = {
        "mode": "http",
        "machine": {"nproc": 2},
        "notes": [],
        "tourism": {"series": 366, "horizon": 24, "metric": "MAPE", "methods": {"SeasonalNaive": row(22.56, 30, True)}},
    }
    merged = merge_accuracy(earlier, now)
    assert list(merged["tourism"]["methods"]) == ["auto", "SeasonalNaive"]
    verdicts = {c["name"]: (c["bar"], c["ok"]) for c in accuracy_checks(merged)}
    assert verdicts == {
        "tourism auto MAPE": ("<= 20.75", True),
        "tourism SeasonalNaive MAPE": ("22.56 (2 decimals)", True),
        "tourism auto retrain job (fit+gate+publish) s": ("<= 600 s", False),
        "tourism SeasonalNaive retrain job (fit+gate+publish) s": ("<= 600 s", True),
    }
    assert "MISSED" in format_accuracy(merged)
    assert merge_accuracy(earlier, {**now, "mode": "direct sktime"}) == {**now, "mode": "direct sktime"}


def test_make_bench_runs_the_profiles_plan_or_bench_accuracy() -> None:
    assert parse_args(["--only", "accuracy"]).only == "accuracy"
    assert PLANS["quick"] == {"tourism": ["SeasonalNaive"]}
    assert set(PLANS["full"]) == {"tourism", "m1"}
    assert parse_plan("tourism:SeasonalNaive,auto;m1") == {
        "tourism": ["SeasonalNaive", "auto"],
        "m1": PLANS["full"]["m1"],
    }
    assert parse_plan("") == {}
    with pytest.raises(ValueError, match="BENCH_ACCURACY"):
        parse_plan("m3:auto")
