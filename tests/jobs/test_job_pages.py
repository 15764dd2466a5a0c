"""`GET /v1/jobs` in pages, `DELETE /v1/jobs/{id}`, and the retention of finished jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import Conflict
from service.jobs.retention import job_dir, purge_expired
from service.jobs.store import Job, JobStore, jobs_table, now
from tests.conftest import make_settings

ADMIN = {"Authorization": "Bearer admin-key-for-pages-0123"}
READ = {"Authorization": "Bearer read-key-for-pages-01234"}
KEYS = "admin:admin-key-for-pages-0123,read:read-key-for-pages-01234"


def finished_job(store: JobStore, model: str = "ghost") -> Job:
    """A cancelled job (should the runner claim it first, it fails at once: no such model)."""
    job, _ = store.create("backtest", model, {"version": 1})
    store.finish(job.id, None, "cancelled", error="cancelled before it started")
    deadline = time.monotonic() + 30
    while not (job := store.get(job.id)).finished:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def running_elsewhere(store: JobStore) -> Job:
    """A job running in a process of another host (beating: nobody here fails it)."""
    job, _ = store.create("backtest", "ghost", {"version": 1})
    assert store.claim(job.id, "another-host:1:boot")
    return store.get(job.id)


def make_client(tmp_path: Path, **settings: Any) -> TestClient:
    return TestClient(create_app(make_settings(tmp_path / "models", scheduler=False, api_keys=KEYS, **settings)))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, JobStore]]:
    with make_client(tmp_path) as client:
        yield client, client.app.state.runtime.jobs  # type: ignore[attr-defined]


def test_pages_walk_every_job_once_while_new_jobs_arrive(api: tuple[TestClient, JobStore]) -> None:
    client, store = api
    first = [finished_job(store).id for _ in range(7)]
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **({"page_token": token} if token else {})}
        page = client.get("/v1/jobs", params=params, headers=READ)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [job["id"] for job in body["jobs"]]
        pages += 1
        token = body["next_page_token"]
        if token is None:
            break
        finished_job(store)  # created between two pages: newer than every page still to come
    assert pages == 3
    assert seen == first[::-1]  # newest first, each once, none missing
    newest = client.get("/v1/jobs", headers=READ).json()
    assert len(newest["jobs"]) == 9 and newest["next_page_token"] is None  # default limit 100
    assert [j["id"] for j in newest["jobs"]][2:] == seen


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"page_token": "%%%"}, "page_token")],
)
def test_a_bad_limit_or_token_is_a_422_naming_it(api: tuple[TestClient, JobStore], params: dict, field: str) -> None:
    client, _ = api
    response = client.get("/v1/jobs", params=params, headers=READ)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_deleting_a_job_removes_it_and_its_files_and_only_finished_ones(api: tuple[TestClient, JobStore]) -> None:
    client, store = api
    job = finished_job(store)
    folder = job_dir(client.app.state.runtime.settings.data_dir, job.id)  # type: ignore[attr-defined]
    folder.mkdir(parents=True)
    (folder / "predictions.parquet").write_bytes(b"x")
    assert client.delete(f"/v1/jobs/{job.id}", headers=READ).status_code == 403
    response = client.delete(f"/v1/jobs/{job.id}", headers=ADMIN)
    assert response.status_code == 204 and response.content == b""
    assert not folder.exists()
    assert client.get(f"/v1/jobs/{job.id}", headers=READ).status_code == 404
    again = client.delete(f"/v1/jobs/{job.id}", headers=ADMIN)
    assert again.status_code == 404 and again.headers["content-type"] == "application/problem+json"
    assert job.id not in [j["id"] for j in client.get("/v1/jobs", headers=READ).json()["jobs"]]

    active = running_elsewhere(store)
    refused = client.delete(f"/v1/jobs/{active.id}", headers=ADMIN)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "running" in refused.json()["detail"] and refused.json()["job_status"] == "running"
    assert client.get(f"/v1/jobs/{active.id}", headers=READ).json()["status"] == "running"


def test_the_store_refuses_to_delete_a_queued_job_and_forgets_the_keys_of_a_deleted_one(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    queued, _ = store.create("backtest", "m", {}, idempotency_key="k1")
    with pytest.raises(Conflict, match="queued"):
        store.delete(queued.id)
    assert store.finish(queued.id, None, "cancelled")
    store.delete(queued.id)
    again, created = store.create("backtest", "m", {}, idempotency_key="k1")
    assert created and again.id != queued.id  # the key named a job that is gone: a new one
    store.dispose()


def test_same_instant_jobs_page_by_id(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    ids = [store.create("backtest", "m", {})[0].id for _ in range(3)]
    instant = now()
    with store.engine.begin() as conn:
        conn.execute(jobs_table.update().values(created_at=instant))
    seen, cursor = [], None
    for _ in range(3):
        jobs, cursor = store.page(limit=1, after=cursor)
        seen += [j.id for j in jobs]
    assert seen == sorted(ids, reverse=True) and cursor is None
    store.dispose()


def test_finished_jobs_older_than_the_retention_are_deleted_with_their_files(tmp_path: Path) -> None:
    app_store = JobStore(make_settings(tmp_path / "models").resolved_jobs_url)
    old, recent = finished_job(app_store), finished_job(app_store)
    active = running_elsewhere(app_store)
    with app_store.engine.begin() as conn:  # finished (or, for the running one, created) 3 days ago
        stamp = now() - timedelta(days=3)
        conn.execute(jobs_table.update().where(jobs_table.c.id == old.id).values(finished_at=stamp))
        conn.execute(jobs_table.update().where(jobs_table.c.id == active.id).values(created_at=stamp))
    app_store.dispose()
    folder = job_dir(tmp_path / "data", old.id)
    folder.mkdir(parents=True)
    with make_client(tmp_path, job_retention_days=1) as client:
        deadline = time.monotonic() + 20
        while client.get(f"/v1/jobs/{old.id}", headers=READ).status_code != 404:
            assert time.monotonic() < deadline, "the old job was never purged"
            time.sleep(0.1)
        assert not folder.exists()
        assert client.get(f"/v1/jobs/{recent.id}", headers=READ).status_code == 200
        assert client.get(f"/v1/jobs/{active.id}", headers=READ).json()["status"] == "running"


def test_no_retention_keeps_every_job(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    job = finished_job(store)
    with store.engine.begin() as conn:
        conn.execute(sa.update(jobs_table).values(finished_at=now() - timedelta(days=3650)))
    assert purge_expired(store, tmp_path, 0) == []
    assert store.get(job.id).finished
    assert purge_expired(store, tmp_path, 1) == [job.id]
    store.dispose()
