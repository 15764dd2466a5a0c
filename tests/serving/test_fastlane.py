"""The fast lane answers what the predict route cached, under the route's own rules:
the same name pattern, key check and body limit, counted under the route's template."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.registry.store import Registry
from service.serving.fastlane import PREDICT_PATH, PREDICT_ROUTE
from tests.conftest import make_settings, wait_ready
from tests.factories import publish_naive

READ_KEY = "fastlane-read-key-0123456789"


def request_count(metrics: str, route: str, status: str = "200") -> float:
    pattern = (
        r'forecast_http_request_duration_seconds_count\{method="POST",route="'
        + re.escape(route)
        + r'",status="'
        + status
        + r'"\} ([0-9.e+]+)'
    )
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


def fast_path_count(metrics: str, path: str) -> float:
    found = re.search(r'forecast_fast_path_total\{model="toy",path="' + path + r'"\} ([0-9.e+]+)', metrics)
    return float(found.group(1)) if found else 0.0


def test_cached_answers_are_counted_under_the_predict_route_with_the_routes_key_check(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    publish_naive(registry, "toy")
    registry.set_alias("toy", "production", 1)
    settings = make_settings(registry.root, api_keys=f"read:{READ_KEY}", scheduler=False)
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        first = client.post("/v1/models/toy/predict", json={"horizon": 2}, headers=headers)
        second = client.post("/v1/models/toy/predict", json={"horizon": 2}, headers=headers)
        assert first.status_code == second.status_code == 200
        assert first.content == second.content
        metrics = client.get("/metrics").text
        assert fast_path_count(metrics, "cache") == 1  # the second came from the lane
        assert request_count(metrics, PREDICT_ROUTE) == 2
        assert request_count(metrics, "unmatched") == 0
        # the lane checks the key as the route does: a cached body without a key is a 401
        refused = client.post("/v1/models/toy/predict", json={"horizon": 2})
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")


def test_the_lane_uses_the_registrys_name_rule() -> None:
    assert PREDICT_PATH.fullmatch("/v1/models/airline/predict")
    assert not PREDICT_PATH.fullmatch("/v1/models/Airline/predict")
    assert not PREDICT_PATH.fullmatch("/v1/models/" + "a" * 65 + "/predict")
    assert not PREDICT_PATH.fullmatch("/v1/models/airline\n/predict")
