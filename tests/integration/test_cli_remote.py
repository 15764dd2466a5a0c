"""`forecast-service ... --url` driving a real server (a subprocess); the commands run in
this process through typer's runner (each subprocess would import pandas afresh)."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from service.cli import app
from service.registry.store import Registry
from tests.test_cli import ok, one_line_error

from .conftest import ServerProcess, copy_models, free_port, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("cli-remote")
    registry = copy_models(trained_registry_path, root / "models", ["airline", "tourism-monthly"])
    yield from running_server(registry, root / "server.log", data_dir=root / "data")


def cli(*args: str, url: str | None = None) -> Any:
    """The command with ``FORECAST_URL`` set to ``url`` (and no other FORECAST_* variable)."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("FORECAST_")}
    if url is not None:
        env["FORECAST_URL"] = url
    result = CliRunner().invoke(app, list(args), env=env)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_models_and_predict_over_http(server: ServerProcess, tmp_path: Path) -> None:
    listing = ok(cli("models", "list", "--url", server.base_url)).splitlines()
    assert [line.split()[:5] for line in listing[1:]] == [
        ["airline", "single", "M", "1", "1"],
        ["tourism-monthly", "panel", "M", "60", "1"],
    ]
    forecaster = Registry(server.registry).load("airline", 1).forecaster
    expected = forecaster.predict(fh=[1, 2, 3])
    csv = ok(cli("predict", "airline", "--horizon", "3", "--coverage", "0.8", url=server.base_url))  # FORECAST_URL
    table = pd.read_csv(io.StringIO(csv))
    assert list(table.columns) == ["month", "passengers", "passengers_lower_80", "passengers_upper_80"]
    assert table["month"].tolist() == ["1961-01-01", "1961-02-01", "1961-03-01"]
    np.testing.assert_allclose(table["passengers"], expected.to_numpy(dtype="float64").ravel(), rtol=1e-12)

    out = tmp_path / "panel.parquet"
    result = cli(
        "predict",
        "tourism-monthly",
        "--series",
        "T001",
        "--series",
        "T002",
        "--horizon",
        "2",
        "-o",
        str(out),
        "--url",
        server.base_url,
    )
    assert result.returncode == 0 and "4 rows written" in result.stderr, result.stderr
    assert pd.read_parquet(out)["series"].tolist() == ["T001", "T001", "T002", "T002"]
    doc = json.loads(ok(cli("predict", "airline", "--fh", "2", "--json", "--url", server.base_url)))
    assert doc["model"] == "airline" and doc["version"] == 1 and doc["freq"] == "M" and doc["cutoff"] == "1960-12-01"
    assert doc["forecast"]["month"] == ["1961-02-01"]

    line = one_line_error(cli("predict", "nope", "--url", server.base_url))
    assert "404" in line and "nope" in line
    unreachable = one_line_error(cli("models", "list", "--url", f"http://127.0.0.1:{free_port()}"))
    assert "cannot reach the server" in unreachable


def test_datasets_over_http(server: ServerProcess, tmp_path: Path) -> None:
    first, more = tmp_path / "visits.csv", tmp_path / "more.json"
    first.write_text("month,visits\n2024-01,10\n2024-02,12\n2024-03,11\n")
    more.write_text(json.dumps({"month": ["2024-04"], "visits": [13]}))
    put = ok(
        cli(
            "datasets",
            "put",
            "visits",
            str(first),
            "--time",
            "month",
            "--targets",
            "visits",
            "--freq",
            "M",
            "--url",
            server.base_url,
        )
    )
    assert put.startswith("visits: version ") and "3 rows" in put
    appended = json.loads(
        ok(cli("datasets", "put", "visits", str(more), "--append", "--json", "--url", server.base_url))
    )
    assert appended["versions"][-1]["rows"] == 4
    assert ok(cli("datasets", "list", "--url", server.base_url)).splitlines()[1].split()[:5] == [
        "visits",
        appended["latest"],
        "2",
        "4",
        "1",
    ]
    shown = json.loads(ok(cli("datasets", "show", "visits", "--url", server.base_url)))
    assert shown["versions"][-1]["end"] == "2024-04-01"
    assert "404" in one_line_error(cli("datasets", "show", "nope", "--url", server.base_url))


def test_backtest_retrain_and_jobs_over_http(server: ServerProcess) -> None:
    result = json.loads(
        ok(cli("backtest", "airline", "--folds", "2", "--metrics", "MAE", "--json", "--url", server.base_url))
    )
    assert len(result["folds"]) == 2 and result["aggregate"]["MAE"] > 0
    job = json.loads(ok(cli("retrain", "airline", "--wait", "--url", server.base_url)))
    assert job["status"] == "succeeded" and job["result"]["version"] == 2

    listing = ok(cli("jobs", "list", "--url", server.base_url)).splitlines()
    assert listing[0].split() == ["id", "kind", "status", "done", "model", "created"]
    assert [line.split()[:3] for line in listing[1:3]] == [
        [job["id"][:8], "retrain", "succeeded"],
        [listing[2].split()[0], "backtest", "succeeded"],
    ]
    shown = json.loads(ok(cli("jobs", "show", job["id"][:8], "--url", server.base_url)))
    assert shown["id"] == job["id"]
    assert "409" in one_line_error(cli("jobs", "cancel", job["id"][:8], "--url", server.base_url))
    moved = ok(cli("promote", "airline", "1", "--url", server.base_url))
    assert moved.startswith("airline: production -> v1")
