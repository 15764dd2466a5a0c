"""The backtest engine equals sktime's `evaluate` run directly.

Every expectation here is built from sktime itself: the forecaster loaded from the
registry, the version's training data, splitters and metric objects constructed in this
file (not by the service's `SplitterSpec.build` or `metric_objects`), and `evaluate`
called with them. The engine's per-fold, per-series and aggregate numbers must match to
float tolerance.

Runtime: airline runs the full splitter x strategy product (fast Theta). The panel model
(global XGBoost reduction, slow to predict) runs on two series with each splitter and
each strategy appearing once, and once on all 60 series with one short fold; the
hierarchy (MinT) runs each splitter with strategy refit, the only one sktime 1.2 can run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sktime.forecasting.model_evaluation import evaluate
from sktime.performance_metrics.forecasting import (
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanAbsoluteScaledError,
    MeanSquaredError,
)
from sktime.performance_metrics.forecasting.probabilistic import EmpiricalCoverage, PinballLoss
from sktime.split import ExpandingGreedySplitter, ExpandingWindowSplitter, SlidingWindowSplitter

from service.errors import CapabilityUnavailable, InvalidInput
from service.forecasting.backtest import BacktestRequest, SplitterSpec, run_backtest, validate_request
from service.forecasting.progress import Cancelled
from service.registry.store import Registry
from service.tables import Schema, to_sktime

POINT = ("MAE", "RMSE", "MAPE", "sMAPE", "MASE")
ALL_POINT = (*POINT, "WAPE")
STRATEGIES = ("refit", "update", "no-update_params")
REL = 1e-9
ABS = 1e-12


# --------------------------------------------------------------------------- fixtures
@dataclass(frozen=True)
class Demo:
    name: str
    forecaster: Any
    y: pd.DataFrame
    x: pd.DataFrame | None
    schema: Schema
    capabilities: dict[str, Any]

    def restricted(self, series: Sequence[str]) -> Demo:
        """The same forecaster on a few series of the panel, with XGBoost on one thread: on a
        busy machine its OpenMP threads spin and a tiny fit takes seconds instead of 0.2 s.
        Both sides of every comparison use this same object."""
        forecaster = self.forecaster.clone().set_params(forecaster__estimator__n_jobs=1)  # in intervals: conformal
        return Demo(self.name, forecaster, self.y.loc[list(series)], None, self.schema, self.capabilities)


@pytest.fixture(scope="module")
def demo(trained_registry_path: Path) -> Callable[[str], Demo]:
    """``demo(name)``: version 1 of a demo model and its training data, loaded once per module."""
    registry = Registry(trained_registry_path)
    cache: dict[str, Demo] = {}

    def get(name: str) -> Demo:
        if name not in cache:
            loaded = registry.load(name, 1)
            schema = Schema.from_dict(loaded.manifest["schema"])
            y, x = to_sktime(registry.read_training(name, 1), schema)
            cache[name] = Demo(name, loaded.forecaster, y, x, schema, loaded.manifest["capabilities"])
        return cache[name]

    return get


# --------------------------------------------------------------------------- sktime side
def sktime_splitter(spec: SplitterSpec) -> Any:
    """The sktime splitter for a spec, built here from sktime's own classes."""
    fh = list(range(1, spec.horizon + 1))
    step = spec.step or spec.horizon
    if spec.type == "expanding":
        return ExpandingWindowSplitter(fh=fh, initial_window=spec.initial_window, step_length=step)
    if spec.type == "sliding":
        return SlidingWindowSplitter(fh=fh, window_length=spec.window_length, step_length=step)
    return ExpandingGreedySplitter(test_size=spec.horizon, folds=spec.folds, step_length=step)


def sktime_point_metrics() -> dict[str, Any]:
    """Our metric name -> an sktime metric object (distinct `name`s so evaluate keeps each column)."""
    metrics = {
        "MAE": MeanAbsoluteError(),
        "RMSE": MeanSquaredError(square_root=True),
        "MAPE": MeanAbsolutePercentageError(symmetric=False),
        "sMAPE": MeanAbsolutePercentageError(symmetric=True),
        "MASE": MeanAbsoluteScaledError(),
    }
    for ours, metric in metrics.items():
        metric.name = f"direct_{ours}"
    return metrics


def direct_evaluate(demo: Demo, spec: SplitterSpec, strategy: str, metrics: dict[str, Any]) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate(
            forecaster=demo.forecaster.clone(),
            cv=sktime_splitter(spec),
            y=demo.y,
            X=demo.x,
            strategy=strategy,
            scoring=list(metrics.values()),
            return_data=True,
            error_score="raise",
        )


def engine(
    demo: Demo, spec: SplitterSpec, strategy: str = "refit", metrics: Sequence[str] = ALL_POINT, **extra: Any
) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    request = BacktestRequest(splitter=spec, strategy=strategy, metrics=tuple(metrics), **extra)  # type: ignore[arg-type]
    n_folds = validate_request(request, demo.capabilities, demo.y, demo.forecaster)
    progress: list[tuple[int, int]] = []
    result, _ = run_backtest(
        demo.forecaster, demo.y, demo.x, request, demo.schema, on_progress=lambda d, t: progress.append((d, t))
    )
    assert result["n_folds"] == n_folds
    return result, progress


# --------------------------------------------------------------------------- comparisons
def _series_key(key: Any) -> tuple[str, ...]:
    return tuple(str(k) for k in (key if isinstance(key, tuple) else (key,)))


def _time_text(value: Any) -> str:
    if isinstance(value, pd.Period):
        value = value.to_timestamp()
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d")
    return str(int(value))


def _engine_time(text: Any) -> str:
    return str(text)[:10] if isinstance(text, str) else str(int(text))


def wape(y_test: pd.DataFrame, y_pred: pd.DataFrame) -> float:
    actual = y_test.to_numpy(dtype=float)
    predicted = y_pred.reindex(y_test.index).to_numpy(dtype=float)
    return float(np.sum(np.abs(actual - predicted)) / np.sum(np.abs(actual)))


def per_series_wape(y_test: pd.DataFrame, y_pred: pd.DataFrame) -> dict[tuple[str, ...], float]:
    n_keys = y_test.index.nlevels - 1
    levels: int | list[int] = 0 if n_keys == 1 else list(range(n_keys))
    predicted = y_pred.reindex(y_test.index)
    out = {}
    for key, actual in y_test.groupby(level=levels):
        out[_series_key(key)] = wape(actual, predicted.loc[actual.index])
    return out


def assert_progress(progress: list[tuple[int, int]], total: int) -> None:
    assert progress, "no progress was reported"
    done = [d for d, _ in progress]
    assert done == sorted(done), f"progress went backwards: {progress}"
    assert {t for _, t in progress} == {total}, progress
    assert progress[-1] == (total, total), progress
    assert all(0 <= d <= total for d in done), progress


def assert_folds_match(result: dict[str, Any], frame: pd.DataFrame, metrics: dict[str, Any]) -> None:
    """Fold windows and every point metric equal sktime's evaluate; WAPE equals numpy."""
    assert result["n_folds"] == len(frame) == len(result["folds"])
    for fold, (_, row) in zip(result["folds"], frame.reset_index(drop=True).iterrows(), strict=True):
        train_times = row["y_train"].index.get_level_values(-1)
        test_times = row["y_test"].index.get_level_values(-1)
        assert _engine_time(fold["cutoff"]) == _time_text(row["cutoff"])
        assert _engine_time(fold["train_start"]) == _time_text(train_times.min())
        assert _engine_time(fold["train_end"]) == _time_text(train_times.max())
        assert _engine_time(fold["test_start"]) == _time_text(test_times.min())
        assert _engine_time(fold["test_end"]) == _time_text(test_times.max())
        for ours, metric in metrics.items():
            expected = row[f"test_{metric.name}"]
            assert fold["metrics"][ours] == pytest.approx(expected, rel=REL, abs=ABS), (fold["fold"], ours)
        if "WAPE" in fold["metrics"]:
            if row["y_test"].index.nlevels == 1:
                expected_wape = wape(row["y_test"], row["y_pred"])
            else:  # a panel: the uniform average of the per-series WAPEs, like every other metric
                expected_wape = float(np.mean(list(per_series_wape(row["y_test"], row["y_pred"]).values())))
            assert fold["metrics"]["WAPE"] == pytest.approx(expected_wape, rel=REL, abs=ABS), fold["fold"]
    for ours in result["metrics"]:
        values = [f["metrics"][ours] for f in result["folds"]]
        assert result["aggregate"][ours] == pytest.approx(float(np.mean(values)), rel=REL, abs=ABS), ours


def assert_per_series_match(result: dict[str, Any], frame: pd.DataFrame, metrics: dict[str, Any]) -> None:
    """Per-series metrics equal sktime's multilevel='raw_values'; the fold metric is their mean."""
    rows = list(frame.reset_index(drop=True).iterrows())
    for fold, (_, row) in zip(result["folds"], rows, strict=True):
        engine_series = {tuple(s["series"]): s["metrics"] for s in fold["series"]}
        expected_keys = {_series_key(k) for k in row["y_test"].index.droplevel(-1).unique()}
        assert set(engine_series) == expected_keys
        for ours, metric in metrics.items():
            raw = metric.clone().set_params(multilevel="raw_values")
            values = raw(row["y_test"], row["y_pred"], y_train=row["y_train"])
            assert isinstance(values, pd.DataFrame) and len(values) == len(expected_keys)
            expected = {_series_key(k): float(np.asarray(v, dtype=float).ravel()[0]) for k, v in values.iterrows()}
            for key, value in expected.items():
                assert engine_series[key][ours] == pytest.approx(value, rel=REL, abs=ABS), (fold["fold"], key, ours)
            mean = float(np.mean(list(expected.values())))
            assert fold["metrics"][ours] == pytest.approx(mean, rel=REL, abs=ABS), (fold["fold"], ours)
        for key, value in per_series_wape(row["y_test"], row["y_pred"]).items():
            assert engine_series[key]["WAPE"] == pytest.approx(value, rel=REL, abs=ABS), (fold["fold"], key)
    # the per-series summary is each series' mean over folds
    for entry in result["per_series"]:
        key = tuple(entry["series"])
        for ours, value in entry["metrics"].items():
            per_fold = [{tuple(s["series"]): s["metrics"] for s in f["series"]}[key][ours] for f in result["folds"]]
            assert value == pytest.approx(float(np.mean(per_fold)), rel=REL, abs=ABS), (key, ours)


# --------------------------------------------------------------------------- single series
AIRLINE_SPLITTERS = {  # 144 months
    "expanding": SplitterSpec("expanding", 12, initial_window=108, step=12),  # cutoffs 107, 119, 131
    "sliding": SplitterSpec("sliding", 12, window_length=96, step=12),  # cutoffs 95 .. 131
    "folds": SplitterSpec("folds", 12, folds=3, step=12),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("splitter", sorted(AIRLINE_SPLITTERS))
def test_single_series_equals_sktime_evaluate(demo: Callable[[str], Demo], splitter: str, strategy: str) -> None:
    airline = demo("airline")
    spec = AIRLINE_SPLITTERS[splitter]
    metrics = sktime_point_metrics()

    result, progress = engine(airline, spec, strategy)
    frame = direct_evaluate(airline, spec, strategy, metrics)

    assert result["strategy"] == strategy
    assert_folds_match(result, frame, metrics)
    assert_progress(progress, len(frame))
    train_lengths = [len(r) for r in frame["y_train"]]
    if splitter == "sliding":
        assert len(frame) == 4 and set(train_lengths) == {96}
    else:
        assert len(frame) == 3 and train_lengths == sorted(train_lengths) and len(set(train_lengths)) == 3


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pinball_and_coverage_equal_sktime(demo: Callable[[str], Demo], strategy: str) -> None:
    airline = demo("airline")
    spec = AIRLINE_SPLITTERS["expanding"]
    quantiles, coverage = (0.1, 0.5, 0.9), (0.8, 0.95)
    direct = {"pinball": PinballLoss(alpha=list(quantiles)), "coverage": EmpiricalCoverage(coverage=list(coverage))}

    result, _ = engine(
        airline, spec, strategy, metrics=("MAE", "pinball", "coverage"), quantiles=quantiles, coverage=coverage
    )
    frame = direct_evaluate(airline, spec, strategy, {"MAE": sktime_point_metrics()["MAE"], **direct})

    assert result["n_folds"] == len(frame) == 3
    for fold, (_, row) in zip(result["folds"], frame.iterrows(), strict=True):
        assert fold["metrics"]["MAE"] == pytest.approx(row["test_direct_MAE"], rel=REL)
        assert fold["metrics"]["pinball"] == pytest.approx(row["test_PinballLoss"], rel=REL, abs=ABS)
        assert fold["metrics"]["coverage"] == pytest.approx(row["test_EmpiricalCoverage"], rel=REL, abs=ABS)
        assert 0.0 <= fold["metrics"]["coverage"] <= 1.0
        assert fold["metrics"]["pinball"] > 0
    assert result["quantiles"] == list(quantiles) and result["coverage"] == list(coverage)


def test_mase_scale_is_each_folds_training_window(demo: Callable[[str], Demo]) -> None:
    """MASE divides by the mean absolute naive-1 difference of the fold's training window
    (as sktime does), not of the whole series."""
    airline = demo("airline")
    spec = AIRLINE_SPLITTERS["expanding"]
    result, _ = engine(airline, spec, metrics=("MAE", "MASE"))
    frame = direct_evaluate(airline, spec, "refit", {"MAE": sktime_point_metrics()["MAE"]})

    target = airline.schema.targets[0]
    whole_scale = float(np.mean(np.abs(np.diff(airline.y[target].to_numpy(dtype=float)))))
    for fold, (_, row) in zip(result["folds"], frame.iterrows(), strict=True):
        train = row["y_train"][target].to_numpy(dtype=float)
        actual = row["y_test"][target].to_numpy(dtype=float)
        predicted = row["y_pred"].reindex(row["y_test"].index)[target].to_numpy(dtype=float)
        mae = float(np.mean(np.abs(actual - predicted)))
        fold_scale = float(np.mean(np.abs(np.diff(train))))
        assert len(train) < len(airline.y)
        assert fold["metrics"]["MAE"] == pytest.approx(mae, rel=REL)
        assert fold["metrics"]["MASE"] == pytest.approx(mae / fold_scale, rel=REL)
        # the whole series' scale would give another number: the fold's window is what counts
        assert abs(fold["metrics"]["MASE"] - mae / whole_scale) > 1e-3 * fold["metrics"]["MASE"]


def test_progress_callback_can_stop_the_backtest_between_folds(demo: Callable[[str], Demo]) -> None:
    """The job worker stops a cancelled backtest by raising from the progress callback."""
    airline = demo("airline")
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if done == 1:
            raise Cancelled

    request = BacktestRequest(splitter=AIRLINE_SPLITTERS["sliding"], metrics=("MAE",))
    with pytest.raises(Cancelled):
        run_backtest(airline.forecaster, airline.y, None, request, airline.schema, on_progress=progress)
    assert calls == [(0, 4), (1, 4)]


def test_exogenous_model_equals_sktime_evaluate(demo: Callable[[str], Demo]) -> None:
    """SARIMAX with exogenous columns: evaluate gets X, split like y."""
    uschange = demo("uschange")
    assert uschange.x is not None
    spec = SplitterSpec("expanding", 4, initial_window=179, step=4)  # 187 quarters: cutoffs 178, 182
    metrics = sktime_point_metrics()
    result, progress = engine(uschange, spec, "update")
    frame = direct_evaluate(uschange, spec, "update", metrics)
    assert len(frame) == 2
    assert_folds_match(result, frame, metrics)
    assert_progress(progress, 2)


def test_multivariate_model_equals_sktime_evaluate(demo: Callable[[str], Demo]) -> None:
    macro = demo("macro-var")
    assert len(macro.schema.targets) == 3
    spec = SplitterSpec("sliding", 8, window_length=120, step=20)
    metrics = sktime_point_metrics()
    result, _ = engine(macro, spec, "refit", metrics=POINT)
    frame = direct_evaluate(macro, spec, "refit", metrics)
    assert len(frame) >= 2
    assert_folds_match(result, frame, metrics)


# --------------------------------------------------------------------------- panel
PANEL_SERIES = ("T001", "T002")
# 120 months, horizon 3, two folds each; each splitter and each strategy appears once
PANEL_CASES = {
    "expanding-refit": (SplitterSpec("expanding", 3, initial_window=114, step=3), "refit"),
    "sliding-update": (SplitterSpec("sliding", 3, window_length=114, step=3), "update"),
    "folds-no-update_params": (SplitterSpec("folds", 3, folds=2, step=3), "no-update_params"),
}


@pytest.mark.parametrize("case", list(PANEL_CASES))
def test_panel_subset_equals_sktime_evaluate(demo: Callable[[str], Demo], case: str) -> None:
    panel = demo("tourism-monthly").restricted(PANEL_SERIES)
    spec, strategy = PANEL_CASES[case]
    metrics = sktime_point_metrics()

    result, progress = engine(panel, spec, strategy)
    frame = direct_evaluate(panel, spec, strategy, metrics)

    assert len(frame) == 2
    assert_folds_match(result, frame, metrics)
    assert_per_series_match(result, frame, metrics)
    assert_progress(progress, 2)
    assert sorted(tuple(s["series"]) for s in result["per_series"]) == [(s,) for s in PANEL_SERIES]


def test_panel_full_data_one_fold_per_series_equals_raw_values(demo: Callable[[str], Demo]) -> None:
    """All 60 series, one short fold: the per-series numbers are sktime's raw_values and
    the fold's number is their uniform average."""
    panel = demo("tourism-monthly")
    spec = SplitterSpec("folds", 3, folds=1, step=3)
    metrics = sktime_point_metrics()

    result, progress = engine(panel, spec, "refit")
    frame = direct_evaluate(panel, spec, "refit", metrics)

    assert len(frame) == 1
    assert_folds_match(result, frame, metrics)
    assert_per_series_match(result, frame, metrics)
    assert_progress(progress, 1)
    assert len(result["per_series"]) == len(result["folds"][0]["series"]) == 60


def test_panel_series_filter_only_narrows_the_report(demo: Callable[[str], Demo]) -> None:
    panel = demo("tourism-monthly").restricted(("T001", "T002", "T003"))
    spec = SplitterSpec("folds", 3, folds=1, step=3)
    result, _ = engine(panel, spec, metrics=("MAE",), series=(("T002",),))
    assert [s["series"] for s in result["folds"][0]["series"]] == [["T002"]]
    assert [s["series"] for s in result["per_series"]] == [["T002"]]
    full, _ = engine(panel, spec, metrics=("MAE",))
    assert result["folds"][0]["metrics"] == pytest.approx(full["folds"][0]["metrics"], rel=REL)


# --------------------------------------------------------------------------- hierarchy
HIERARCHY_SPLITTERS = {  # 60 months; Holt-Winters (sp=12) needs two years in each window
    "expanding": SplitterSpec("expanding", 6, initial_window=54, step=6),  # one fold, cutoff 53
    "sliding": SplitterSpec("sliding", 6, window_length=36, step=12),  # cutoffs 35, 47
    "folds": SplitterSpec("folds", 12, folds=1, step=12),  # cutoff 47
}


@pytest.mark.parametrize("splitter", sorted(HIERARCHY_SPLITTERS))
def test_hierarchy_refit_equals_sktime_evaluate(demo: Callable[[str], Demo], splitter: str) -> None:
    hierarchy = demo("sales-hierarchy")
    spec = HIERARCHY_SPLITTERS[splitter]
    metrics = sktime_point_metrics()

    result, progress = engine(hierarchy, spec, "refit")
    frame = direct_evaluate(hierarchy, spec, "refit", metrics)

    assert_folds_match(result, frame, metrics)
    assert_per_series_match(result, frame, metrics)
    assert_progress(progress, len(frame))
    keys = {tuple(s["series"]) for s in result["per_series"]}
    assert ("__total", "__total") in keys and len(keys) == 7  # leaves and aggregate nodes


@pytest.mark.parametrize("strategy", ["update", "no-update_params"])
def test_hierarchy_update_strategies_are_refused_naming_refit(demo: Callable[[str], Demo], strategy: str) -> None:
    hierarchy = demo("sales-hierarchy")
    request = BacktestRequest(splitter=HIERARCHY_SPLITTERS["sliding"], strategy=strategy)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="refit") as caught:
        validate_request(request, hierarchy.capabilities, hierarchy.y, hierarchy.forecaster)
    assert caught.value.extra.get("field") == "strategy"


# --------------------------------------------------------------------------- validation
def test_validate_request_refuses_what_cannot_run(demo: Callable[[str], Demo]) -> None:
    airline, panel = demo("airline"), demo("tourism-monthly")

    def check(target: Demo, **kwargs: Any) -> int:
        return validate_request(BacktestRequest(**kwargs), target.capabilities, target.y, target.forecaster)

    with pytest.raises(InvalidInput, match="no fold"):
        check(airline, splitter=SplitterSpec("expanding", 12, initial_window=200))
    with pytest.raises(InvalidInput, match="initial_window"):
        check(airline, splitter=SplitterSpec("expanding", 12))
    with pytest.raises(InvalidInput, match="window_length"):
        check(airline, splitter=SplitterSpec("sliding", 12))
    with pytest.raises(InvalidInput, match="bogus"):
        check(airline, metrics=("MAE", "bogus"))
    with pytest.raises(InvalidInput, match="quantiles"):
        check(airline, metrics=("pinball",))
    with pytest.raises(InvalidInput, match="coverage"):
        check(airline, metrics=("coverage",))
    with pytest.raises(CapabilityUnavailable, match="intervals"):
        check(demo("sales-hierarchy"), metrics=("MAE", "coverage"), coverage=(0.8,))
    with pytest.raises(InvalidInput, match="panel"):  # tourism has conformal intervals; evaluate cannot score them
        check(panel, metrics=("MAE", "coverage"), coverage=(0.8,))
    assert check(airline, splitter=SplitterSpec("folds", 12, folds=2)) == 2
