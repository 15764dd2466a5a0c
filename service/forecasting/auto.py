"""`AutoStatistical`: the ``auto`` forecaster, a per-series combination of fast statistical models.

What it is, in sktime terms (every model is sktime's; this module is the glue):

* members: StatsForecast's AutoETS, AutoTheta, AutoARIMA and AutoCES through sktime's
  adapters (`StatsForecastAutoETS`, ...), each with the season length ``sp``;
* ``combine="median"`` (the default) or ``"mean"``: sktime's `EnsembleForecaster` over the
  members with that ``aggfunc``. Its point forecast is the ensemble's. It has no
  prediction intervals in sktime 1.2, so quantiles are combined the same way: the median
  (or mean) of the members' own quantile forecasts at each level ("Vincentisation",
  Ratcliff 1979; Lichtendahl, Grushka-Cockayne & Winkler 2013). A median or mean of
  monotone quantile curves is monotone, so quantiles never cross and an 80% interval
  lies inside the 95% one;
* ``combine="select"``: per series, the member with the lowest MAPE on an inner temporal
  backtest (one fold, the last ``backtest_horizon`` observations held out), as sktime's
  `ForecastingGridSearchCV` over a `MultiplexForecaster` of the members with a
  `SingleWindowSplitter` does it (it is built that way and refitted on the whole series);
  intervals are the chosen member's;
* ``combine="inverse-mape"``: the same backtest (the grid search without its refit), then
  sktime's `EnsembleForecaster` with ``aggfunc="mean"`` and ``weights`` proportional to
  1 / backtest MAPE; quantiles are the same weighted mean of the members' quantiles;
* fallback: a series shorter than ``min_length`` (default ``2 * sp + 1``), or one on which
  the combination fails to fit, gets sktime's seasonal naive forecaster
  (``NaiveForecaster(strategy="last", sp=sp)``; plain naive when shorter than ``sp``),
  whose intervals come from its residual variance.

On the Tourism monthly competition data the median of the four beat every member alone
and per-series selection by a one-fold backtest (bench/accuracy.py has the figures).

The forecaster is univariate: sktime vectorises it over a panel, one fitted copy per
series (``forecasters_``), so the service's chunked fit and shards treat it like any other
per-series model. Each fitted copy records what it did in ``chosen_`` (a label),
``weights_`` (member -> weight in the combination; for ``select`` one member has 1.0) and
``backtest_scores_`` (``select``/``inverse-mape``: member -> backtest MAPE); `choices` collects them
for every series of a fitted panel, and a published version's manifest records them
(``choices``, see `service.forecasting.publishing`). Every member is deterministic (no random numbers
anywhere), so the same data gives the same choice and numbers; the object pickles.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sktime.forecasting.base import BaseForecaster, ForecastingHorizon
from sktime.forecasting.compose import EnsembleForecaster, MultiplexForecaster
from sktime.forecasting.model_selection import ForecastingGridSearchCV
from sktime.forecasting.naive import NaiveForecaster
from sktime.forecasting.statsforecast import (
    StatsForecastAutoARIMA,
    StatsForecastAutoCES,
    StatsForecastAutoETS,
    StatsForecastAutoTheta,
)
from sktime.performance_metrics.forecasting import MeanAbsolutePercentageError
from sktime.split import SingleWindowSplitter

from service.forecasting.sktime_internals import variable_names

MEMBERS = ("ets", "theta", "arima", "ces")
COMBINATIONS = ("median", "mean", "select", "inverse-mape")
BACKTESTED = ("select", "inverse-mape")


def member_forecaster(name: str, sp: int) -> BaseForecaster:
    """One member, as sktime's StatsForecast adapter with season length ``sp``."""
    if name == "ets":
        return StatsForecastAutoETS(season_length=sp)
    if name == "theta":
        return StatsForecastAutoTheta(season_length=sp)
    if name == "arima":
        return StatsForecastAutoARIMA(sp=sp, approximation=True, n_jobs=1)
    if name == "ces":
        return StatsForecastAutoCES(season_length=sp)
    raise ValueError(f"unknown member {name!r}: choose from {', '.join(MEMBERS)}")


def fallback_forecaster(sp: int, length: int) -> BaseForecaster:
    """Seasonal naive (plain naive when the series is shorter than a season)."""
    return NaiveForecaster(strategy="last", sp=sp if length >= sp else 1)


class AutoStatistical(BaseForecaster):
    """Median (or mean) of AutoETS, AutoTheta, AutoARIMA and AutoCES per series, or the best
    of them on an inner backtest, with seasonal naive as the fallback.

    Parameters
    ----------
    sp : int, default=12
        Season length given to every member and to the seasonal naive fallback.
    combine : {"median", "mean", "select", "inverse-mape"}, default="median"
        ``median``/``mean``: sktime's `EnsembleForecaster` with that ``aggfunc``; quantiles
        are the same aggregate of the members' quantiles. ``select``: the member with the
        lowest MAPE on one backtest fold (`ForecastingGridSearchCV` over a
        `MultiplexForecaster`), refitted on the whole series. ``inverse-mape``: the
        members' weighted mean, weights proportional to 1 / their MAPE on that backtest.
    members : tuple of str, default=("ets", "theta", "arima", "ces")
        Which members take part, a non-empty subset of those four names.
    backtest_horizon : int or None, default=None
        ``select``/``inverse-mape``: how many last observations the inner backtest holds out (default
        ``2 * sp``); a series too short to keep ``min_length`` before them falls back to
        the median.
    min_length : int or None, default=None
        Shorter series get the seasonal naive fallback (default ``2 * sp + 1``).
    """

    _tags = {
        "authors": ["forecast-service"],
        "y_inner_mtype": "pd.Series",
        "X_inner_mtype": "pd.DataFrame",
        "scitype:y": "univariate",
        "capability:exogenous": False,
        "capability:multivariate": False,
        "capability:missing_values": False,
        "capability:pred_int": True,
        "capability:update": True,
        "requires-fh-in-fit": False,
    }

    def __init__(
        self,
        sp: int = 12,
        combine: str = "median",
        members: tuple[str, ...] = MEMBERS,
        backtest_horizon: int | None = None,
        min_length: int | None = None,
    ) -> None:
        self.sp = sp
        self.combine = combine
        self.members = members
        self.backtest_horizon = backtest_horizon
        self.min_length = min_length
        super().__init__()

    # ------------------------------------------------------------------ construction
    def _member_list(self) -> list[tuple[str, BaseForecaster]]:
        names = list(self.members)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"members must be distinct names from {', '.join(MEMBERS)}")
        return [(name, member_forecaster(name, int(self.sp))) for name in names]

    def ensemble(self) -> EnsembleForecaster:
        """The unfitted `EnsembleForecaster` the median/mean combination is."""
        aggfunc = "median" if self.combine in BACKTESTED else self.combine
        return EnsembleForecaster(self._member_list(), aggfunc=aggfunc)

    def selector(self, horizon: int, refit: bool = True) -> ForecastingGridSearchCV:
        """The unfitted grid search over the members that ``select`` is (one fold of ``horizon``)."""
        multiplex = MultiplexForecaster(self._member_list())
        return ForecastingGridSearchCV(
            multiplex,
            cv=SingleWindowSplitter(fh=list(range(1, horizon + 1))),
            param_grid={"selected_forecaster": list(self.members)},
            scoring=MeanAbsolutePercentageError(symmetric=False),
            strategy="refit",
            refit=refit,
            error_score=np.nan,
        )

    # ------------------------------------------------------------------ fit / predict
    def _fit(self, y: pd.Series, X: pd.DataFrame | None = None, fh: ForecastingHorizon | None = None) -> Any:
        if self.combine not in COMBINATIONS:
            raise ValueError(f"combine must be one of {', '.join(COMBINATIONS)}, not {self.combine!r}")
        sp = int(self.sp)
        min_length = int(self.min_length) if self.min_length is not None else 2 * sp + 1
        horizon = int(self.backtest_horizon) if self.backtest_horizon is not None else 2 * sp
        self.backtest_scores_: dict[str, float] = {}
        self.fallback_reason_: str | None = None
        self.inner_: BaseForecaster | None = None
        if len(y) < min_length:
            self.fallback_reason_ = f"series of {len(y)} observations, fewer than {min_length}"
        else:
            combine = self.combine
            if combine in BACKTESTED and len(y) - horizon < min_length:
                combine = "median"  # too short for the inner backtest: combine instead of select
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if combine == "select":
                        search = self.selector(horizon).fit(y, fh=fh)
                        self.backtest_scores_ = self._scores(search)
                        self.inner_ = search
                    elif combine == "inverse-mape":
                        self.backtest_scores_ = self._scores(self.selector(horizon, refit=False).fit(y, fh=fh))
                        self.inner_ = self._weighted(self.backtest_scores_).fit(y, fh=fh)
                    else:
                        self.inner_ = EnsembleForecaster(self._member_list(), aggfunc=combine).fit(y, fh=fh)
            except Exception as error:  # any member's failure: the fallback, with the reason recorded
                self.inner_ = None
                self.fallback_reason_ = f"{type(error).__name__}: {error}"[:200]
            else:
                self._record(combine)
        if self.inner_ is None:
            self.inner_ = fallback_forecaster(sp, len(y)).fit(y, fh=fh)
            naive = "seasonal-naive" if len(y) >= sp else "naive"
            self.chosen_ = naive
            self.weights_ = {naive: 1.0}
        return self

    def _scores(self, search: ForecastingGridSearchCV) -> dict[str, float]:
        results = search.cv_results_
        column = next(c for c in results.columns if c.startswith("mean_test_"))
        return {
            str(params["selected_forecaster"]): float(score)
            for params, score in zip(results["params"], results[column], strict=True)
        }

    def _weighted(self, scores: dict[str, float]) -> EnsembleForecaster:
        """The members that scored, weighted by 1 / backtest MAPE (all equal if none did)."""
        kept = [(n, f) for n, f in self._member_list() if np.isfinite(scores.get(n, np.nan))] or self._member_list()
        inverse = np.array([1.0 / max(scores.get(n, 1.0), 1e-12) for n, _ in kept])
        if not np.isfinite(inverse).all():
            inverse = np.ones(len(kept))
        return EnsembleForecaster(kept, aggfunc="mean", weights=list(inverse / inverse.sum()))

    def _record(self, combine: str) -> None:
        names = list(self.members)
        if combine == "select":
            best = str(self.inner_.best_params_["selected_forecaster"])  # type: ignore[union-attr]
            self.chosen_ = best
            self.weights_ = {name: float(name == best) for name in names}
        elif combine == "inverse-mape":
            ensemble = self.inner_
            given = dict(zip([n for n, _ in ensemble.forecasters], ensemble.weights, strict=True))  # type: ignore[union-attr]
            self.chosen_ = f"inverse-mape({','.join(given)})"
            self.weights_ = {name: float(given.get(name, 0.0)) for name in names}
        else:
            self.chosen_ = f"{combine}({','.join(names)})"
            self.weights_ = {name: 1.0 / len(names) for name in names}

    def _is_ensemble(self) -> bool:
        return isinstance(self.inner_, EnsembleForecaster)

    def _predict(self, fh: ForecastingHorizon, X: pd.DataFrame | None = None) -> pd.Series:
        point = self.inner_.predict(fh=fh)  # type: ignore[union-attr]
        if isinstance(point, pd.DataFrame):  # EnsembleForecaster works on DataFrames
            point = point.iloc[:, 0]
        point.name = variable_names(self)[0]
        return point

    def _predict_quantiles(self, fh: ForecastingHorizon, X: pd.DataFrame | None, alpha: list[float]) -> pd.DataFrame:
        if not self._is_ensemble():
            return self._named(self.inner_.predict_quantiles(fh=fh, alpha=alpha))  # type: ignore[union-attr]
        # the members' quantiles, aggregated level by level as the ensemble aggregates points
        frames = [member.predict_quantiles(fh=fh, alpha=alpha) for _, member in self.inner_.forecasters_]  # type: ignore[union-attr]
        stacked = np.stack([frame.to_numpy(dtype="float64") for frame in frames])
        if self.inner_.aggfunc == "median":  # type: ignore[union-attr]
            combined = np.median(stacked, axis=0)
        else:
            combined = np.average(stacked, axis=0, weights=self.inner_.weights)  # type: ignore[union-attr]
        return self._named(pd.DataFrame(combined, index=frames[0].index, columns=frames[0].columns))

    def _named(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Quantile columns under this forecaster's variable name, as sktime names them."""
        name = variable_names(self)[0]
        frame = frame.copy()
        frame.columns = pd.MultiIndex.from_tuples([(name, level) for _, level in frame.columns])
        return frame

    def _update(self, y: pd.Series, X: pd.DataFrame | None = None, update_params: bool = True) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.inner_.update(y, update_params=update_params)  # type: ignore[union-attr]
        return self

    @classmethod
    def get_test_params(cls, parameter_set: str = "default") -> list[dict[str, Any]]:
        """Small settings for sktime's estimator checks."""
        return [{"sp": 1, "members": ("ets", "theta")}, {"sp": 1, "combine": "select", "backtest_horizon": 3}]


def choices(forecaster: Any) -> list[dict[str, Any]]:
    """What a fitted `AutoStatistical` chose, per series: one record per row of a vectorised
    fit's ``forecasters_`` (``series``: the row's key as a tuple of strings), or one record
    for a single series. Wrappers are looked through (`find_choices`)."""
    found = find_choices(forecaster)
    if found is None:
        raise ValueError(f"{type(forecaster).__name__} is not, and does not wrap, a fitted AutoStatistical")
    return found


WRAPPED = ("forecaster_", "best_forecaster_", "estimator_")
"""Fitted attributes (sktime's public ones) under which a wrapper keeps the forecaster it fitted:
`ConformalIntervals` and `TransformedTargetForecaster`-like wrappers, grid searches."""


def find_choices(forecaster: Any, depth: int = 0) -> list[dict[str, Any]] | None:
    """`choices` of a fitted forecaster that is, wraps, or is a panel of `AutoStatistical`
    (sktime's vectorised ``forecasters_``, a wrapper's fitted inner forecaster, a pipeline's
    last step); None when there is none. A vectorised fit over several targets adds
    ``target`` to each record."""
    if depth > 8 or forecaster is None:
        return None
    inner = getattr(forecaster, "forecasters_", None)
    if isinstance(inner, pd.DataFrame):
        if inner.empty or _unwrap(inner.iat[0, 0]) is None:  # not auto: no labels built for a big panel
            return None
        labels = list(inner.index.to_frame(index=False).astype(str).itertuples(index=False, name=None))
        several = inner.shape[1] > 1
        records = []
        for label, (_, row) in zip(labels, inner.iterrows(), strict=True):
            for target, cell in row.items():
                found = _unwrap(cell)
                if found is None:
                    return None
                records.append({"series": list(label), **({"target": str(target)} if several else {}), **found})
        return records
    if isinstance(forecaster, AutoStatistical):
        return [{"series": [], **_choice(forecaster)}]
    return find_choices(_inner(forecaster), depth + 1)


def _unwrap(fitted: Any) -> dict[str, Any] | None:
    """One series' fitted forecaster: what it chose, looking through wrappers."""
    for _ in range(8):
        if isinstance(fitted, AutoStatistical) and hasattr(fitted, "chosen_"):
            return _choice(fitted)
        fitted = _inner(fitted)
        if fitted is None:
            return None
    return None


def _inner(wrapper: Any) -> Any:
    for attribute in WRAPPED:
        inner = getattr(wrapper, attribute, None)
        if inner is not None and hasattr(inner, "predict"):
            return inner
    steps = getattr(wrapper, "steps_", None)  # pipelines: the forecaster is the last step
    if isinstance(steps, list) and steps and isinstance(steps[-1], tuple) and hasattr(steps[-1][-1], "predict"):
        return steps[-1][-1]
    return None


def choice_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many series got each choice (label -> count), most frequent first."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record["chosen"]] = counts.get(record["chosen"], 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _choice(fitted: Any) -> dict[str, Any]:
    return {
        "chosen": fitted.chosen_,
        "weights": dict(fitted.weights_),
        "backtest_mape": dict(fitted.backtest_scores_),
        "fallback": fitted.fallback_reason_,
    }
