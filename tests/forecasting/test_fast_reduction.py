"""The whole-panel predict of a global recursive reduction gives sktime's own numbers
(`service.forecasting.reduction`), and falls back to sktime where it would not."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sktime.forecasting.compose import RecursiveTabularRegressionForecaster, make_reduction
from sktime.transformations.summarize import WindowSummarizer
from xgboost import XGBRegressor

from service.forecasting import reduction, sktime_internals
from service.forecasting.reduction import FastGlobalReduction, fast_global_predict, fast_reduction
from service.forecasting.specs import build_estimator, load_model_spec

DEMO = Path(__file__).resolve().parents[2] / "models" / "tourism-monthly" / "model.yaml"
FULL = list(range(1, 25))
SUBSET = [1, 5, 12, 24]
RTOL = 1e-6
DEMO_LAGS = {"lag": [1, 2, 12], "mean": [[1, 3], [1, 12]]}


def long_table(series: int = 30, length: int = 60, seed: int = 0) -> pd.DataFrame:
    """A tourism-like long table: level, trend, yearly season and noise per series."""
    rng = np.random.default_rng(seed)
    steps = np.arange(length)
    level = rng.uniform(50, 500, size=(series, 1))
    season = rng.uniform(5, 40, size=(series, 1)) * np.sin(2 * np.pi * steps / 12)
    values = level + rng.normal(0, 0.5, size=(series, 1)) * steps + season + rng.normal(0, 4, size=(series, length))
    return pd.DataFrame(
        {
            "series": np.repeat([f"T{i:03d}" for i in range(series)], length),
            "month": np.tile(pd.period_range("2010-01", periods=length, freq="M"), series),
            "visitors": values.ravel(),
        }
    )


def panel(series: int = 30, length: int = 60, seed: int = 0) -> pd.DataFrame:
    return long_table(series, length, seed).set_index(["series", "month"])


def reducer(estimator: Any = None, lags: dict[str, Any] | None = None, **summarizer: Any) -> Any:
    return make_reduction(
        estimator if estimator is not None else XGBRegressor(n_estimators=30, max_depth=3, n_jobs=1),
        strategy="recursive",
        pooling="global",
        window_length=None,
        transformers=[WindowSummarizer(lag_feature=lags or DEMO_LAGS, n_jobs=1, **summarizer)],
    )


def assert_same(fast: pd.DataFrame | None, slow: pd.DataFrame) -> None:
    assert fast is not None, "the fast path refused a configuration it supports"
    pd.testing.assert_frame_equal(fast, slow, check_exact=False, rtol=RTOL)


@pytest.fixture(scope="module")
def demo_fitted() -> Any:
    """The tourism-monthly demo's spec (XGBoost, 200 trees) fitted on a 30-series panel."""
    forecaster = build_estimator(load_model_spec(DEMO).forecaster)  # the reduction inside intervals: conformal
    return forecaster.fit(panel(), fh=list(range(1, 13)))


CONFIGS = {
    "demo-lags-means": lambda: reducer(),
    "std-min-max-sum-var-median": lambda: reducer(
        lags={"lag": [1, 3], "std": [[1, 4]], "min": [[1, 6]], "max": [[2, 6]], "sum": [[1, 12]], "var": [[1, 3]]}
        | {"median": [[1, 5]]}
    ),
    "linear-regression": lambda: reducer(
        LinearRegression(), lags={"lag": [1, 2, 12], "mean": [[1, 3]], "std": [[2, 5]]}
    ),
    "two-summarizers": lambda: make_reduction(
        XGBRegressor(n_estimators=30, max_depth=3, n_jobs=1),
        strategy="recursive",
        pooling="global",
        window_length=None,
        transformers=[
            WindowSummarizer(lag_feature={"lag": [1, 12]}, n_jobs=1),
            WindowSummarizer(lag_feature={"mean": [[1, 6]], "max": [[1, 3]]}, n_jobs=1),
        ],
    ),
    "truncate-bfill": lambda: reducer(truncate="bfill"),
    "window-length-12-no-transformers": lambda: make_reduction(
        XGBRegressor(n_estimators=30, max_depth=3, n_jobs=1), strategy="recursive", pooling="global", window_length=12
    ),
}


@pytest.mark.parametrize("fh", [FULL, SUBSET, [7]], ids=["fh1-24", "fh-subset", "fh7"])
def test_demo_spec_fast_predict_equals_sktime(demo_fitted: Any, fh: list[int]) -> None:
    assert type(demo_fitted) is RecursiveTabularRegressionForecaster
    assert_same(fast_global_predict(demo_fitted, fh), demo_fitted.predict(fh=fh))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_fast_predict_equals_sktime(name: str) -> None:
    fitted = CONFIGS[name]().fit(panel())
    for fh in (FULL, SUBSET):
        assert_same(fast_global_predict(fitted, fh), fitted.predict(fh=fh))


def test_the_wrapper_predicts_without_sktimes_recursion(demo_fitted: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    wrapped = fast_reduction(demo_fitted)
    default = demo_fitted.predict()  # the horizon the forecaster holds (of its fit or its last predict)
    expected = {tuple(fh): demo_fitted.predict(fh=fh) for fh in (FULL, SUBSET)}
    assert isinstance(wrapped, FastGlobalReduction) and wrapped.forecaster_ is demo_fitted
    assert wrapped.is_fitted and wrapped.cutoff.equals(demo_fitted.cutoff)

    def no_recursion(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sktime's recursive predict ran: the fast path was not used")

    monkeypatch.setattr(RecursiveTabularRegressionForecaster, "_predict_last_window", no_recursion)
    pd.testing.assert_frame_equal(wrapped.predict(), default, check_exact=False, rtol=RTOL)
    for fh, slow in expected.items():
        pd.testing.assert_frame_equal(wrapped.predict(fh=list(fh)), slow, check_exact=False, rtol=RTOL)


def test_the_demo_through_fit_spec() -> None:
    """What training.fit_spec returns for the demo spec qualifies, and predicts the same."""
    from service.forecasting.training import fit_spec

    spec = load_model_spec(DEMO).model_copy(update={"intervals": "native"})  # the reduction, not its conformal wrapper
    result = fit_spec(spec, long_table(series=12, length=48))
    assert not isinstance(result.forecaster, FastGlobalReduction)  # engine: sktime, the default
    wrapped = fast_reduction(result.forecaster)
    assert isinstance(wrapped, FastGlobalReduction)
    pd.testing.assert_frame_equal(wrapped.predict(fh=FULL), result.forecaster.predict(fh=FULL), rtol=RTOL)
    auto = fit_spec(spec.model_copy(update={"engine": "auto"}), long_table(series=12, length=48))
    assert isinstance(auto.forecaster, FastGlobalReduction)  # engine: auto wraps it at fit time
    pd.testing.assert_frame_equal(auto.forecaster.predict(fh=FULL), result.forecaster.predict(fh=FULL), rtol=RTOL)


def test_pickles_with_equal_numbers(demo_fitted: Any) -> None:
    wrapped = fast_reduction(demo_fitted)
    restored = pickle.loads(pickle.dumps(wrapped))
    assert isinstance(restored, FastGlobalReduction)
    pd.testing.assert_frame_equal(restored.predict(fh=FULL), wrapped.predict(fh=FULL))
    pd.testing.assert_frame_equal(restored.predict(fh=SUBSET), demo_fitted.predict(fh=SUBSET), rtol=RTOL)


def test_get_params_clone_and_refit() -> None:
    y = panel(series=10, length=48)
    fitted = reducer().fit(y)
    wrapped = fast_reduction(fitted)
    params = wrapped.get_params(deep=False)
    assert set(params) == {"forecaster"} and not params["forecaster"].is_fitted
    assert params["forecaster"].get_params()["pooling"] == "global"
    fresh = wrapped.clone()
    assert isinstance(fresh, FastGlobalReduction) and not fresh.is_fitted
    fresh.fit(y)
    pd.testing.assert_frame_equal(fresh.predict(fh=FULL), fitted.predict(fh=FULL), rtol=RTOL)
    assert wrapped.get_tag("y_inner_mtype") == fitted.get_tag("y_inner_mtype")
    for tag in ("capability:pred_int", "capability:exogenous", "capability:insample", "requires-fh-in-fit"):
        assert wrapped.get_tag(tag) == fitted.get_tag(tag), tag


def test_update_moves_the_fast_path_to_the_new_data() -> None:
    y = panel(series=10, length=60)
    split = y.index.get_level_values(-1) < pd.Period("2014-10", "M")
    head, tail = y[split], y[~split]
    fitted = reducer().fit(head)
    plain = copy.deepcopy(fitted)
    wrapped = fast_reduction(fitted)
    before = wrapped.predict(fh=FULL)
    wrapped.update(tail, update_params=False)
    plain.update(tail, update_params=False)
    after = wrapped.predict(fh=FULL)
    assert wrapped.cutoff.equals(plain.cutoff) and str(wrapped.cutoff[0]) == "2014-12"
    assert after.index.get_level_values(-1)[0] == pd.Period("2015-01", "M")
    assert not np.allclose(after.to_numpy()[:21], before.to_numpy()[3:24])  # new data, new numbers
    pd.testing.assert_frame_equal(after, plain.predict(fh=FULL), rtol=RTOL)
    assert_same(fast_global_predict(wrapped.forecaster_, FULL), plain.predict(fh=FULL))


def test_ragged_panel_and_missing_values_match_sktime() -> None:
    """sktime's window frame starts at zeros: a series that ended early, started late or has
    a NaN in the window is forecast from zeros there, from the panel's cutoff; so is ours."""
    y = panel(series=8, length=60)
    months = y.index.get_level_values(-1)
    names = y.index.get_level_values(0)
    y = y[~((names == "T001") & (months > pd.Period("2014-09", "M")))]  # ends 3 months early
    months, names = y.index.get_level_values(-1), y.index.get_level_values(0)
    y = y[~((names == "T002") & (months < pd.Period("2013-01", "M")))]  # starts late
    y.loc[("T003", pd.Period("2014-11", "M")), "visitors"] = np.nan  # after the fit: a label cannot be NaN
    late = y.index.get_level_values(-1) > pd.Period("2014-10", "M")
    fitted = reducer().fit(y[~late]).update(y[late], update_params=False)
    assert sktime_internals.window_data(fitted)["visitors"].isna().sum() == 1
    for fh in (FULL, SUBSET):
        assert_same(fast_global_predict(fitted, fh), fitted.predict(fh=fh))


def test_hierarchy_single_series_and_integer_times_match_sktime() -> None:
    y = panel(series=6, length=48)
    keys = y.index.get_level_values(0)
    hier = y.set_index(
        pd.MultiIndex.from_arrays(
            [np.where(keys < "T003", "north", "south"), keys, y.index.get_level_values(-1)],
            names=["region", "series", "month"],
        )
    )
    single = y.loc["T000"]
    integer = y.set_index(pd.MultiIndex.from_arrays([keys, np.tile(np.arange(48), 6)], names=["series", "t"]))
    for data in (hier, single, integer):
        fitted = reducer().fit(data)
        for fh in (FULL, SUBSET):
            assert_same(fast_global_predict(fitted, fh), fitted.predict(fh=fh))


def test_timestamps_fall_back_to_sktime() -> None:
    """Timestamps stay on sktime (it shifts them through periods inferred from private state,
    and fails on some): the fast path refuses, and the wrapper gives sktime's numbers."""
    y = panel(series=5, length=48)
    stamped = y.set_index(
        pd.MultiIndex.from_arrays(
            [y.index.get_level_values(0), np.tile(pd.date_range("2020-01-01", periods=48, freq="D"), 5)],
            names=["series", "day"],
        )
    )
    fitted = reducer().fit(stamped)
    assert fitted.cutoff.freq is None
    assert fast_global_predict(fitted, SUBSET) is None
    wrapper = FastGlobalReduction(reducer()).fit(stamped)
    pd.testing.assert_frame_equal(wrapper.predict(fh=SUBSET), fitted.predict(fh=SUBSET), rtol=RTOL)


UNSUPPORTED = {
    "kurt": lambda: reducer(lags={"lag": [1], "kurt": [[1, 6]]}),
    "callable": lambda: reducer(lags={"lag": [1], np.mean: [[1, 3]]}),  # type: ignore[dict-item]
    "lag-0": lambda: reducer(lags={"lag": [0, 1], "mean": [[1, 3]]}),
    "window-lag-0": lambda: reducer(lags={"lag": [1], "mean": [[0, 3]]}),
    "target-cols": lambda: reducer(target_cols=["visitors"]),
    "local-pooling": lambda: make_reduction(LinearRegression(), strategy="recursive", pooling="local", window_length=3),
    "direct": lambda: make_reduction(LinearRegression(), strategy="direct", pooling="global", window_length=3),
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_configurations_fall_back_to_sktime(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    y = panel(series=6, length=48)
    fh = [1, 2, 3]
    fitted = UNSUPPORTED[name]().fit(y, fh=fh)
    assert fast_global_predict(fitted, fh) is None
    assert fast_reduction(fitted) is fitted
    # a wrapper built around it anyway predicts through sktime, with sktime's numbers
    seen: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(out := real(*args, **kwargs))
        return out

    real = reduction.fast_global_predict
    monkeypatch.setattr(reduction, "fast_global_predict", spy)
    wrapper = FastGlobalReduction(UNSUPPORTED[name]()).fit(y, fh=fh)
    pd.testing.assert_frame_equal(wrapper.predict(), fitted.predict(), rtol=RTOL)
    assert seen and all(out is None for out in seen)  # once, or once per series where sktime vectorises


def test_exogenous_data_and_in_sample_steps_fall_back() -> None:
    y = panel(series=6, length=48)
    x = pd.DataFrame({"promo": np.tile(np.arange(48) % 2, 6).astype(float)}, index=y.index)
    with_x = reducer().fit(y, X=x)
    assert fast_global_predict(with_x, [1]) is None
    assert fast_reduction(with_x) is with_x
    plain = reducer().fit(y)
    assert fast_global_predict(plain, [0, 1]) is None
    assert fast_global_predict(plain, [1], X=x.tail(6)) is None
    regressor = LinearRegression()
    assert fast_reduction(regressor) is regressor  # not a reduction: returned unchanged
