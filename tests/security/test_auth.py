"""API keys: roles per endpoint, 401/403 problems, keys files, bad key config, no key in logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import make_settings, wait_ready

from .conftest import ADMIN_KEY, KEYS, READ_KEY, ServerFactory, copy_models

PROBLEM_JSON = "application/problem+json"
AIRLINE_SPEC = (Path(__file__).resolve().parents[2] / "models" / "airline" / "model.yaml").read_text()
CSV = b"t,y\n1,1.0\n2,2.0\n3,3.5\n4,4.0\n5,4.5\n6,5.0\n"
MORE_CSV = b"t,y\n7,5.5\n"
MISSING_JOB = "0" * 32


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(client: TestClient, request: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    spec = dict(request)
    extra = spec.pop("headers", {})
    return client.request(spec.pop("method"), spec.pop("url"), headers={**extra, **(headers or {})}, **spec)


# Every write endpoint, as an admin would call it; ``ok`` are the statuses the admin may get
WRITES: dict[str, dict[str, Any]] = {
    "put spec": {
        "method": "PUT",
        "url": "/v1/models/airline-copy",
        "content": AIRLINE_SPEC,
        "headers": {"Content-Type": "application/yaml"},
        "ok": {201},
    },
    "put alias": {"method": "PUT", "url": "/v1/models/airline/aliases/candidate", "json": {"version": 1}, "ok": {200}},
    "retrain": {"method": "POST", "url": "/v1/models/airline/retrain", "json": {"promote": "never"}, "ok": {202}},
    "cancel job": {"method": "POST", "url": f"/v1/jobs/{MISSING_JOB}/cancel", "ok": {404}},
    "put dataset": {
        "method": "PUT",
        "url": "/v1/datasets/keyed?time=t&targets=y",
        "content": CSV,
        "headers": {"Content-Type": "text/csv"},
        "ok": {200},
    },
    "append observations": {
        "method": "POST",
        "url": "/v1/datasets/keyed/observations",
        "content": MORE_CSV,
        "headers": {"Content-Type": "text/csv"},
        "ok": {200},
    },
}

READS: dict[str, dict[str, Any]] = {
    "list models": {"method": "GET", "url": "/v1/models", "ok": {200}},
    "model detail": {"method": "GET", "url": "/v1/models/airline", "ok": {200}},
    "predict": {"method": "POST", "url": "/v1/models/airline/predict", "json": {"horizon": 3}, "ok": {200}},
    "backtest": {
        "method": "POST",
        "url": "/v1/models/airline/backtests",
        "json": {"splitter": {"type": "folds", "folds": 1, "horizon": 3}},
        "ok": {202},
    },
    "list jobs": {"method": "GET", "url": "/v1/jobs", "ok": {200}},
    "list datasets": {"method": "GET", "url": "/v1/datasets", "ok": {200}},
}


def request_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "ok"}


@pytest.fixture
def keyed(registry_path: Path) -> Iterator[TestClient]:
    """The app with a read and an admin key (on loopback)."""
    with TestClient(create_app(make_settings(registry_path, api_keys=KEYS, scheduler=False))) as client:
        wait_ready(client)  # /readyz needs no key
        yield client


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    return body


def assert_unauthorized(response: httpx.Response) -> None:
    assert_problem(response, 401)
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer"), response.headers


def state_of(client: TestClient) -> tuple[Any, ...]:
    """What a refused write must not change (read with the admin key)."""
    admin = bearer(ADMIN_KEY)
    airline = client.get("/v1/models/airline", headers=admin).json()
    return (
        client.get("/v1/models/airline-copy", headers=admin).status_code,
        airline["aliases"],
        [v["version"] for v in airline["versions"]],
        client.get("/v1/datasets", headers=admin).json(),
        [(j["kind"], j["model"], j["status"]) for j in client.get("/v1/jobs", headers=admin).json()["jobs"]],
    )


# --------------------------------------------------------------------------- roles per endpoint
def test_every_write_needs_an_admin_key(keyed: TestClient) -> None:
    before = state_of(keyed)
    for label, spec in WRITES.items():
        request = request_of(spec)
        assert_unauthorized(call(keyed, request))
        assert_unauthorized(call(keyed, request, {"Authorization": "Bearer not-a-valid-key-at-all-1234"}))
        assert_unauthorized(call(keyed, request, {"Authorization": f"Basic {ADMIN_KEY}"}))
        assert_unauthorized(call(keyed, request, {"Authorization": ADMIN_KEY}))
        body = assert_problem(call(keyed, request, bearer(READ_KEY)), 403)
        assert "admin" in body["detail"], (label, body)
    assert state_of(keyed) == before, "a refused write changed stored state"

    for label, spec in WRITES.items():
        response = call(keyed, request_of(spec), bearer(ADMIN_KEY))
        assert response.status_code in spec["ok"], (label, response.status_code, response.text)
        if label == "retrain":  # the job exists now: admin may cancel it (so it costs no CPU)
            job_id = response.json()["id"]
            cancelled = keyed.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(ADMIN_KEY))
            assert cancelled.status_code == 200, cancelled.text
    assert keyed.get("/v1/models/airline-copy", headers=bearer(READ_KEY)).status_code == 200
    assert keyed.get("/v1/datasets/keyed", headers=bearer(READ_KEY)).json()["versions"][-1]["rows"] == 7


def test_reads_need_a_read_or_admin_key(keyed: TestClient) -> None:
    for label, spec in READS.items():
        request = request_of(spec)
        assert_unauthorized(call(keyed, request))
        assert_unauthorized(call(keyed, request, {"Authorization": "Bearer wrong-key-wrong-key-wrong"}))
        for key in (READ_KEY, ADMIN_KEY):
            response = call(keyed, request, bearer(key))
            assert response.status_code in spec["ok"], (label, response.status_code, response.text)
    # the scheme name is case-insensitive
    assert keyed.get("/v1/models", headers={"Authorization": f"bearer {READ_KEY}"}).status_code == 200


def test_health_probes_stay_open(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200


def test_cached_predict_answers_are_not_served_without_a_key(keyed: TestClient) -> None:
    """The fast lane answers repeated bodies before FastAPI: it must check the key too."""
    body = {"horizon": 4, "coverage": [0.8]}
    first = keyed.post("/v1/models/airline/predict", json=body, headers=bearer(READ_KEY))
    again = keyed.post("/v1/models/airline/predict", json=body, headers=bearer(READ_KEY))
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert_unauthorized(keyed.post("/v1/models/airline/predict", json=body))
    assert_unauthorized(keyed.post("/v1/models/airline/predict", json=body, headers={"Authorization": "Bearer x" * 3}))


# --------------------------------------------------------------------------- keys file
def test_keys_file_works_like_the_setting(registry_path: Path, tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"# forecast-service keys\nread:{READ_KEY}\n\nadmin:{ADMIN_KEY}  # ops team\n")
    settings = make_settings(registry_path, api_keys_file=keys_file, scheduler=False)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert_unauthorized(client.get("/v1/models"))
        assert client.get("/v1/models", headers=bearer(READ_KEY)).status_code == 200
        spec = request_of(WRITES["put alias"])
        assert_problem(call(client, spec, bearer(READ_KEY)), 403)
        assert call(client, spec, bearer(ADMIN_KEY)).status_code == 200


def test_keys_file_binds_off_loopback(tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"admin:{ADMIN_KEY}\n")
    assert Settings(host="0.0.0.0", api_keys_file=keys_file).host == "0.0.0.0"


# --------------------------------------------------------------------------- malformed key config
@pytest.mark.parametrize(
    "keys",
    [
        "read:short",  # under 16 characters
        f"read:{READ_KEY},admin:tooshort",
        f"reader:{READ_KEY}",  # unknown role
        f"superuser:{ADMIN_KEY}",
        READ_KEY,  # no role at all
        f"read:{READ_KEY},:{ADMIN_KEY}",
    ],
)
def test_malformed_keys_are_refused_before_serving(tmp_path: Path, keys: str) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    with pytest.raises(ValueError) as refused:
        create_app(make_settings(registry, api_keys=keys))
    message = str(refused.value)
    assert "read:KEY" in message or "FORECAST_API_KEYS" in message, message
    assert READ_KEY not in message and ADMIN_KEY not in message, "the error message repeats a key"


def test_malformed_keys_file_is_refused(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"admin:{ADMIN_KEY}\nwriter:{READ_KEY}\n")
    with pytest.raises(ValueError) as refused:
        create_app(make_settings(registry, api_keys_file=keys_file))
    assert str(keys_file) in str(refused.value)
    assert ADMIN_KEY not in str(refused.value) and READ_KEY not in str(refused.value)


def test_settings_keep_keys_secret() -> None:
    settings = Settings(api_keys=KEYS, signing_key="s" * 32)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert READ_KEY not in text and ADMIN_KEY not in text and "s" * 32 not in text


# --------------------------------------------------------------------------- never in logs
def exercise(client: TestClient) -> None:
    """Requests that could log a key: valid, invalid, malformed headers, refused roles, errors."""
    for key in (READ_KEY, ADMIN_KEY):
        client.get("/v1/models", headers=bearer(key))
        client.post("/v1/models/airline/predict", json={"horizon": 2}, headers=bearer(key))
        client.post("/v1/models/airline/predict", json={"horizon": 2}, headers=bearer(key))  # cached
        client.post("/v1/models/nope/predict", json={"horizon": 2}, headers=bearer(key))  # 404
        client.post("/v1/models/airline/predict", json={"horizon": -2}, headers=bearer(key))  # 422
        client.get("/v1/models", headers={"Authorization": key})
        client.get("/v1/models", headers={"Authorization": f"Basic {key}"})
        client.get("/v1/models", headers={"Authorization": f"Bearer {key}x"})
    client.put("/v1/models/airline/aliases/candidate", json={"version": 1}, headers=bearer(READ_KEY))  # 403
    client.put("/v1/models/airline/aliases/candidate", json={"version": 1}, headers=bearer(ADMIN_KEY))
    client.put("/v1/models/airline/aliases/candidate", json={"version": 99}, headers=bearer(ADMIN_KEY))  # 404


def test_keys_never_appear_in_in_process_logs(registry_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    levels = [(lg, lg.level) for lg in loggers if isinstance(lg, logging.Logger)]
    for lg, _ in levels:
        lg.setLevel(logging.DEBUG)
    try:
        with TestClient(create_app(make_settings(registry_path, api_keys=KEYS, scheduler=False))) as client:
            wait_ready(client)
            exercise(client)
    finally:
        for lg, level in levels:
            lg.setLevel(level)
    names = {r.name for r in caplog.records}
    assert "service.access" in names, f"no access lines captured ({sorted(names)}): the check proves nothing"
    text = caplog.text + "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)
    assert READ_KEY not in text
    assert ADMIN_KEY not in text


@pytest.mark.slow
def test_keys_never_appear_in_the_server_output(
    trained_registry_path: Path, tmp_path: Path, start_server: ServerFactory
) -> None:
    registry = copy_models(trained_registry_path, tmp_path / "models", ["airline"])
    server = start_server(registry, FORECAST_API_KEYS=KEYS, FORECAST_LOG_LEVEL="debug")
    server.wait_ready()
    with httpx.Client(base_url=server.base_url, timeout=30.0) as http:
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers=bearer(READ_KEY)).status_code == 200
        exercise(http)  # type: ignore[arg-type]
    assert server.stop() == 0
    output = server.log_path.read_text(errors="replace")
    assert "/v1/models" in output or "airline" in output, "the server logged nothing: the check proves nothing"
    assert READ_KEY not in output
    assert ADMIN_KEY not in output
