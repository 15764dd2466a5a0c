"""The README's protocol examples run as written: its KServe body and its batch-export body."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient
from kserve.protocol.rest.timeseries.types import ForecastResponse

from tests.conftest import REPO
from tests.factories import wait_for

README = (REPO / "README.md").read_text()


def curl_body(path: str) -> dict:
    match = re.search(rf"curl -s [^\n]*?{re.escape(path)}.*?-d '(.*?)'", README, re.S)
    assert match, f"the README has no curl example for {path}"
    return json.loads(match.group(1))


def test_the_readme_kserve_example_answers_as_it_says(client: TestClient) -> None:
    body = curl_body("/v1/timeseries/forecast")
    r = client.post("/v1/timeseries/forecast", json=body)
    assert r.status_code == 200, r.text
    (content,) = ForecastResponse.model_validate(r.json()).outputs[0].content
    assert content.start_timestamp == "1961-04-01"  # as the README's comment says
    assert set(content.quantiles or {}) == {"0.1", "0.5", "0.9"}


def test_the_readme_export_example_writes_the_rows_it_says(client: TestClient) -> None:
    body = curl_body("/v1/models/tourism-monthly/exports")
    job = client.post("/v1/models/tourism-monthly/exports", json=body).json()
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded", 120, "the export")
    result = client.get(f"/v1/jobs/{job['id']}").json()["result"]
    assert result["rows"] == 720 and result["download"] == f"/v1/models/tourism-monthly/exports/{job['id']}"
    assert client.get(result["download"]).status_code == 200
