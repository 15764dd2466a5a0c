"""Leaderboards over HTTP with the real job runner: candidates backtested in a worker
process, and every number in the table equals sktime's `evaluate` run directly here on the
same data and splitter; the seasonal-naive baseline and the forecast value added against
it, in leaderboards and in plain backtests; a candidate that fails on one series; bad input."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from sktime.forecasting.exp_smoothing import ExponentialSmoothing
from sktime.forecasting.model_evaluation import evaluate
from sktime.forecasting.naive import NaiveForecaster
from sktime.forecasting.theta import ThetaForecaster
from sktime.performance_metrics.forecasting import MeanAbsoluteError, MeanAbsoluteScaledError
from sktime.split import ExpandingGreedySplitter

from service.app import create_app
from service.registry.store import Registry
from tests.conftest import make_settings, wait_ready

pytestmark = pytest.mark.slow

FINISHED = ("succeeded", "failed", "cancelled")
MONTHS = pd.period_range("2014-01", periods=48, freq="M")
HORIZON, FOLDS = 6, 2
THETA = {"name": "theta", "forecaster": {"class": "ThetaForecaster", "params": {"deseasonalize": False}}}
MEAN = {"name": "mean", "forecaster": {"class": "NaiveForecaster", "params": {"strategy": "mean"}}}
ETS_MUL = {
    "name": "ets-mul",
    "forecaster": {"class": "ExponentialSmoothing", "params": {"trend": "add", "seasonal": "mul", "sp": 12}},
}
BODY = {"splitter": {"type": "folds", "folds": FOLDS, "horizon": HORIZON}, "metrics": ["MAE", "MASE"]}


def panel() -> pd.DataFrame:
    """Four seasonal monthly shops; shop 'd' has one negative month, on which a
    multiplicative ETS cannot fit (statsmodels wants strictly positive data)."""
    rng = np.random.default_rng(3)
    parts = []
    for i, shop in enumerate("abcd"):
        season = 1 + 0.3 * np.sin(2 * np.pi * np.arange(len(MONTHS)) / 12 + i)
        level = 50 * (i + 1) + np.cumsum(rng.normal(0, 1, len(MONTHS)))
        sales = level * season + rng.normal(0, 2, len(MONTHS))
        if shop == "d":
            sales[5] = -3.0
        parts.append(pd.DataFrame({"shop": shop, "month": MONTHS.strftime("%Y-%m"), "sales": sales}))
    return pd.concat(parts, ignore_index=True)


def sktime_panel(table: pd.DataFrame) -> pd.DataFrame:
    frame = table.assign(month=pd.PeriodIndex(table["month"], freq="M"))
    return frame.set_index(["shop", "month"])[["sales"]].sort_index()


def write_model(root: Path, table: pd.DataFrame) -> None:
    folder = root / "shops"
    folder.mkdir(parents=True)
    table.to_csv(folder / "data.csv", index=False)
    spec = {
        "kind": "panel",
        "data": {"source": {"path": "data.csv"}, "time": "month", "keys": ["shop"], "targets": ["sales"]},
        "freq": "M",
        "horizon": HORIZON,
        "forecaster": {"class": "NaiveForecaster", "params": {"strategy": "last"}},
        "promotion": {"policy": "auto", "metric": "MASE"},
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(spec))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    root = tmp_path / "models"
    root.mkdir()
    write_model(root, panel())
    with TestClient(create_app(make_settings(root))) as client:
        wait_ready(client)
        yield client


def run(client: TestClient, body: dict[str, Any], timeout: float = 180.0, **query: Any) -> dict[str, Any]:
    response = client.post("/v1/models/shops/leaderboard", json=body, params=query)
    assert response.status_code in (200, 202), response.text
    return wait(client, response.json()["id"], timeout)


def wait(client: TestClient, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        assert time.monotonic() < deadline, f"job not finished in {timeout}s: {job}"
        time.sleep(0.1)


def direct(forecaster: Any, y: pd.DataFrame) -> pd.DataFrame:
    """sktime's evaluate on the leaderboard's splitter and metrics."""
    mae, mase = MeanAbsoluteError(), MeanAbsoluteScaledError()
    mae.name, mase.name = "MAE", "MASE"
    return evaluate(
        forecaster,
        ExpandingGreedySplitter(test_size=HORIZON, folds=FOLDS),
        y,
        scoring=[mae, mase],
        return_data=True,
        error_score="raise",
    )


def per_series_direct(forecaster: Any, y: pd.DataFrame, metric: str) -> dict[str, float]:
    """Each series alone through sktime's evaluate: the mean over folds of ``metric``."""
    return {
        shop: float(direct(forecaster.clone(), y.xs(shop, level="shop", drop_level=False))[f"test_{metric}"].mean())
        for shop in y.index.get_level_values("shop").unique()
    }


def test_leaderboard_equals_sktime_evaluate_and_ranks_by_it(api: TestClient) -> None:
    job = run(api, {**BODY, "candidates": [MEAN, THETA], "rank_by": "MASE"})
    assert job["status"] == "succeeded", job
    result, y = job["result"], sktime_panel(panel())
    rows = {r["name"]: r for r in result["candidates"]}
    assert set(rows) == {"mean", "theta", "seasonal_naive"}
    assert rows["seasonal_naive"]["baseline"] is True
    assert result["baseline"]["forecaster"] == {"class": "NaiveForecaster", "params": {"strategy": "last", "sp": 12}}
    references = {
        "mean": NaiveForecaster(strategy="mean"),
        "theta": ThetaForecaster(deseasonalize=False),
        "seasonal_naive": NaiveForecaster(strategy="last", sp=12),
    }
    overall = {}
    for name, forecaster in references.items():
        frame = direct(forecaster, y)
        for metric in ("MAE", "MASE"):
            assert rows[name]["aggregate"][metric] == pytest.approx(frame[f"test_{metric}"].mean(), rel=1e-6)
            assert [f["metrics"][metric] for f in rows[name]["folds"]] == pytest.approx(
                list(frame[f"test_{metric}"]), rel=1e-6
            )
        overall[name] = frame["test_MASE"].mean()
        assert rows[name]["status"] == "ok"
    # ranked by MASE, lower first; the winner is the argmin
    ranking = sorted(overall, key=overall.__getitem__)
    assert [r["name"] for r in result["candidates"]] == ranking
    assert [r["rank"] for r in result["candidates"]] == [1, 2, 3]
    assert result["winner"] == ranking[0]
    # forecast value added against the named baseline, overall and per series
    base = overall["seasonal_naive"]
    for name in ("mean", "theta"):
        assert rows[name]["fva"]["MASE"] == pytest.approx(100 * (base - overall[name]) / base, rel=1e-6)
    by_series = {name: per_series_direct(f, y, "MASE") for name, f in references.items()}
    assert [r["series"] for r in result["per_series"]] == [["a"], ["b"], ["c"], ["d"]]
    for row in result["per_series"]:
        shop = row["series"][0]
        for name in references:
            assert row["MASE"][name] == pytest.approx(by_series[name][shop], rel=1e-6)
        assert row["winner"] == min(references, key=lambda n, shop=shop: by_series[n][shop])
        b = by_series["seasonal_naive"][shop]
        assert row["fva"]["theta"] == pytest.approx(100 * (b - by_series["theta"][shop]) / b, rel=1e-6)
    assert sum(result["wins"].values()) == 4
    # progress counted candidate x fold, the baseline included
    assert job["progress"]["total"] == 3 * FOLDS


def test_a_candidate_failing_on_one_series_is_reported_and_the_rest_ranked(api: TestClient) -> None:
    job = run(api, {**BODY, "candidates": [ETS_MUL, THETA]})
    assert job["status"] == "succeeded", job
    result, y = job["result"], sktime_panel(panel())
    rows = {r["name"]: r for r in result["candidates"]}
    ets = rows["ets-mul"]
    assert ets["status"] == "partial" and ets["rank"] is None
    assert [f["series"] for f in ets["failed_series"]] == [["d"]]
    assert "positive" in ets["failed_series"][0]["error"]
    with pytest.raises(ValueError, match="positive"):  # sktime itself fails on that series
        direct(ExponentialSmoothing(trend="add", seasonal="mul", sp=12), y.xs("d", level="shop", drop_level=False))
    # on the other series its numbers are sktime's
    expected = per_series_direct(
        ExponentialSmoothing(trend="add", seasonal="mul", sp=12), y.drop("d", level="shop"), "MASE"
    )
    by_series = {r["series"][0]: r for r in result["per_series"]}
    for shop, value in expected.items():  # statsmodels' optimiser: last digits move with BLAS threads
        assert by_series[shop]["MASE"]["ets-mul"] == pytest.approx(value, rel=1e-4)
    assert by_series["d"]["MASE"]["ets-mul"] is None
    assert by_series["d"]["winner"] in ("theta", "seasonal_naive")
    # the candidates that ran everywhere are ranked, the partial one after them
    assert [r["rank"] for r in result["candidates"]] == [1, 2, None]
    assert result["candidates"][-1]["name"] == "ets-mul"
    # FVA of the partial candidate: against the baseline on the same three series
    base = per_series_direct(NaiveForecaster(strategy="last", sp=12), y.drop("d", level="shop"), "MASE")
    mean_base, mean_ets = np.mean(list(base.values())), np.mean(list(expected.values()))
    assert ets["fva"]["MASE"] == pytest.approx(100 * (mean_base - mean_ets) / mean_base, rel=1e-4)


def test_publish_best_retrains_the_winner_through_the_gate(api: TestClient, tmp_path: Path) -> None:
    job = run(api, {**BODY, "candidates": [MEAN, THETA]}, publish="best")
    assert job["status"] == "succeeded", job
    result = job["result"]
    published = result["published"]
    winner = next(r for r in result["candidates"] if r["name"] == result["winner"])
    assert published["candidate"] == result["winner"]
    assert published["promoted"] is True, published  # no production yet: the gate lets it in
    registry = Registry(tmp_path / "models")
    assert registry.read_aliases("shops")["production"] == published["version"]
    manifest = registry.read_manifest("shops", published["version"])
    assert manifest["spec"]["forecaster"] == winner["forecaster"]
    assert manifest["job_id"] == job["id"]
    # promoted: the model's spec names the winner, so scheduled retrains go on with it
    assert registry.read_spec_raw("shops")["forecaster"] == winner["forecaster"]
    assert published["spec_updated"] is True
    # and the served forecast is the winner's, fitted on the whole panel
    served = api.post("/v1/models/shops/predict", json={"series": [["a"]]})
    assert served.status_code == 200, served.text
    assert served.json()["version"] == published["version"]


def test_backtests_report_value_added_against_seasonal_naive(api: TestClient) -> None:
    retrained = api.post("/v1/models/shops/retrain")  # a version of the spec's forecaster: naive, last value
    assert retrained.status_code == 202, retrained.text
    assert wait(api, retrained.json()["id"])["status"] == "succeeded"
    response = api.post("/v1/models/shops/backtests", json=BODY)
    assert response.status_code in (200, 202), response.text
    job = wait(api, response.json()["id"])
    assert job["status"] == "succeeded", job
    result, y = job["result"], sktime_panel(panel())
    model = direct(NaiveForecaster(strategy="last"), y)
    base = direct(NaiveForecaster(strategy="last", sp=12), y)
    assert result["baseline"]["name"] == "seasonal_naive"
    for metric in ("MAE", "MASE"):
        b, m = base[f"test_{metric}"].mean(), model[f"test_{metric}"].mean()
        assert result["baseline"]["aggregate"][metric] == pytest.approx(b, rel=1e-6)
        assert result["fva"][metric] == pytest.approx(100 * (b - m) / b, rel=1e-6)
    for row in result["per_series"]:
        assert set(row["fva"]) == {"MAE", "MASE"}


def problem(response: Any, status: int, *mentions: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    for word in mentions:
        assert word in response.text, f"{word!r} not in {body}"
    return body


@pytest.mark.parametrize(
    ("body", "status", "mentions"),
    [
        ({"candidates": []}, 422, ("candidates", "at least one")),
        ({}, 422, ("candidates",)),
        ({"candidates": [{"forecaster": {"class": "NoSuchForecaster"}}]}, 422, ("candidates[0]", "NoSuchForecaster")),
        ({"candidates": [THETA, {**MEAN, "name": "theta"}]}, 422, ("unique", "theta")),
        ({"candidates": [{**MEAN, "name": "seasonal_naive"}]}, 422, ("baseline",)),
        ({"candidates": [THETA], "splitter": {"type": "folds", "folds": 1, "horizon": 60}}, 422, ("splitter",)),
        ({"candidates": [THETA], "metrics": ["MAE"], "rank_by": "RMSE"}, 422, ("rank_by",)),
        ({"candidates": [THETA], "metrics": ["pinball"]}, 422, ("point metrics",)),
        ({"candidates": [THETA], "series": [["zz"]]}, 404, ("zz",)),
        (
            {"candidates": [{**THETA, "forecaster": {"class": "ThetaForecaster", "params": {"spp": 1}}}]},
            422,
            ("candidates[0]",),
        ),
    ],
)
def test_bad_leaderboards_are_4xx_and_store_no_job(
    api: TestClient, body: dict[str, Any], status: int, mentions: tuple[str, ...]
) -> None:
    problem(api.post("/v1/models/shops/leaderboard", json=body), status, *mentions)
    assert api.get("/v1/jobs").json()["jobs"] == []


def test_leaderboard_of_unknown_model_is_404(api: TestClient) -> None:
    problem(api.post("/v1/models/nope/leaderboard", json={"candidates": [THETA]}), 404, "nope")


def test_cli_leaderboard_runs_offline_and_publishes_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console
    from typer.testing import CliRunner

    from service import cli
    from service.cli import app

    monkeypatch.setenv("FORECAST_DATA_DIR", str(tmp_path / "data"))
    # a console 200 wide, not COLUMNS: rich reads COLUMNS once, when service.cli makes its console, and an
    # xdist worker inherits COLUMNS=80 (pytest imports readline, which exports it): the table would fold
    monkeypatch.setattr(cli, "console", Console(width=200))
    root = tmp_path / "models"
    write_model(root, panel())
    candidates = tmp_path / "candidates.yaml"
    candidates.write_text(yaml.safe_dump([MEAN, THETA]))
    runner = CliRunner()
    args = ["leaderboard", "shops", "--candidates", str(candidates), "--registry", str(root)]
    shown = runner.invoke(app, [*args, "--horizon", str(HORIZON), "--folds", str(FOLDS)])
    assert shown.exit_code == 0, shown.output
    for word in ("theta", "mean", "seasonal_naive (baseline)", "FVA MASE %"):
        assert word in shown.stdout
    as_json = runner.invoke(app, [*args, "--horizon", str(HORIZON), "--folds", str(FOLDS), "--json", "--publish-best"])
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.stdout[as_json.stdout.index("{") :])
    y = sktime_panel(panel())
    theta = next(r for r in result["candidates"] if r["name"] == "theta")
    expected = direct(ThetaForecaster(deseasonalize=False), y)["test_MASE"].mean()
    assert theta["aggregate"]["MASE"] == pytest.approx(expected, rel=1e-6)
    assert result["published"]["candidate"] == result["winner"]
    assert Registry(root).read_aliases("shops")["production"] == result["published"]["version"]

    candidates.write_text("[]")
    empty = runner.invoke(app, args)
    assert empty.exit_code != 0
    assert "at least one" in empty.output
