"""Schemathesis against the app's own OpenAPI document (ASGI transport, no sockets).

Every operation, every built-in check (server errors, status codes, content types,
headers and bodies against the documented schemas, positive and negative data,
auth, methods), every phase (examples, coverage, fuzzing, stateful sequences inferred
from Location headers and parameter dependencies), seeded and bounded.

The app runs *with* API keys and schemathesis sends the admin key: an open app would
make the ``ignored_auth`` and ``missing_required_header`` checks meaningless (every
operation declares the bearer scheme), so rather than switching those checks off, the
server is configured the way they need.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.python import asgi

from service.app import create_app
from tests.conftest import make_settings, wait_ready

pytestmark = pytest.mark.slow

ADMIN_KEY = "fuzz-admin-key-0123456789"
READ_KEY = "fuzz-read-key-0123456789a"

# positive_data_acceptance expects schema-valid requests to succeed (or 401/403/404/409).
# These operations validate content the OpenAPI schema cannot express — a spec against
# the forecaster allow-list, an uploaded table's columns, a series or capability the
# chosen model lacks — and answer 422 for it, by design (SPEC §4). Everything else
# (path names and aliases with a documented pattern, query parameters, ...) stays strict.
DOMAIN_VALIDATED = [
    ("POST", "/v1/models/{name}/predict"),
    ("GET", "/v1/models/{name}/forecast.png"),
    ("POST", "/v1/models/{name}/backtests"),
    ("POST", "/v1/models/{name}/leaderboard"),
    ("POST", "/v1/models/{name}/retrain"),
    ("PUT", "/v1/models/{name}"),
    ("PUT", "/v1/datasets/{name}"),
    ("POST", "/v1/datasets/{name}/observations"),
    # the protocol adapters: a model, series or frame the version cannot take is a 4xx
    ("POST", "/v1/timeseries/forecast"),
    ("POST", "/mlflow/{name}/invocations"),
]
ACCEPTED = [200, 201, 202, 401, 403, 404, 409, 422]


def config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": 20240607,
            # 30 generated examples per operation (was 50); the examples and coverage phases
            # are not bounded by it and still run in full on every operation
            "generation": {"max-examples": 30, "deterministic": True, "database": "none"},
            "request-timeout": 120,
            "auth": {"openapi": {"apiKey": {"bearer": ADMIN_KEY}}},
            "operations": [
                {
                    "include-method": method,
                    "include-path": path,
                    "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
                }
                for method, path in DOMAIN_VALIDATED
            ],
        }
    )


@pytest.fixture(scope="module")
def api_schema(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("fuzz-api")
    registry = root / "models"
    shutil.copytree(trained_registry_path, registry, ignore=shutil.ignore_patterns(".lock"))
    settings = make_settings(
        registry,
        api_keys=f"admin:{ADMIN_KEY},read:{READ_KEY}",
        max_concurrent_jobs=1,
        max_active_jobs_per_key=10_000,  # fuzzing queues many backtests with one key: no 429 here
        max_wait_seconds=0.1,  # ?wait=true must not hold a fuzzing run for a job to finish (one 0.2 s poll)
        scheduler=False,
    )
    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config())  # starts the lifespan
    try:
        with asgi.get_client(app) as client:
            deadline = time.monotonic() + 120
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, client.get("/readyz").text
                time.sleep(0.1)
        yield schema
    finally:
        asgi.shutdown_lifespans()  # stops the job runner and its workers


def describe(recorder: Any, case_id: str, node: Any) -> str:
    failure = node.failure_info.failure
    interaction = recorder.interactions.get(case_id)
    response = interaction.response if interaction is not None else None
    answer = f"{response.status_code} {(response.content or b'')[:400]!r}" if response is not None else "no response"
    return (
        f"{recorder.label} | {node.name}: {failure.title}\n    {failure.message[:600]}\n"
        f"    {node.failure_info.code_sample[:1500]}\n    -> {answer}"
    )


def test_the_api_conforms_to_its_openapi_document(api_schema: Any) -> None:
    problems: list[str] = []
    tested: set[str] = set()
    finished = None
    for event in from_schema(api_schema).execute():
        if isinstance(event, events.ScenarioFinished):
            tested.add(event.recorder.label)
            for case_id, nodes in event.recorder.checks.items():
                for node in nodes:
                    if node.failure_info is not None:
                        problems.append(describe(event.recorder, case_id, node))
        elif isinstance(event, events.NonFatalError):
            # an exception escaped the app (a 500 whose traceback reached the test client)
            problems.append(f"{event.label} | exception in the app:\n{event.info.format()[:3000]}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            finished = event
    assert finished is not None
    unique = list(dict.fromkeys(problems))
    report = "\n\n".join(unique[:40])
    assert not unique, f"{len(unique)} problem(s) ({len(problems)} with repeats):\n\n{report}"
    operations = {f"{m.upper()} {p}" for p, ops in api_schema.raw_schema["paths"].items() for m in ops}
    assert operations <= tested, f"operations never tested: {sorted(operations - tested)}"


# --------------------------------------------------------------------------- the findings, pinned
@pytest.fixture
def app_and_client(registry_path: Path) -> Iterator[tuple[Any, TestClient]]:
    app = create_app(make_settings(registry_path, scheduler=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield app, client


def test_cancelling_a_finished_job_is_a_409_problem(registry_path: Path) -> None:
    app = create_app(make_settings(registry_path, scheduler=False))
    store = app.state.runtime.jobs
    job, _ = store.create("backtest", "airline", {})  # before the runner starts: nobody claims it
    assert store.finish(job.id, None, "cancelled", error="cancelled before it started")
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(f"/v1/jobs/{job.id}/cancel")
    assert response.status_code == 409, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 409  # RFC 9457: the HTTP status, not the job's
    assert "cancelled" in body["detail"]


def test_forecast_plot_of_a_series_of_a_single_series_model_is_422(
    app_and_client: tuple[Any, TestClient],
) -> None:
    _, client = app_and_client
    response = client.get("/v1/models/airline/forecast.png", params={"series": "AAA"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["field"] == "series"
