"""The HTTP contract around the routes: problems in OpenAPI, operation ids, 405 + Allow,
400 for bodies that are not JSON, offline /docs, gzip (also for fast-lane answers)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import make_settings

# every operation's id; a client generator names its methods after them: change on purpose only
OPERATION_IDS = {
    ("GET", "/healthz"): "healthz",
    ("GET", "/readyz"): "readyz",
    ("GET", "/metrics"): "metrics",
    ("GET", "/v1/models"): "listModels",
    ("GET", "/v1/models/{name}"): "getModel",
    ("PUT", "/v1/models/{name}"): "putModel",
    ("GET", "/v1/models/{name}/versions/{version}"): "getVersion",
    ("DELETE", "/v1/models/{name}/versions/{version}"): "deleteVersion",
    ("PUT", "/v1/models/{name}/aliases/{alias}"): "putAlias",
    ("POST", "/v1/models/{name}/predict"): "predict",
    ("GET", "/v1/models/{name}/forecast.png"): "forecastPlot",
    ("POST", "/v1/models/{name}/retrain"): "retrain",
    ("POST", "/v1/models/{name}/backtests"): "startBacktest",
    ("POST", "/v1/models/{name}/leaderboard"): "startLeaderboard",
    ("POST", "/v1/models/{name}/actuals"): "sendActuals",
    ("GET", "/v1/models/{name}/monitoring"): "getMonitoring",
    ("GET", "/v1/models/{name}/monitoring.png"): "monitoringPlot",
    ("GET", "/v1/models/{name}/anomalies"): "getAnomalies",
    ("GET", "/v1/jobs"): "listJobs",
    ("GET", "/v1/jobs/{job_id}"): "getJob",
    ("DELETE", "/v1/jobs/{job_id}"): "deleteJob",
    ("POST", "/v1/jobs/{job_id}/cancel"): "cancelJob",
    ("GET", "/v1/jobs/{job_id}/plot.png"): "backtestPlot",
    ("GET", "/v1/datasets"): "listDatasets",
    ("GET", "/v1/datasets/{name}"): "getDataset",
    ("PUT", "/v1/datasets/{name}"): "putDataset",
    ("DELETE", "/v1/datasets/{name}"): "deleteDataset",
    ("POST", "/v1/datasets/{name}/observations"): "appendObservations",
    ("GET", "/v1/forecasters"): "listForecasters",
    ("GET", "/v1/forecasters/{name}"): "getForecaster",
    ("POST", "/v1/models/{name}/exports"): "startExport",
    ("GET", "/v1/models/{name}/exports/{job_id}"): "downloadExport",
    ("POST", "/v1/timeseries/forecast"): "kserveForecast",
    ("GET", "/v1/timeseries/models"): "kserveModels",
    ("POST", "/mlflow/{name}/invocations"): "mlflowInvocations",
    ("GET", "/mlflow/{name}/ping"): "mlflowPing",
    ("GET", "/mlflow/{name}/version"): "mlflowVersion",
}
PROTOCOL_ERRORS = {
    "/v1/timeseries/": {"$ref": "#/components/schemas/ErrorResponse"},
    "/mlflow/": {"$ref": "#/components/schemas/ScoringError"},
}
"""Paths of a protocol adapter, whose errors answer in that protocol's form."""
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, ops in spec["paths"].items() for method, op in ops.items()}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The document of an app that was never started (nothing it says depends on the registry)."""
    root = tmp_path_factory.mktemp("openapi")
    return create_app(make_settings(root / "models")).openapi()


# --------------------------------------------------------------------------- OpenAPI
def test_every_problem_answer_is_documented_as_problem_json_with_the_shared_schema(spec: dict[str, Any]) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's 422 body is not ours
    for (method, path), op in operations(spec).items():
        where = f"{method} {path}"
        errors = {int(code): r for code, r in op["responses"].items() if int(code) >= 400}
        assert 500 in errors, where
        for code, response in errors.items():
            if (method, path, code) == ("GET", "/readyz", 503):
                assert "application/json" in response["content"]  # a readiness report, not a problem
                continue
            protocol = next((ref for prefix, ref in PROTOCOL_ERRORS.items() if path.startswith(prefix)), None)
            form = (
                {"application/json": {"schema": protocol}}
                if protocol
                else {"application/problem+json": {"schema": PROBLEM_REF}}
            )
            assert response["content"] == form, (where, code)
            assert response["description"], (where, code)
        secured = bool(op.get("security"))
        assert (401 in errors) == (secured or path == "/metrics"), where
        if "(admin)" in op.get("summary", ""):
            assert 403 in errors, where
        if method == "GET":
            assert 403 not in errors, where  # a read key may read
        assert (400 in errors) == (413 in errors) == ("requestBody" in op), where
        if "requestBody" in op or any(p["in"] in ("path", "query") for p in op.get("parameters", ())):
            assert 422 in errors, where
        if any(p["in"] == "path" for p in op.get("parameters", ())):
            assert 404 in errors, where
        assert (429 in errors) == ("202" in op["responses"]), where  # only operations that start jobs


def test_operation_ids_are_explicit_unique_and_the_same_in_every_build(spec: dict[str, Any], tmp_path: Path) -> None:
    ids = {key: op["operationId"] for key, op in operations(spec).items()}
    assert len(set(ids.values())) == len(ids), sorted(ids.values())
    assert all(re.fullmatch(r"[a-z][a-zA-Z0-9]*", i) for i in ids.values()), ids
    again = {key: op["operationId"] for key, op in operations(create_app(make_settings(tmp_path)).openapi()).items()}
    assert again == ids
    assert ids == OPERATION_IDS


# --------------------------------------------------------------------------- methods and bodies
@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The app on an empty registry (answers that need no model)."""
    root = tmp_path_factory.mktemp("bare")
    with TestClient(create_app(make_settings(root / "models", scheduler=False))) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/v1/models", "GET"),
        ("GET", "/v1/models/airline/predict", "POST"),
        ("DELETE", "/v1/models/airline/aliases/production", "PUT"),
        ("POST", "/v1/models/airline", "GET, PUT"),
        ("PUT", "/v1/jobs/0123", "DELETE, GET"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_a_wrong_method_is_a_405_problem_with_every_allowed_method(
    bare: TestClient, method: str, path: str, allow: str
) -> None:
    response = bare.request(method, path)
    assert response.status_code == 405, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["allow"] == allow
    body = response.json()
    assert body["status"] == 405 and body["allowed"] == allow.split(", ")
    assert method in body["detail"] and allow.split(", ")[0] in body["detail"]


@pytest.mark.parametrize(
    ("path", "content", "content_type", "title", "mentions", "invalid_json"),
    [
        (
            "/v1/models/a/predict",
            b'{"horizon": 3',
            "application/json",
            "Malformed JSON",
            "not valid JSON",
            {"horizon": "x"},
        ),
        ("/v1/models/a/predict", b'{"horizon": "\xc3\x28"}', "application/json", "Malformed JSON", "UTF-8", {"fh": 3}),
        ("/v1/models/a/predict", b"horizon=3", "application/x-www-form-urlencoded", "Unsupported body", "json", []),
        ("/v1/models/a/predict", b'{"horizon": 3}', "text/plain", "Unsupported body", "text/plain", None),
        (
            "/v1/models/a/backtests",
            b"{'folds': 2}",
            "application/json",
            "Malformed JSON",
            "not valid JSON",
            {"splitter": 1},
        ),
        (
            "/v1/models/a/retrain",
            b"promote: auto",
            "application/yaml",
            "Unsupported body",
            "Content-Type",
            {"promote": 1},
        ),
    ],
)
def test_a_body_that_is_not_json_is_a_400_that_says_what_to_send_and_invalid_json_a_422(
    bare: TestClient, path: str, content: bytes, content_type: str, title: str, mentions: str, invalid_json: Any
) -> None:
    response = bare.post(path, content=content, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["title"] == title and body["status"] == 400
    assert mentions in body["detail"]
    if invalid_json is not None:  # JSON, but not what the operation takes: a 422 naming the field
        invalid = bare.post(path, json=invalid_json)
        assert invalid.status_code == 422, invalid.text
        assert invalid.json()["title"] == "Invalid request" and invalid.json()["errors"]


# --------------------------------------------------------------------------- docs
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_are_served_by_the_app_itself_with_no_cdn(bare: TestClient, page: str) -> None:
    response = bare.get(page)
    assert response.status_code == 200
    html = response.text
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""", html)
    assert urls and not re.search(r"https?://|//[a-z]", html), urls  # every URL of the page is same-origin
    assets = [u for u in urls if u.endswith((".js", ".css", ".png"))]
    assert any(u.endswith(".js") for u in assets), urls
    for url in [*assets, "/openapi.json"]:
        asset = bare.get(url)
        assert asset.status_code == 200 and asset.content, url


# --------------------------------------------------------------------------- gzip
def test_a_large_answer_is_gzipped_when_asked_and_decodes_to_the_same_json(client: TestClient) -> None:
    body: dict[str, Any] = {}  # 60 series, precomputed: the route answers, then the fast lane its cached bytes
    url = "/v1/models/tourism-monthly/predict"
    answers = []
    for attempt in ("route", "fast lane"):
        zipped = client.post(url, json=body, headers={"accept-encoding": "gzip"})
        assert zipped.status_code == 200, (attempt, zipped.text)
        assert zipped.headers["content-encoding"] == "gzip", attempt
        assert "accept-encoding" in zipped.headers["vary"].lower()
        answers.append(zipped)
    metrics = client.get("/metrics").text
    assert re.search(r'forecast_fast_path_total\{model="tourism-monthly",path="cache"\} [1-9]', metrics), (
        "no fast-lane hit"
    )
    plain = client.post(url, json=body, headers={"accept-encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert len(plain.content) > 1024
    for zipped in answers:
        assert int(zipped.headers["content-length"]) < 0.5 * len(plain.content)
        assert zipped.json() == plain.json()  # httpx decodes the gzip body
    for accept in ("text/csv", "application/vnd.apache.arrow.stream"):
        headers = {"accept": accept}
        packed = client.post(url, json=body, headers={**headers, "accept-encoding": "gzip"})
        raw = client.post(url, json=body, headers={**headers, "accept-encoding": "identity"})
        assert packed.headers["content-encoding"] == "gzip" and packed.content == raw.content, accept
    small = client.get("/healthz", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers  # under 1 KB: sent as it is
    png = client.get("/v1/models/airline/forecast.png", headers={"accept-encoding": "gzip"})
    assert png.status_code == 200 and "content-encoding" not in png.headers  # PNG is compressed already
