"""A job's processes end with the job, on the real server: a panel retrain (per-series
Theta, whose backtest starts joblib's reusable loky workers) leaves no process behind once
its outcome is recorded, so the next queued retrain gets its slot at once; a cancelled
one's workers are killed with it. And a job process that does not exit on its own after
its job ended is killed by its handle, with whatever it started."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.jobs.executors.local import ProcessHandle
from tests.factories import wait_for
from tests.servers import DataServerFactory, ServerProcess, alive, descendants

pytestmark = pytest.mark.slow

ACTIVE = ("queued", "running")
# one ThetaForecaster per series: the retrain fits in chunks on forked workers, and its
# backtest runs on sktime's loky backend, whose idle workers wait ~300 s for more work
PANEL_THETA = {
    "description": "per-series Theta on a small panel",
    "kind": "panel",
    "data": {
        "source": {"builtin": "tourism-monthly", "series": 6, "length": 48},
        "keys": ["series"],
        "time": "month",
        "targets": ["visitors"],
    },
    "freq": "M",
    "horizon": 6,
    "forecaster": {"class": "ThetaForecaster", "params": {"sp": 12}},
    "promotion": {"policy": "always"},
}
EXIT_WITHIN = 5.0  # seconds from a job's recorded end until none of its processes is left
NEXT_WITHIN = 5.0  # seconds from a job's recorded end until the queued one has started


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[DataServerFactory]:
    factory = DataServerFactory(
        tmp_path, clean_env=True, new_session=True, ready_timeout=120.0, client_timeout=30.0, stop_timeout=15.0
    )
    with factory:
        yield factory


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


def describe(pids: set[int]) -> str:
    return "; ".join(f"{pid}: {command_line(pid)[:100]}" for pid in sorted(pids))


def job_processes(server: ServerProcess) -> dict[int, str]:
    """Every process below the server's forkserver (the job processes and their workers),
    with its command line."""
    assert server.process is not None
    forkservers = [pid for pid in descendants(server.process.pid) if "multiprocessing.forkserver" in command_line(pid)]
    return {pid: command_line(pid) for pid in set().union(*(descendants(pid) for pid in forkservers))}


def loky_workers(processes: dict[int, str]) -> set[int]:
    return {pid for pid, command in processes.items() if "popen_loky" in command}


def shared_memory_of(pids: set[int]) -> list[str]:
    """What these processes left in /dev/shm: joblib's memmapping folders, loky's semaphores."""
    shm = Path("/dev/shm")
    names = [entry.name for entry in shm.iterdir()] if shm.is_dir() else []
    marks = [f"joblib_memmapping_folder_{pid}_" for pid in pids] + [f"sem.loky-{pid}-" for pid in pids]
    return sorted(name for name in names if any(name.startswith(mark) for mark in marks))


def get_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def stamp(job: dict[str, Any], field: str) -> dt.datetime:
    return dt.datetime.fromisoformat(job[field])


def watch_while(http: httpx.Client, server: ServerProcess, job_id: str, until: Any, timeout: float) -> dict[int, str]:
    """Poll the job until ``until(job)``; returns every job process seen meanwhile."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    job = get_job(http, job_id)
    while not until(job):
        assert time.monotonic() < deadline, f"job {job_id} after {timeout:.0f}s: {job}\n{server.log()}"
        seen.update(job_processes(server))
        time.sleep(0.1)
        job = get_job(http, job_id)
    return seen


def test_panel_retrains_back_to_back_on_one_slot(servers: DataServerFactory, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    for name in ("panel-a", "panel-b"):
        (registry / name).mkdir(parents=True)
        (registry / name / "model.yaml").write_text(yaml.safe_dump(PANEL_THETA))
    server = servers(registry, tmp_path / "data", FORECAST_MAX_CONCURRENT_JOBS="1").wait_ready()
    with server.client() as http:
        first, second = (http.post(f"/v1/models/{name}/retrain").json()["id"] for name in ("panel-a", "panel-b"))

        # the first runs alone; its processes are the job's and the workers it started
        first_processes = watch_while(http, server, first, lambda job: job["status"] not in ACTIVE, timeout=120)
        ended = time.monotonic()
        done = get_job(http, first)
        assert done["status"] == "succeeded", done
        assert loky_workers(first_processes), f"no loky worker was seen: {describe(set(first_processes))}"

        # none of them outlives the job
        while (left := {pid for pid in first_processes if alive(pid)}) and time.monotonic() - ended < EXIT_WITHIN:
            time.sleep(0.05)
        assert not left, f"{EXIT_WITHIN:.0f}s after the job ended, its processes still run: {describe(left)}"
        assert shared_memory_of(set(first_processes)) == []

        # the queued retrain gets the slot at once
        watch_while(http, server, second, lambda job: job["status"] != "queued", timeout=NEXT_WITHIN + 5)
        started = get_job(http, second)
        waited = (stamp(started, "started_at") - stamp(done, "finished_at")).total_seconds()
        assert waited < NEXT_WITHIN, f"the queued retrain started {waited:.1f}s after the first ended"

        # cancelled while sktime's loky workers run its backtest: they end with it
        def working(job: dict[str, Any]) -> bool:
            return job["status"] not in ACTIVE or bool(loky_workers(job_processes(server)))

        watch_while(http, server, second, working, timeout=120)
        workers = set(job_processes(server))
        assert get_job(http, second)["status"] == "running", get_job(http, second)
        cancelled = http.post(f"/v1/jobs/{second}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled", cancelled.json()
        wait_for(lambda: not any(alive(pid) for pid in workers), EXIT_WITHIN, "the cancelled job's processes end")
        assert job_processes(server) == {}, describe(set(job_processes(server)))
        # loky's resource tracker was left to remove what the killed processes had made
        assert shared_memory_of(workers) == []


# --------------------------------------------------------------------------- the handle's backstop
def _ends_but_lingers(recorded: Any, child_pid: Any) -> None:
    """A job process that records its outcome, then cannot exit: a non-daemon thread and a
    child process of its own keep it alive."""
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    child_pid.value = child.pid
    threading.Thread(target=time.sleep, args=(60,)).start()
    recorded.set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process trees from /proc")
def test_a_job_process_that_lingers_after_its_job_is_killed_with_its_workers() -> None:
    context = multiprocessing.get_context("fork")
    recorded, child_pid = context.Event(), context.Value("i", 0)
    process = context.Process(target=_ends_but_lingers, args=(recorded, child_pid))
    process.start()
    handle = ProcessHandle(process, recorded, grace=0.5)
    try:
        wait_for(recorded.is_set, 10, "the job records its outcome")
        assert handle.running()  # within the grace period
        started = time.monotonic()
        wait_for(lambda: not handle.running(), 5, "the handle gives up on the lingering process")
        assert time.monotonic() - started < 3
        wait_for(lambda: not alive(child_pid.value), 5, "the process's own child is killed too")
        assert handle.exitcode() is not None
    finally:
        handle.cancel()
