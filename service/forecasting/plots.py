"""PNG plots (matplotlib, Agg backend) of history, forecast and interval band."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from service.errors import Conflict, InvalidInput, SeriesNotFound
from service.forecasting.backtest import default_plot_series
from service.forecasting.served import Limits, PredictQuery, ServedVersion
from service.tables import TOTAL, Schema, interval_columns, parse_times, to_sktime

MAX_SERIES_IN_PLOT = 6


def forecast_png(registry: Any, served: ServedVersion, query: PredictQuery, limits: Limits) -> bytes:
    """History (from the version's training table) and the forecast for chosen series."""
    schema = served.schema
    series = query.series
    if series is not None and not schema.keys:
        raise InvalidInput(f"{served.name} forecasts a single series; drop 'series'", field="series")
    if series is None:
        series = ((TOTAL,) * len(schema.keys),) if schema.kind == "hierarchical" else (served.series[0],)
    series = series[:MAX_SERIES_IN_PLOT]
    asked = series if schema.keys else None
    answer = served.answer(PredictQuery(horizon=query.horizon, series=asked, coverage=query.coverage), limits)
    forecast = pd.DataFrame(answer.columns)
    training = registry.read_training(served.name, served.version, served.manifest)
    y, _ = to_sktime(training, schema)
    target = schema.targets[0]
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 3 * len(series)), squeeze=False)
    for ax, key in zip(axes[:, 0], series, strict=False):
        history = y.loc[key] if schema.keys else y
        rows = forecast
        for k, v in zip(schema.keys, key, strict=True):
            rows = rows[rows[k] == v]
        hist_x = _x(history.index)
        ax.plot(hist_x, history[target].to_numpy(), color="#333333", lw=1.2, label="history")
        future_x = _x(parse_times(rows[schema.time], schema.freq, schema.time))
        ax.plot(future_x, rows[target].to_numpy(), color="#1f77b4", lw=1.8, label="forecast")
        for c in query.coverage:
            lower, upper = interval_columns(target, c)
            ax.fill_between(
                future_x,
                rows[lower].to_numpy(),
                rows[upper].to_numpy(),
                color="#1f77b4",
                alpha=0.2,
                label=f"{c:.0%} interval",
            )
        title = " / ".join(k for k in key if k != TOTAL) or "total" if schema.keys else served.name
        ax.set_title(f"{served.name} v{served.version}: {title} ({target})", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    return _png(fig)


def _x(index: pd.Index) -> Any:
    if isinstance(index, pd.PeriodIndex):
        return index.to_timestamp()
    return index.to_numpy()


def backtest_png(jobs: Any, data_dir: str, job_id: str, series: str | None) -> bytes:
    """Actuals vs forecasts of every fold of a finished backtest, for one series."""
    from pathlib import Path

    job = jobs.get(job_id)
    if job.kind != "backtest" or job.status != "succeeded":
        raise Conflict(f"job {job_id} is a {job.kind} that is {job.status}; plots exist for finished backtests")
    schema = Schema.from_dict(job.result["schema"])
    path = Path(data_dir) / "jobs" / job_id / "predictions.parquet"
    if not path.is_file():
        raise Conflict(f"job {job_id} kept no fold predictions")
    predictions = pd.read_parquet(path)
    key = tuple(series.split("/")) if series else default_plot_series(schema, predictions)
    if len(key) != len(schema.keys):
        raise SeriesNotFound(f"series {series!r} needs {len(schema.keys)} key value(s) {list(schema.keys)}")
    rows = predictions
    for k, v in zip(schema.keys, key, strict=True):
        rows = rows[rows[k].astype(str) == v]
    if rows.empty:
        raise SeriesNotFound(f"the backtest has no series {list(key)}", series=list(key))
    fig, ax = plt.subplots(figsize=(10, 3.5))
    actual = rows.drop_duplicates(subset=[schema.time]).sort_values(schema.time)
    ax.plot(actual[schema.time], actual["actual"], color="#333333", lw=1.2, label="actual")
    for fold, part in rows.groupby("fold"):
        ax.plot(part[schema.time], part["forecast"], lw=1.6, label=f"fold {fold}")
    title = " / ".join(key) if key else job.model
    ax.set_title(f"backtest {job_id[:8]} of {job.model} v{job.result['version']}: {title}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    return _png(fig)


def monitoring_png(data: dict[str, Any]) -> bytes:
    """Actuals against the forecasts served for them (with their band), one panel per series,
    and the rolling live metric of a version with its backtest's promise."""
    panels = data["panels"]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(9, 2.8 * (len(panels) + 1)), squeeze=False)
    for ax, panel in zip(axes[:-1, 0], panels, strict=False):
        x = _wire_x(panel["times"], data["freq"])
        ax.plot(x, panel["actual"], "o-", color="#333333", lw=1.2, ms=3, label="actual")
        ax.plot(x, panel["forecast"], "o-", color="#1f77b4", lw=1.6, ms=3, label="served forecast")
        if panel["lower"] is not None:
            ax.fill_between(
                x, panel["lower"], panel["upper"], color="#1f77b4", alpha=0.2, label=f"{data['coverage']:.0%} interval"
            )
            outside = (panel["actual"] < panel["lower"]) | (panel["actual"] > panel["upper"])
            ax.scatter(x[outside], panel["actual"][outside], color="#d62728", zorder=5, label="anomaly")
        title = " / ".join(panel["series"]) or data["model"]
        ax.set_title(f"{data['model']}: {title} ({data['target']})", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[-1, 0]
    rolling = data["rolling"]
    if rolling:
        x = _wire_x([r["time"] for r in rolling], data["freq"])
        values = [float("nan") if r["value"] is None else r["value"] for r in rolling]
        ax.plot(x, values, "o-", color="#2ca02c", lw=1.6, ms=3, label=f"live {data['metric']}")
    if data["promised"] is not None:
        ax.axhline(data["promised"], color="#ff7f0e", ls="--", label="backtest promise")
    ax.set_title(f"{data['model']} v{data['version']}: rolling {data['metric']}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _wire_x(times: Any, freq: str | None) -> Any:
    if freq is None:
        return np.asarray(times)
    return _x(parse_times(list(times), freq, "time"))


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
