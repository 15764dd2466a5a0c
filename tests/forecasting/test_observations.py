"""The observations probe (`service.forecasting.observations`): which mode a fitted
forecaster gets, what a spec's explicit choice does, and versions published before it."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
from sktime.datasets import load_airline
from sktime.forecasting.exp_smoothing import ExponentialSmoothing
from sktime.forecasting.naive import NaiveForecaster
from sktime.forecasting.theta import ThetaForecaster

from service.errors import CapabilityUnavailable, InvalidInput
from service.forecasting.observations import probe_observations
from service.forecasting.served import Limits, PredictQuery, ServedVersion
from service.registry.store import Registry
from service.tables import Schema
from tests.factories import SCHEMA, fit_naive, publish_naive, small_panel

SINGLE = Schema(kind="single", keys=(), time="month", targets=("passengers",), freq="M")


def _fitted(forecaster: object) -> object:
    y = load_airline()
    y.name = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return forecaster.fit(y, fh=[1, 2, 3])  # type: ignore[attr-defined]


def test_auto_picks_state_when_fixed_parameters_move_the_forecast() -> None:
    found = probe_observations(fit_naive(small_panel()), SCHEMA, "auto", series_count=3)
    assert found["mode"] == "state" and found["chosen_by"] == "probe"
    assert found["probe"]["state"]["moves"] is True and "refit" not in found["probe"]


@pytest.mark.parametrize("forecaster", [ThetaForecaster(sp=12), ExponentialSmoothing(trend="add")])
def test_auto_picks_refit_when_an_update_only_moves_the_cutoff(forecaster: object) -> None:
    found = probe_observations(_fitted(forecaster), SINGLE, "auto")
    assert found["mode"] == "refit", found
    assert found["probe"]["state"]["moves"] is False and found["probe"]["refit"]["moves"] is True
    assert "ignores new actuals at fixed parameters" in found["reason"]


def test_an_explicit_state_that_ignores_the_data_is_refused() -> None:
    with pytest.raises(InvalidInput, match="ignores new actuals with fixed parameters"):
        probe_observations(_fitted(ThetaForecaster(sp=12)), SINGLE, "state")


def test_explicit_none_and_refit_are_kept() -> None:
    fitted = _fitted(NaiveForecaster(strategy="last"))
    assert probe_observations(fitted, SINGLE, "none")["mode"] == "none"
    refit = probe_observations(fitted, SINGLE, "refit")
    assert refit["mode"] == "refit" and refit["chosen_by"] == "spec"
    with pytest.raises(InvalidInput, match="not one of"):
        probe_observations(fitted, SINGLE, "sometimes")


def test_a_version_published_before_the_probe_is_probed_when_first_asked(tmp_path: object) -> None:
    """An older manifest has no `observations`: the served version probes a private copy once."""
    registry = Registry(tmp_path)  # type: ignore[arg-type]
    publish_naive(registry, "old")
    manifest_path = registry.model_dir("old") / "versions" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["observations"]["mode"] == "state"
    del manifest["observations"]
    loaded = registry.load("old", 1)
    served = ServedVersion("old", 1, manifest, loaded.forecaster, None)
    assert served.observations["mode"] == "state"
    observations = pd.DataFrame({"series": ["s0"], "month": ["2018-01-01"], "y": [5.0]})
    answer = served.answer(PredictQuery(horizon=2, observations=observations), Limits())
    assert answer.observations_mode == "state"
    assert list(answer.columns["series"]) == ["s0", "s0"]  # only the series with new actuals
    assert list(answer.columns["y"]) == [5.0, 5.0]  # naive "last": the new actual itself


def test_a_version_that_takes_no_actuals_refuses_them() -> None:
    fitted = fit_naive(small_panel())
    manifest = {
        "schema": SCHEMA.to_dict(),
        "horizon": 3,
        "series": {"ids": [["s0"], ["s1"], ["s2"]]},
        "observations": {"mode": "none", "reason": "the spec says observations: none"},
    }
    served = ServedVersion("toy", 1, manifest, fitted, None)
    observations = pd.DataFrame({"series": ["s0"], "month": ["2018-01-01"], "y": [5.0]})
    with pytest.raises(CapabilityUnavailable, match=r"does not take new actuals.*the spec says observations: none"):
        served.answer(PredictQuery(observations=observations), Limits())


def test_the_whole_horizon_is_compared_a_seasonal_naive_moves_from_step_12() -> None:
    """NaiveForecaster(last, sp=12): step 1 repeats the value of 11 months ago, only step 12
    is the newest actual. A one-step probe would have called it deaf and refused observations."""
    found = probe_observations(_fitted(NaiveForecaster(strategy="last", sp=12)), SINGLE, "auto", horizon=12)
    assert found["mode"] == "state", found
    short = probe_observations(_fitted(NaiveForecaster(strategy="last", sp=12)), SINGLE, "auto", horizon=1)
    assert short["mode"] == "none"  # with a 1-step horizon the newest actual indeed changes nothing served


def _panel_manifest(mode: str) -> dict[str, object]:
    return {
        "schema": SCHEMA.to_dict(),
        "horizon": 3,
        "series": {"ids": [["s0"], ["s1"], ["s2"]]},
        "observations": {"mode": mode, "reason": "test"},
    }


def test_partial_observations_refused_for_a_refitted_global_model() -> None:
    """One model over all series, refitted: made-up values for the other series would feed the
    refit, so observations must cover every series. Per-series models may take some."""
    from sklearn.linear_model import LinearRegression
    from sktime.forecasting.compose import make_reduction

    from service.tables import to_sktime

    y, _ = to_sktime(small_panel(), SCHEMA)
    pooled = make_reduction(LinearRegression(), window_length=3, pooling="global")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pooled.fit(y, fh=[1, 2, 3])
    observations = pd.DataFrame({"series": ["s0"], "month": ["2018-01-01"], "y": [5.0]})
    served = ServedVersion("pooled", 1, _panel_manifest("refit"), pooled, None)
    with pytest.raises(InvalidInput, match="one model over all its series"):
        served.answer(PredictQuery(observations=observations), Limits())
    per_series = ServedVersion("naive", 1, _panel_manifest("refit"), fit_naive(small_panel()), None)
    answer = per_series.answer(PredictQuery(horizon=1, observations=observations), Limits())
    assert list(answer.columns["series"]) == ["s0"] and list(answer.columns["y"]) == [5.0]
