"""JobStore on a private SQLite file: every transition is conditional, so concurrent
claimers, late workers and restarted processes cannot corrupt a job's state."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.errors import Conflict, InvalidInput, NotFound
from service.jobs.runner import _owner_dead_here
from service.jobs.store import JobStore, jobs_table, now

PARAMS = {"version": 1, "splitter": {"type": "folds", "folds": 2, "horizon": 12}, "strategy": "refit"}
HOST = socket.gethostname()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.sqlite'}"


@pytest.fixture
def store(store_url: str) -> Iterator[JobStore]:
    jobs = JobStore(store_url)
    yield jobs
    jobs.dispose()


def race(n: int, action: Callable[[int], Any]) -> list[Any]:
    """Run ``action(i)`` in ``n`` threads released at the same moment; returns results by i."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = action(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    assert not errors, errors
    return results


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


# --------------------------------------------------------------------------- create / claim
def test_create_then_get_and_list(store: JobStore) -> None:
    job, created = store.create("backtest", "airline", PARAMS, total=2)
    assert created
    assert (job.status, job.stage, job.done, job.total) == ("queued", "queued", 0, 2)
    assert job.params == PARAMS and job.result is None and job.error is None
    assert store.get(job.id) == job
    assert [j.id for j in store.list(model="airline", kind="backtest", status="queued")] == [job.id]
    assert store.list(model="other") == [] and store.list(status="running") == []
    public = job.public()
    assert public["progress"] == {"stage": "queued", "done": 0, "total": 2}
    with pytest.raises(NotFound):
        store.get("no-such-job")
    with pytest.raises(InvalidInput):
        store.create("bogus-kind", "airline", PARAMS)


def test_claim_exactly_once_across_threads(store_url: str) -> None:
    stores = [JobStore(store_url) for _ in range(8)]
    try:
        ids = [stores[0].create("backtest", "airline", PARAMS)[0].id for _ in range(5)]
        for job_id in ids:
            wins = race(8, lambda i, job_id=job_id: stores[i].claim(job_id, f"{HOST}:1:owner{i}"))
            assert wins.count(True) == 1, wins
            winner = wins.index(True)
            job = stores[0].get(job_id)
            assert job.status == "running" and job.owner == f"{HOST}:1:owner{winner}"
            assert job.started_at is not None
            # and never again, by anyone
            assert not stores[0].claim(job_id, "someone-else")
        assert stores[0].queued_ids(10) == []
    finally:
        for s in stores:
            s.dispose()


def test_cancel_requested_job_is_never_claimed(store: JobStore) -> None:
    job, _ = store.create("backtest", "airline", PARAMS)
    cancelled = store.request_cancel(job.id)
    assert cancelled.status == "cancelled" and "before it started" in (cancelled.error or "")
    assert not store.claim(job.id, "late-claimer")
    assert store.get(job.id).status == "cancelled"
    with pytest.raises(Conflict):
        store.request_cancel(job.id)


# --------------------------------------------------------------------------- finish
def test_finish_is_conditional_on_owner_and_state(store: JobStore) -> None:
    job, _ = store.create("backtest", "airline", PARAMS)
    assert store.claim(job.id, "A")
    assert store.progress(job.id, "A", "folds", 1, 3)
    assert not store.progress(job.id, "B", "folds", 2, 3), "a non-owner moved the progress"
    assert store.get(job.id).done == 1

    assert not store.finish(job.id, "B", "succeeded", result={"x": 1}), "a non-owner finished the job"
    # the runner (or a restarted process) fails it ...
    assert store.finish(job.id, "A", "failed", error="worker process exited with code -9")
    # ... and the late worker cannot flip it back
    assert not store.finish(job.id, "A", "succeeded", result={"x": 1})
    assert not store.progress(job.id, "A", "folds", 3, 3)
    final = store.get(job.id)
    assert final.status == "failed" and final.result is None and final.done == 1
    assert final.error == "worker process exited with code -9" and final.finished_at is not None


def test_late_worker_cannot_flip_an_interrupted_job(store: JobStore) -> None:
    job, _ = store.create("backtest", "airline", PARAMS)
    owner = f"{HOST}:{dead_pid()}:deadbeef"
    assert store.claim(job.id, owner)
    assert store.fail_interrupted(3600.0, _owner_dead_here) == [job.id]
    assert not store.finish(job.id, owner, "succeeded", result={"late": True})
    assert not store.finish(job.id, owner, "cancelled")
    job = store.get(job.id)
    assert job.status == "failed" and job.result is None


def test_progress_reports_a_cancel_request(store: JobStore) -> None:
    job, _ = store.create("backtest", "airline", PARAMS)
    assert store.claim(job.id, "A")
    assert store.progress(job.id, "A", "folds", 0, 2)
    running = store.request_cancel(job.id)
    assert running.status == "running", "a running job is stopped by its runner, not by the request"
    assert store.cancel_requested([job.id]) == [job.id]
    assert not store.progress(job.id, "A", "folds", 1, 2), "the worker was not told to stop"
    assert store.finish(job.id, "A", "cancelled", error="cancelled")
    assert store.get(job.id).status == "cancelled"


# --------------------------------------------------------------------------- interrupted
def test_fail_interrupted_fails_jobs_of_a_dead_local_owner_only(store: JobStore) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owners = {
            "dead": f"{HOST}:{dead_pid()}:aaaa",
            "alive": f"{HOST}:{sleeper.pid}:bbbb",
            "this": f"{HOST}:{os.getpid()}:cccc",
            "elsewhere": "some-other-host:1:dddd",
        }
        ids = {}
        for name, owner in owners.items():
            job, _ = store.create("backtest", name, PARAMS)
            assert store.claim(job.id, owner)
            ids[name] = job.id
        queued, _ = store.create("backtest", "queued", PARAMS)

        assert store.fail_interrupted(3600.0, _owner_dead_here) == [ids["dead"]]
        dead = store.get(ids["dead"])
        assert dead.status == "failed" and "interrupted" in (dead.error or "")
        for name in ("alive", "this", "elsewhere"):
            assert store.get(ids[name]).status == "running", name
        assert store.get(queued.id).status == "queued"
        # idempotent: nothing left to fail
        assert store.fail_interrupted(3600.0, _owner_dead_here) == []
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_fail_interrupted_fails_a_job_whose_heartbeat_is_stale(store: JobStore) -> None:
    fresh, _ = store.create("backtest", "fresh", PARAMS)
    stale, _ = store.create("backtest", "stale", PARAMS)
    assert store.claim(fresh.id, "other-host:1:a")
    assert store.claim(stale.id, "other-host:2:b")
    with store.engine.begin() as conn:
        conn.execute(
            jobs_table.update().where(jobs_table.c.id == stale.id).values(heartbeat_at=now() - timedelta(seconds=120))
        )
    assert store.fail_interrupted(60.0, _owner_dead_here) == [stale.id]
    assert "interrupted" in (store.get(stale.id).error or "")
    assert store.get(fresh.id).status == "running"
    # a heartbeat keeps a job alive
    store.heartbeat([fresh.id], "other-host:1:a")
    assert store.fail_interrupted(60.0, _owner_dead_here) == []


# --------------------------------------------------------------------------- idempotency
def test_idempotency_key_returns_the_same_job(store: JobStore) -> None:
    first, created = store.create("retrain", "airline", {"promote": "auto"}, idempotency_key="k1", request_hash="h1")
    assert created
    again, created_again = store.create(
        "retrain", "airline", {"promote": "auto"}, idempotency_key="k1", request_hash="h1"
    )
    assert not created_again and again.id == first.id
    with pytest.raises(InvalidInput, match="different request body") as caught:
        store.create("retrain", "airline", {"promote": "never"}, idempotency_key="k1", request_hash="h2")
    assert caught.value.extra.get("job") == first.id
    other, created_other = store.create("retrain", "airline", {}, idempotency_key="k2", request_hash="h1")
    assert created_other and other.id != first.id
    # still the same job once it has finished: a key is never reused
    assert store.claim(first.id, "A") and store.finish(first.id, "A", "succeeded", result={})
    after, created_after = store.create("retrain", "airline", {}, idempotency_key="k1", request_hash="h1")
    assert not created_after and after.id == first.id and after.status == "succeeded"
    assert len(store.list()) == 2


def test_idempotency_key_race_creates_one_job(store_url: str) -> None:
    stores = [JobStore(store_url) for _ in range(6)]
    try:
        results = race(
            6, lambda i: stores[i].create("retrain", "airline", {}, idempotency_key="slot-1", request_hash="h")
        )
        assert [created for _, created in results].count(True) == 1
        assert len({job.id for job, _ in results}) == 1
        assert len(stores[0].list()) == 1
    finally:
        for s in stores:
            s.dispose()


# --------------------------------------------------------------------------- exclusive
def test_exclusive_allows_one_active_job_per_kind_and_model(store: JobStore) -> None:
    first, created = store.create("retrain", "airline", {}, exclusive=True)
    assert created
    again, created_again = store.create("retrain", "airline", {}, exclusive=True)
    assert not created_again and again.id == first.id
    # other models and other kinds have slots of their own; non-exclusive jobs are not limited
    assert store.create("retrain", "uschange", {}, exclusive=True)[1]
    assert store.create("backtest", "airline", PARAMS, exclusive=True)[1]
    assert store.create("retrain", "airline", {})[1]
    # still exclusive while running
    assert store.claim(first.id, "A")
    assert store.create("retrain", "airline", {}, exclusive=True)[0].id == first.id
    # finished: a new one is allowed
    assert store.finish(first.id, "A", "succeeded", result={})
    second, created_second = store.create("retrain", "airline", {}, exclusive=True)
    assert created_second and second.id != first.id
    # cancelled and interrupted jobs free the slot too
    store.request_cancel(second.id)
    third, created_third = store.create("retrain", "airline", {}, exclusive=True)
    assert created_third
    owner = f"{HOST}:{dead_pid()}:eeee"
    assert store.claim(third.id, owner)
    assert store.fail_interrupted(3600.0, _owner_dead_here) == [third.id]
    assert store.create("retrain", "airline", {}, exclusive=True)[1]


def test_exclusive_race_creates_one_job(store_url: str) -> None:
    stores = [JobStore(store_url) for _ in range(6)]
    try:
        results = race(6, lambda i: stores[i].create("retrain", "airline", {"i": i}, exclusive=True))
        assert [created for _, created in results].count(True) == 1
        assert len({job.id for job, _ in results}) == 1
        with stores[0].engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(jobs_table)).scalar_one()
        assert count == 1
    finally:
        for s in stores:
            s.dispose()
