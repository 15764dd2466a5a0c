"""Helpers of the scale-out tests: an app on given settings, and bounded waits on jobs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.app import create_app
from service.jobs.runner import JobRunner
from service.jobs.store import Job, JobStore
from tests.conftest import make_settings, wait_ready

FINISHED = ("succeeded", "failed", "cancelled")
SMALL = {"splitter": {"type": "folds", "folds": 2, "horizon": 6}, "metrics": ["MAE", "RMSE"]}


@contextmanager
def app_client(registry_path: Path, **settings: Any) -> Iterator[TestClient]:
    """The app on a registry copy, its lifespan running (job runner included)."""
    with TestClient(create_app(make_settings(registry_path, **settings)), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def job_of(client: TestClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_job(
    client: TestClient,
    job_id: str,
    until: Callable[[dict[str, Any]], bool] | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Poll the job until ``until(job)`` (default: finished), at most ``timeout`` seconds."""
    until = until or (lambda j: j["status"] in FINISHED)
    deadline = time.monotonic() + timeout
    while True:
        job = job_of(client, job_id)
        if until(job):
            return job
        if job["status"] in FINISHED or time.monotonic() > deadline:
            raise AssertionError(f"job did not reach the wanted state in {timeout:.0f}s: {job}")
        time.sleep(0.05)


def start_backtest(client: TestClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/v1/models/{name}/backtests", json=body)
    assert response.status_code in (200, 202), response.text
    return response.json()


def drive(runner: JobRunner, store: JobStore, job_id: str, timeout: float = 120.0) -> Job:
    """Tick the runner until the job has finished and its handle was reaped."""
    deadline = time.monotonic() + timeout
    while True:
        runner.tick()
        job = store.get(job_id)
        if job.finished and job_id not in runner.handles:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job did not finish in {timeout:.0f}s: {job}")
        time.sleep(0.05)
