"""The statsforecast engine against sktime's own vectorised forecaster on a seeded panel."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sktime.forecasting.model_evaluation import evaluate
from sktime.forecasting.model_selection import ExpandingWindowSplitter
from sktime.forecasting.naive import NaiveForecaster
from sktime.forecasting.statsforecast import StatsForecastAutoETS, StatsForecastAutoTheta
from sktime.forecasting.theta import ThetaForecaster

from service.errors import InvalidInput
from service.forecasting.engines import StatsForecastPanel, statsforecast_twin
from service.forecasting.specs import parse_model_spec
from service.forecasting.training import fit_spec

FH = list(range(1, 13))


def panel(series: int = 6, length: int = 72) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    t = np.tile(np.arange(length), series)
    level = np.repeat(rng.uniform(50, 150, series), length)
    values = level + 0.4 * t + 8 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 2, len(t))
    index = pd.MultiIndex.from_product(
        [[f"s{i}" for i in range(series)], pd.period_range("2000-01", periods=length, freq="M")],
        names=["store", "month"],
    )
    return pd.DataFrame({"sales": values}, index=index)


def both(forecaster):
    y = panel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = forecaster.clone().fit(y, fh=FH)
        engine = StatsForecastPanel(statsforecast_twin(forecaster)[0]).fit(y, fh=FH)
    return reference, engine


@pytest.mark.parametrize(
    "forecaster", [StatsForecastAutoETS(season_length=12), StatsForecastAutoTheta(season_length=12)]
)
def test_adapters_match_exactly(forecaster) -> None:
    reference, engine = both(forecaster)
    assert statsforecast_twin(forecaster)[1] is True
    pd.testing.assert_frame_equal(engine.predict(), reference.predict(), rtol=1e-6)
    pd.testing.assert_frame_equal(
        engine.predict_interval(coverage=[0.8, 0.95]), reference.predict_interval(coverage=[0.8, 0.95]), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("forecaster", "rtol"),
    [
        (NaiveForecaster(strategy="last"), 1e-9),
        (NaiveForecaster(strategy="last", sp=12), 1e-9),
    ],
)
def test_point_twins(forecaster, rtol: float) -> None:
    reference, engine = both(forecaster)
    pd.testing.assert_frame_equal(engine.predict(), reference.predict(), rtol=rtol)


def test_theta_has_no_twin() -> None:
    assert statsforecast_twin(ThetaForecaster(sp=12)) is None


def test_update_refits_like_sktime_and_pickles() -> None:
    y = panel(length=84)
    old = y[y.index.get_level_values(-1) < pd.Period("2006-01", "M")]
    new = y[y.index.get_level_values(-1) >= pd.Period("2006-01", "M")]
    forecaster = StatsForecastAutoETS(season_length=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = forecaster.clone().fit(old, fh=FH).update(new, update_params=True)
        engine = StatsForecastPanel(statsforecast_twin(forecaster)[0]).fit(old, fh=FH).update(new)
    pd.testing.assert_frame_equal(engine.predict(), reference.predict(), rtol=1e-6)
    pd.testing.assert_frame_equal(pickle.loads(pickle.dumps(engine)).predict(), engine.predict())


def test_sktime_evaluate_runs_on_the_engine() -> None:
    engine = StatsForecastPanel(statsforecast_twin(StatsForecastAutoETS(season_length=12))[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = evaluate(engine, ExpandingWindowSplitter(fh=[1, 2, 3], initial_window=60, step_length=6), panel())
    assert len(scores) == 2 and scores.iloc[:, 0].notna().all()


def long_table() -> pd.DataFrame:
    y = panel().reset_index()
    y["month"] = y["month"].dt.to_timestamp()
    return y


def spec(cls: str, params: dict, engine: str):
    return parse_model_spec(
        {
            "data": {"source": {"path": "x.csv"}, "time": "month", "keys": ["store"], "targets": ["sales"]},
            "freq": "M",
            "horizon": 12,
            "engine": engine,
            "forecaster": {"class": cls, "params": params},
        }
    )


def test_fit_spec_uses_the_engine() -> None:
    auto = fit_spec(spec("StatsForecastAutoETS", {"season_length": 12}, "auto"), long_table())
    assert isinstance(auto.forecaster, StatsForecastPanel)
    naive = fit_spec(spec("NaiveForecaster", {"strategy": "last", "sp": 12}, "auto"), long_table())
    assert isinstance(naive.forecaster, NaiveForecaster)  # point-only twin: auto stays on sktime


def test_engine_statsforecast_without_twin_names_engine() -> None:
    with pytest.raises(InvalidInput) as caught:
        fit_spec(spec("NaiveForecaster", {"strategy": "mean"}, "statsforecast"), long_table())
    assert "engine" in caught.value.detail


def test_a_fitted_engine_never_forks_a_pool_where_it_serves() -> None:
    """Predicts and live updates run in a server's threads: the pickled engine predicts in-process."""
    reference, engine = both(StatsForecastAutoETS(season_length=12))
    assert engine.engine_.n_jobs == 1
    assert pickle.loads(pickle.dumps(engine)).engine_.n_jobs == 1
    pd.testing.assert_frame_equal(engine.predict(), reference.predict(), rtol=1e-6)


def test_exogenous_data_keeps_sktime_or_is_refused_for_the_engine() -> None:
    """The engine takes no regressors: auto keeps sktime's adapter, statsforecast is refused naming engine."""
    table = long_table()
    table["promo"] = np.arange(len(table)) % 2

    def with_x(engine: str):
        raw = spec("StatsForecastAutoETS", {"season_length": 12}, engine)
        return parse_model_spec(
            {
                **raw.model_dump(exclude_none=True),
                "data": {**raw.data.model_dump(exclude_none=True), "exogenous": ["promo"]},
            }
        )

    with pytest.raises(InvalidInput) as caught:
        fit_spec(with_x("statsforecast"), table)
    assert caught.value.extra["field"] == "engine"
    assert isinstance(fit_spec(with_x("auto"), table).forecaster, StatsForecastAutoETS)
