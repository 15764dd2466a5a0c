"""The ``auto`` forecaster (`AutoStatistical`): the same as sktime's EnsembleForecaster (median)
or ForecastingGridSearchCV over a MultiplexForecaster (select) built directly, reproducible,
with nested intervals and uncrossed quantiles, picklable, and served from a spec exactly as
the class forecasts when called directly."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sktime.base import BaseObject
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

from service.app import create_app
from service.forecasting.allowlist import ALLOWED, allowed_classes, audit_class
from service.forecasting.auto import AutoStatistical, choices
from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from tests.conftest import make_settings, wait_ready

MONTHS = pd.period_range("2016-01", periods=60, freq="M")
FH = list(range(1, 7))


def seasonal_table(series: int = 3, seed: int = 3) -> pd.DataFrame:
    """Positive monthly series with a trend, a yearly season and noise, in long format."""
    rng = np.random.default_rng(seed)
    t = np.arange(len(MONTHS))
    parts = []
    for i in range(series):
        level = 100.0 * (i + 1) + (0.5 + i) * t
        season = (10.0 + 5 * i) * np.sin(2 * np.pi * (t + i) / 12)
        values = level + season + rng.normal(scale=3.0 + i, size=len(t))
        parts.append(pd.DataFrame({"series": f"s{i}", "month": MONTHS.strftime("%Y-%m-01"), "visitors": values}))
    return pd.concat(parts, ignore_index=True)


def as_panel(table: pd.DataFrame) -> pd.DataFrame:
    frame = table.assign(month=pd.PeriodIndex(pd.to_datetime(table["month"]), freq="M"))
    return frame.set_index(["series", "month"])[["visitors"]]


def fitted(forecaster: BaseObject, y: pd.DataFrame) -> BaseObject:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return forecaster.fit(y, fh=FH)


def members() -> list[tuple[str, BaseObject]]:
    return [
        ("ets", StatsForecastAutoETS(season_length=12)),
        ("theta", StatsForecastAutoTheta(season_length=12)),
        ("arima", StatsForecastAutoARIMA(sp=12, approximation=True, n_jobs=1)),
        ("ces", StatsForecastAutoCES(season_length=12)),
    ]


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return as_panel(seasonal_table())


@pytest.fixture(scope="module")
def median_fit(panel: pd.DataFrame) -> AutoStatistical:
    return fitted(AutoStatistical(sp=12), panel)


def test_median_equals_sktime_ensemble_and_members_quantiles(panel: pd.DataFrame, median_fit: AutoStatistical) -> None:
    """Point: sktime's EnsembleForecaster(aggfunc=median) built directly; quantiles: the median
    of each member's own quantiles, every member fitted directly on each series."""
    ensemble = fitted(EnsembleForecaster(members(), aggfunc="median"), panel)
    pd.testing.assert_series_equal(
        median_fit.predict()["visitors"], ensemble.predict()["visitors"], check_names=False, rtol=1e-12
    )
    alphas = [0.025, 0.1, 0.5, 0.9, 0.975]
    got = median_fit.predict_quantiles(alpha=alphas)
    member_quantiles = [fitted(m, panel).predict_quantiles(alpha=alphas).to_numpy() for _, m in members()]
    np.testing.assert_allclose(got.to_numpy(), np.median(np.stack(member_quantiles), axis=0), rtol=1e-12)
    records = choices(median_fit)
    assert [r["series"] for r in records] == [["s0"], ["s1"], ["s2"]]
    assert {r["chosen"] for r in records} == {"median(ets,theta,arima,ces)"}
    assert all(r["weights"] == {"ets": 0.25, "theta": 0.25, "arima": 0.25, "ces": 0.25} for r in records)


def test_select_equals_grid_search_over_multiplex(panel: pd.DataFrame) -> None:
    """Per series: the member ForecastingGridSearchCV over a MultiplexForecaster picks on one
    backtest fold (MAPE), with the same scores, and the same forecasts after the refit."""
    auto = fitted(AutoStatistical(sp=12, combine="select", backtest_horizon=12), panel)
    records = choices(auto)
    for record in records:
        y = panel.loc[record["series"][0]]["visitors"]
        search = ForecastingGridSearchCV(
            MultiplexForecaster(members()),
            cv=SingleWindowSplitter(fh=list(range(1, 13))),
            param_grid={"selected_forecaster": ["ets", "theta", "arima", "ces"]},
            scoring=MeanAbsolutePercentageError(symmetric=False),
        )
        search = fitted(search, y)
        assert record["chosen"] == search.best_params_["selected_forecaster"]
        assert record["weights"][record["chosen"]] == 1.0 and sum(record["weights"].values()) == 1.0
        scores = dict(
            zip(
                [p["selected_forecaster"] for p in search.cv_results_["params"]],
                search.cv_results_["mean_test_MeanAbsolutePercentageError"],
                strict=True,
            )
        )
        assert record["backtest_mape"] == pytest.approx(scores, rel=1e-12)
        ours = auto.forecasters_.loc[record["series"][0]].iloc[0]
        np.testing.assert_allclose(ours.predict().to_numpy().ravel(), search.predict().to_numpy().ravel(), rtol=1e-12)
        bands = ours.predict_interval(coverage=0.9).to_numpy()
        np.testing.assert_allclose(bands, search.predict_interval(coverage=0.9).to_numpy(), rtol=1e-12)


def test_inverse_mape_equals_weighted_sktime_ensemble(panel: pd.DataFrame) -> None:
    """Weights 1 / backtest MAPE of the grid search, normalised; point: sktime's weighted
    EnsembleForecaster built directly; quantiles: the same weighted mean of the members'."""
    auto = fitted(AutoStatistical(sp=12, combine="inverse-mape", backtest_horizon=12), panel)
    for record in choices(auto):
        y = panel.loc[record["series"][0]]["visitors"]
        inverse = {name: 1.0 / mape for name, mape in record["backtest_mape"].items()}
        weights = [inverse[name] / sum(inverse.values()) for name, _ in members()]
        assert list(record["weights"].values()) == pytest.approx(weights, rel=1e-12)
        ensemble = fitted(EnsembleForecaster(members(), aggfunc="mean", weights=weights), y)
        ours = auto.forecasters_.loc[record["series"][0]].iloc[0]
        np.testing.assert_allclose(ours.predict().to_numpy().ravel(), ensemble.predict().to_numpy().ravel(), rtol=1e-9)
        alphas = [0.1, 0.9]
        quantiles = np.stack([fitted(m, y).predict_quantiles(alpha=alphas).to_numpy() for _, m in members()])
        expected = np.average(quantiles, axis=0, weights=weights)
        np.testing.assert_allclose(ours.predict_quantiles(alpha=alphas).to_numpy(), expected, rtol=1e-9)


def test_same_data_same_choice_and_numbers(panel: pd.DataFrame, median_fit: AutoStatistical) -> None:
    again = fitted(AutoStatistical(sp=12), panel.copy())
    assert choices(again) == choices(median_fit)
    pd.testing.assert_frame_equal(again.predict(), median_fit.predict())
    pd.testing.assert_frame_equal(
        again.predict_interval(coverage=[0.8, 0.95]), median_fit.predict_interval(coverage=[0.8, 0.95])
    )


def test_intervals_nest_and_quantiles_do_not_cross(median_fit: AutoStatistical) -> None:
    bands = median_fit.predict_interval(coverage=[0.8, 0.95])["visitors"]
    point = median_fit.predict()["visitors"]
    assert (bands[(0.95, "lower")] < bands[(0.8, "lower")]).all()
    assert (bands[(0.8, "lower")] < point).all() and (point < bands[(0.8, "upper")]).all()
    assert (bands[(0.8, "upper")] < bands[(0.95, "upper")]).all()
    quantiles = median_fit.predict_quantiles(alpha=[0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]).to_numpy()
    assert (np.diff(quantiles, axis=1) > 0).all()


def test_pickle_round_trip(median_fit: AutoStatistical) -> None:
    loaded = pickle.loads(pickle.dumps(median_fit))
    pd.testing.assert_frame_equal(loaded.predict(), median_fit.predict())
    pd.testing.assert_frame_equal(
        loaded.predict_quantiles(alpha=[0.1, 0.9]), median_fit.predict_quantiles(alpha=[0.1, 0.9])
    )
    assert choices(loaded) == choices(median_fit)


def test_short_series_fall_back_to_seasonal_naive(panel: pd.DataFrame) -> None:
    y = panel.loc["s1"]["visitors"].iloc[-20:]
    auto = fitted(AutoStatistical(sp=12), y)
    naive = fitted(NaiveForecaster(strategy="last", sp=12), y)
    [record] = choices(auto)
    assert record["chosen"] == "seasonal-naive" and "fewer than 25" in record["fallback"]
    pd.testing.assert_series_equal(auto.predict(), naive.predict())
    np.testing.assert_allclose(
        auto.predict_interval(coverage=0.8).to_numpy(), naive.predict_interval(coverage=0.8).to_numpy()
    )


def test_allow_listed_audited_and_built_only_from_allow_listed_classes() -> None:
    assert allowed_classes()["AutoStatistical"] is AutoStatistical
    assert audit_class("AutoStatistical", AutoStatistical) == []
    auto = AutoStatistical()
    built = [auto.ensemble(), auto.selector(24), NaiveForecaster()]
    inner = {type(e).__name__ for e in built} | {type(m).__name__ for _, m in auto.ensemble().forecasters}
    search = auto.selector(24)
    inner |= {type(search.forecaster).__name__, type(search.cv).__name__, type(search.scoring).__name__}
    inner |= {type(m).__name__ for _, m in search.forecaster.forecasters}
    assert inner <= set(ALLOWED), inner - set(ALLOWED)


def test_a_spec_naming_auto_is_served_as_the_class_forecasts(tmp_path: Path) -> None:
    table = seasonal_table(series=2, seed=11)
    root = tmp_path / "registry"
    folder = root / "tourism"
    folder.mkdir(parents=True)
    table.to_csv(folder / "data.csv", index=False)
    (folder / "model.yaml").write_text(
        """kind: panel
data:
  source: {path: data.csv}
  time: month
  keys: [series]
  targets: [visitors]
horizon: 6
freq: M
forecaster: {class: AutoStatistical, params: {sp: 12}}
coverage: [0.8, 0.95]
"""
    )
    registry = Registry(root)
    train_and_publish(registry, "tourism", sources_root=root)

    direct = fitted(AutoStatistical(sp=12), as_panel(pd.read_csv(folder / "data.csv")))
    point = direct.predict()["visitors"]
    bands = direct.predict_interval(coverage=[0.8, 0.95])["visitors"]
    quantiles = direct.predict_quantiles(alpha=[0.1, 0.9])["visitors"]
    with TestClient(create_app(make_settings(root))) as api:
        wait_ready(api)
        response = api.post(
            "/v1/models/tourism/predict", json={"horizon": 6, "coverage": [0.8, 0.95], "quantiles": [0.1, 0.9]}
        )
        assert response.status_code == 200, response.text
        got = pd.DataFrame(response.json()["forecast"])
    got["month"] = pd.PeriodIndex(pd.to_datetime(got["month"]), freq="M")
    got = got.set_index(["series", "month"]).sort_index()
    assert list(got.index) == list(point.sort_index().index)
    np.testing.assert_allclose(got["visitors"], point.sort_index(), rtol=1e-9)
    for pct, coverage in ((80, 0.8), (95, 0.95)):
        for side in ("lower", "upper"):
            np.testing.assert_allclose(got[f"visitors_{side}_{pct}"], bands[(coverage, side)].sort_index(), rtol=1e-9)
    for level in (0.1, 0.9):
        np.testing.assert_allclose(got[f"visitors_q{level}"], quantiles[level].sort_index(), rtol=1e-9)
