"""Declarative specs: allow-list only, clear errors, round trip into the manifest."""

from __future__ import annotations

import pytest
import yaml

from service.errors import SpecError
from service.forecasting.specs import build_estimator, jsonable, load_model_spec, parse_model_spec
from tests.conftest import DEMO_MODELS, DEMO_SPECS


@pytest.mark.parametrize(
    "name",
    ["os.system", "builtins.eval", "eval", "subprocess.Popen", "NoSuchForecaster", "sktime.forecasting.theta.Nope"],
)
def test_names_outside_the_allow_list_are_rejected_naming_them(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        build_estimator({"class": name, "params": {}})
    assert name in caught.value.detail
    assert "allow-list" in caught.value.detail


def test_a_dotted_name_must_be_the_real_path_of_an_allowed_class() -> None:
    theta = build_estimator({"class": "sktime.forecasting.theta.ThetaForecaster", "params": {"sp": 4}})
    assert type(theta).__name__ == "ThetaForecaster"
    with pytest.raises(SpecError, match=r"os\.path\.ThetaForecaster"):
        build_estimator({"class": "os.path.ThetaForecaster"})


def test_nested_estimators_inside_params_are_checked_too() -> None:
    with pytest.raises(SpecError, match=r"os\.system"):
        build_estimator(
            {"class": "make_reduction", "params": {"estimator": {"class": "os.system", "params": {"command": "x"}}}}
        )


def test_a_bad_parameter_is_named_with_the_valid_ones() -> None:
    with pytest.raises(SpecError) as caught:
        build_estimator({"class": "ThetaForecaster", "params": {"spp": 12}})
    assert "'spp'" in caught.value.detail and "sp" in caught.value.detail


def test_unknown_keys_in_a_node_are_rejected() -> None:
    with pytest.raises(SpecError, match="unknown keys"):
        build_estimator({"class": "ThetaForecaster", "module": "os"})


def test_pipeline_steps_as_name_object_pairs() -> None:
    pipeline = build_estimator(
        {
            "class": "TransformedTargetForecaster",
            "params": {
                "steps": [
                    ["deseasonalize", {"class": "Deseasonalizer", "params": {"sp": 12}}],
                    ["forecast", {"class": "NaiveForecaster", "params": {"strategy": "drift"}}],
                ]
            },
        }
    )
    names = [name for name, _ in pipeline.steps]
    assert names == ["deseasonalize", "forecast"]


def test_xgboost_lightgbm_and_sklearn_regressors_are_allowed() -> None:
    for cls in ("XGBRegressor", "LGBMRegressor", "RandomForestRegressor", "Ridge"):
        assert type(build_estimator({"class": cls})).__name__ == cls


def test_spec_round_trip_into_json_safe_params() -> None:
    spec = load_model_spec(DEMO_SPECS / "tourism-monthly" / "model.yaml")
    assert type(spec.build_forecaster()).__name__ == "GlobalConformalIntervals"  # intervals: conformal
    forecaster = spec.build_forecaster().forecaster
    params = jsonable(forecaster.get_params(deep=False))
    assert params["estimator"] == {
        "class": "xgboost.sklearn.XGBRegressor",
        "params": params["estimator"]["params"],
    }
    assert params["estimator"]["params"]["n_estimators"] == 200
    assert params["transformers"][0]["class"].endswith("WindowSummarizer")
    # rebuilding from the jsonable form gives the same parameters
    rebuilt = build_estimator({"class": "make_reduction", "params": spec.forecaster["params"]})
    assert jsonable(rebuilt.get_params(deep=False)) == params


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_every_demo_spec_resolves(name: str) -> None:
    spec = load_model_spec(DEMO_SPECS / name / "model.yaml")
    assert spec.kind in ("single", "panel", "hierarchical")
    assert spec.build_forecaster() is not spec.build_forecaster()  # a fresh estimator each time


def test_remember_data_is_set_explicitly() -> None:
    theta = build_estimator({"class": "ThetaForecaster"})
    assert theta.get_config()["remember_data"] is True


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"freq": "NOPE"}, "freq"),
        ({"coverage": [1.5]}, "coverage"),
        ({"horizon": 0}, "horizon"),
        ({"kind": "single", "data": {"source": {"builtin": "x"}, "keys": ["k"], "time": "t", "targets": ["y"]}}, "key"),
        ({"extra_field": 1}, "extra_field"),
    ],
)
def test_invalid_model_specs_are_rejected_naming_the_field(patch: dict, message: str) -> None:
    raw = yaml.safe_load((DEMO_SPECS / "airline" / "model.yaml").read_text())
    raw.update(patch)
    with pytest.raises(SpecError) as caught:
        parse_model_spec(raw)
    assert message in caught.value.detail
