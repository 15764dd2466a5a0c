"""A backtest survives the death of the service the SPEC way: the server process is
SIGKILLed while a job runs; its worker dies with it; the restarted server marks the job
`failed` (interrupted), never leaves it `running`, and runs new jobs."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.jobs.store import JobStore
from tests.factories import wait_for
from tests.servers import DataServerFactory, ServerProcess, alive, descendants

pytestmark = pytest.mark.slow

FINISHED = ("succeeded", "failed", "cancelled")


def survivors(pids: set[int], timeout: float) -> set[int]:
    """The ``pids`` still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := {pid for pid in pids if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def describe(pids: set[int]) -> str:
    out = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")[:90]
        except FileNotFoundError:
            command = "(gone)"
        out.append(f"{pid}: {command}")
    return "; ".join(out)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[DataServerFactory]:
    """``servers(registry, data_dir)`` -> a started `python -m service.cli serve`; all are stopped afterwards."""
    with DataServerFactory(
        tmp_path,
        command=(sys.executable, "-m", "service.cli"),
        clean_env=True,
        ready_timeout=120.0,
        client_timeout=90.0,
        FORECAST_JOB_STALE_SECONDS="5",
    ) as factory:
        yield factory


def get_job(server: ServerProcess, job_id: str) -> dict[str, Any]:
    with server.client() as http:
        response = http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_sigkill_during_a_backtest_then_restart_marks_it_interrupted(
    trained_registry_path: Path, tmp_path: Path, servers: DataServerFactory
) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    for name in ("airline", "tourism-monthly"):
        shutil.copytree(trained_registry_path / name, registry / name, ignore=shutil.ignore_patterns("*.lock"))
    data_dir = tmp_path / "data"

    first = servers(registry, data_dir)
    first.wait_ready()
    with first.client() as http:
        response = http.post(
            "/v1/models/tourism-monthly/backtests",
            json={"splitter": {"type": "folds", "folds": 6, "horizon": 3}, "metrics": ["MAE"]},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    def running() -> bool:
        job = get_job(first, job_id)
        assert job["status"] in ("queued", "running"), f"{job}\n{first.log()}"
        return job["status"] == "running" and job["progress"]["stage"] in ("loading", "folds")

    wait_for(running, 90, "the backtest is running in its worker")
    workers = descendants(first.process.pid)
    assert workers, "the running job has no worker process under the server"

    first.kill()
    # the job's worker (and the forkserver it came from) must die with the server, or an orphan
    # keeps computing and, if nobody restarts the service, reports the job `succeeded` on its
    # own; checked at the end so that the restart path below runs either way
    orphans = survivors(workers, timeout=10)
    orphan_commands = describe(orphans)
    assert get_job_from_db(data_dir, job_id)["status"] == "running", "precondition: the killed server left it running"

    second = servers(registry, data_dir)
    second.wait_ready()

    def settled() -> bool:
        return get_job(second, job_id)["status"] != "running"

    wait_for(settled, 10, "the restarted server settles the interrupted job")
    job = get_job(second, job_id)
    assert job["status"] == "failed", job
    assert "interrupted" in (job["error"] or ""), job
    assert job["result"] is None

    # nothing flips it later: no orphan survived to report success
    time.sleep(3.0)
    job = get_job(second, job_id)
    assert job["status"] == "failed" and job["result"] is None, job

    # and the restarted server runs new backtests
    with second.client() as http:
        response = http.post(
            "/v1/models/airline/backtests",
            params={"wait": "true", "timeout": 60},
            json={"splitter": {"type": "folds", "folds": 1, "horizon": 6}, "metrics": ["MAE"]},
        )
    assert response.status_code in (200, 202), response.text
    new_id = response.json()["id"]
    deadline = time.monotonic() + 90
    while (new := get_job(second, new_id))["status"] not in FINISHED and time.monotonic() < deadline:
        time.sleep(0.2)
    assert new["status"] == "succeeded", f"{new}\n{second.log()}"
    assert get_job(second, job_id)["status"] == "failed"

    assert not orphans, (
        f"processes of the killed server still ran 10 s after SIGKILL: {orphan_commands}; the job's worker "
        "outlives the service (its PR_SET_PDEATHSIG watches the forkserver, which itself stays up)"
    )


def get_job_from_db(data_dir: Path, job_id: str) -> dict[str, Any]:
    """Read a job straight from the SQLite store (no server running)."""
    store = JobStore(f"sqlite:///{data_dir / 'jobs.sqlite'}")
    try:
        return store.get(job_id).public()
    finally:
        store.dispose()
