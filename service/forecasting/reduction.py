"""A fast predict for sktime's global recursive reduction (``make_reduction(...,
strategy="recursive", pooling="global")`` with `WindowSummarizer` features).

sktime's `RecursiveTabularRegressionForecaster` rebuilds a pandas window and reruns the
`WindowSummarizer` on it for every step (40 s for 1,000 series x 24 steps). Here the lag
and rolling-window features of the whole panel are computed at once on a
(series x time) numpy matrix, and the fitted regressor predicts one step for all series
per call, its predictions fed back recursively: the same numbers (same features, same
regressor, same input column names and order), in milliseconds.

It reproduces sktime 1.2's recursive predict exactly, quirks included: the window is the
``window_length_`` periods up to the panel's cutoff, positions a series has no value for
(a shorter or missing series, a NaN) hold 0 as in sktime's zero-filled frame, and every
series is forecast from the panel's cutoff. Anything it does not reproduce (exogenous data,
in-sample steps, other summarisers, a changed sktime layout) makes `fast_global_predict`
return None, and the wrapper asks sktime.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sktime.forecasting.base import BaseForecaster, ForecastingHorizon

from service.forecasting import sktime_internals

# WindowSummarizer's pandas rolling functions this module computes (same numbers to ~1 ulp)
SUMMARIZERS = ("lag", "mean", "sum", "min", "max", "std", "var", "median")
_NOT_COPIED_TAGS = ("authors", "maintainers")


@dataclass(frozen=True)
class _Feature:
    name: str  # the column name sktime gives it (and the regressor was fitted on)
    func: str
    lag: int
    length: int


@dataclass(frozen=True)
class _Plan:
    features: tuple[_Feature, ...]  # in the regressor's column order
    window: int  # sktime's window_length_: history periods each step reads
    estimator: Any
    y: pd.DataFrame  # the data sktime's predict reads (its current window data)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer | float | np.floating):
        return None
    return int(value) if float(value) == int(value) else None


def _summarizer_features(transformer: Any, column: str, prefix: str) -> list[_Feature] | None:
    """The features one WindowSummarizer computes, named as sktime names them; None if it
    asks for anything this module does not reproduce."""
    from sktime.transformations.summarize import WindowSummarizer

    if type(transformer) is not WindowSummarizer:
        return None
    params = transformer.get_params(deep=False)
    if params.get("target_cols") is not None or params.get("truncate") not in (None, "bfill"):
        return None  # bfill only fills rows before the window's end: the predicted row has no NaN
    config = params.get("lag_feature") or {"lag": [1]}
    if not isinstance(config, dict):
        return None
    features: list[_Feature] = []
    for func, windows in config.items():
        if func not in SUMMARIZERS:
            return None
        items = windows if isinstance(windows, list | tuple) else [windows]
        for item in items:
            if func == "lag":
                lag = _int(item)
                if lag is None or lag < 1:  # lag 0 would read the step being predicted
                    return None
                features.append(_Feature(f"{prefix}{column}_lag_{lag}", func, lag, 1))
                continue
            if not isinstance(item, list | tuple) or len(item) != 2:
                return None
            lag, length = (_int(v) for v in item)
            if lag is None or length is None or lag < 1 or length < (2 if func in ("std", "var") else 1):
                return None
            if any(type(v) is not int for v in item):  # sktime names the column str(item)
                return None
            features.append(_Feature(f"{prefix}{column}_{func}_{lag}_{length}", func, lag, length))
    return features


def _plan(fitted: Any) -> _Plan | None:
    """What the fast path needs from a fitted global recursive reduction, or None."""
    from sktime.forecasting.compose import RecursiveTabularRegressionForecaster

    if type(fitted) is not RecursiveTabularRegressionForecaster or not fitted.is_fitted:
        return None
    if fitted.pooling != "global" or hasattr(fitted, "forecasters_"):  # vectorised: one reducer per column
        return None
    if sktime_internals.window_exogenous(fitted) is not None:
        return None
    y = sktime_internals.window_data(fitted)
    if not isinstance(y, pd.DataFrame) or y.shape[1] != 1:
        return None
    times = y.index.get_level_values(-1)
    # periods (what the service's tables give) and integers; sktime 1.2 shifts timestamps through
    # periods inferred from private state, and fails on some (MS): those stay on sktime
    if not isinstance(times, pd.PeriodIndex) and not pd.api.types.is_integer_dtype(times):
        return None
    estimator = getattr(fitted, "estimator_", None)
    if estimator is None or (
        hasattr(estimator, "get_tags") and estimator.get_tag("object_type", "regressor", False) != "regressor"
    ):
        return None
    transformers = getattr(fitted, "transformers_", None)
    if not isinstance(transformers, list) or not transformers:
        return None
    column = str(y.columns[0])
    features: list[_Feature] = []
    for i, transformer in enumerate(transformers):
        found = _summarizer_features(transformer, column, f"trafo_{i}__" if len(transformers) > 1 else "")
        if found is None:
            return None
        features += found
    window = int(fitted.window_length_)
    if any(f.lag + f.length - 1 > window for f in features):
        return None
    fitted_names = getattr(estimator, "feature_names_in_", None)
    by_name = {f.name: f for f in features}
    if fitted_names is None or len(by_name) != len(features) or sorted(map(str, fitted_names)) != sorted(by_name):
        return None
    return _Plan(tuple(by_name[str(n)] for n in fitted_names), window, estimator, y)


def _compute(feature: _Feature, values: np.ndarray, end: int) -> np.ndarray:
    """The feature for every series at the step whose value sits at column ``end``."""
    stop = end - feature.lag + 1
    if feature.func == "lag":
        return values[:, stop - 1]
    block = values[:, stop - feature.length : stop]
    if feature.func in ("std", "var"):
        return block.std(axis=1, ddof=1) if feature.func == "std" else block.var(axis=1, ddof=1)
    return getattr(np, feature.func)(block, axis=1)


def _instance_positions(index: pd.Index, instances: pd.Index) -> np.ndarray:
    if index.nlevels == 2:  # one key level: map its (few) labels, then the integer codes
        assert isinstance(index, pd.MultiIndex)
        lookup = instances.get_indexer(index.levels[0])
        codes = np.asarray(index.codes[0])
        return np.where(codes >= 0, lookup[codes], -1)
    return instances.get_indexer(index.droplevel(-1))


def _time_positions(index: pd.Index, grid: pd.Index) -> np.ndarray:
    if isinstance(index, pd.MultiIndex):
        lookup = grid.get_indexer(index.levels[-1])
        codes = np.asarray(index.codes[-1])
        return np.where(codes >= 0, lookup[codes], -1)
    return grid.get_indexer(index)


def fast_global_predict(fitted: Any, fh: Any, X: Any = None) -> pd.DataFrame | None:
    """sktime's recursive predict of a fitted global reduction for ``fh``, for all series at
    once: the frame ``fitted.predict(fh)`` returns (its inner ``pd-multiindex`` /
    ``pd.DataFrame`` form), or None where this path does not reproduce sktime (then ask
    sktime). ``fh`` is anything sktime accepts, relative to the forecaster's cutoff."""
    if X is not None:
        return None
    plan = _plan(fitted)
    if plan is None:
        return None
    cutoff = fitted.cutoff
    fh = fh if isinstance(fh, ForecastingHorizon) else ForecastingHorizon(fh)
    steps = np.asarray(fh.to_relative(cutoff).to_numpy(), dtype=np.int64)
    if len(steps) == 0 or steps.min() < 1:
        return None
    horizon, window, y = int(steps.max()), plan.window, plan.y
    history = ForecastingHorizon(list(range(-window + 1, 1)), is_relative=True).to_absolute_index(cutoff)
    future = ForecastingHorizon(list(range(1, horizon + 1)), is_relative=True).to_absolute_index(cutoff)
    panel = isinstance(y.index, pd.MultiIndex)
    instances = y.index.droplevel(-1).unique() if panel else pd.Index([0])

    values = np.zeros((len(instances), window + horizon))  # sktime's window frame starts at 0
    rows = _instance_positions(y.index, instances) if panel else np.zeros(len(y), dtype=np.int64)
    cols = _time_positions(y.index, history)
    observed = y.iloc[:, 0].to_numpy(dtype="float64")
    keep = (rows >= 0) & (cols >= 0) & ~np.isnan(observed)  # DataFrame.update skips NaN
    values[rows[keep], cols[keep]] = observed[keep]

    names = [f.name for f in plan.features]
    for step in range(horizon):
        end = window + step
        design = pd.DataFrame(np.column_stack([_compute(f, values, end) for f in plan.features]), columns=names)
        values[:, end] = np.asarray(plan.estimator.predict(design), dtype="float64").reshape(-1)

    wanted = steps - 1  # sorted, unique: a ForecastingHorizon's steps
    return pd.DataFrame(
        {y.columns[0]: values[:, window:][:, wanted].ravel()}, index=_forecast_index(y, instances, future, wanted)
    )


def _forecast_index(y: pd.DataFrame, instances: pd.Index, future: pd.Index, wanted: np.ndarray) -> pd.Index:
    """The index of sktime's forecast: each series (in order of appearance) with the wanted
    times of its whole-horizon frame, as ``_create_fcst_df`` then ``groupby(...).nth`` give."""
    times = future[wanted]
    if not isinstance(y.index, pd.MultiIndex):
        return pd.Index(times, name=y.index.name)
    n, k = len(instances), len(times)
    rows = np.repeat(np.arange(n), k)
    if isinstance(instances, pd.MultiIndex):
        levels = list(instances.levels)
        codes = [np.asarray(c)[rows] for c in instances.codes]
    else:
        levels, codes = [instances], [rows]
    return pd.MultiIndex(
        levels=[*levels, times], codes=[*codes, np.tile(np.arange(k), n)], names=y.index.names, verify_integrity=False
    )


class FastGlobalReduction(BaseForecaster):
    """A global recursive reduction whose ``predict`` runs on the whole panel at once
    (`fast_global_predict`); everything else, and any predict it cannot reproduce, is the
    wrapped sktime forecaster's own. ``forecaster`` is the reduction (unfitted blueprint);
    the fitted one is ``forecaster_``."""

    _tags = {
        "authors": ["forecast-service"],
        "fit_is_empty": False,
        "requires-fh-in-fit": False,
    }

    def __init__(self, forecaster: Any) -> None:
        self.forecaster = forecaster
        with warnings.catch_warnings():  # sktime 1.2's remember_data notice: the config is copied below
            warnings.filterwarnings("ignore", message=".*remember_data.*", category=FutureWarning)
            super().__init__()
        tags = forecaster.get_tags()
        self.set_tags(**{k: v for k, v in tags.items() if k not in _NOT_COPIED_TAGS and not k.startswith("tests:")})
        config = forecaster.get_config()
        self.set_config(**{k: config[k] for k in ("remember_data", "warnings") if k in config})

    def _fit(self, y: Any, X: Any = None, fh: Any = None) -> FastGlobalReduction:
        self.forecaster_ = self.forecaster.clone().fit(y, X=X, fh=fh)
        return self

    def _predict(self, fh: Any, X: Any = None) -> Any:
        fast = fast_global_predict(self.forecaster_, fh, X)
        return fast if fast is not None else self.forecaster_.predict(fh=fh, X=X)

    def _update(self, y: Any, X: Any = None, update_params: bool = True) -> FastGlobalReduction:
        self.forecaster_.update(y, X=X, update_params=update_params)
        return self

    def _predict_interval(self, fh: Any, X: Any = None, coverage: Any = None) -> Any:
        return self.forecaster_.predict_interval(fh=fh, X=X, coverage=coverage)

    def _predict_quantiles(self, fh: Any, X: Any = None, alpha: Any = None) -> Any:
        return self.forecaster_.predict_quantiles(fh=fh, X=X, alpha=alpha)

    def _predict_var(self, fh: Any, X: Any = None, cov: bool = False) -> Any:
        return self.forecaster_.predict_var(fh=fh, X=X, cov=cov)

    @classmethod
    def get_test_params(cls, parameter_set: str = "default") -> list[dict[str, Any]]:
        from sklearn.linear_model import LinearRegression
        from sktime.forecasting.compose import make_reduction

        return [{"forecaster": make_reduction(LinearRegression(), window_length=3, pooling="global")}]


def fast_reduction(forecaster: Any) -> Any:
    """A fitted forecaster wrapped in `FastGlobalReduction` where the fast path reproduces
    its predict (a fitted global recursive reduction), else the forecaster unchanged."""
    if _plan(forecaster) is None:
        return forecaster
    with warnings.catch_warnings():  # sktime 1.2's remember_data notice; clone copies the config
        warnings.filterwarnings("ignore", message=".*remember_data.*", category=FutureWarning)
        wrapper = FastGlobalReduction(forecaster.clone())
    try:
        fh = forecaster.fh
    except ValueError:  # fitted without a horizon
        fh = None
    sktime_internals.adopt_fitted(wrapper, forecaster, fh)
    return wrapper
