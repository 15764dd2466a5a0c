"""Two real server processes on one registry, data folder and job store: actuals sent to
both at once breach the drift policy once, and trigger exactly one retrain."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.jobs.store import JobStore
from service.registry.store import Registry
from tests.monitoring.conftest import actuals_after, wire
from tests.servers import DataServerFactory


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[DataServerFactory]:
    with DataServerFactory(
        tmp_path, clean_env=True, new_session=True, ready_timeout=90.0, client_timeout=60.0, stop_timeout=15.0
    ) as factory:
        yield factory


def test_two_replicas_trigger_one_retrain_per_breach(
    trained_shift: Path, tmp_path: Path, start_server: DataServerFactory
) -> None:
    registry = tmp_path / "models"
    shutil.copytree(trained_shift, registry, ignore=shutil.ignore_patterns("*.lock"))
    data = tmp_path / "data"
    actuals = wire(actuals_after(Registry(registry), "shift"))
    replicas = [start_server(registry, data), start_server(registry, data)]
    for replica in replicas:
        replica.wait_ready()
    with replicas[0].client() as one, replicas[1].client() as two:
        with ThreadPoolExecutor(4) as pool:
            sent = list(
                pool.map(lambda http: http.post("/v1/models/shift/actuals", json=actuals), [one, two, one, two])
            )
        assert all(r.status_code == 200 for r in sent), [r.text for r in sent]
        reports = [r.json()["drift"] for r in sent]
        assert all(r["state"] == "breach" for r in reports)
        assert len({r["job"] for r in reports}) == 1, reports
        assert sum(r["triggered"] for r in reports) == 1, reports
        deadline = time.monotonic() + 120
        job = one.get(f"/v1/jobs/{reports[0]['job']}").json()
        while job["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.3)
            job = one.get(f"/v1/jobs/{reports[0]['job']}").json()
        assert job["status"] == "succeeded", job
    for replica in replicas:
        replica.stop()
    store = JobStore(f"sqlite:///{data / 'jobs.sqlite'}")
    try:
        jobs = [j.public() for j in store.list(model="shift", kind="retrain", limit=100)]
    finally:
        store.dispose()
    assert len(jobs) == 1 and jobs[0]["params"]["trigger"] == "drift", jobs
    assert jobs[0]["params"]["breach"]["version"] == 1
