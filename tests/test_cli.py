"""The `forecast-service` CLI on real registry folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import joblib
import pandas as pd
import pytest
from sktime.datasets import load_airline
from sktime.forecasting.theta import ThetaForecaster
from typer.testing import CliRunner

from service.cli import app
from service.registry.store import Registry
from tests.conftest import DEMO_SPECS

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def fitted_theta() -> ThetaForecaster:
    forecaster = ThetaForecaster(sp=12)
    forecaster.set_config(remember_data=True)
    return forecaster.fit(load_airline(), fh=[1, 2, 3])


def test_train_publishes_and_promotes_then_models_list_and_show(tmp_path: Path) -> None:
    shutil.copytree(DEMO_SPECS / "airline", tmp_path / "airline")
    out = run("train", "airline", "--registry", str(tmp_path))
    assert "airline v1 published and promoted" in out
    assert Registry(tmp_path).read_aliases("airline") == {"production": 1}
    listing = run("models", "list", "--registry", str(tmp_path))
    assert "airline" in listing and "single" in listing
    shown = json.loads(run("models", "show", "airline", "--registry", str(tmp_path)))
    assert shown["versions"] == [1]
    assert shown["latest_manifest"]["forecaster"]["class"].endswith("ThetaForecaster")


@pytest.mark.parametrize("how", ["joblib", "sktime-save"])
def test_publish_a_forecaster_fitted_in_a_notebook(tmp_path: Path, how: str) -> None:
    registry_root = tmp_path / "models"
    forecaster = fitted_theta()
    if how == "joblib":
        file = tmp_path / "theta.joblib"
        joblib.dump(forecaster, file)
    else:
        forecaster.save(str(tmp_path / "theta"))
        file = tmp_path / "theta.zip"
    out = run("publish", "passengers", str(file), "--registry", str(registry_root), "--promote")
    assert "passengers v1 published and promoted" in out
    registry = Registry(registry_root)
    loaded = registry.load("passengers", 1).forecaster
    pd.testing.assert_frame_equal(
        pd.DataFrame(forecaster.predict(fh=[1, 2, 3])), pd.DataFrame(loaded.predict(fh=[1, 2, 3]))
    )
    manifest = registry.read_manifest("passengers", 1)
    assert manifest["cutoff"] == "1960-12-01"
    assert manifest["training"]["rows"] == 144


def test_publish_refuses_a_file_that_is_not_a_forecaster(tmp_path: Path) -> None:
    file = tmp_path / "junk.pkl"
    file.write_bytes(b"not a pickle at all")
    result = runner.invoke(app, ["publish", "x", str(file), "--registry", str(tmp_path / "models")])
    assert result.exit_code == 2
    assert "error" in result.output
    assert (
        not (tmp_path / "models" / "x" / "versions").exists() or Registry(tmp_path / "models").list_versions("x") == []
    )


def test_promote_moves_the_alias_and_rejects_unknown_versions(registry_path: Path) -> None:
    from service.forecasting.training import train_and_publish

    train_and_publish(Registry(registry_path), "airline", promote=False)
    run("promote", "airline", "2", "--registry", str(registry_path))
    assert Registry(registry_path).read_aliases("airline")["production"] == 2
    run("promote", "airline", "1", "--alias", "stable", "--registry", str(registry_path))
    assert Registry(registry_path).read_aliases("airline") == {"production": 2, "stable": 1}
    result = runner.invoke(app, ["promote", "airline", "9", "--registry", str(registry_path)])
    assert result.exit_code == 2 and "no version 9" in result.output
    assert Registry(registry_path).read_aliases("airline") == {"production": 2, "stable": 1}


def test_train_of_an_unknown_model_fails_cleanly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "nope", "--registry", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope" in result.output
