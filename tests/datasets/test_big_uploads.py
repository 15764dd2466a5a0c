"""Big dataset uploads: streamed to disk under their own limit (FORECAST_MAX_UPLOAD_BYTES),
not the predict-sized FORECAST_MAX_BODY_BYTES."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import make_settings, wait_ready
from tests.datasets.test_dataset_http import CSV, PARQUET, files_of, problem

ROLES = "time=month&targets=y&keys=key&freq=M"
SERIES, MONTHS = 4_500, 120  # 540k rows (over the 200k per-request limit), CSV ~14 MB (over 10 MiB)


def big_frame() -> pd.DataFrame:
    months = pd.period_range("2010-01", periods=MONTHS, freq="M").strftime("%Y-%m-%d")
    keys = np.repeat([f"s{i:06d}" for i in range(SERIES)], MONTHS)
    values = np.random.default_rng(0).normal(100, 10, SERIES * MONTHS).round(3)
    return pd.DataFrame({"key": keys, "month": np.tile(months, SERIES), "y": values})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    registry = tmp_path / "models"
    registry.mkdir()
    settings = make_settings(registry, max_upload_bytes=64 * 2**20)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


def _parquet(frame: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out, index=False)
    return out.getvalue()


def test_big_parquet_and_csv_uploads_are_stored_whole(client: TestClient) -> None:
    frame = big_frame()
    body = _parquet(frame)
    response = client.put(f"/v1/datasets/big?{ROLES}", content=body, headers=PARQUET)
    assert response.status_code == 200, response.text
    info = response.json()["versions"][-1]
    assert info["series"] == SERIES and info["rows"] == SERIES * MONTHS
    stored, _, _ = client.app.state.runtime.datasets.read("big")  # type: ignore[attr-defined]
    assert np.allclose(stored["y"].to_numpy(dtype=float), frame["y"].to_numpy())
    csv = frame.to_csv(index=False).encode()
    assert len(csv) > 10 * 2**20  # over FORECAST_MAX_BODY_BYTES
    response = client.put(f"/v1/datasets/bigcsv?{ROLES}", content=csv, headers=CSV)
    assert response.status_code == 200, response.text
    assert response.json()["versions"][-1]["rows"] == SERIES * MONTHS
    leftovers = list((Path(client.app.state.runtime.datasets.root) / ".tmp").iterdir())  # type: ignore[attr-defined]
    assert leftovers == []


def test_over_the_upload_limit_is_413_and_keeps_the_version(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    with TestClient(create_app(make_settings(registry, max_upload_bytes=200_000))) as client:
        wait_ready(client)
        small = big_frame().iloc[:1200]
        assert client.put(f"/v1/datasets/d?{ROLES}", content=small.to_csv(index=False).encode(), headers=CSV).is_success
        before = files_of(client, "d")
        big = big_frame().iloc[:60_000].to_csv(index=False).encode()
        body = problem(client.put(f"/v1/datasets/d?{ROLES}", content=big, headers=CSV), 413)
        assert "FORECAST_MAX_UPLOAD_BYTES" in body["detail"]
        assert files_of(client, "d") == before
        body = problem(client.post("/v1/predict/x", content=b"{" + b" " * 11 * 2**20 + b"}"), 413)
        assert "FORECAST_MAX_BODY_BYTES" in body["detail"]


def test_spools_left_by_a_dead_upload_are_removed_on_start(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    settings = make_settings(registry)
    spools = settings.data_dir / "datasets" / ".tmp"
    spools.mkdir(parents=True)
    stale, recent, other = spools / "upload-dead.body", spools / "upload-live.body", spools / "notes.txt"
    for path in (stale, recent, other):
        path.write_bytes(b"key,month,y\n")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))  # a crash two hours ago
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
    assert not stale.exists()
    assert recent.exists() and other.exists()  # maybe another replica's upload; not ours to touch
