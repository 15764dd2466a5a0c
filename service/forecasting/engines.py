"""A fast engine: a sktime forecaster that fits one statsforecast model natively on a whole
panel (one ``StatsForecast`` call) instead of sktime's per-series vectorisation, with the
same sktime-shaped outputs (MultiIndex, column names, PeriodIndex) as the vectorised twin."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sktime.forecasting.base import BaseForecaster

from service.forecasting import sktime_internals

STATSFORECAST_ADAPTERS = {
    "StatsForecastAutoETS",
    "StatsForecastAutoARIMA",
    "StatsForecastAutoCES",
    "StatsForecastAutoTheta",
}
# ThetaForecaster (statsmodels ThetaModel, multiplicative deseasonalising) has no twin:
# statsforecast's Theta(decomposition_type="multiplicative") differed by 2.4e-3 relative on one
# seeded series and by up to 10% on a seeded panel series (OptimizedTheta: 1.4e-2), so it stays on sktime.


def statsforecast_twin(forecaster: Any) -> tuple[Any, bool] | None:
    """(statsforecast model, exact) for a sktime forecaster with a twin, else None; exact
    means the numbers match sktime's within 1e-6 relative (the ``auto`` engine uses those)."""
    from statsforecast.models import Naive, SeasonalNaive

    name = type(forecaster).__name__
    params = forecaster.get_params(deep=False)
    if name in STATSFORECAST_ADAPTERS:
        return sktime_internals.statsforecast_model(forecaster), True
    if name == "NaiveForecaster" and params.get("strategy") == "last" and params.get("window_length") is None:
        sp = int(params.get("sp") or 1)
        return (Naive() if sp == 1 else SeasonalNaive(season_length=sp)), False
    return None


class StatsForecastPanel(BaseForecaster):
    """Fits ``model`` (a statsforecast model) on every series of a panel in one native call."""

    _tags = {
        "y_inner_mtype": ["pd.DataFrame", "pd-multiindex", "pd_multiindex_hier"],
        "X_inner_mtype": ["pd.DataFrame", "pd-multiindex", "pd_multiindex_hier"],
        "scitype:y": "univariate",
        "capability:exogenous": False,
        "capability:pred_int": True,
        "capability:pred_int:insample": False,
        "capability:insample": False,
        "requires-fh-in-fit": False,
        "capability:missing_values": False,
        "fit_is_empty": False,
    }

    def __init__(self, model: Any, n_jobs: int = -1) -> None:
        self.model = model
        self.n_jobs = n_jobs
        super().__init__()

    def _long(self, y: pd.DataFrame) -> pd.DataFrame:
        if y.index.nlevels == 1:
            ids = np.zeros(len(y), dtype=np.int64)
            self._keys = pd.MultiIndex.from_tuples([("__single__",)])
        else:
            keys = y.index.droplevel(-1)
            self._keys = keys.unique()
            ids = self._keys.get_indexer(keys)
        times = y.index.get_level_values(-1)
        self._freq = times.freq if isinstance(times, pd.PeriodIndex) else None
        ds = times.asi8 if isinstance(times, pd.PeriodIndex) else np.asarray(times, dtype=np.int64)
        self._names = list(y.index.names)
        self._column = y.columns[0]
        return pd.DataFrame({"unique_id": ids, "ds": ds, "y": y.iloc[:, 0].to_numpy(dtype=float)})

    def _fit(self, y: pd.DataFrame, X: Any = None, fh: Any = None) -> StatsForecastPanel:
        return self._fit_with(y, self.n_jobs)

    def _fit_with(self, y: pd.DataFrame, n_jobs: int) -> StatsForecastPanel:
        from statsforecast import StatsForecast

        self.engine_ = StatsForecast(models=[self.model], freq=1, n_jobs=n_jobs).fit(self._long(y))
        # predicts and live updates run in a server's threads: never fork a process pool there
        self.engine_.n_jobs = 1
        return self

    def _update(self, y: pd.DataFrame, X: Any = None, update_params: bool = True) -> StatsForecastPanel:
        # statsforecast 2.1.1 has no StatsForecast.forward: both modes refit on all data seen, in this process
        return self._fit_with(sktime_internals.remembered_y(self), 1)

    def _steps(self, fh: Any) -> np.ndarray:
        steps = np.asarray(fh.to_relative(self.cutoff).to_numpy(), dtype=np.int64)
        if (steps < 1).any():
            raise NotImplementedError("StatsForecastPanel forecasts out of sample only")
        return steps

    def _raw(self, fh: Any, levels: list[float] | None) -> tuple[pd.DataFrame, np.ndarray]:
        steps = self._steps(fh)
        kwargs = {"level": [100 * c for c in levels]} if levels else {}
        out = self.engine_.predict(h=int(steps.max()), **kwargs)
        if "unique_id" not in out.columns:
            out = out.reset_index()
        out["step"] = out.groupby("unique_id").cumcount() + 1
        out = out[out["step"].isin(steps)].sort_values(["unique_id", "ds"])
        return out, steps

    def _index(self, out: pd.DataFrame) -> pd.MultiIndex | pd.Index:
        ds = out["ds"].to_numpy(dtype=np.int64)
        times = pd.PeriodIndex.from_ordinals(ds, freq=self._freq) if self._freq is not None else pd.Index(ds)
        if len(self._names) == 1:
            return times.rename(self._names[0])
        keys = self._keys[out["unique_id"].to_numpy()]
        arrays = [keys.get_level_values(i) for i in range(keys.nlevels)] + [times]
        return pd.MultiIndex.from_arrays(arrays, names=self._names)

    def _model_column(self, out: pd.DataFrame) -> str:
        return next(
            c for c in out.columns if c not in ("unique_id", "ds", "step") and "-lo-" not in c and "-hi-" not in c
        )

    def _predict(self, fh: Any, X: Any = None) -> pd.DataFrame:
        out, _ = self._raw(fh, None)
        return pd.DataFrame({self._column: out[self._model_column(out)].to_numpy()}, index=self._index(out))

    def _predict_interval(self, fh: Any, X: Any = None, coverage: Any = None) -> pd.DataFrame:
        levels = list(coverage)
        out, _ = self._raw(fh, levels)
        name = self._model_column(out)
        columns: dict[tuple[Any, float, str], Any] = {}
        for c in levels:
            pct = 100 * c
            label = f"{pct:g}"
            lo = next(k for k in out.columns if k in (f"{name}-lo-{label}", f"{name}-lo-{pct}"))
            hi = next(k for k in out.columns if k in (f"{name}-hi-{label}", f"{name}-hi-{pct}"))
            columns[(self._column, c, "lower")] = out[lo].to_numpy()
            columns[(self._column, c, "upper")] = out[hi].to_numpy()
        frame = pd.DataFrame(columns, index=self._index(out))
        frame.columns = pd.MultiIndex.from_tuples(list(columns))
        return frame
