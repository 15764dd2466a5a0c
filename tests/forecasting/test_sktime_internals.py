"""Every private name of sktime (and CPython) the service relies on, each named by a test,
so an upgrade that drops one fails here, loudly, in one place."""

from __future__ import annotations

import multiprocessing.forkserver
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sktime.datatypes import VectorizedDF
from sktime.forecasting.naive import NaiveForecaster
from sktime.forecasting.reconcile import ReconcilerForecaster

from service.forecasting import sktime_internals
from service.forecasting.sktime_internals import PRIVATE_NAMES, InternalsChanged


def panel() -> pd.DataFrame:
    index = pd.MultiIndex.from_product(
        [["a", "b", "c"], pd.period_range("2020-01", periods=12, freq="M")], names=["series", "month"]
    )
    return pd.DataFrame({"y": np.arange(36, dtype=float)}, index=index)


@pytest.fixture(scope="module")
def fitted_panel() -> NaiveForecaster:
    forecaster = NaiveForecaster()
    forecaster.fit(panel(), fh=[1, 2])
    return forecaster


@pytest.mark.parametrize("name", ["_X", "_y", "_check_X_y", "_update_y_X", "_check_fh", "_state"])
def test_base_forecaster_has(name: str) -> None:
    assert ("BaseForecaster", name) in PRIVATE_NAMES
    assert hasattr(NaiveForecaster(), name), f"sktime BaseForecaster lost {name}"


@pytest.mark.parametrize("name", ["_is_vectorized", "_yvec", "_state"])
def test_a_vectorised_fit_sets(fitted_panel: NaiveForecaster, name: str) -> None:
    """finish_vectorized_fit sets what sktime's own fit sets on a per-series panel fit."""
    assert ("BaseForecaster", name) in PRIVATE_NAMES
    assert hasattr(fitted_panel, name), f"a vectorised sktime fit no longer sets {name}"
    assert fitted_panel._is_vectorized is True
    assert isinstance(fitted_panel._yvec, VectorizedDF)
    assert fitted_panel._state == "fitted"


def test_convert_inputs_and_finish_match_sktimes_own_fit(fitted_panel: NaiveForecaster) -> None:
    y = panel()
    assembled = NaiveForecaster()
    x_inner, y_inner = sktime_internals.convert_inputs(assembled, y, None)
    assert isinstance(y_inner, VectorizedDF) and x_inner is None
    sktime_internals.finish_vectorized_fit(assembled, y_inner, x_inner, [1, 2], fitted_panel.forecasters_)
    assert assembled.is_fitted
    pd.testing.assert_frame_equal(assembled.predict(), fitted_panel.predict())
    assert assembled.cutoff == fitted_panel.cutoff


def test_remembered_data(fitted_panel: NaiveForecaster) -> None:
    pd.testing.assert_frame_equal(sktime_internals.remembered_y(fitted_panel), panel())
    assert sktime_internals.remembered_x(fitted_panel) is None
    assert sktime_internals.remembered_y(object()) is None


def test_reconciler_has__requires_residuals() -> None:
    assert ("ReconcilerForecaster", "_requires_residuals") in PRIVATE_NAMES
    mint = ReconcilerForecaster(NaiveForecaster(), method="mint_shrink")
    assert hasattr(mint, "_requires_residuals"), "sktime ReconcilerForecaster lost _requires_residuals"
    assert sktime_internals.requires_residuals(mint) is True
    assert sktime_internals.requires_residuals(NaiveForecaster()) is False


def test_cpython_forkserver_has__forkserver_alive_fd() -> None:
    assert ("multiprocessing.forkserver", "_forkserver._forkserver_alive_fd") in PRIVATE_NAMES
    assert hasattr(multiprocessing.forkserver, "_forkserver"), "CPython lost multiprocessing.forkserver._forkserver"
    assert hasattr(multiprocessing.forkserver._forkserver, "_forkserver_alive_fd"), (
        "CPython's ForkServer lost _forkserver_alive_fd"
    )


def test_a_missing_name_fails_loudly_naming_it() -> None:
    class Bare:
        pass

    with pytest.raises(InternalsChanged, match=r"Bare\._check_X_y is missing.*sktime_internals\.py"):
        sktime_internals.convert_inputs(Bare(), panel(), None)
    with pytest.raises(InternalsChanged, match="_state"):
        sktime_internals.finish_vectorized_fit(Bare(), None, None, [1], pd.DataFrame())


def test_variable_names_of_a_vectorised_fit_via_get_varnames() -> None:
    """_get_varnames: the target's column names, also inside a vectorised fit's per-series
    forecasters (where the inner pd.Series has lost its name)."""
    assert ("BaseForecaster", "_get_varnames") in PRIVATE_NAMES
    forecaster = NaiveForecaster().fit(panel(), fh=[1])
    assert sktime_internals.variable_names(forecaster) == ["y"]
    inner = forecaster.forecasters_.iloc[0, 0]
    assert sktime_internals.variable_names(inner) == ["y"]


def test_every_private_name_is_tested() -> None:
    """A new entry in PRIVATE_NAMES needs a test here that names it."""
    source = Path(__file__).read_text()
    untested = [name for (_, name) in PRIVATE_NAMES if name.split(".")[-1] not in source.replace("PRIVATE", "")]
    assert not untested, untested


def test_no_other_module_touches_a_private_name_of_sktime_or_multiprocessing() -> None:
    """Outside sktime_internals: no `obj._name` on anything but self/cls, no getattr of a
    "_name", no import from a private module of sktime or multiprocessing."""
    import ast

    package = Path(__file__).resolve().parents[2] / "service"
    found = []
    for path in package.rglob("*.py"):
        if path.name == "sktime_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(package.parent)}:{getattr(node, 'lineno', '?')}"
            owner = getattr(getattr(node, "value", None), "id", None)
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and owner not in ("self", "cls")
                and (owner, node.attr) != ("os", "_exit")  # public, despite its name
            ):
                found.append(f"{where} .{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and str(node.args[1].value).startswith("_")
                and not str(node.args[1].value).startswith("__")
            ):
                found.append(f"{where} getattr(..., {node.args[1].value!r})")
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith(("sktime", "multiprocessing"))
                and "._" in node.module
            ):
                found.append(f"{where} from {node.module}")
    assert not found, found


def test_statsforecast_adapter_has__instantiate_model() -> None:
    from sktime.forecasting.statsforecast import StatsForecastAutoETS
    from statsforecast.models import AutoETS

    assert ("_GeneralisedStatsForecastAdapter", "_instantiate_model") in PRIVATE_NAMES
    adapter = StatsForecastAutoETS(season_length=12, model="ZZN")
    assert hasattr(adapter, "_instantiate_model"), "sktime StatsForecast adapters lost _instantiate_model"
    model = sktime_internals.statsforecast_model(adapter)
    assert isinstance(model, AutoETS)
    assert (model.season_length, model.model) == (12, "ZZN")


def _global_reduction(x: pd.DataFrame | None = None) -> Any:
    from sklearn.linear_model import LinearRegression
    from sktime.forecasting.compose import make_reduction

    forecaster = make_reduction(LinearRegression(), strategy="recursive", pooling="global", window_length=3)
    return forecaster.fit(panel(), X=x, fh=[1, 2])


@pytest.mark.parametrize("name", ["_cur_y", "_cur_X"])
def test_window_forecaster_has(name: str) -> None:
    """forecasting/reduction.py reads the data a reduction's recursive predict reads."""
    assert ("_BaseWindowForecaster", name) in PRIVATE_NAMES
    assert hasattr(_global_reduction(), name), f"sktime's window forecasters no longer keep {name}"


def test_window_data_is_what_the_reduction_predicts_from() -> None:
    x = pd.DataFrame({"promo": np.arange(36, dtype=float) % 2}, index=panel().index)
    forecaster = _global_reduction()
    pd.testing.assert_frame_equal(sktime_internals.window_data(forecaster), panel())
    assert sktime_internals.window_exogenous(forecaster) is None
    pd.testing.assert_frame_equal(sktime_internals.window_exogenous(_global_reduction(x)), x)
    later = pd.DataFrame(
        {"y": [100.0, 200.0, 300.0]},
        index=pd.MultiIndex.from_product([["a", "b", "c"], [pd.Period("2021-01", "M")]], names=["series", "month"]),
    )
    forecaster.update(later, update_params=False)
    assert len(sktime_internals.window_data(forecaster)) == 39  # an update extends it
    with pytest.raises(InternalsChanged, match="_cur_y"):
        sktime_internals.window_data(NaiveForecaster())


def test_adopt_fitted_makes_a_wrapper_fitted_as_fit_would() -> None:
    from service.forecasting.reduction import FastGlobalReduction

    fitted = _global_reduction()
    wrapper = FastGlobalReduction(fitted.clone())
    sktime_internals.adopt_fitted(wrapper, fitted, fitted.fh)
    refitted = FastGlobalReduction(fitted.clone()).fit(panel(), fh=[1, 2])
    assert wrapper.is_fitted and wrapper.forecaster_ is fitted
    assert wrapper.cutoff.equals(refitted.cutoff)
    pd.testing.assert_frame_equal(sktime_internals.remembered_y(wrapper), sktime_internals.remembered_y(refitted))
    pd.testing.assert_frame_equal(wrapper.predict(), refitted.predict())
