"""Chunked panel fits give exactly sktime's own fitted model: every forecast, interval and
update compared with ``forecaster.fit`` on the same data."""

from __future__ import annotations

import pickle
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sktime.forecasting.naive import NaiveForecaster
from sktime.forecasting.reconcile import ReconcilerForecaster
from sktime.forecasting.sarimax import SARIMAX
from sktime.forecasting.theta import ThetaForecaster
from sktime.forecasting.trend import PolynomialTrendForecaster
from sktime.transformations.hierarchical.aggregate import Aggregator

from service.forecasting import chunked_fit
from service.forecasting.chunked_fit import can_fork, fit_in_chunks
from service.forecasting.progress import Cancelled

FH = [1, 2, 3]


@pytest.fixture(autouse=True)
def forked_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forked workers, as in a job's process (one thread); the last test takes loky's."""
    monkeypatch.setattr(chunked_fit, "can_fork", lambda: True)


def panel(levels: list[list[str]], length: int = 36, columns: tuple[str, ...] = ("y",), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    months = pd.period_range("2015-01", periods=length, freq="M")
    index = pd.MultiIndex.from_product([*levels, months])
    data = {c: 50 + rng.gamma(3, 4, len(index)) for c in columns}
    return pd.DataFrame(data, index=index)


def sktime_fit(forecaster: Any, y: pd.DataFrame, x: pd.DataFrame | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return forecaster.clone().fit(y, X=x, fh=FH)


def chunked(forecaster: Any, y: pd.DataFrame, x: pd.DataFrame | None = None, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_in_chunks(forecaster.clone(), y, x, FH, **kwargs)


def assert_same_model(ours: Any, theirs: Any, x_future: pd.DataFrame | None = None, proba: bool = True) -> None:
    assert ours is not None
    pd.testing.assert_frame_equal(ours.predict(X=x_future), theirs.predict(X=x_future))
    if proba:
        pd.testing.assert_frame_equal(
            ours.predict_interval(X=x_future, coverage=[0.8]), theirs.predict_interval(X=x_future, coverage=[0.8])
        )
    assert ours.cutoff.equals(theirs.cutoff)
    assert list(ours.forecasters_.index) == list(theirs.forecasters_.index)
    assert list(ours.forecasters_.columns) == list(theirs.forecasters_.columns)
    # a round trip through pickle (the registry's artifact) keeps it
    pd.testing.assert_frame_equal(pickle.loads(pickle.dumps(ours)).predict(X=x_future), theirs.predict(X=x_future))


def test_theta_panel_forecasts_intervals_and_updates_match_sktime() -> None:
    y = panel([[f"s{i:02d}" for i in range(23)]])
    ours, theirs = chunked(ThetaForecaster(sp=12), y), sktime_fit(ThetaForecaster(sp=12), y)
    assert_same_model(ours, theirs)
    new = panel([[f"s{i:02d}" for i in range(23)]], length=1, seed=5)
    new.index = new.index.set_levels(pd.period_range("2018-01", periods=1, freq="M"), level=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.update(new, update_params=False)
        theirs.update(new, update_params=False)
    pd.testing.assert_frame_equal(ours.predict(), theirs.predict())


def test_hierarchy_of_three_levels_is_chunked_over_every_node() -> None:
    y = Aggregator(flatten_single_levels=False).fit_transform(panel([["a", "b", "c"], ["x1", "x2"]]))
    ours, theirs = chunked(NaiveForecaster(strategy="drift"), y), sktime_fit(NaiveForecaster(strategy="drift"), y)
    assert len(ours.forecasters_) == len(y.index.droplevel(-1).unique())
    assert_same_model(ours, theirs)


def test_univariate_forecaster_on_two_targets_is_vectorised_over_columns_too() -> None:
    y = panel([["p", "q", "r", "s"]], columns=("sales", "returns"))
    ours, theirs = chunked(PolynomialTrendForecaster(degree=1), y), sktime_fit(PolynomialTrendForecaster(degree=1), y)
    assert list(ours.forecasters_.columns) == ["sales", "returns"]
    assert_same_model(ours, theirs, proba=False)


def test_exogenous_columns_go_with_their_series() -> None:
    series = [f"s{i}" for i in range(5)]
    y, x = panel([series], length=40), panel([series], length=43, columns=("price",), seed=3)
    x_past = x[x.index.get_level_values(-1) <= y.index.get_level_values(-1).max()]
    x_future = x[x.index.get_level_values(-1) > y.index.get_level_values(-1).max()]
    arima = SARIMAX(order=(1, 0, 0))
    assert_same_model(chunked(arima, y, x_past), sktime_fit(arima, y, x_past), x_future)


@pytest.mark.parametrize(
    "forecaster",
    [ReconcilerForecaster(NaiveForecaster(), method="ols"), NaiveForecaster()],
    ids=["takes-hierarchies-natively", "one-series"],
)
def test_not_per_series_is_left_to_the_caller(forecaster: Any) -> None:
    y = Aggregator().fit_transform(panel([["a", "b"], ["x1", "x2"]]))
    data = y if isinstance(forecaster, ReconcilerForecaster) else y.loc[("a", "x1")]
    assert chunked(forecaster, data) is None


def test_progress_counts_series_up_to_all_and_a_cancel_stops_the_fit() -> None:
    y = panel([[f"s{i:02d}" for i in range(30)]])
    reports: list[tuple[int, int]] = []
    assert chunked(NaiveForecaster(), y, progress=lambda done, total: reports.append((done, total))) is not None
    done = [d for d, _ in reports]
    assert done == sorted(done) and done[-1] == 30 and len(done) > 1 and {t for _, t in reports} == {30}

    def cancel(done: int, total: int) -> None:
        raise Cancelled

    stop: Callable[[int, int], None] = cancel
    with pytest.raises(Cancelled):
        chunked(NaiveForecaster(), y, progress=stop)


def test_loky_workers_where_other_threads_run_give_the_same_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked_fit, "can_fork", lambda: False)
    y = panel([[f"s{i:02d}" for i in range(11)]])
    reports: list[int] = []
    ours = chunked(ThetaForecaster(sp=12), y, progress=lambda done, total: reports.append(done))
    assert_same_model(ours, sktime_fit(ThetaForecaster(sp=12), y))
    assert reports == sorted(reports) and reports[-1] == 11


def test_a_process_running_another_thread_does_not_fork() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        assert can_fork() is False
    finally:
        stop.set()
        other.join()
