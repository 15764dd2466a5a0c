"""Backtests: sktime's `evaluate` with its splitters and metrics, plus per-series
metrics from the fold data it returns. Reused by the retrain gate."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from service.errors import CapabilityUnavailable, InvalidInput, ServiceError
from service.forecasting.chunked_fit import map_chunks, series_chunks
from service.forecasting.progress import Cancelled
from service.forecasting.sktime_internals import requires_residuals
from service.tables import TOTAL, Schema, format_time, season_length

Strategy = Literal["refit", "update", "no-update_params"]
POINT_METRICS = ("MAE", "RMSE", "MAPE", "sMAPE", "MASE", "WAPE")
PROBABILISTIC_METRICS = ("pinball", "coverage")
DEFAULT_METRICS = ("MAE", "RMSE", "MAPE", "sMAPE", "MASE", "WAPE")


_PREDICTION_COLUMN = {"pinball": "y_pred_quantiles", "coverage": "y_pred_interval"}

BASELINE = "seasonal_naive"
"""The name of the baseline every backtest and leaderboard reports forecast value added against."""


def baseline_node(freq: str | None) -> dict[str, Any]:
    """The baseline as a forecaster spec: sktime's seasonal naive (the last season repeated)."""
    return {"class": "NaiveForecaster", "params": {"strategy": "last", "sp": season_length(freq)}}


def baseline_forecaster(freq: str | None) -> Any:
    from sktime.forecasting.naive import NaiveForecaster

    return NaiveForecaster(**baseline_node(freq)["params"])


def forecast_value_added(model: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float | None]:
    """Per point metric both have: 100 (baseline - model) / baseline, the percentage of the
    baseline's error the model removes (positive: the model adds value; Gilliland's FVA)."""
    out: dict[str, float | None] = {}
    for name, base in baseline.items():
        value = model.get(name)
        if name not in POINT_METRICS or name not in model:
            continue
        usable = isinstance(value, float | int) and isinstance(base, float | int) and base != 0
        out[name] = 100.0 * (float(base) - float(value)) / float(base) if usable else None  # type: ignore[arg-type]
    return out


def baseline_request(request: BacktestRequest) -> BacktestRequest | None:
    """The request the baseline runs: the same splitter, strategy and series, point metrics
    only (None when the request has none)."""
    points = tuple(m for m in request.metrics if m in POINT_METRICS)
    if not points:
        return None
    return dataclasses.replace(request, metrics=points, coverage=(), quantiles=())


def run_baseline(
    y: pd.DataFrame, request: BacktestRequest, schema: Schema, on_progress: Callable[[int, int], None] | None = None
) -> dict[str, Any] | None:
    """The seasonal-naive backtest of ``y`` on ``request``'s splitter: {name, forecaster,
    aggregate, per_series} or {name, forecaster, error}; None without point metrics."""
    points = baseline_request(request)
    if points is None:
        return None
    out: dict[str, Any] = {"name": BASELINE, "forecaster": baseline_node(schema.freq)}
    try:
        result, _ = run_backtest(baseline_forecaster(schema.freq), y, None, points, schema, on_progress, chunked=True)
    except Cancelled:
        raise
    except Exception as exc:  # e.g. a series shorter than its season: reported, the backtest stands
        return {**out, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return {**out, "aggregate": result["aggregate"], "per_series": result["per_series"]}


def with_value_added(result: dict[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """``result`` (a backtest's) with the baseline's aggregate and the forecast value added
    against it, overall (``fva``) and in each per-series row."""
    if baseline is None:
        return result
    result["baseline"] = {k: v for k, v in baseline.items() if k != "per_series"}
    if "aggregate" not in baseline:
        result["fva"] = None
        return result
    result["fva"] = forecast_value_added(result["aggregate"], baseline["aggregate"])
    by_series = {tuple(row["series"]): row["metrics"] for row in baseline["per_series"]}
    for row in result["per_series"]:
        base = by_series.get(tuple(row["series"]))
        row["fva"] = forecast_value_added(row["metrics"], base) if base is not None else None
    return result


def _wape(y_true: Any, y_pred: Any, **_: Any) -> float:
    """sum|error| / sum|actual| per target, averaged over targets like sktime's other metrics."""
    actual = np.asarray(y_true, dtype=float).reshape(len(y_true), -1)
    predicted = np.asarray(y_pred, dtype=float).reshape(len(y_pred), -1)
    per_target = np.sum(np.abs(actual - predicted), axis=0) / np.sum(np.abs(actual), axis=0)
    return float(np.mean(per_target))


def metric_objects(names: Sequence[str], coverage: Sequence[float], quantiles: Sequence[float]) -> list[Any]:
    """sktime metric objects for our metric names (one per name; probabilistic ones per level)."""
    from sktime.performance_metrics.forecasting import (
        MeanAbsoluteError,
        MeanAbsolutePercentageError,
        MeanAbsoluteScaledError,
        MeanSquaredError,
        make_forecasting_scorer,
    )
    from sktime.performance_metrics.forecasting.probabilistic import EmpiricalCoverage, PinballLoss

    factories: dict[str, Callable[[], Any]] = {
        "MAE": MeanAbsoluteError,
        "RMSE": lambda: MeanSquaredError(square_root=True),
        "MAPE": lambda: MeanAbsolutePercentageError(symmetric=False),
        "sMAPE": lambda: MeanAbsolutePercentageError(symmetric=True),
        "MASE": MeanAbsoluteScaledError,
        "WAPE": lambda: make_forecasting_scorer(_wape, name="WAPE", greater_is_better=False),
    }
    objects = []
    for name in names:
        if name in factories:
            metric = factories[name]()
        elif name == "pinball":
            metric = PinballLoss(alpha=list(quantiles))
        elif name == "coverage":
            metric = EmpiricalCoverage(coverage=list(coverage))
        else:
            continue
        # evaluate names result columns test_{metric.name}; MAPE and sMAPE share a class
        metric.name = name
        objects.append(metric)
    return objects


@dataclass(frozen=True)
class SplitterSpec:
    type: Literal["expanding", "sliding", "folds"] = "folds"
    horizon: int = 12
    initial_window: int | None = None
    window_length: int | None = None
    step: int | None = None
    folds: int | None = None

    def build(self) -> Any:
        from sktime.split import ExpandingGreedySplitter, ExpandingWindowSplitter, SlidingWindowSplitter

        fh = list(range(1, self.horizon + 1))
        step = self.step or self.horizon
        if self.type == "expanding":
            if not self.initial_window:
                raise InvalidInput("an expanding splitter needs 'initial_window'", field="splitter.initial_window")
            return ExpandingWindowSplitter(fh=fh, initial_window=self.initial_window, step_length=step)
        if self.type == "sliding":
            if not self.window_length:
                raise InvalidInput("a sliding splitter needs 'window_length'", field="splitter.window_length")
            return SlidingWindowSplitter(fh=fh, window_length=self.window_length, step_length=step)
        return ExpandingGreedySplitter(test_size=self.horizon, folds=self.folds or 3, step_length=self.step)


@dataclass
class BacktestRequest:
    splitter: SplitterSpec = field(default_factory=SplitterSpec)
    strategy: Strategy = "refit"
    metrics: tuple[str, ...] = DEFAULT_METRICS
    coverage: tuple[float, ...] = ()
    quantiles: tuple[float, ...] = ()
    series: tuple[tuple[str, ...], ...] | None = None

    def to_params(self) -> dict[str, Any]:
        """The request as a job's JSON params (`from_params` reads it back)."""
        return {
            "splitter": dataclasses.asdict(self.splitter),
            "strategy": self.strategy,
            "metrics": list(self.metrics),
            "coverage": list(self.coverage),
            "quantiles": list(self.quantiles),
            "series": [list(s) for s in self.series] if self.series is not None else None,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BacktestRequest:
        return cls(
            splitter=SplitterSpec(**params["splitter"]),
            strategy=params["strategy"],
            metrics=tuple(params["metrics"]),
            coverage=tuple(params.get("coverage") or ()),
            quantiles=tuple(params.get("quantiles") or ()),
            series=tuple(tuple(s) for s in params["series"]) if params.get("series") is not None else None,
        )


def validate_request(
    request: BacktestRequest, capabilities: dict[str, Any], y: pd.DataFrame, forecaster: Any = None
) -> int:
    """Check metrics, capabilities and that the splitter yields folds; returns the fold count."""
    if request.strategy != "refit" and requires_residuals(forecaster):
        # sktime 1.2: ReconcilerForecaster.update appends residuals for times it has seen, and
        # evaluate's update strategies pass the whole training window -> duplicate index
        raise InvalidInput(
            f"strategy '{request.strategy}' cannot run on {type(forecaster).__name__} "
            f"(method={getattr(forecaster, 'method', '?')}): sktime 1.2 fails to update its residuals "
            "on overlapping windows; use strategy 'refit'",
            field="strategy",
        )
    known = set(POINT_METRICS) | set(PROBABILISTIC_METRICS)
    unknown = [m for m in request.metrics if m not in known]
    if unknown:
        raise InvalidInput(f"unknown metric(s) {unknown}; known: {sorted(known)}", field="metrics", metrics=unknown)
    if "pinball" in request.metrics and not request.quantiles:
        raise InvalidInput("metric 'pinball' needs 'quantiles'", field="quantiles")
    if "coverage" in request.metrics and not request.coverage:
        raise InvalidInput("metric 'coverage' needs 'coverage' levels", field="coverage")
    if (request.coverage or request.quantiles) and not (capabilities.get("pred_int") or {}).get("available"):
        reason = (capabilities.get("pred_int") or {}).get("reason") or "not supported"
        raise CapabilityUnavailable(
            f"intervals or quantiles were requested but the model cannot give them: {reason}",
            capability="capability:pred_int",
            field="coverage" if request.coverage else "quantiles",
        )
    if request.quantiles and not (capabilities.get("quantiles") or {}).get("available"):
        raise CapabilityUnavailable(
            f"quantiles were requested but the model cannot give them: {capabilities['quantiles'].get('reason')}",
            capability="capability:pred_int",
            field="quantiles",
        )
    probabilistic = [m for m in request.metrics if m in PROBABILISTIC_METRICS]
    if probabilistic and y.index.nlevels > 1:
        # sktime 1.2's evaluate hands a panel's intervals to its probabilistic metrics in a shape
        # they refuse (TypeError): say so before a job is queued
        raise InvalidInput(
            f"metric(s) {probabilistic} are not available for backtests of a panel or hierarchy "
            "(sktime 1.2's evaluate cannot score a panel's intervals); use point metrics",
            field="metrics",
            metrics=probabilistic,
        )
    times = pd.Index(y.index.get_level_values(-1).unique()).sort_values()
    try:
        splits = list(request.splitter.build().split(pd.Series(np.zeros(len(times)), index=times)))
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"the splitter yields no fold on this data: {exc}", field="splitter") from None
    n_folds = len(splits)
    short = [i for i, (train, test) in enumerate(splits) if len(train) < 2 or len(test) < request.splitter.horizon]
    if short:
        raise InvalidInput(
            f"the splitter yields no full fold on the {len(times)} time points: fold {short[0]} would have "
            f"{len(splits[short[0]][0])} training and {len(splits[short[0]][1])} test points",
            field="splitter",
        )
    if n_folds < 1:
        raise InvalidInput(
            "the splitter yields no fold on this data (window plus horizon longer than the series)",
            field="splitter",
        )
    return int(n_folds)


class _ProgressSplitter:
    """Wraps a splitter's ``split_series`` to report each finished fold and stop on cancel."""

    def __init__(self, inner: Any, on_fold: Callable[[int], None]) -> None:
        self.inner = inner
        self.on_fold = on_fold

    def install(self) -> Any:
        original = self.inner.split_series

        def split_series(y: Any) -> Any:
            for i, pair in enumerate(original(y)):
                self.on_fold(i)  # i folds are done when the (i+1)-th is asked for
                yield pair

        self.inner.split_series = split_series  # on our own private splitter instance
        return self.inner


def _per_series(metric: Any, y_test: pd.DataFrame, y_pred: Any, y_train: pd.DataFrame) -> dict[tuple[str, ...], Any]:
    if y_test.index.nlevels == 1:
        return {(): _score(metric, y_test, y_pred, y_train)}
    raw = metric.clone().set_params(multilevel="raw_values")
    values = raw(y_test, y_pred, y_train=y_train)
    out = {}
    for key, row in values.iterrows():
        k = tuple(str(v) for v in (key if isinstance(key, tuple) else (key,)))
        out[k] = _jsonable_score(row)
    return out


def _score(metric: Any, y_test: Any, y_pred: Any, y_train: Any) -> Any:
    return _jsonable_score(metric(y_test, y_pred, y_train=y_train))


def _jsonable_score(value: Any) -> Any:
    if isinstance(value, pd.Series | pd.DataFrame):
        flat = np.asarray(value, dtype=float).ravel()
        value = float(flat[0]) if flat.size == 1 else [float(v) for v in flat]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, list):
        return [v if np.isfinite(v) else None for v in value]
    return value


def run_backtest(
    forecaster: Any,
    y: pd.DataFrame,
    x: pd.DataFrame | None,
    request: BacktestRequest,
    schema: Schema,
    on_progress: Callable[[int, int], None] | None = None,
    chunked: bool = False,
    isolate_failures: bool = False,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run sktime's `evaluate`; returns (result document, fold predictions long table).

    ``chunked``: a forecaster sktime vectorises per series runs `evaluate` per chunk of series
    on chunked_fit's workers; fold data are concatenated in the panel's order and each fold's
    panel score is computed on them as `evaluate` does; fit and predict times are summed.
    ``isolate_failures`` (with ``chunked``): a chunk that fails is evaluated series by series,
    the series that fail are left out of the scores and listed in ``failed_series`` with
    their error (all failing: `InvalidInput` with the first error)."""
    from sktime.forecasting.model_evaluation import evaluate

    n_folds = request.splitter.build().get_n_splits(y)
    report = on_progress or (lambda done, total: None)
    if chunked:
        chunks = series_chunks(forecaster, y, x)
        if chunks is not None:
            metrics = metric_objects(request.metrics, request.coverage, request.quantiles)
            started = time.perf_counter()
            worker = _evaluate_chunk_isolated if isolate_failures else _evaluate_chunk
            tasks = [(forecaster, cy, cx, request, metrics) for cy, cx in chunks]
            parts = map_chunks(worker, tasks, lambda d, t: report(n_folds * d // t if d < t else 0, n_folds))
            failed: list[dict[str, Any]] = []
            if isolate_failures:
                failed = [f for _, fails in parts for f in fails]
                parts = [frame for frames, _ in parts for frame in frames]
                if not parts:
                    raise InvalidInput(f"failed on every series; the first: {failed[0]['error']}")
            frame = _combine(parts, metrics, list(request.metrics))
            report(n_folds, n_folds)
            result, predictions = _summarise(frame, metrics, request, schema, time.perf_counter() - started)
            if isolate_failures:
                result["failed_series"] = failed
            return result, predictions
    splitter = _ProgressSplitter(request.splitter.build(), lambda i: report(i, n_folds)).install()
    metrics = metric_objects(request.metrics, request.coverage, request.quantiles)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = evaluate(
            forecaster=forecaster.clone(),
            cv=splitter,
            y=y,
            X=x,
            strategy=request.strategy,
            scoring=metrics + _interval_scorer(request, y, x),
            return_data=True,
            error_score="raise",
        )
    report(n_folds, n_folds)
    wall = time.perf_counter() - started
    return _summarise(frame, metrics, request, schema, wall)


def promised_metrics(spec_metric: str | None, gate_metric: str) -> tuple[str, ...]:
    """The point metrics a version's publish-time backtest records as its promise: the gate's,
    and the one the spec's drift policy watches."""
    return tuple(dict.fromkeys(m for m in (gate_metric, spec_metric) if m))


def backtest_promise(
    forecaster: Any, y: pd.DataFrame, x: pd.DataFrame | None, schema: Schema, horizon: int, metrics: Sequence[str]
) -> dict[str, Any]:
    """The manifest's ``metrics`` of a version published without a gate (a first start): one
    refit fold of ``horizon`` at the end of the data, as the retrain gate runs it."""
    request = BacktestRequest(SplitterSpec("folds", horizon=horizon, folds=1), "refit", tuple(metrics))
    try:
        result, _ = run_backtest(forecaster, y, x, request, schema, chunked=True)
    except (ServiceError, ValueError) as exc:
        return {"backtest_error": str(exc)[:500]}
    return {"backtest": {m: result["aggregate"].get(m) for m in metrics}}


def _interval_scorer(request: BacktestRequest, y: pd.DataFrame, x: pd.DataFrame | None) -> list[Any]:
    """An extra sktime scorer whose only use is that `evaluate` then predicts the intervals
    of ``request.coverage`` (its ``y_pred_interval``), for `interval_coverage`: when coverage
    levels are asked without the ``coverage`` metric, on one series without exogenous data
    (sktime 1.2's evaluate cannot score a panel's intervals, see `validate_request`, and
    fails on interval metrics with exogenous data for statsmodels adapters: a point-metric
    backtest that ran before must not start failing)."""
    if not request.coverage or "coverage" in request.metrics or y.index.nlevels > 1 or x is not None:
        return []
    from sktime.performance_metrics.forecasting.probabilistic import EmpiricalCoverage

    scorer = EmpiricalCoverage(coverage=list(request.coverage))
    scorer.name = "interval_coverage"
    return [scorer]


def interval_coverage(frame: pd.DataFrame, levels: Sequence[float]) -> list[dict[str, Any]] | None:
    """Per coverage level: the nominal coverage and the empirical one, the fraction of test
    points (all folds, steps and targets) inside the predicted interval, bounds included as
    in sktime's `EmpiricalCoverage`; also per fold and per step of the horizon. None when the
    backtest predicted no intervals."""
    if not levels or "y_pred_interval" not in frame.columns:
        return None
    rows = frame.reset_index(drop=True)
    out = []
    for level in levels:
        inside_by_fold: list[np.ndarray] = []
        for _, row in rows.iterrows():
            y_test, intervals = row["y_test"], row["y_pred_interval"]
            if isinstance(y_test, pd.Series):
                y_test = y_test.to_frame()
            intervals = intervals.reindex(y_test.index)
            covers = np.isclose(intervals.columns.get_level_values(1).astype(float), level)
            inside = []
            for target in y_test.columns:
                own = covers & (intervals.columns.get_level_values(0) == target)
                bounds = intervals.loc[:, own]
                lower = bounds.loc[:, bounds.columns.get_level_values(2) == "lower"].to_numpy(dtype=float)[:, 0]
                upper = bounds.loc[:, bounds.columns.get_level_values(2) == "upper"].to_numpy(dtype=float)[:, 0]
                actual = y_test[target].to_numpy(dtype=float)
                inside.append((actual >= lower) & (actual <= upper))
            inside_by_fold.append(np.column_stack(inside))  # steps x targets
        every = np.concatenate([f.ravel() for f in inside_by_fold])
        steps = max(len(f) for f in inside_by_fold)
        by_step = [float(np.mean(np.concatenate([f[h] for f in inside_by_fold if len(f) > h]))) for h in range(steps)]
        out.append(
            {
                "coverage": float(level),
                "nominal": float(level),
                "empirical": float(np.mean(every)),
                "inside": int(every.sum()),
                "points": int(every.size),
                "by_fold": [float(np.mean(f)) for f in inside_by_fold],
                "by_step": by_step,
            }
        )
    return out


def _evaluate_chunk(forecaster: Any, y: Any, x: Any, request: BacktestRequest, metrics: list[Any]) -> Any:
    """In a worker: sktime's `evaluate` on one chunk of series, serially."""
    from sktime.forecasting.model_evaluation import evaluate
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        chunk = forecaster.clone()
        chunk.set_config(**{"backend:parallel": None})
        return evaluate(
            forecaster=chunk,
            cv=request.splitter.build(),
            y=y,
            X=x,
            strategy=request.strategy,
            scoring=metrics,
            return_data=True,
            error_score="raise",
        )


def _evaluate_chunk_isolated(
    forecaster: Any, y: pd.DataFrame, x: Any, request: BacktestRequest, metrics: list[Any]
) -> tuple[list[Any], list[dict[str, Any]]]:
    """`_evaluate_chunk`, and when the chunk fails, each of its series alone: (the frames of
    the chunk or of the series that worked, [{series, error}] of those that failed)."""
    with contextlib.suppress(Exception):  # some series fail: find which below
        return [_evaluate_chunk(forecaster, y, x, request, metrics)], []
    frames, failed = [], []
    instances = y.index.droplevel(-1)
    for key in instances.unique():
        rows = instances == key
        x_rows = x[x.index.droplevel(-1) == key] if x is not None else None
        try:
            frames.append(_evaluate_chunk(forecaster, y[rows], x_rows, request, metrics))
        except Exception as exc:
            series = [str(v) for v in (key if isinstance(key, tuple) else (key,))]
            failed.append({"series": series, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return frames, failed


def _combine(parts: list[pd.DataFrame], metrics: list[Any], names: list[str]) -> pd.DataFrame:
    """The chunks' `evaluate` frames as one whole-panel frame: data concatenated, scores redone."""
    first = parts[0].reset_index(drop=True)
    frame = first.copy()
    for column in first.columns:
        if column.startswith("y_"):
            frame[column] = [pd.concat([p.iloc[i][column] for p in parts]) for i in range(len(first))]
        elif column.endswith("_time") and column != "len_train_window":
            frame[column] = sum(p[column].to_numpy() for p in parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n, m in zip(names, metrics, strict=True):
            column = _PREDICTION_COLUMN.get(n, "y_pred")
            frame[f"test_{n}"] = [m(row["y_test"], row[column], y_train=row["y_train"]) for _, row in frame.iterrows()]
    return frame


def _summarise(
    frame: pd.DataFrame, metrics: list[Any], request: BacktestRequest, schema: Schema, wall: float
) -> tuple[dict[str, Any], pd.DataFrame]:
    names = list(request.metrics)
    wanted = set(request.series) if request.series is not None else None
    folds, prediction_rows = [], []
    per_series_values: dict[tuple[str, ...], dict[str, list[Any]]] = {}
    for i, row in frame.reset_index(drop=True).iterrows():
        y_test, y_train, y_pred = row["y_test"], row["y_train"], row["y_pred"]
        fold_metrics = {n: _jsonable_score(row[f"test_{n}"]) for n, m in zip(names, metrics, strict=True)}
        series_metrics: dict[tuple[str, ...], dict[str, Any]] = {}
        for n, m in zip(names, metrics, strict=True):
            prediction = row[_PREDICTION_COLUMN.get(n, "y_pred")]
            for key, value in _per_series(m, y_test, prediction, y_train).items():
                if wanted is None or key in wanted:
                    series_metrics.setdefault(key, {})[n] = value
        for key, values in series_metrics.items():
            for n, v in values.items():
                per_series_values.setdefault(key, {}).setdefault(n, []).append(v)
        if "y_pred" in row.index:
            prediction_rows.append(_fold_predictions(int(i), y_test, y_pred, schema))
        test_times = y_test.index.get_level_values(-1)
        train_times = y_train.index.get_level_values(-1)
        folds.append(
            {
                "fold": int(i),
                "cutoff": format_time(row["cutoff"]),
                "train_start": format_time(train_times.min()),
                "train_end": format_time(train_times.max()),
                "test_start": format_time(test_times.min()),
                "test_end": format_time(test_times.max()),
                "fit_seconds": float(row["fit_time"]),
                "predict_seconds": float(row["pred_time"]),
                "metrics": fold_metrics,
                "series": [{"series": list(k), "metrics": v} for k, v in sorted(series_metrics.items())],
            }
        )
    aggregate = {n: _mean([f["metrics"][n] for f in folds]) for n in names}
    per_series = [
        {"series": list(k), "metrics": {n: _mean(v) for n, v in values.items()}}
        for k, values in sorted(per_series_values.items())
    ]
    empirical = interval_coverage(frame, request.coverage)
    if empirical is not None:
        for fold in folds:
            fold["interval_coverage"] = [
                {"coverage": level["coverage"], "empirical": level["by_fold"][fold["fold"]]} for level in empirical
            ]
    result = {
        "strategy": request.strategy,
        "splitter": request.splitter.__dict__,
        "metrics": names,
        "coverage": list(request.coverage),
        "quantiles": list(request.quantiles),
        "n_folds": len(folds),
        "folds": folds,
        "aggregate": aggregate,
        "per_series": per_series,
        **({"interval_coverage": empirical} if empirical is not None else {}),
        "timing": {
            "fit_seconds": float(frame["fit_time"].sum()),
            "predict_seconds": float(frame["pred_time"].sum()),
            "wall_seconds": wall,
        },
    }
    predictions = pd.concat(prediction_rows, ignore_index=True) if prediction_rows else pd.DataFrame()
    return result, predictions


def _mean(values: list[Any]) -> Any:
    if values and isinstance(values[0], list):
        columns = list(zip(*values, strict=True))
        return [_mean(list(c)) for c in columns]
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def _fold_predictions(fold: int, y_test: pd.DataFrame, y_pred: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    target = schema.targets[0]
    actual = y_test[target] if target in y_test.columns else y_test.iloc[:, 0]
    predicted = y_pred.reindex(y_test.index)
    predicted = predicted[target] if target in predicted.columns else predicted.iloc[:, 0]
    out = pd.DataFrame({"fold": fold, "actual": actual.to_numpy(), "forecast": predicted.to_numpy()})
    index = y_test.index
    for level, key in enumerate(schema.keys):
        out[key] = index.get_level_values(level).astype(str)
    out[schema.time] = index.get_level_values(-1)
    return out


def default_plot_series(schema: Schema, predictions: pd.DataFrame) -> tuple[str, ...]:
    if not schema.keys:
        return ()
    if schema.kind == "hierarchical":
        return (TOTAL,) * len(schema.keys)
    first = predictions.iloc[0]
    return tuple(str(first[k]) for k in schema.keys)
