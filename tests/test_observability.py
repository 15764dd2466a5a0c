"""Metrics move with the right labels; one JSON log line per request; request ids."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.observability import JsonFormatter
from tests.conftest import make_settings, wait_ready

KEY_READ = "read-key-0123456789abcdef"
KEY_ADMIN = "admin-key-0123456789abcdef"


def metric_value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move_after_a_predict_and_a_failed_request(registry_path: Path) -> None:
    with TestClient(create_app(make_settings(registry_path))) as client:
        wait_ready(client)
        before = client.get("/metrics").text
        body = {"horizon": 3, "coverage": [0.8]}
        assert client.post("/v1/models/airline/predict", json=body).status_code == 200
        assert client.post("/v1/models/airline/predict", json=body).status_code == 200  # the fast lane
        assert client.post("/v1/models/airline/predict", json={"horizon": "x"}).status_code == 422
        assert client.post("/v1/models/nope/predict", json={}).status_code == 404
        after = client.get("/metrics").text
    assert (
        metric_value(after, "forecast_predictions_total", model="airline", version="1")
        - metric_value(before, "forecast_predictions_total", model="airline", version="1")
        == 2
    )
    assert metric_value(after, "forecast_fast_path_total", model="airline", path="fast") == 1
    assert metric_value(after, "forecast_fast_path_total", model="airline", path="cache") == 1
    route = "/v1/models/{name}/predict"
    assert metric_value(after, "forecast_http_request_duration_seconds_count", route=route, status="200") >= 1
    assert metric_value(after, "forecast_http_request_duration_seconds_count", route=route, status="422") == 1
    assert metric_value(after, "forecast_http_request_duration_seconds_count", route=route, status="404") == 1
    assert metric_value(after, "forecast_model_load_seconds_count", model="airline") >= 1
    assert metric_value(after, "forecast_loaded_versions", model="airline") == 1


def test_metrics_can_require_a_read_key(registry_path: Path) -> None:
    settings = make_settings(registry_path, api_keys=f"read:{KEY_READ}", metrics_public=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY_READ}"}).status_code == 200


def test_one_json_line_per_request_with_the_documented_fields_and_no_secrets(registry_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("service.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    settings = make_settings(registry_path, api_keys=f"read:{KEY_READ},admin:{KEY_ADMIN}")
    try:
        with TestClient(create_app(settings)) as client:
            wait_ready_with_key(client)
            stream.truncate(0)
            stream.seek(0)
            secret_body = {"horizon": 2, "observations": {"month": ["1961-01-01"], "passengers": [123456.789]}}
            response = client.post(
                "/v1/models/airline/predict",
                json=secret_body,
                headers={"Authorization": f"Bearer {KEY_READ}", "X-Request-ID": "req-42"},
            )
            assert response.status_code == 200
            assert response.headers["x-request-id"] == "req-42"
            generated = client.get("/healthz").headers["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", generated)
    finally:
        access.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    predict = [entry for entry in lines if entry.get("route") == "/v1/models/{name}/predict"]
    assert len(predict) == 1
    entry = predict[0]
    assert entry["request_id"] == "req-42"
    assert entry["status"] == 200 and entry["method"] == "POST"
    assert entry["model"] == "airline" and entry["version"] == 1
    assert entry["duration_ms"] > 0
    assert {"ts", "level", "logger", "message"} <= set(entry)
    text = stream.getvalue()
    assert KEY_READ not in text and KEY_ADMIN not in text and "123456.789" not in text
    health = [entry for entry in lines if entry.get("route") == "/healthz"]
    assert health and health[0]["request_id"] == generated


def wait_ready_with_key(client: TestClient) -> None:
    client.headers["Authorization"] = f"Bearer {KEY_READ}"
    wait_ready(client)
    del client.headers["Authorization"]
