"""Monitoring from the Python client and the CLI against a real server (a subprocess): the
synthetic `shift` panel (50 stores, 3 of which shift after the cutoff, action ``alert``),
its actuals sent by `Client.send_actuals` and `forecast-service actuals`, read back by
`Client.monitoring` / `Client.anomalies` / `forecast-service monitoring`, and the same
commands offline on a copy of the folders; and the README's monitoring walkthrough, run as
written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from service.client import Client, ForecastServiceError
from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from tests.conftest import REPO
from tests.monitoring.conftest import AFTER, SERIES, SHIFTED, actuals_after, write_model
from tests.test_cli import cli, invoke, ok, one_line_error

from .conftest import ServerFactory, ServerProcess, running_server

pytestmark = pytest.mark.slow

ROWS = SERIES * AFTER  # 300: every store, the 6 months after the cutoff


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`shift` trained once (v1, production), with ``action: alert`` (a breach retrains nothing)."""
    root = tmp_path_factory.mktemp("monitoring-cli-client")
    write_model(root / "models", "shift", action="alert")
    train_and_publish(Registry(root / "models"), "shift")
    return root


@pytest.fixture(scope="module")
def offline(folders: Path) -> Path:
    """A copy of the trained registry, no server on it (the offline commands)."""
    target = folders / "offline" / "models"
    shutil.copytree(folders / "models", target, ignore=shutil.ignore_patterns("*.lock"))
    return target.parent


@pytest.fixture(scope="module")
def server(folders: Path, offline: Path) -> Iterator[ServerProcess]:
    yield from running_server(folders / "models", folders / "server.log", data_dir=folders / "data")


@pytest.fixture(scope="module")
def actuals_csv(folders: Path) -> Path:
    path = folders / "actuals.csv"
    actuals_after(Registry(folders / "models"), "shift").to_csv(path, index=False)
    return path


def test_the_client_sends_actuals_and_reads_monitoring_and_anomalies(server: ServerProcess) -> None:
    actuals = actuals_after(Registry(server.registry), "shift")
    with Client(server.base_url) as client, server.client() as http:
        report = client.send_actuals("shift", actuals)
        assert report["rows"] == report["matched"] == ROWS and report["unmatched"]["rows"] == 0, report
        assert report["drift"]["state"] == "breach" and report["drift"]["action"] == "alert"
        assert "triggered" not in report["drift"]  # alert: flagged, no retrain

        for params in ({}, {"version": 1, "series": ["s07", "s01"], "since": "2023-03", "window": 3}):
            got = client.monitoring("shift", **params)  # type: ignore[arg-type]
            assert got == http.get("/v1/models/shift/monitoring", params=params).json()
        (v1,) = client.monitoring("shift")["versions"]
        assert v1["version"] == 1 and v1["production"] and v1["window"]["points"] == ROWS
        assert client.monitoring("shift", series=[{"store": "s07"}]) == client.monitoring("shift", series=["s07"])
        assert client.monitoring("shift", since=pd.Period("2023-03", "M"))["since"] == "2023-03-01"

        found = client.anomalies("shift", coverage=0.99)
        assert set(found["store"]) == set(SHIFTED) and len(found) == len(SHIFTED) * AFTER
        assert list(found.columns[:2]) == ["store", "month"] and isinstance(found["month"].dtype, pd.PeriodDtype)
        assert found.attrs["count"] == len(found) and found.attrs["scored"] == ROWS and found.attrs["coverage"] == 0.99
        wire = http.get("/v1/models/shift/anomalies", params={"coverage": 0.99}).json()["anomalies"]
        assert found["actual"].tolist() == [a["actual"] for a in wire]
        assert found["month"].dt.strftime("%Y-%m").tolist() == [a["time"][:7] for a in wire]
        one = client.anomalies("shift", coverage=0.99, series=["s23"], since="2023-03", time_as="wire")
        assert set(one["store"]) == {"s23"} and one["month"].tolist() == [f"2023-0{m}-01" for m in range(3, 7)]

        with pytest.raises(ForecastServiceError) as missing:
            client.monitoring("nope")
        assert missing.value.status == 404


def test_the_cli_over_http(server: ServerProcess, actuals_csv: Path) -> None:
    out = ok(cli("actuals", "shift", str(actuals_csv), "--url", server.base_url))
    assert f"shift: {ROWS} rows, {ROWS} matched" in out and "drift: breach (action alert)" in out, out
    doc = json.loads(ok(cli("monitoring", "shift", "--json", "--url", server.base_url)))
    assert doc == httpx.get(f"{server.base_url}/v1/models/shift/monitoring").json()
    assert doc["policy"]["state"] == "breach" and doc["versions"][0]["window"]["points"] == ROWS

    table = ok(invoke("monitoring", "shift", "--url", server.base_url))
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["version", "production", "points", "window"], table
    assert lines[1].split()[:6] == ["1", "yes", str(ROWS), "2023-01-01", "..", "2023-06-01"], table
    assert any(line.startswith("policy: breach (action alert); v1 MASE live") for line in lines), table
    line = one_line_error(invoke("actuals", "nope", str(actuals_csv), "--url", server.base_url))
    assert "404" in line and "nope" in line


def test_the_cli_offline_gives_the_servers_answer(server: ServerProcess, offline: Path, actuals_csv: Path) -> None:
    with Client(server.base_url) as client:  # the same actuals on the server (again: the newest value wins)
        client.send_actuals("shift", actuals_csv)
    folders = ["--registry", str(offline / "models"), "--data-dir", str(offline / "data")]
    out = ok(invoke("actuals", "shift", str(actuals_csv), *folders, "--json"))
    report = json.loads(out)
    assert report["matched"] == ROWS and report["drift"]["state"] == "breach", report
    local = json.loads(ok(invoke("monitoring", "shift", *folders, "--json")))
    remote = httpx.get(f"{server.base_url}/v1/models/shift/monitoring").json()
    assert local["versions"] == remote["versions"] and local["policy"] == remote["policy"]


def monitoring_walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"### Monitoring: from first forecast to drift-triggered retrain.*?```sh\n(.*?)```", text, re.S)
    assert found, "README has no monitoring walkthrough"
    return found.group(1)


def test_the_readme_monitoring_walkthrough_runs_as_written(tmp_path: Path, start_server: ServerFactory) -> None:
    script = monitoring_walkthrough()
    (tmp_path / "models").mkdir()
    server = start_server(tmp_path / "models", data_dir=tmp_path / "data")
    server.wait_ready()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("FORECAST_")}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("http://127.0.0.1:8000", server.base_url)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    # every output the README shows (its "#   " comment lines) is what the commands printed
    shown = [line[1:].strip() for line in script.splitlines() if line.startswith("#   ")]
    assert len(shown) == 6
    for line in shown:
        assert line in done.stdout, (line, done.stdout)
