"""PNG plots (matplotlib, Agg backend) of history, forecast and interval band."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from service.forecasting.served import Limits, PredictQuery, ServedVersion
from service.tables import TOTAL, interval_columns, parse_times, to_sktime

MAX_SERIES_IN_PLOT = 6


def forecast_png(registry: Any, served: ServedVersion, query: PredictQuery, limits: Limits) -> bytes:
    """History (from the version's training table) and the forecast for chosen series."""
    schema = served.schema
    series = query.series
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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _x(index: pd.Index) -> Any:
    if isinstance(index, pd.PeriodIndex):
        return index.to_timestamp()
    return index.to_numpy()
