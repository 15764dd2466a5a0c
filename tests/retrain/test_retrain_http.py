"""Retraining through HTTP with the real job runner (one worker process per job), real
sktime fits and the promotion gate: upload data, declare a spec, retrain, serve."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sktime.datasets import load_airline

from service.app import create_app
from service.jobs.retrain import decide
from tests.conftest import make_settings, wait_ready

CSV = {"content-type": "text/csv"}
THETA = {"class": "ThetaForecaster", "params": {"sp": 12, "deseasonalize": True}}
MEAN = {"class": "NaiveForecaster", "params": {"strategy": "mean"}}
JOB_TIMEOUT = 120.0


def airline_csv(rows: slice) -> bytes:
    y = load_airline().iloc[rows]
    frame = pd.DataFrame({"month": [p.start_time.strftime("%Y-%m-%d") for p in y.index], "passengers": y.to_numpy()})
    return frame.to_csv(index=False).encode()


def air_spec(forecaster: dict[str, Any] = THETA, **extra: Any) -> dict[str, Any]:
    return {
        "description": "airline from the uploaded dataset 'air'",
        "data": {"source": {"dataset": "air"}, "time": "month", "targets": ["passengers"]},
        "freq": "M",
        "horizon": 12,
        "forecaster": forecaster,
        **extra,
    }


def upload_air(client: TestClient) -> str:
    """Dataset 'air': the airline data without its last 12 months; returns its version."""
    response = client.put(
        "/v1/datasets/air?time=month&targets=passengers&freq=M", content=airline_csv(slice(0, -12)), headers=CSV
    )
    assert response.status_code == 200, response.text
    return response.json()["latest"]


def put_spec(client: TestClient, spec: dict[str, Any]) -> None:
    response = client.put("/v1/models/air", json=spec)
    assert response.status_code in (200, 201), response.text


def wait_job(client: TestClient, job_id: str, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job = client.get(f"/v1/jobs/{job_id}").json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] not in ("queued", "running"), f"job still {job['status']} after {timeout}s: {job}"
    return job


def retrain(client: TestClient, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start a retrain (202 + Location) and wait for it to succeed."""
    response = client.post("/v1/models/air/retrain", json=body)
    assert response.status_code == 202, response.text
    started = response.json()
    assert response.headers["location"] == f"/v1/jobs/{started['id']}"
    assert started["kind"] == "retrain" and started["model"] == "air" and started["status"] in ("queued", "running")
    job = wait_job(client, started["id"])
    assert job["status"] == "succeeded", job
    return job


def predict(client: TestClient) -> dict[str, Any]:
    response = client.post("/v1/models/air/predict", json={"horizon": 12})
    assert response.status_code == 200, response.text
    return response.json()


def wait_serving(client: TestClient, version: int, timeout: float = 10.0) -> dict[str, Any]:
    """The runner refreshes the cache when it reaps a finished retrain (and the watcher
    polls the registry): the new production version is served moments after the job ends."""
    deadline = time.monotonic() + timeout
    response = client.post("/v1/models/air/predict", json={"horizon": 12})
    while (response.status_code != 200 or response.json()["version"] != version) and time.monotonic() < deadline:
        time.sleep(0.05)
        response = client.post("/v1/models/air/predict", json={"horizon": 12})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["version"] == version, answer
    return answer


def aliases(client: TestClient) -> dict[str, int]:
    return client.get("/v1/models/air").json()["aliases"]


def retrain_jobs(client: TestClient) -> list[dict[str, Any]]:
    return client.get("/v1/jobs", params={"model": "air", "kind": "retrain"}).json()["jobs"]


@pytest.fixture
def client(registry_path: Path) -> Iterator[TestClient]:
    """The app on a private copy of the trained demo registry, with the real job runner."""
    with TestClient(create_app(make_settings(registry_path))) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture
def air_v1(client: TestClient) -> dict[str, Any]:
    """'air' uploaded, a Theta spec, retrained once: v1 in production. Returns the job."""
    upload_air(client)
    put_spec(client, air_spec())
    return retrain(client)


# ------------------------------------------------------------------ the happy path


def test_upload_retrain_append_retrain(client: TestClient) -> None:
    data_v1 = upload_air(client)
    put_spec(client, air_spec())
    problem = client.post("/v1/models/air/predict", json={})
    assert problem.status_code == 404  # a spec but no version yet

    first = retrain(client)
    result = first["result"]
    assert result["version"] == 1
    assert result["promoted"] is True and result["decision"] == "promoted"
    assert result["production_version_before"] is None
    assert "no production" in result["reason"]
    assert result["data"] == {"dataset": "air", "version": data_v1}
    assert result["gate"] == {
        "policy": "auto",
        "metric": "MASE",
        "tolerance": 0.0,
        "window_folds": 1,
        "series": 1,
        "sampled": False,
    }
    assert result["metrics"]["candidate"] > 0 and result["metrics"]["production"] is None
    assert first["progress"]["stage"] == "succeeded" and first["finished_at"] >= first["started_at"]
    served = wait_serving(client, 1)
    assert served["cutoff"] == "1959-12-01"
    assert served["forecast"]["month"][0] == "1960-01-01" and len(served["forecast"]["passengers"]) == 12

    manifest = client.get("/v1/models/air/versions/1").json()
    assert manifest["job_id"] == first["id"]
    assert manifest["training"]["dataset_version"] == f"air@{data_v1}"
    assert manifest["training"]["source"] == {"dataset": "air"}
    assert manifest["metrics"]["gate"]["candidate"] == result["metrics"]["candidate"]
    assert manifest["spec"]["forecaster"] == THETA

    # the last 12 months arrive: a new dataset version, and a retrain on it
    appended = client.post("/v1/datasets/air/observations", content=airline_csv(slice(-12, None)), headers=CSV)
    assert appended.status_code == 200, appended.text
    data_v2 = appended.json()["latest"]
    assert data_v2 != data_v1

    second = retrain(client)
    result = second["result"]
    assert result["version"] == 2 and result["production_version_before"] == 1
    assert result["data"] == {"dataset": "air", "version": data_v2}
    candidate, production = result["metrics"]["candidate"], result["metrics"]["production"]
    assert candidate is not None and production is not None
    # the same spec refitted on the same window: candidate and production score the same
    assert candidate == pytest.approx(production, rel=1e-9)
    assert decide("auto", candidate, production, 0.0)[0] is True
    assert result["promoted"] is True
    assert result["decision"] == "promoted"
    served = wait_serving(client, 2)
    assert served["cutoff"] == "1960-12-01"
    assert served["forecast"]["month"][0] == "1961-01-01"
    assert aliases(client) == {"production": 2}
    manifest = client.get("/v1/models/air/versions/2").json()
    assert manifest["job_id"] == second["id"]
    assert manifest["training"]["dataset_version"] == f"air@{data_v2}"
    assert manifest["cutoff"] == "1960-12-01"
    detail = client.get("/v1/models/air").json()
    assert [(v["version"], v["job_id"]) for v in detail["versions"]] == [(1, first["id"]), (2, second["id"])]

    # an explicit, older dataset version; promote=never and a gate in the body
    third = retrain(
        client, {"dataset_version": data_v1, "promote": "never", "gate": {"metric": "RMSE", "tolerance": 0.5}}
    )
    result = third["result"]
    assert result["data"]["version"] == data_v1
    assert result["gate"] == {
        "policy": "never",
        "metric": "RMSE",
        "tolerance": 0.5,
        "window_folds": 1,
        "series": 1,
        "sampled": False,
    }
    assert result["promoted"] is False and "promote=never" in result["reason"]
    assert result["metrics"]["candidate"] is not None and result["metrics"]["production"] is not None
    assert client.get("/v1/models/air/versions/3").json()["cutoff"] == "1959-12-01"
    time.sleep(0.5)
    assert aliases(client) == {"production": 2}
    assert predict(client)["version"] == 2


def test_gate_decisions(client: TestClient, air_v1: dict[str, Any]) -> None:
    """v1 Theta in production: a worse candidate is published but not promoted, unless
    the policy (here the spec's) is 'always'."""
    wait_serving(client, 1)
    put_spec(client, air_spec(MEAN))
    worse = retrain(client)["result"]
    assert worse["version"] == 2 and worse["production_version_before"] == 1
    assert worse["promoted"] is False and worse["decision"] == "not promoted"
    assert worse["metrics"]["candidate"] > worse["metrics"]["production"]
    assert "worse than production" in worse["reason"]
    assert [v["version"] for v in client.get("/v1/models/air").json()["versions"]] == [1, 2]
    assert aliases(client) == {"production": 1}
    manifest = client.get("/v1/models/air/versions/2").json()
    assert manifest["metrics"]["gate"]["candidate"] == worse["metrics"]["candidate"]
    # give the runner's refresh and the registry watcher time to act: production still serves v1
    time.sleep(1.0)
    assert predict(client)["version"] == 1
    assert client.post("/v1/models/air/predict", json={"version": 2}).json()["version"] == 2

    put_spec(client, air_spec(MEAN, promotion={"policy": "always", "metric": "MAE", "tolerance": 0.0}))
    forced = retrain(client)["result"]
    assert forced["version"] == 3 and forced["promoted"] is True and forced["reason"] == "promote=always"
    assert forced["gate"] == {
        "policy": "always",
        "metric": "MAE",
        "tolerance": 0.0,
        "window_folds": 1,
        "series": 1,
        "sampled": False,
    }
    assert forced["metrics"]["candidate"] > forced["metrics"]["production"]
    wait_serving(client, 3)
    assert aliases(client) == {"production": 3}


# ------------------------------------------------------------------ one job per trigger


def test_concurrent_triggers_make_one_job(client: TestClient) -> None:
    upload_air(client)
    put_spec(client, air_spec())
    barrier = threading.Barrier(20)

    def trigger(headers: dict[str, str]) -> tuple[int, str, str]:
        barrier.wait(timeout=30)
        response = client.post("/v1/models/air/retrain", headers=headers)
        return response.status_code, response.json()["id"], response.headers["location"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(trigger, [{}] * 20))
    ids = {job_id for _, job_id, _ in answers}
    assert len(ids) == 1, answers
    (job_id,) = ids
    assert sorted(status for status, _, _ in answers) == [200] * 19 + [202]
    assert {location for _, _, location in answers} == {f"/v1/jobs/{job_id}"}
    assert [j["id"] for j in retrain_jobs(client)] == [job_id]
    assert wait_job(client, job_id)["status"] == "succeeded"

    # the same burst with one Idempotency-Key once that job is over: one new job
    barrier.reset()
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(trigger, [{"Idempotency-Key": "nightly-2024-01-01"}] * 20))
    ids = {job_id for _, job_id, _ in answers}
    assert len(ids) == 1 and job_id not in ids, answers
    assert sorted(status for status, _, _ in answers) == [200] * 19 + [202]
    assert len(retrain_jobs(client)) == 2


def test_idempotency_key(client: TestClient) -> None:
    upload_air(client)
    put_spec(client, air_spec())
    key = {"Idempotency-Key": "deploy-42"}
    first = client.post("/v1/models/air/retrain", json={"promote": "auto"}, headers=key)
    assert first.status_code == 202
    job_id = first.json()["id"]
    # while it runs, and after it finished: the same key and body return the same job
    again = client.post("/v1/models/air/retrain", json={"promote": "auto"}, headers=key)
    assert again.status_code == 200 and again.json()["id"] == job_id
    assert again.headers["location"] == f"/v1/jobs/{job_id}"
    wait_job(client, job_id)
    after = client.post("/v1/models/air/retrain", json={"promote": "auto"}, headers=key)
    assert after.status_code == 200 and after.json()["id"] == job_id
    assert after.json()["status"] == "succeeded"
    # the same key with another body: 422, and no job
    other = client.post("/v1/models/air/retrain", json={"promote": "never"}, headers=key)
    assert other.status_code == 422, other.text
    assert other.headers["content-type"].startswith("application/problem+json")
    assert "Idempotency-Key" in other.json()["detail"]
    assert [j["id"] for j in retrain_jobs(client)] == [job_id]
    # a new key: a new job
    fresh = client.post("/v1/models/air/retrain", json={"promote": "auto"}, headers={"Idempotency-Key": "deploy-43"})
    assert fresh.status_code == 202 and fresh.json()["id"] != job_id


def test_a_key_answered_with_the_running_job_keeps_returning_that_job(client: TestClient) -> None:
    """'The same key returns the same job, never a second one': a key first answered with
    the retrain already running must not start another retrain when it is sent again later."""
    upload_air(client)
    put_spec(client, air_spec())
    running = client.post("/v1/models/air/retrain", headers={"Idempotency-Key": "cron-a"})
    assert running.status_code == 202
    job_id = running.json()["id"]
    joined = client.post("/v1/models/air/retrain", headers={"Idempotency-Key": "cron-b"})
    assert joined.status_code == 200 and joined.json()["id"] == job_id
    assert wait_job(client, job_id)["status"] == "succeeded"
    replay = client.post("/v1/models/air/retrain", headers={"Idempotency-Key": "cron-b"})
    assert replay.json()["id"] == job_id, "the same Idempotency-Key started a second retrain"
    assert replay.status_code == 200
    assert len(retrain_jobs(client)) == 1


# ------------------------------------------------------------------ refused before any job


def test_retrain_of_a_model_without_spec(client: TestClient, registry_path: Path) -> None:
    before = client.get("/v1/jobs").json()["jobs"]
    unknown = client.post("/v1/models/ghost/retrain")
    assert unknown.status_code == 404 and "ghost" in unknown.json()["detail"]
    # a model that has versions but no model.yaml (published from a notebook)
    (registry_path / "airline" / "model.yaml").unlink()
    no_spec = client.post("/v1/models/airline/retrain")
    assert no_spec.status_code == 422, no_spec.text
    assert "spec" in no_spec.json()["detail"]
    assert client.get("/v1/jobs").json()["jobs"] == before


@pytest.mark.parametrize(
    "body",
    [
        {"promote": "sometimes"},
        {"gate": {"metric": "FOO"}},
        {"gate": {"metric": "MASE", "tolerance": -0.1}},
        {"gate": {"tolerance": "a lot"}},
        {"gate": {"folds": 0}},
        {"dataset_version": 12},
        {"unexpected": True},
    ],
    ids=["promote", "metric", "negative-tolerance", "tolerance-type", "folds", "dataset-version-type", "extra"],
)
def test_invalid_body_is_422_and_creates_no_job(client: TestClient, body: dict[str, Any]) -> None:
    upload_air(client)
    put_spec(client, air_spec())
    response = client.post("/v1/models/air/retrain", json=body, headers={"Idempotency-Key": "bad-body"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_a_retrain_that_cannot_run_fails_with_the_reason(client: TestClient) -> None:
    upload_air(client)
    put_spec(client, air_spec())
    started = client.post("/v1/models/air/retrain", json={"dataset_version": "0000000000000000"})
    assert started.status_code == 202
    job = wait_job(client, started.json()["id"])
    assert job["status"] == "failed" and "0000000000000000" in job["error"], job
    assert job["result"] is None
    assert client.get("/v1/models/air").json()["versions"] == []
    assert aliases(client) == {}
    # the failed job does not block the next one
    after = client.post("/v1/models/air/retrain")
    assert after.status_code == 202 and after.json()["id"] != job["id"]
