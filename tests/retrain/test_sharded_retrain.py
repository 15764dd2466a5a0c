"""A panel of per-series models retrained over HTTP is published as shards (with a small
FORECAST_SHARD_SERIES) and served with sktime's numbers: the fast path, a live horizon,
new actuals for one series; a second retrain's gate backtests the sharded production, and
a backtest job runs on it."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sktime.forecasting.theta import ThetaForecaster

from service.app import create_app
from service.forecasting.backtest import BacktestRequest, SplitterSpec, run_backtest
from service.jobs.retrain import gate_sample
from service.tables import Schema
from tests.conftest import make_settings, wait_ready
from tests.retrain.test_retrain_http import wait_job

SERIES, LENGTH, PER_SHARD, GATE_SERIES = 23, 60, 5, 8


def panel() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    months = pd.period_range("2016-01", periods=LENGTH, freq="M")
    season = 15 * np.sin(np.arange(LENGTH) * 2 * np.pi / 12)
    return pd.concat(
        [
            pd.DataFrame(
                {"shop": f"shop{i:02d}", "month": months, "sales": 300 + season + rng.normal(size=LENGTH).cumsum()}
            )
            for i in range(SERIES)
        ],
        ignore_index=True,
    )


def sktime_theta(table: pd.DataFrame) -> ThetaForecaster:
    y = table.set_index(["shop", "month"])[["sales"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ThetaForecaster(sp=12).fit(y, fh=list(range(1, 13)))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    registry = tmp_path / "models"
    registry.mkdir()
    with TestClient(create_app(make_settings(registry, shard_series=PER_SHARD))) as test_client:
        wait_ready(test_client)
        yield test_client


def retrain(client: TestClient) -> dict[str, Any]:
    response = client.post("/v1/models/shops/retrain", json={})
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    return job


def test_a_retrained_panel_is_sharded_and_serves_sktimes_numbers(client: TestClient) -> None:
    table = panel()
    frame = table.assign(month=table["month"].dt.strftime("%Y-%m"))
    response = client.put(
        "/v1/datasets/shops?keys=shop&time=month&targets=sales&freq=M",
        content=frame.to_csv(index=False).encode(),
        headers={"content-type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    spec = {
        "data": {"source": {"dataset": "shops"}, "keys": ["shop"], "time": "month", "targets": ["sales"]},
        "freq": "M",
        "horizon": 12,
        "coverage": [0.9],
        "forecaster": {"class": "ThetaForecaster", "params": {"sp": 12}},
        "promotion": {"gate_series": GATE_SERIES},
    }
    assert client.put("/v1/models/shops", json=spec).status_code in (200, 201)
    first = retrain(client)
    version = first["result"]["version"]
    manifest = client.get(f"/v1/models/shops/versions/{version}").json()
    assert manifest["shards"]["count"] == 5 and manifest["shards"]["series_per_shard"] == PER_SHARD

    theirs = sktime_theta(table)
    expected = theirs.predict_interval(coverage=[0.9])
    points = theirs.predict()
    answer = client.post("/v1/models/shops/predict", json={"series": [["shop07"]], "coverage": [0.9]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["version"] == version
    np.testing.assert_allclose(body["forecast"]["sales"], points.loc["shop07", "sales"].to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(
        body["forecast"]["sales_lower_90"], expected.loc["shop07", ("sales", 0.9, "lower")].to_numpy(), rtol=1e-7
    )

    live = client.post("/v1/models/shops/predict", json={"series": [["shop21"]], "horizon": 18})
    assert live.status_code == 200, live.text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        longer = theirs.predict(fh=list(range(1, 19)))
    np.testing.assert_allclose(live.json()["forecast"]["sales"], longer.loc["shop21", "sales"].to_numpy(), rtol=1e-7)

    new = pd.DataFrame({"shop": ["shop03"], "month": ["2021-01"], "sales": [333.0]})
    observed = client.post("/v1/models/shops/predict", json={"observations": new.to_dict(orient="list"), "horizon": 6})
    assert observed.status_code == 200, observed.text
    assert observed.json()["observations_mode"] == "refit"
    one = table[table["shop"] == "shop03"].set_index(["shop", "month"])[["sales"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = ThetaForecaster(sp=12).fit(one, fh=list(range(1, 7)))
        alone.update(
            pd.DataFrame(
                {"sales": [333.0]},
                index=pd.MultiIndex.from_tuples([("shop03", pd.Period("2021-01", "M"))], names=["shop", "month"]),
            ),
            update_params=True,
        )
        expected_after = alone.predict(fh=list(range(1, 7)))
    np.testing.assert_allclose(observed.json()["forecast"]["sales"], expected_after["sales"].to_numpy(), rtol=1e-7)

    second = retrain(client)  # the gate backtests the sharded production version too
    assert second["result"]["metrics"]["production"] is not None, second["result"]
    assert "production_error" not in second["result"]
    # the gate saw a fixed sample of 8 series: its score is sktime's backtest on those series
    gate = second["result"]["gate"]
    assert gate["series"] == GATE_SERIES and gate["sampled"] is True
    y = table.set_index(["shop", "month"])[["sales"]]
    sample, _, size = gate_sample(y, None, "panel", GATE_SERIES)
    assert size == GATE_SERIES and sample.index.droplevel(-1).nunique() == GATE_SERIES
    assert gate_sample(y, None, "panel", GATE_SERIES)[0].equals(sample)  # the same sample every time
    window = BacktestRequest(SplitterSpec("folds", horizon=12, folds=gate["window_folds"]), "refit", ("MASE",))
    schema = Schema("panel", ("shop",), "month", ("sales",), (), "M")
    direct, _ = run_backtest(ThetaForecaster(sp=12), sample, None, window, schema)
    assert second["result"]["metrics"]["candidate"] == pytest.approx(direct["aggregate"]["MASE"], rel=1e-7)

    response = client.post(
        "/v1/models/shops/backtests", json={"splitter": {"type": "folds", "folds": 2, "horizon": 6}, "metrics": ["MAE"]}
    )
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    csv = client.post("/v1/models/shops/predict", json={}, headers={"accept": "text/csv"})
    assert len(pd.read_csv(io.StringIO(csv.text))) == SERIES * 12
