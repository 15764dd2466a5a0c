"""Declared sources of a spec (a SQL query through SQLAlchemy, a CSV or Parquet path) are
snapshotted as versions of the dataset '<model>.source' when a retrain reads them, so every
version records exactly which data it was fitted on."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sktime.datasets import load_airline

from service.app import create_app
from service.datasets.store import DatasetStore
from service.errors import InvalidInput, SpecError
from service.forecasting.specs import write_spec
from service.jobs.retrain import RetrainParams, retrain
from service.registry.store import Registry
from tests.conftest import make_settings, wait_ready

NAIVE = {"class": "NaiveForecaster", "params": {"strategy": "last"}}


def airline_frame() -> pd.DataFrame:
    y = load_airline()
    return pd.DataFrame({"month": [p.strftime("%Y-%m") for p in y.index], "passengers": y.to_numpy(dtype=float)})


def spec(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": {"source": source, "time": "month", "targets": ["passengers"]},
        "freq": "M",
        "horizon": 12,
        "forecaster": NAIVE,
    }


def make_db(path: Path, frame: pd.DataFrame) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS airline (month TEXT PRIMARY KEY, passengers REAL NOT NULL)")
        conn.executemany("INSERT OR REPLACE INTO airline VALUES (?, ?)", frame.itertuples(index=False))
    return f"sqlite:///{path}"


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Registry, DatasetStore]:
    (tmp_path / "models").mkdir()
    return Registry(tmp_path / "models"), DatasetStore(tmp_path / "data")


def test_sql_source_is_snapshotted_as_a_dataset_version(stores: tuple[Registry, DatasetStore], tmp_path: Path) -> None:
    registry, datasets = stores
    url = make_db(tmp_path / "warehouse.sqlite", airline_frame().iloc[:-12])
    query = "SELECT month, passengers FROM airline ORDER BY month"
    write_spec(registry, "sqlair", spec({"sql": query}))

    first = retrain(registry, datasets, "sqlair", RetrainParams(), sql_url=url, job_id="job-1")
    assert first["data"]["dataset"] == "sqlair.source"
    described = datasets.describe("sqlair.source")
    assert described["latest"] == first["data"]["version"]
    assert described["versions"][0]["rows"] == 132 and described["versions"][0]["end"] == "1959-12-01"
    table, _, _ = datasets.read("sqlair.source", first["data"]["version"])
    assert table["passengers"].tolist() == airline_frame()["passengers"].iloc[:-12].tolist()
    manifest = registry.read_manifest("sqlair", first["version"])
    assert manifest["training"]["dataset_version"] == f"sqlair.source@{first['data']['version']}"
    assert manifest["training"]["source"] == {"sql": query}
    assert manifest["job_id"] == "job-1"
    assert manifest["cutoff"] == "1959-12-01"
    assert first["promoted"] and registry.read_aliases("sqlair") == {"production": first["version"]}

    # unchanged table: the same dataset version (content hash), a new model version
    same = retrain(registry, datasets, "sqlair", RetrainParams(), sql_url=url)
    assert same["data"] == first["data"] and same["version"] == first["version"] + 1
    assert len(datasets.describe("sqlair.source")["versions"]) == 1

    # new rows in the warehouse: a new snapshot, and the model sees them
    make_db(tmp_path / "warehouse.sqlite", airline_frame().iloc[-12:])
    grown = retrain(registry, datasets, "sqlair", RetrainParams(), sql_url=url)
    assert grown["data"]["version"] != first["data"]["version"]
    assert [v["rows"] for v in datasets.describe("sqlair.source")["versions"]] == [132, 144]
    assert registry.read_manifest("sqlair", grown["version"])["cutoff"] == "1960-12-01"


def test_sql_source_errors(stores: tuple[Registry, DatasetStore], tmp_path: Path) -> None:
    registry, datasets = stores
    url = make_db(tmp_path / "warehouse.sqlite", airline_frame())
    write_spec(registry, "sqlair", spec({"sql": "SELECT month, passengers FROM airline"}))
    with pytest.raises(SpecError, match="FORECAST_SQL_URL"):
        retrain(registry, datasets, "sqlair", RetrainParams())
    write_spec(registry, "broken", spec({"sql": "SELECT month, passengers FROM no_such_table"}))
    with pytest.raises(SpecError, match="SQL source failed"):
        retrain(registry, datasets, "broken", RetrainParams(), sql_url=url)
    # a query whose rows have a gap: refused before anything is stored
    write_spec(registry, "gappy", spec({"sql": "SELECT month, passengers FROM airline WHERE month <> '1955-06'"}))
    with pytest.raises(InvalidInput, match="not regular"):
        retrain(registry, datasets, "gappy", RetrainParams(), sql_url=url)
    assert datasets.names() == []
    assert registry.list_versions("sqlair") == registry.list_versions("broken") == registry.list_versions("gappy") == []


def test_csv_and_parquet_path_sources(stores: tuple[Registry, DatasetStore], tmp_path: Path) -> None:
    registry, datasets = stores
    frame = airline_frame()
    # a relative path is read from the model's folder
    write_spec(registry, "csvair", spec({"path": "airline.csv"}))
    frame.to_csv(registry.model_dir("csvair") / "airline.csv", index=False)
    result = retrain(registry, datasets, "csvair", RetrainParams())
    assert result["data"]["dataset"] == "csvair.source"
    assert datasets.describe("csvair.source")["versions"][0]["rows"] == 144
    assert registry.read_manifest("csvair", result["version"])["training"]["dataset_version"] == (
        f"csvair.source@{result['data']['version']}"
    )

    # an absolute Parquet path under the sources root, with real timestamps: the same
    # canonical table, the same hash; outside the root it is refused
    parquet = tmp_path / "elsewhere" / "airline.parquet"
    parquet.parent.mkdir()
    frame.assign(month=pd.to_datetime(frame["month"])).to_parquet(parquet, index=False)
    write_spec(registry, "pqair", spec({"path": str(parquet)}))
    with pytest.raises(SpecError, match="outside"):
        retrain(registry, datasets, "pqair", RetrainParams())
    other = retrain(registry, datasets, "pqair", RetrainParams(), sources_root=parquet.parent)
    assert other["data"] == {"dataset": "pqair.source", "version": result["data"]["version"]}

    write_spec(registry, "lost", spec({"path": "missing.csv"}))
    with pytest.raises(SpecError, match="not found"):
        retrain(registry, datasets, "lost", RetrainParams())


def test_a_long_model_name_with_a_declared_source_can_be_retrained(
    stores: tuple[Registry, DatasetStore], tmp_path: Path
) -> None:
    """Model names may have 64 characters; the snapshot '<name>.source' must still be storable."""
    registry, datasets = stores
    name = "m" * 64
    csv = tmp_path / "airline.csv"
    airline_frame().to_csv(csv, index=False)
    write_spec(registry, name, spec({"path": str(csv)}))
    result = retrain(registry, datasets, name, RetrainParams(), sources_root=tmp_path)
    assert result["version"] == 1 and result["promoted"]


@pytest.fixture
def sql_client(tmp_path: Path) -> Iterator[TestClient]:
    registry = tmp_path / "models"
    registry.mkdir()
    url = make_db(tmp_path / "warehouse.sqlite", airline_frame())
    with TestClient(create_app(make_settings(registry, sql_url=url))) as client:
        wait_ready(client)
        yield client


def test_sql_source_through_the_job_runner(sql_client: TestClient) -> None:
    """FORECAST_SQL_URL reaches the worker process that runs the retrain."""
    client = sql_client
    assert client.put("/v1/models/warehouse", json=spec({"sql": "SELECT * FROM airline"})).status_code == 201
    started = client.post("/v1/models/warehouse/retrain")
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 120
    job = started.json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = client.get(started.headers["location"]).json()
    assert job["status"] == "succeeded", job
    assert job["result"]["data"]["dataset"] == "warehouse.source"
    described = client.get("/v1/datasets/warehouse.source").json()
    assert described["latest"] == job["result"]["data"]["version"]
    assert described["versions"][0]["rows"] == 144
