"""The job store on a real PostgreSQL server (started by this test session): every
behaviour the SQLite store has, and the app running jobs on it, alone and with Dask."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from service.jobs.executors.dask import DaskExecutor
from service.jobs.store import JobStore, jobs_table

# the SQLite store's tests, run again here on PostgreSQL (they use the fixtures below):
# create/claim once across threads, idempotency keys and their conflicts, one active
# retrain per model, conditional finish and progress, interrupted jobs
from tests.jobs.test_store import (  # noqa: F401
    test_cancel_requested_job_is_never_claimed,
    test_claim_exactly_once_across_threads,
    test_create_then_get_and_list,
    test_exclusive_allows_one_active_job_per_kind_and_model,
    test_exclusive_race_creates_one_job,
    test_fail_interrupted_fails_a_job_whose_heartbeat_is_stale,
    test_fail_interrupted_fails_jobs_of_a_dead_local_owner_only,
    test_finish_is_conditional_on_owner_and_state,
    test_idempotency_key_race_creates_one_job,
    test_idempotency_key_returns_the_same_job,
    test_late_worker_cannot_flip_an_interrupted_job,
    test_progress_reports_a_cancel_request,
)
from tests.scaleout.jobs_api import SMALL, app_client, start_backtest, wait_job

if TYPE_CHECKING:
    from tests.scaleout.conftest import Postgres

pytestmark = pytest.mark.slow


@pytest.fixture
def store_url(postgres: Postgres) -> str:
    """A new empty PostgreSQL database for each test."""
    return postgres.create_database()


@pytest.fixture
def store(store_url: str) -> Iterator[JobStore]:
    jobs = JobStore(store_url)
    yield jobs
    jobs.dispose()


def test_the_store_really_is_postgres(store: JobStore) -> None:
    assert store.engine.dialect.name == "postgresql" and store.engine.dialect.driver == "psycopg"
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("select version()")).scalar_one().startswith("PostgreSQL")
        columns = {c["name"]: c for c in sa.inspect(conn).get_columns("jobs")}
    assert str(columns["created_at"]["type"]) == "TIMESTAMP"
    assert getattr(columns["created_at"]["type"], "timezone", False), "times are stored with their zone"
    job, _ = store.create("backtest", "airline", {"version": 1})
    assert store.claim(job.id, "A")
    with store.engine.connect() as conn:
        stamp = conn.execute(sa.select(jobs_table.c.started_at)).scalar_one()
    assert stamp.tzinfo is not None
    # a second store on the same database (another replica) sees the same rows
    other = JobStore(store.url)
    try:
        assert other.get(job.id).status == "running" and not other.claim(job.id, "B")
    finally:
        other.dispose()


def test_app_on_postgres_runs_a_backtest_end_to_end(store_url: str, registry_path: Path) -> None:
    with app_client(registry_path, jobs_url=store_url) as client:
        assert client.app.state.runtime.jobs.engine.dialect.name == "postgresql"  # type: ignore[attr-defined]
        created = start_backtest(client, "airline", SMALL)
        job = wait_job(client, created["id"])
        assert job["status"] == "succeeded", job
        assert job["result"]["n_folds"] == 2 and job["result"]["aggregate"]["RMSE"] > 0
        listed = client.get("/v1/jobs", params={"model": "airline"}).json()["jobs"]
        assert [j["id"] for j in listed] == [created["id"]]
    # the outcome is in the database, not in the app
    jobs = JobStore(store_url)
    try:
        stored = jobs.get(created["id"])
        assert stored.status == "succeeded" and stored.result == job["result"]
    finally:
        jobs.dispose()


def test_api_replicas_on_postgres_and_dask_share_the_jobs(
    store_url: str, registry_path: Path, dask_cluster: Any
) -> None:
    """The scale-out set-up: two API replicas, one PostgreSQL job store, one Dask cluster."""
    scale_out = {"jobs_url": store_url, "dask_scheduler": dask_cluster.scheduler_address, "scheduler": False}
    with app_client(registry_path, **scale_out) as first, app_client(registry_path, **scale_out) as second:
        for replica in (first, second):
            assert isinstance(replica.app.state.runtime.runner.executor, DaskExecutor)  # type: ignore[attr-defined]
        ids = [start_backtest(first, "airline", SMALL)["id"], start_backtest(second, "airline", SMALL)["id"]]
        for job_id in ids:
            # either replica answers for any job
            job = wait_job(second if job_id == ids[0] else first, job_id)
            assert job["status"] == "succeeded", job
            assert job["result"]["n_folds"] == 2
        owners = {owner_of(store_url, job_id) for job_id in ids}
        assert owners <= {
            first.app.state.runtime.runner.owner,  # type: ignore[attr-defined]
            second.app.state.runtime.runner.owner,  # type: ignore[attr-defined]
        }


def owner_of(url: str, job_id: str) -> str | None:
    jobs = JobStore(url)
    try:
        return jobs.get(job_id).owner
    finally:
        jobs.dispose()
