"""MLflow: a version exported with `forecast-service export` (sktime's mlflow flavour) and served
by a real ``mlflow models serve``, and our own ``/mlflow/{name}/invocations`` on a real server,
both asked with mlflow's own ``ScoringServerClient``, answer what our predict route answers
(to float tolerance). Errors answer in MLflow's ``{"error_code", "message"}`` form."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
from typer.testing import CliRunner

from service.app import create_app
from service.cli import app as cli
from service.registry.store import Registry
from tests.conftest import make_settings, wait_ready
from tests.servers import HOST, copy_models, free_port, pytest_runtest_makereport  # noqa: F401
from tests.servers import start_server as start_server

pytestmark = pytest.mark.slow
EMPTY = pd.DataFrame()
BIN = Path(sys.executable).parent


def export(registry: Path, name: str, target: Path, *args: str) -> Path:
    result = CliRunner().invoke(cli, ["export", name, str(target), "--registry", str(registry), *args])
    assert result.exit_code == 0, result.output
    assert (target / "MLmodel").is_file()
    return target


@pytest.fixture
def mlflow_serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(model_dir)`` -> a ScoringServerClient of a real ``mlflow models serve``."""
    processes: list[subprocess.Popen[bytes]] = []

    def serve(model_dir: Path) -> ScoringServerClient:
        port = free_port()
        log = open(tmp_path / f"mlflow-{port}.log", "wb")  # noqa: SIM115 - closed with the process
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # its uvicorn
        command = [str(BIN / "mlflow"), "models", "serve", "-m", str(model_dir), "-h", HOST, "-p", str(port)]
        process = subprocess.Popen(
            [*command, "--env-manager", "local"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        processes.append(process)
        client = ScoringServerClient(HOST, port)
        client.wait_server_ready(timeout=90, scoring_server_proc=process)
        return client

    yield serve
    for process in processes:
        os.killpg(process.pid, 9)
        process.wait(10)


def ours(base: str, name: str, body: dict[str, Any]) -> pd.DataFrame:
    import httpx

    r = httpx.post(f"{base}/v1/models/{name}/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return pd.DataFrame(r.json()["forecast"])


def as_wire(predictions: Any, target: str, coverage: list[float], quantiles: list[float]) -> pd.DataFrame:
    """The flavour's records under our predict route's column names."""
    frame = pd.DataFrame(predictions)
    names = {f"predict__{target}": target}
    for c in coverage:
        pct = f"{round(c * 100):d}"
        names[f"predict_interval__{target}__{c}__lower"] = f"{target}_lower_{pct}"
        names[f"predict_interval__{target}__{c}__upper"] = f"{target}_upper_{pct}"
    names.update({f"predict_quantiles__{target}__{q}": f"{target}_q{q:g}" for q in quantiles})
    assert list(frame.columns) == list(names), frame.columns
    return frame.rename(columns=names)


@pytest.mark.parametrize(
    ("name", "target", "coverage", "quantiles"),
    [
        ("airline", "passengers", [0.8, 0.95], [0.1, 0.5, 0.9]),
        ("tourism-monthly", "visitors", [0.8, 0.95], [0.05, 0.1, 0.5, 0.9, 0.95]),
    ],
)
def test_export_served_by_mlflow_our_invocations_and_our_predict_agree(
    name: str,
    target: str,
    coverage: list[float],
    quantiles: list[float],
    trained_registry_path: Path,
    tmp_path: Path,
    start_server: Any,
    mlflow_serve: Any,
) -> None:
    registry = copy_models(trained_registry_path, tmp_path / "models", [name])
    exported = export(registry, name, tmp_path / "export")
    served_by_mlflow = mlflow_serve(exported).invoke(EMPTY).get_predictions()
    server = start_server(registry).wait_ready()
    endpoint = ScoringServerClient(HOST, f"{server.port}/mlflow/{name}")  # our per-model prefix
    endpoint.ping()
    by_endpoint = endpoint.invoke(EMPTY).get_predictions()
    table = ours(server.base_url, name, {"coverage": coverage, "quantiles": quantiles})
    columns = [target, *[c for c in table.columns if c.startswith(f"{target}_")]]
    expected = table[columns].reset_index(drop=True)
    for answer in (served_by_mlflow, by_endpoint):
        got = as_wire(answer, target, coverage, quantiles)[columns]
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, check_dtype=False)


def test_an_exogenous_export_takes_future_values_as_pyfuncs_x(registry_path: Path, tmp_path: Path) -> None:
    exported = export(registry_path, "uschange", tmp_path / "uschange", "--version", "1")
    pyfunc = mlflow.pyfunc.load_model(str(exported))
    future = pd.DataFrame(
        {
            "income": np.linspace(0.5, 1.2, 8),
            "production": np.linspace(0.1, 0.8, 8),
            "savings": np.linspace(1.0, 4.5, 8),
            "unemployment": np.linspace(0.0, 0.7, 8),
        },
        index=pd.RangeIndex(187, 195),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_pyfunc = pyfunc.predict(future)
    with TestClient(create_app(make_settings(registry_path))) as client:
        wait_ready(client)
        split = future.reset_index(names="quarter").to_dict(orient="split")
        r = client.post(
            "/mlflow/uschange/invocations", json={"dataframe_split": {k: split[k] for k in ("columns", "data")}}
        )
        assert r.status_code == 200, r.text
        by_endpoint = pd.DataFrame(r.json()["predictions"])
        exogenous = {c: future[c].tolist() for c in future.columns} | {"quarter": list(range(187, 195))}
        p = client.post(
            "/v1/models/uschange/predict",
            json={"exogenous": exogenous, "coverage": [0.8, 0.95], "quantiles": [0.1, 0.5, 0.9]},
        )
        assert p.status_code == 200, p.text
    assert list(by_endpoint.columns) == list(by_pyfunc.columns)
    np.testing.assert_allclose(by_endpoint.to_numpy(), by_pyfunc.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(by_endpoint["predict__consumption"], p.json()["forecast"]["consumption"], rtol=1e-12)


def test_an_export_refuses_a_folder_in_use_and_an_unknown_version(registry_path: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["export", "airline", str(busy), "--registry", str(registry_path)])
    assert result.exit_code == 2 and "not an empty folder" in result.output
    assert (busy / "keep.txt").read_text() == "mine"
    result = CliRunner().invoke(
        cli, ["export", "airline", str(tmp_path / "v9"), "--version", "9", "-r", str(registry_path)]
    )
    assert result.exit_code == 2 and "no version 9" in result.output
    assert not (tmp_path / "v9").exists()
    hierarchy = export(registry_path, "sales-hierarchy", tmp_path / "h", "--alias", "production")
    assert "predict_interval" not in (hierarchy / "MLmodel").read_text()  # no intervals: predict only
    assert Registry(registry_path).list_versions("airline") == [1]


def test_bad_scoring_requests_answer_in_mlflows_error_form(client: TestClient) -> None:
    def refused(name: str, body: Any, status: int, code: str, **kw: Any) -> str:
        r = (
            client.post(f"/mlflow/{name}/invocations", json=body, **kw)
            if body is not None
            else client.post(
                f"/mlflow/{name}/invocations", content=b"{nope", headers={"content-type": "application/json"}
            )
        )
        assert r.status_code == status, r.text
        doc = r.json()
        assert set(doc) == {"error_code", "message"} and doc["error_code"] == code, doc
        return str(doc["message"])

    empty = {"dataframe_split": {"columns": [], "data": []}}
    assert "no model named" in refused("nope", empty, 404, "RESOURCE_DOES_NOT_EXIST")
    refused("airline", empty, 404, "RESOURCE_DOES_NOT_EXIST", params={"version": 7})
    refused("airline", None, 400, "BAD_REQUEST")
    assert "exactly one" in refused("airline", {}, 422, "INVALID_PARAMETER_VALUE")
    assert "exactly one" in refused("airline", {**empty, "dataframe_records": []}, 422, "INVALID_PARAMETER_VALUE")
    assert "instances" in refused("airline", {"instances": [[1.0]]}, 422, "INVALID_PARAMETER_VALUE")
    assert "no exogenous" in refused("airline", {"dataframe_records": [{"x": 1.0}]}, 422, "INVALID_PARAMETER_VALUE")
    bad_rows = {"dataframe_split": {"columns": ["a", "b"], "data": [[1.0]]}}
    assert "1 values for 2 columns" in refused("uschange", bad_rows, 422, "INVALID_PARAMETER_VALUE")
    assert "lacks" in refused("uschange", {"dataframe_records": [{"a": 1}, {"b": 2}]}, 422, "INVALID_PARAMETER_VALUE")
    assert "exogenous" in refused("uschange", {"dataframe_records": []}, 422, "INVALID_PARAMETER_VALUE")
    short = {
        "dataframe_split": {
            "columns": ["quarter", "income", "production", "savings", "unemployment"],
            "data": [[187, 0.5, 0.1, 1.0, 0.0]],
        }
    }
    assert "missing" in refused("uschange", short, 422, "INVALID_PARAMETER_VALUE")
    assert client.get("/mlflow/nope/ping").status_code == 404
    assert client.get("/mlflow/airline/ping").status_code == 200
    assert client.post("/mlflow/airline/invocations", json=empty).status_code == 200  # unharmed


def test_keys_guard_the_scoring_endpoint_in_mlflows_form(registry_path: Path) -> None:
    settings = make_settings(
        registry_path, api_keys="admin:mlflow-admin-key-0123456789,read:mlflow-read-key-0123456789"
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        body = {"dataframe_split": {"columns": [], "data": []}}
        r = client.post("/mlflow/airline/invocations", json=body)
        assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED"
        ok = client.post(
            "/mlflow/airline/invocations", json=body, headers={"Authorization": "Bearer mlflow-read-key-0123456789"}
        )
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 12
