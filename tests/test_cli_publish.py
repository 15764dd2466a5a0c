"""`forecast-service publish` (the real command, a subprocess) on the shapes a notebook
makes — a named or unnamed Series, a one-column DataFrame, timestamps at MS, W-SAT and h,
a service-trained artifact — then the published version served in-process: the numbers
of the forecaster itself, at the user's own times. Errors are one line and exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sktime.datasets import load_airline
from sktime.forecasting.naive import NaiveForecaster
from sktime.forecasting.theta import ThetaForecaster

from service.app import create_app
from service.registry.store import ARTIFACT, Registry
from tests.conftest import DEMO_SPECS, make_settings, wait_ready

CLI = Path(sys.executable).with_name("forecast-service")
HORIZON = 12
AIRLINE = load_airline()  # PeriodIndex "Period" (M), named "Number of airline passengers"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=180)


def published(*args: str) -> subprocess.CompletedProcess[str]:
    result = cli("publish", *args)
    assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr: one line starting 'error:', exit code 2, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def fit(forecaster: Any, y: pd.Series | pd.DataFrame) -> Any:
    forecaster.set_config(remember_data=True)
    return forecaster.fit(y, fh=list(range(1, HORIZON + 1)))


def months_starting(y: pd.Series) -> pd.Series:
    return pd.Series(y.to_numpy(), index=pd.date_range("1949-01-01", periods=len(y), freq="MS"), name="passengers")


def noisy(freq: str, start: str) -> pd.Series:
    values = np.random.default_rng(7).normal(100.0, 5.0, 60)
    return pd.Series(values, index=pd.date_range(start, periods=60, freq=freq), name="sales")


# name -> (fitted forecaster, extra CLI args, expected target, expected time column)
SHAPES: dict[str, Callable[[], tuple[Any, list[str], str, str]]] = {
    "series": lambda: (fit(ThetaForecaster(sp=12), AIRLINE), [], "Number of airline passengers", "Period"),
    "one-column-frame": lambda: (
        fit(ThetaForecaster(sp=12), AIRLINE.to_frame()),
        [],
        "Number of airline passengers",
        "Period",
    ),
    "unnamed-series": lambda: (
        fit(ThetaForecaster(sp=12), pd.Series(AIRLINE.to_numpy(), AIRLINE.index)),
        [],
        "y",
        "Period",
    ),
    "unnamed-series-flags": lambda: (
        fit(ThetaForecaster(sp=12), pd.Series(AIRLINE.to_numpy(), pd.PeriodIndex(AIRLINE.index, name=None))),
        ["--target", "passengers", "--time", "month"],
        "passengers",
        "month",
    ),
    "month-starts": lambda: (fit(ThetaForecaster(sp=12), months_starting(AIRLINE)), [], "passengers", "time"),
    "month-starts-naive": lambda: (
        fit(NaiveForecaster(strategy="last"), months_starting(AIRLINE)),
        [],
        "passengers",
        "time",
    ),
    "weeks-on-saturdays": lambda: (
        fit(NaiveForecaster(strategy="mean", window_length=8), noisy("W-SAT", "2024-01-06")),
        [],
        "sales",
        "time",
    ),
    "hours": lambda: (
        fit(NaiveForecaster(strategy="mean", window_length=24), noisy("h", "2024-01-01 00:00")),
        [],
        "sales",
        "time",
    ),
}


def save(forecaster: Any, folder: Path, how: str) -> Path:
    if how == "joblib":
        joblib.dump(forecaster, folder / "model.joblib")
        return folder / "model.joblib"
    forecaster.save(str(folder / "model"))
    return folder / "model.zip"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Path], TestClient]]:
    """``serve(registry)`` -> a ready TestClient on it; closed after the test."""
    clients: list[TestClient] = []

    def start(registry: Path) -> TestClient:
        client = TestClient(create_app(make_settings(registry)))
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def user_times(index: pd.Index) -> list[pd.Timestamp]:
    """The times the user sees on the forecaster's own predictions (a period by its start)."""
    if isinstance(index, pd.PeriodIndex):
        return list(index.start_time)
    return list(index)


@pytest.mark.parametrize(
    ("shape", "how"),
    [
        ("series", "joblib"),
        ("one-column-frame", "joblib"),
        ("one-column-frame", "sktime-save"),
        ("unnamed-series", "joblib"),
        ("unnamed-series-flags", "joblib"),
        ("month-starts", "joblib"),
        ("month-starts", "sktime-save"),
        ("month-starts-naive", "joblib"),
        ("weeks-on-saturdays", "joblib"),
        ("hours", "joblib"),
    ],
)
def test_published_version_forecasts_the_forecasters_numbers_at_the_users_times(
    tmp_path: Path, serve: Callable[[Path], TestClient], shape: str, how: str
) -> None:
    forecaster, flags, target, time_column = SHAPES[shape]()
    file = save(forecaster, tmp_path, how)
    registry = tmp_path / "models"
    out = published("mine", str(file), "--registry", str(registry), "--promote", *flags)
    assert "mine v1 published and promoted" in out.stdout

    fh = list(range(1, HORIZON + 1))
    expected = forecaster.predict(fh=fh)
    expected_values = np.asarray(expected, dtype="float64").ravel()
    pred_int = forecaster.get_tag("capability:pred_int")
    body: dict[str, Any] = {"horizon": HORIZON, **({"coverage": [0.9]} if pred_int else {})}
    response = serve(registry).post("/v1/models/mine/predict", json=body)
    assert response.status_code == 200, response.text
    forecast = response.json()["forecast"]
    assert list(forecast)[:2] == [time_column, target]
    np.testing.assert_allclose(forecast[target], expected_values, rtol=1e-9)
    assert [pd.Timestamp(t) for t in forecast[time_column]] == user_times(expected.index)
    if pred_int:
        interval = forecaster.predict_interval(fh=fh, coverage=0.9)
        np.testing.assert_allclose(forecast[f"{target}_lower_90"], interval.iloc[:, 0].to_numpy(), rtol=1e-9)
        np.testing.assert_allclose(forecast[f"{target}_upper_90"], interval.iloc[:, 1].to_numpy(), rtol=1e-9)
    manifest = Registry(registry).read_manifest("mine", 1)
    cutoff = forecaster.cutoff[0]
    assert pd.Timestamp(manifest["cutoff"]) == (cutoff.start_time if isinstance(cutoff, pd.Period) else cutoff)


def test_month_starts_stay_on_the_first_of_the_month(tmp_path: Path, serve: Callable[[Path], TestClient]) -> None:
    forecaster, *_ = SHAPES["month-starts"]()
    published("mine", str(save(forecaster, tmp_path, "joblib")), "--registry", str(tmp_path / "models"), "--promote")
    answer = serve(tmp_path / "models").post("/v1/models/mine/predict", json={"horizon": 3}).json()
    assert answer["cutoff"] == "1960-12-01" and answer["freq"] == "M"
    assert answer["forecast"]["time"] == ["1961-01-01", "1961-02-01", "1961-03-01"]
    # new actuals at the user's times move the cutoff as sktime's update does
    update = {"horizon": 2, "observations": {"time": ["1961-01-01"], "passengers": [420.0]}}
    moved = serve(tmp_path / "models").post("/v1/models/mine/predict", json=update).json()
    assert moved["cutoff"] == "1961-01-01" and moved["forecast"]["time"] == ["1961-02-01", "1961-03-01"]


def test_a_service_trained_artifact_publishes_again_under_its_spec_or_without_one(
    tmp_path: Path, serve: Callable[[Path], TestClient]
) -> None:
    registry = tmp_path / "models"
    shutil.copytree(DEMO_SPECS / "airline", registry / "airline")
    trained = cli("train", "airline", "--registry", str(registry), "--no-promote")
    assert trained.returncode == 0, trained.stderr
    assert "airline v1 published (production unchanged)" in trained.stdout
    assert Registry(registry).read_aliases("airline") == {}
    artifact = tmp_path / "airline-v1.pkl"
    shutil.copy(registry / "airline" / "versions" / "1" / ARTIFACT, artifact)

    published("airline", str(artifact), "--registry", str(registry), "--promote")  # the spec names the columns
    published("copy", str(artifact), "--registry", str(registry), "--promote")  # no spec: the data's names
    client = serve(registry)
    v1 = client.post("/v1/models/airline/predict", json={"horizon": 6, "version": 1, "coverage": [0.8]}).json()
    v2 = client.post("/v1/models/airline/predict", json={"horizon": 6, "coverage": [0.8]}).json()
    copy = client.post("/v1/models/copy/predict", json={"horizon": 6, "coverage": [0.8]}).json()
    assert v2["version"] == 2 and v2["forecast"] == v1["forecast"]
    assert copy["forecast"] == v1["forecast"]  # month, passengers, passengers_lower_80, ...
    assert list(v1["forecast"])[:2] == ["month", "passengers"]


def test_train_no_promote_leaves_production_where_it_was(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    shutil.copytree(DEMO_SPECS / "airline", registry / "airline")
    assert cli("train", "airline", "--registry", str(registry)).returncode == 0
    second = cli("train", "airline", "--registry", str(registry), "--no-promote")
    assert second.returncode == 0, second.stderr
    assert "airline v2 published (production unchanged)" in second.stdout
    assert Registry(registry).read_aliases("airline") == {"production": 1}


def test_publish_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    registry = str(tmp_path / "models")
    month_ends = fit(
        NaiveForecaster(), pd.Series(AIRLINE.to_numpy(), pd.date_range("1949-01-31", periods=144, freq="ME"))
    )
    ends = save(month_ends, tmp_path, "joblib")
    line = one_line_error(cli("publish", "ends", str(ends), "--registry", registry))
    assert "ME" in line and "to_period('M')" in line and len(line) > 100  # long, still one line

    theta = save(fit(ThetaForecaster(sp=12), AIRLINE), tmp_path, "sktime-save")
    assert "2" in one_line_error(cli("publish", "x", str(theta), "--registry", registry, "--target", "a,b"))
    shutil.copytree(DEMO_SPECS / "airline", tmp_path / "models" / "airline")
    assert "spec" in one_line_error(cli("publish", "airline", str(theta), "--registry", registry, "--time", "when"))

    junk = tmp_path / "junk.zip"
    shutil.make_archive(str(tmp_path / "junk"), "zip", root_dir=tmp_path, base_dir="models")
    assert "sktime save()" in one_line_error(cli("publish", "x", str(junk), "--registry", registry))
    assert not (tmp_path / "models" / "x").exists()


def test_an_unexpected_error_is_one_line_and_a_traceback_only_with_debug(tmp_path: Path) -> None:
    theta = save(fit(ThetaForecaster(sp=12), AIRLINE), tmp_path, "joblib")
    not_a_folder = tmp_path / "registry-file"
    not_a_folder.write_text("not a folder")
    line = one_line_error(cli("publish", "x", str(theta), "--registry", str(not_a_folder)))
    assert "NotADirectoryError" in line and "--debug" in line
    debug = cli("--debug", "publish", "x", str(theta), "--registry", str(not_a_folder))
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "NotADirectoryError" in debug.stderr


def test_publish_records_description_and_tags_and_applies_the_specs_retention(tmp_path: Path) -> None:
    """`--description`/`--tag` land in the manifest; the spec's `keep_versions` deletes the
    oldest version no alias points at after the publish."""
    registry = tmp_path / "models"
    shutil.copytree(DEMO_SPECS / "airline", registry / "airline")
    spec = registry / "airline" / "model.yaml"
    spec.write_text(spec.read_text() + "keep_versions: 2\n")
    artifact = tmp_path / "theta.pkl"
    joblib.dump(fit(ThetaForecaster(sp=12), AIRLINE.rename("passengers")), artifact)
    for n in (1, 2, 3, 4):
        args = ["airline", str(artifact), "--registry", str(registry), "--no-promote"]
        if n == 1:
            args = ["airline", str(artifact), "--registry", str(registry)]  # v1 is production
        published(*args, "--description", f"notebook run {n}", "--tag", "notebook", "--tag", f"run-{n}")
    store = Registry(registry)
    assert store.list_versions("airline") == [1, 3, 4]  # the newest 2, and v1: production is never deleted
    manifest = store.read_manifest("airline", 4)
    assert manifest["description"] == "notebook run 4" and manifest["tags"] == ["notebook", "run-4"]
    bad = cli("publish", "airline", str(artifact), "--registry", str(registry), "--tag", "has space")
    assert "tags" in one_line_error(bad)
