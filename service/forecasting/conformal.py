"""`GlobalConformalIntervals`: conformal intervals for a natively panel forecaster (a global
reduction, ``make_reduction(..., pooling="global")``) fitted once on the whole panel.

sktime's `ConformalIntervals` takes one series at a time: on a panel sktime vectorises it,
so a global model would be fitted once per series (and no longer be global). This wrapper
calibrates the whole-panel model instead, composing sktime's own fit and predict:

* calibration windows: ``windows`` expanding windows of the panel, cut at
  ``T - H - k * step`` (k = 0 .. windows - 1; T the panel's last period, H the largest step
  of the ``fh`` given in fit, ``step`` default ``ceil(H / 2)``). On each window a clone of
  the forecaster is fitted on the whole panel up to the cutoff and predicts steps 1 .. H;
  every series that has an actual at a step gives one residual there, so step h pools
  about ``windows x series`` residuals (3 windows x 60 series = 180). Each window ends a
  full horizon before T, so every step gets the same number of residuals. A global
  recursive reduction's calibration forecasts run through `fast_global_predict` (the same
  numbers as sktime's recursive predict, computed for the whole panel at once); anything
  else through sktime's ``predict``;
* scaling: each residual is divided by its series' scale as of the window's cutoff, the
  in-sample mean absolute seasonal difference of the series (lag ``sp``, by default the
  season length of the data's frequency: 12 for monthly data; the MASE scale of Hyndman &
  Koehler 2006). It follows each series' own variability (a series 100 times larger has
  about 100 times larger errors and differences) and, unlike the level, does not shrink
  the intervals of series that hover around zero. The seasonal lag rather than the first
  difference: on the tourism-monthly demo (60 series, 3 origins x 12 months) first
  differences, swollen by the season the model forecasts well, gave 0.761 / 0.919
  empirical coverage at 0.8 / 0.95 with a per-series spread (sd) of 0.22 / 0.16; seasonal
  differences gave 0.783 / 0.939, spread 0.17 / 0.10. Robust to zero and to short series:
  a series shorter than ``sp + 1`` uses its first differences, a constant one its mean
  absolute level, an all-zero one 1;
* intervals: for step h and coverage c, the point forecast of the final fit (the
  forecaster fitted on all data) +/- ``q_h(c) x scale``, with ``q_h(c)`` the conformal
  quantile of the pooled absolute scaled residuals at step h (the ceil((m + 1) c)-th
  smallest of m, the finite-sample rank of split conformal prediction; the largest when
  that rank exceeds m) and ``scale`` the series' scale on all data. Quantile level a is
  the point forecast +/- ``q_h(|2a - 1|) x scale`` (sign of a - 0.5): one symmetric
  distribution, so quantiles never cross, 80% nests in 95%, the 0.5 quantile is the point
  forecast and the interval of coverage c is the (1 - c)/2 and (1 + c)/2 quantiles;
* steps beyond those calibrated in fit (1 .. H) have no residuals: asking for their
  intervals raises (a 422 in the service), the point forecast is served;
* ``update(update_params=False)`` (new actuals, fixed parameters) keeps scales and
  residuals; ``update_params=True`` refits the final model on all data and recomputes the
  scales, the calibration residuals stay those of the last fit;
* a single series (no panel) is delegated whole to sktime's `ConformalIntervals` with the
  service's single-series settings (`service.forecasting.specs.conformal_node`), so its
  numbers are those of ``intervals: conformal`` on any single-series forecaster.

Everything is deterministic given a deterministic forecaster (no sampling), and the
fitted object pickles (plain pandas and numpy attributes).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from sktime.forecasting.base import BaseForecaster, ForecastingHorizon
from sktime.forecasting.conformal import ConformalIntervals

from service.forecasting.reduction import fast_global_predict
from service.forecasting.sktime_internals import remembered_y
from service.forecasting.specs import CONFORMAL_INITIAL_WINDOW, CONFORMAL_METHOD
from service.tables import season_length

DEFAULT_WINDOWS = 3
PANEL_MTYPES = ["pd.DataFrame", "pd-multiindex", "pd_multiindex_hier"]
_CLONED_TAGS = ("capability:exogenous", "capability:missing_values")


def window_step(horizon: int, step: int | None = None) -> int:
    """Periods between calibration cutoffs: ``step``, default ``ceil(horizon / 2)``."""
    return int(step) if step is not None else max(1, math.ceil(horizon / 2))


def calibration_positions(periods: int, horizon: int, windows: int, step: int | None = None) -> list[int]:
    """Positions (in the panel's sorted periods, ``periods`` of them) of the calibration
    cutoffs, latest first: ``periods - 1 - horizon - k * step``, keeping those that leave
    at least two periods to fit on."""
    gap = window_step(horizon, step)
    positions = [periods - 1 - horizon - k * gap for k in range(int(windows))]
    return [p for p in positions if p >= 1]


def residual_counts(y: pd.DataFrame, horizon: int, windows: int = DEFAULT_WINDOWS, step: int | None = None) -> int:
    """The fewest calibration residuals any step 1 .. ``horizon`` gets on the panel ``y``
    (instances x periods): per window, the series with at least two observations up to the
    cutoff and an actual at the step."""
    times = y.index.get_level_values(-1)
    grid = pd.Index(times.unique()).sort_values()
    labels = _instance_labels(y.index)
    counts = np.zeros(horizon, dtype=np.int64)
    for position in calibration_positions(len(grid), horizon, windows, step):
        seen = pd.Series(labels[times <= grid[position]]).value_counts()
        fitted_on = pd.Index(seen.index[seen >= 2])
        for h in range(1, horizon + 1):
            counts[h - 1] += int(labels[times == grid[position + h]].isin(fitted_on).sum())
    return int(counts.min()) if counts.size else 0


def _instance_labels(index: pd.Index) -> pd.Index:
    """One label per row: the row's series key (all levels but time) as a string, so rows of
    the training data, of a window and of a forecast match however pandas holds the key."""
    if index.nlevels == 2:
        return pd.Index(index.get_level_values(0).astype(str))
    keys = index.droplevel(-1).to_frame(index=False).astype(str)
    return pd.Index(keys.agg("\x1f".join, axis=1))


def season_of(index: pd.Index) -> int:
    """The season length of a period index's frequency (M: 12, Q: 4, W: 52, D: 7, B: 5,
    h: 24), 1 for other frequencies and for integer or timestamp indexes."""
    times = index.get_level_values(-1) if isinstance(index, pd.MultiIndex) else index
    if not isinstance(times, pd.PeriodIndex):
        return 1
    return season_length(times.freqstr)


def series_scales(y: pd.DataFrame, sp: int = 1) -> pd.Series:
    """Each series' scale: its mean absolute ``sp``-difference; a series too short for that
    falls back to its mean absolute first difference, a constant one to its mean absolute
    level, an all-zero one to 1."""
    labels = _instance_labels(y.index).to_numpy()
    values = pd.Series(y.iloc[:, 0].to_numpy(dtype="float64"))
    by_series = values.groupby(labels, sort=False)
    seasonal = by_series.diff(int(sp)).abs().groupby(labels, sort=False).mean()
    first = by_series.diff(1).abs().groupby(labels, sort=False).mean()
    levels = values.abs().groupby(labels, sort=False).mean()
    scales = seasonal.where(np.isfinite(seasonal) & (seasonal > 0), first)
    scales = scales.where(np.isfinite(scales) & (scales > 0), levels)
    return scales.where(np.isfinite(scales) & (scales > 0), 1.0)


def conformal_width(sorted_abs: np.ndarray, coverage: float) -> float:
    """The split-conformal quantile of ``sorted_abs`` (ascending) for ``coverage``: the
    ceil((m + 1) coverage)-th smallest of m, the largest when that rank exceeds m, 0 for
    coverage 0."""
    m = len(sorted_abs)
    rank = math.ceil(round((m + 1) * float(coverage), 9))
    if rank <= 0 or m == 0:
        return 0.0
    return float(sorted_abs[min(rank, m) - 1])


class GlobalConformalIntervals(BaseForecaster):
    """Conformal prediction intervals for a forecaster fitted once on a whole panel.

    Parameters
    ----------
    forecaster : sktime forecaster
        The point forecaster, natively panel (e.g. ``make_reduction(..., pooling="global")``).
    windows : int, default=3
        Calibration windows: whole-panel refits at cutoffs ``T - H - k * step``.
    step : int or None, default=None
        Periods between calibration cutoffs (default ``ceil(H / 2)``).
    sp : int or None, default=None
        The difference lag of each series' scale; None: the season length of the data's
        period frequency (`season_of`: 12 for monthly data, 1 for integer steps).
    """

    _tags = {
        "authors": ["forecast-service"],
        "y_inner_mtype": PANEL_MTYPES,
        "X_inner_mtype": PANEL_MTYPES,
        "scitype:y": "univariate",
        "capability:exogenous": True,
        "capability:missing_values": False,
        "capability:pred_int": True,
        "capability:pred_int:insample": False,
        "capability:insample": False,
        "capability:update": True,
        "requires-fh-in-fit": False,  # but a panel needs it to calibrate: refused without
        "fit_is_empty": False,
    }

    def __init__(
        self, forecaster: Any, windows: int = DEFAULT_WINDOWS, step: int | None = None, sp: int | None = None
    ) -> None:
        self.forecaster = forecaster
        self.windows = windows
        self.step = step
        self.sp = sp
        with warnings.catch_warnings():  # sktime 1.2's remember_data notice
            warnings.filterwarnings("ignore", message=".*remember_data.*", category=FutureWarning)
            super().__init__()
        self.clone_tags(forecaster, list(_CLONED_TAGS))

    # ------------------------------------------------------------------ fit
    def _fit(self, y: pd.DataFrame, X: pd.DataFrame | None = None, fh: ForecastingHorizon | None = None) -> Any:
        if int(self.windows) < 1 or any(v is not None and int(v) < 1 for v in (self.step, self.sp)):
            raise ValueError("windows, step and sp must be positive integers")
        self.sp_ = int(self.sp) if self.sp is not None else season_of(y.index)
        self.point_cache_: tuple[Any, pd.DataFrame] | None = None
        if fh is None:
            raise ValueError("GlobalConformalIntervals calibrates the steps of the fh given in fit: pass fh to fit")
        steps = np.asarray(fh.to_relative(self.cutoff).to_numpy(), dtype=np.int64)
        if steps.min() < 1:
            raise ValueError("GlobalConformalIntervals forecasts out of sample only: fh must be positive")
        self.horizon_ = int(steps.max())
        if not isinstance(y.index, pd.MultiIndex):  # one series: sktime's ConformalIntervals, as for any other
            self.single_: ConformalIntervals | None = ConformalIntervals(
                self._clone_inner(),
                method=CONFORMAL_METHOD,
                initial_window=CONFORMAL_INITIAL_WINDOW,
                sample_frac=None,
            ).fit(y, X=X, fh=fh)
            return self
        self.single_ = None
        self.calibration_ = self._calibrate(y, X)
        self.abs_scaled_ = {
            int(h): np.sort(np.abs(group.to_numpy(dtype="float64")))
            for h, group in self.calibration_.groupby("step")["scaled"]
        }
        missing = [h for h in range(1, self.horizon_ + 1) if len(self.abs_scaled_.get(h, ())) == 0]
        if missing:
            raise ValueError(
                f"GlobalConformalIntervals: the panel is too short to calibrate step(s) {missing[:5]} "
                f"({int(self.windows)} windows of {self.horizon_} steps before its end)"
            )
        self.forecaster_ = self._clone_inner().fit(y, X=X, fh=fh)
        self.scales_ = series_scales(y, self.sp_)
        return self

    def _clone_inner(self) -> Any:
        with warnings.catch_warnings():  # sktime 1.2's remember_data notice, once per clone
            warnings.filterwarnings("ignore", message=".*remember_data.*", category=FutureWarning)
            return self.forecaster.clone()

    def _calibrate(self, y: pd.DataFrame, X: pd.DataFrame | None) -> pd.DataFrame:
        """The scaled residuals of the calibration windows: one row per (window, series, step)."""
        times = y.index.get_level_values(-1)
        grid = pd.Index(times.unique()).sort_values()
        fh = ForecastingHorizon(list(range(1, self.horizon_ + 1)), is_relative=True)
        frames = []
        for position in calibration_positions(len(grid), self.horizon_, self.windows, self.step):
            cutoff = grid[position]
            train = y[times <= cutoff]
            x_train = x_future = None
            if X is not None:
                x_times = X.index.get_level_values(-1)
                x_train = X[x_times <= cutoff]
                x_future = X[(x_times > cutoff) & (x_times <= grid[position + self.horizon_])]
            fitted = self._clone_inner().fit(train, X=x_train, fh=fh)
            predicted = fast_global_predict(fitted, fh, x_future)
            if predicted is None:
                predicted = fitted.predict(fh=fh, X=x_future)
            step_of = {t: h for h, t in enumerate(grid[position + 1 : position + 1 + self.horizon_], start=1)}
            actual = y.iloc[:, 0].reindex(predicted.index).to_numpy(dtype="float64")
            point = predicted.iloc[:, 0].to_numpy(dtype="float64")
            labels = _instance_labels(predicted.index)
            scale = series_scales(train, self.sp_).reindex(labels).to_numpy(dtype="float64")
            frame = pd.DataFrame(
                {
                    "cutoff": cutoff,
                    "series": labels,
                    "step": [step_of.get(t, 0) for t in predicted.index.get_level_values(-1)],
                    "residual": actual - point,
                    "scale": scale,
                }
            )
            frames.append(frame[np.isfinite(frame["residual"]) & np.isfinite(frame["scale"]) & (frame["step"] > 0)])
        if not frames:
            raise ValueError(
                f"GlobalConformalIntervals: the panel ({len(grid)} periods) is too short for one calibration "
                f"window of {self.horizon_} steps"
            )
        calibration = pd.concat(frames, ignore_index=True)
        calibration["scaled"] = calibration["residual"] / calibration["scale"]
        return calibration

    # ------------------------------------------------------------------ predict
    def _point(self, fh: ForecastingHorizon, X: pd.DataFrame | None) -> pd.DataFrame:
        """The final fit's point forecast; the last one is kept for the intervals and quantiles
        that follow it in one request (sktime's recursive predict is the slow part)."""
        key = (str(self.cutoff), tuple(fh.to_absolute_index(self.cutoff)))
        cache = self.point_cache_
        if X is None and cache is not None and cache[0] == key:
            return cache[1].copy()
        point = self.forecaster_.predict(fh=fh, X=X)
        self.point_cache_ = (key, point.copy()) if X is None else None
        return point

    def _predict(self, fh: ForecastingHorizon, X: pd.DataFrame | None = None) -> Any:
        if self.single_ is not None:
            return self.single_.predict(fh=fh, X=X)
        return self._point(fh, X)

    def _half_widths(self, point: pd.DataFrame, fh: ForecastingHorizon, levels: list[float]) -> np.ndarray:
        """Rows of ``point`` x ``levels`` (coverages): ``q_h(c) x scale`` per row."""
        absolute = fh.to_absolute_index(self.cutoff)
        relative = fh.to_relative(self.cutoff).to_numpy()
        step_of = {t: int(h) for t, h in zip(absolute, relative, strict=True)}
        steps = np.array([step_of[t] for t in point.index.get_level_values(-1)], dtype=np.int64)
        beyond = sorted({int(h) for h in steps if h not in self.abs_scaled_})
        if beyond:
            raise ValueError(
                f"GlobalConformalIntervals is calibrated for steps 1-{self.horizon_} (the horizon it was fitted "
                f"with); step {beyond[0]} has no calibration residuals: ask for intervals up to step "
                f"{self.horizon_}, or refit with a longer horizon"
            )
        table = {h: [conformal_width(self.abs_scaled_[h], c) for c in levels] for h in set(steps.tolist())}
        widths = np.array([table[h] for h in steps], dtype="float64").reshape(len(steps), len(levels))
        labels = _instance_labels(point.index)
        fallback = float(self.scales_.median())
        scale = self.scales_.reindex(labels).fillna(fallback).to_numpy(dtype="float64")
        return widths * scale[:, None]

    def _predict_interval(self, fh: ForecastingHorizon, X: pd.DataFrame | None, coverage: list[float]) -> pd.DataFrame:
        if self.single_ is not None:
            return self.single_.predict_interval(fh=fh, X=X, coverage=coverage)
        point = self._point(fh, X)
        widths = self._half_widths(point, fh, list(coverage))
        centre = point.iloc[:, 0].to_numpy(dtype="float64")[:, None]
        name = point.columns[0]
        columns = pd.MultiIndex.from_tuples([(name, c, side) for c in coverage for side in ("lower", "upper")])
        values = np.empty((len(point), 2 * len(coverage)))
        values[:, 0::2] = centre - widths
        values[:, 1::2] = centre + widths
        return pd.DataFrame(values, index=point.index, columns=columns)

    def _predict_quantiles(self, fh: ForecastingHorizon, X: pd.DataFrame | None, alpha: list[float]) -> pd.DataFrame:
        if self.single_ is not None:
            return self.single_.predict_quantiles(fh=fh, X=X, alpha=alpha)
        point = self._point(fh, X)
        levels = [abs(2 * float(a) - 1) for a in alpha]
        signs = np.sign(np.asarray(alpha, dtype="float64") - 0.5)
        widths = self._half_widths(point, fh, levels)
        centre = point.iloc[:, 0].to_numpy(dtype="float64")[:, None]
        columns = pd.MultiIndex.from_tuples([(point.columns[0], a) for a in alpha])
        return pd.DataFrame(centre + signs[None, :] * widths, index=point.index, columns=columns)

    # ------------------------------------------------------------------ update
    def _update(self, y: pd.DataFrame, X: pd.DataFrame | None = None, update_params: bool = True) -> Any:
        self.point_cache_ = None
        if self.single_ is not None:
            self.single_.update(y, X=X, update_params=update_params)
            return self
        self.forecaster_.update(y, X=X, update_params=update_params)
        if update_params:  # scales follow the refit; the calibration residuals stay the last fit's
            remembered = remembered_y(self)
            self.scales_ = series_scales(remembered if remembered is not None else y, self.sp_)
        return self

    @classmethod
    def get_test_params(cls, parameter_set: str = "default") -> list[dict[str, Any]]:
        """Small settings for sktime's estimator checks."""
        from sklearn.linear_model import LinearRegression
        from sktime.forecasting.compose import make_reduction

        reduction = make_reduction(LinearRegression(), window_length=3, pooling="global")
        return [{"forecaster": reduction}, {"forecaster": reduction, "windows": 2, "step": 1}]
