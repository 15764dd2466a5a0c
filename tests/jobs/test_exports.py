"""Batch exports: POST /v1/models/{name}/exports runs a job that writes every series' forecast
to Parquet or CSV, shard by shard with progress; GET .../exports/{job_id} downloads it. The
file holds what sktime predicts on the version, and what our predict route answers."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.forecasting.shards import is_sharded, load_fitted
from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from tests.conftest import make_settings, wait_ready
from tests.factories import wait_for

SERIES, LENGTH = 45, 36


def write_panel(root: Path) -> None:
    rng = np.random.default_rng(3)
    months = pd.period_range("2020-01", periods=LENGTH, freq="M")
    season = 8 * np.sin(2 * np.pi * np.arange(LENGTH) / 12)
    table = pd.concat(
        [
            pd.DataFrame(
                {
                    "store": f"s{i:02d}",
                    "month": months.strftime("%Y-%m"),
                    "sales": 50 + i + season + rng.normal(size=LENGTH),
                }
            )
            for i in range(SERIES)
        ]
    )
    folder = root / "stores"
    folder.mkdir(parents=True)
    table.to_csv(folder / "history.csv", index=False)
    spec = {
        "data": {"source": {"path": "history.csv"}, "keys": ["store"], "time": "month", "targets": ["sales"]},
        "freq": "M",
        "horizon": 6,
        "forecaster": {"class": "ThetaForecaster", "params": {"sp": 12}},
        "coverage": [0.8],
        "quantiles": [0.5],
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(spec))


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    """A 45-series Theta panel published in shards of 20 (3 shards)."""
    root = tmp_path / "models"
    write_panel(root)
    registry = Registry(root, shard_series=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_and_publish(registry, "stores")
    assert is_sharded(registry.read_manifest("stores", 1))
    return root


def start(client: TestClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/v1/models/{name}/exports", json=body)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    return r.json()


def finished(client: TestClient, job_id: str) -> dict[str, Any]:
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed"), 120, "the export")
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture
def served(sharded: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(sharded, shard_series=20))) as client:
        wait_ready(client)
        yield client


def test_a_sharded_panel_exports_to_parquet_what_sktime_predicts(served: TestClient, sharded: Path) -> None:
    job = start(served, "stores", {"horizon": 9, "coverage": [0.9], "quantiles": [0.1, 0.9]})
    done = finished(served, job["id"])
    assert done["progress"]["done"] == done["progress"]["total"] == SERIES
    result = done["result"]
    assert result["rows"] == SERIES * 9 and result["series"] == SERIES and result["format"] == "parquet"
    r = served.get(result["download"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    table = pd.read_parquet(io.BytesIO(r.content))
    assert len(r.content) == result["bytes"]
    forecaster = load_fitted(Registry(sharded), "stores", 1).forecaster
    fh = list(range(1, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point = forecaster.predict(fh=fh)
        interval = forecaster.predict_interval(fh=fh, coverage=[0.9])
        quantiles = forecaster.predict_quantiles(fh=fh, alpha=[0.1, 0.9])
    table = table.set_index(["store", pd.PeriodIndex(table["month"], freq="M")]).sort_index()
    np.testing.assert_allclose(table["sales"], point.sort_index()["sales"], rtol=1e-12)
    np.testing.assert_allclose(table["sales_lower_90"], interval.sort_index().iloc[:, 0], rtol=1e-12)
    np.testing.assert_allclose(table["sales_upper_90"], interval.sort_index().iloc[:, 1], rtol=1e-12)
    np.testing.assert_allclose(table["sales_q0.9"], quantiles.sort_index().iloc[:, 1], rtol=1e-12)


def test_csv_export_equals_the_predict_route_for_every_series(served: TestClient) -> None:
    done = finished(served, start(served, "stores", {"format": "csv", "coverage": [0.8]})["id"])
    r = served.get(done["result"]["download"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    exported = pd.read_csv(io.StringIO(r.text), dtype={"store": str})
    answer = served.post(
        "/v1/models/stores/predict", json={"coverage": [0.8], "series": [f"s{i:02d}" for i in range(SERIES)]}
    )
    assert answer.status_code == 200
    ours = pd.DataFrame(answer.json()["forecast"])
    key = ["store", "month"]
    pd.testing.assert_frame_equal(
        exported.sort_values(key).reset_index(drop=True),
        ours[exported.columns].sort_values(key).reset_index(drop=True),
        check_exact=False,
        rtol=1e-12,
    )


def test_bad_exports_are_refused_before_a_job_exists(client: TestClient) -> None:
    before = len(client.get("/v1/jobs").json()["jobs"])
    for name, body, status, field in [
        ("nope", {}, 404, None),
        ("uschange", {}, 422, "model"),  # needs future exogenous values
        ("sales-hierarchy", {"coverage": [0.9]}, 422, "coverage"),  # no intervals
        ("airline", {"horizon": 10_000}, 422, "horizon"),
        ("airline", {"format": "xlsx"}, 422, "format"),
        ("airline", {"quantiles": [1.5]}, 422, "quantiles"),
        ("airline", {"version": 9}, 404, None),
    ]:
        r = client.post(f"/v1/models/{name}/exports", json=body)
        assert r.status_code == status, (name, body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        if field:
            assert r.json()["field"] == field, r.json()
    assert len(client.get("/v1/jobs").json()["jobs"]) == before
    assert client.get("/v1/models/airline/exports/nope").status_code == 404


def test_a_download_before_the_export_finished_is_a_409_and_another_jobs_id_a_404(client: TestClient) -> None:
    job = start(client, "airline", {})
    early = client.get(f"/v1/models/airline/exports/{job['id']}")
    assert early.status_code in (200, 409)  # 409 while it runs (a tiny export may already be done)
    done = finished(client, job["id"])
    assert client.get(f"/v1/models/tourism-monthly/exports/{job['id']}").status_code == 404  # not this model's
    r = client.get(done["result"]["download"])
    table = pd.read_parquet(io.BytesIO(r.content))
    assert len(table) == 12 and list(table.columns[:2]) == ["month", "passengers"]
    backtest = client.post(
        "/v1/models/airline/backtests", json={"splitter": {"type": "folds", "folds": 1, "horizon": 3}}
    )
    assert client.get(f"/v1/models/airline/exports/{backtest.json()['id']}").status_code == 404  # not an export


def test_an_export_dir_setting_puts_files_there(sharded: Path, tmp_path: Path) -> None:
    target = tmp_path / "exports"
    with TestClient(create_app(make_settings(sharded, shard_series=20, export_dir=target))) as client:
        wait_ready(client)
        done = finished(client, start(client, "stores", {"horizon": 2, "format": "csv"})["id"])
    files = list((target / "stores").iterdir())
    assert [f.name for f in files] == [done["result"]["file"]]
    assert len(files[0].read_text().splitlines()) == 1 + SERIES * 2
