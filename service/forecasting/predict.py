"""Forecasting primitives on fitted sktime forecasters (no HTTP, no files)."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pandas as pd

from service.errors import ForecastFailed
from service.tables import Schema, forecast_table


def private_copy(forecaster: Any) -> Any:
    """An independent copy. Not `copy.deepcopy`: pandas' deepcopy keeps the objects held in
    a DataFrame (sktime's per-node forecasters_), so an update on the copy would move the
    original's inner forecasters."""
    return pickle.loads(pickle.dumps(forecaster, protocol=pickle.HIGHEST_PROTOCOL))


def cutoff_of(forecaster: Any) -> Any:
    """The forecaster's cutoff as one scalar (Period or int)."""
    cutoff = forecaster.cutoff
    if isinstance(cutoff, pd.Index):
        return cutoff[-1]
    return cutoff


def future_times(cutoff: Any, steps: list[int]) -> pd.Index:
    """Absolute times of relative ``steps`` after ``cutoff``."""
    if isinstance(cutoff, pd.Period):
        return pd.PeriodIndex([cutoff + s for s in steps], freq=cutoff.freq)
    return pd.Index([int(cutoff) + s for s in steps], dtype="int64")


def future_index(train_index: pd.Index, steps: list[int]) -> pd.Index:
    """The index of future rows: each series (keys of ``train_index``) times future steps."""
    cutoff = train_index.get_level_values(-1).max()
    times = future_times(cutoff, steps)
    if isinstance(train_index, pd.MultiIndex):
        series = train_index.droplevel(-1).unique()
        keys = series if isinstance(series, pd.MultiIndex) else [(s,) for s in series]
        tuples = [(*key, t) for key in keys for t in times]
        return pd.MultiIndex.from_tuples(tuples, names=train_index.names)
    return times.rename(train_index.name)


def steps_of(times: pd.Index, cutoff: Any) -> list[int]:
    """Relative steps of absolute ``times`` after ``cutoff``."""
    if isinstance(cutoff, pd.Period):
        return [int(n) for n in (pd.PeriodIndex(times, freq=cutoff.freq).asi8 - cutoff.ordinal)]
    return [int(t) - int(cutoff) for t in times]


def run_forecast(
    forecaster: Any,
    schema: Schema,
    steps: list[int],
    coverage: list[float] | tuple[float, ...] = (),
    quantiles: list[float] | tuple[float, ...] = (),
    x: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Point forecasts (and intervals, quantiles) for relative ``steps`` as one long table.

    Mutates ``forecaster``'s predict-time state, as sktime does: callers serialise
    access or pass a private copy."""
    wanted = sorted(set(steps))
    # every step up to the last one asked for, then the rows asked for: sktime 1.2's
    # Theta (deseasonalised) gives wrong numbers for a horizon with gaps
    fh = np.arange(1, wanted[-1] + 1, dtype="int64")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            point = forecaster.predict(fh=fh, X=x)
            intervals = forecaster.predict_interval(fh=fh, X=x, coverage=list(coverage)) if coverage else None
            quant = forecaster.predict_quantiles(fh=fh, X=x, alpha=list(quantiles)) if quantiles else None
    except Exception as exc:  # sktime raised on input that passed our validation
        raise ForecastFailed(f"the forecaster raised {type(exc).__name__}: {exc}"[:1000]) from exc
    if isinstance(point, pd.Series):
        point = point.to_frame(name=schema.targets[0])
    table = forecast_table(point, schema, intervals, quant)
    if len(wanted) == len(fh):
        return table
    times = future_times(cutoff_of(forecaster), wanted)
    return table[pd.Index(table[schema.time]).isin(times)].reset_index(drop=True)
