"""Retrains across real server processes: a service killed mid-retrain leaves no running
job and no partial version behind; two replicas on one job store trigger each cron slot
of a schedule exactly once."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.jobs.store import JobStore
from service.registry.store import STAGING_PREFIX, Registry
from tests.conftest import copy_specs

from .conftest import ServerFactory, group_members

pytestmark = pytest.mark.slow

SLOW_MODEL = "tourism-monthly"  # global XGBoost over 60 series: its retrain runs for many seconds


def get_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_job(http: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job = get_job(http, job_id)
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = get_job(http, job_id)
    return job


def version_dirs(registry: Path, name: str) -> list[str]:
    versions = registry / name / "versions"
    return sorted(p.name for p in versions.iterdir()) if versions.is_dir() else []


def test_service_killed_during_a_retrain(start_server: ServerFactory, tmp_path: Path) -> None:
    registry = copy_specs(tmp_path / "models", [SLOW_MODEL])
    data = tmp_path / "data"
    env = {"FORECAST_JOB_STALE_SECONDS": "5"}
    first = start_server(registry, data, **env).wait_ready()
    with first.client() as http:
        started = http.post(f"/v1/models/{SLOW_MODEL}/retrain")
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]
        # wait until the job is at work: fitting, comparing or publishing
        busy = ("fitting", "comparing", "publishing")
        deadline = time.monotonic() + 240
        job = get_job(http, job_id)
        while job["progress"]["stage"] not in busy and time.monotonic() < deadline:
            assert job["status"] in ("queued", "running"), job
            time.sleep(0.05)
            job = get_job(http, job_id)
        assert job["status"] == "running" and job["progress"]["stage"] in busy, job
    workers = [pid for pid in group_members(first.pgid or 0) if pid != first.process.pid]  # type: ignore[union-attr]
    assert workers, "the retrain runs in a process of its own"

    first.kill()  # SIGKILL: no shutdown handler runs, the job stays 'running' in the store

    # the job's worker must not outlive the service (an orphan would go on to publish and
    # promote behind the back of the restarted service); checked at the end of the test,
    # after the orphans are killed here so that the restart below runs on a quiet folder
    deadline = time.monotonic() + 10
    while group_members(first.pgid or 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = group_members(first.pgid or 0)
    if survivors:
        os.killpg(first.pgid or 0, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_members(first.pgid or 0) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert Registry(registry).list_versions(SLOW_MODEL) == []

    # a publisher that died mid-write leaves a staging folder behind: cleaned at start
    leftover = registry / SLOW_MODEL / "versions" / f"{STAGING_PREFIX}0123456789abcdef"
    leftover.mkdir(parents=True)
    (leftover / "artifact.pkl").write_bytes(b"half an artifact")
    (leftover / ".owner").touch()

    second = start_server(registry, data, **env).wait_ready()
    with second.client() as http:
        deadline = time.monotonic() + 15
        job = get_job(http, job_id)
        while job["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
            job = get_job(http, job_id)
        assert job["status"] == "failed", job
        assert "interrupted" in job["error"]
        assert job["finished_at"] is not None

        assert not leftover.exists()
        assert version_dirs(registry, SLOW_MODEL) == []
        assert Registry(registry).list_versions(SLOW_MODEL) == []
        listed = http.get("/v1/jobs", params={"model": SLOW_MODEL, "status": "running"}).json()["jobs"]
        assert listed == []

        # a new retrain is not blocked by the interrupted one and succeeds; a cheaper spec on
        # a slice of the same panel keeps the test short (written to the folder, as people do)
        spec = yaml.safe_load((registry / SLOW_MODEL / "model.yaml").read_text())
        spec["data"]["source"] = {"builtin": "tourism-monthly", "series": 4, "length": 48}
        spec["forecaster"] = {
            "class": "make_reduction",
            "params": {
                "estimator": {"class": "LinearRegression", "params": {}},
                "strategy": "recursive",
                "pooling": "global",
                "window_length": 12,
            },
        }
        (registry / SLOW_MODEL / "model.yaml").write_text(yaml.safe_dump(spec))
        again = http.post(f"/v1/models/{SLOW_MODEL}/retrain")
        assert again.status_code == 202, again.text
        assert again.json()["id"] != job_id
        done = wait_job(http, again.json()["id"], timeout=180)
        assert done["status"] == "succeeded", done
        assert done["result"]["version"] == 1 and done["result"]["promoted"] is True
        assert version_dirs(registry, SLOW_MODEL) == ["1"]
        assert Registry(registry).read_manifest(SLOW_MODEL, 1)["job_id"] == done["id"]

    assert not survivors, (
        f"processes {survivors} of the killed service (forkserver, job worker) were still running 10 s "
        f"after the kill (worker pids were {workers})"
    )


RACE = """
import json, sys, threading
from pathlib import Path
from service.forecasting.specs import read_spec, write_spec
from service.registry.store import Registry

registry = Registry(Path(sys.argv[1]))
spec = json.loads(sys.argv[2])
real_stdout = sys.stdout
errors = []
barrier = threading.Barrier(8)

def scheduler_tick(i):  # what trigger_due and the cache do: parse a spec from the folder
    barrier.wait()
    try:
        read_spec(registry, "seed")
    except Exception as exc:
        errors.append(f"read_spec: {type(exc).__name__}: {exc}")

def put_spec(i):  # what PUT /v1/models/{name} does
    barrier.wait()
    try:
        write_spec(registry, f"put-{i}", spec)
    except Exception as exc:
        errors.append(f"write_spec: {type(exc).__name__}: {exc}")

threads = [threading.Thread(target=scheduler_tick if i % 2 else put_spec, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.__stderr__.write(json.dumps({"errors": errors, "stdout_swapped": sys.stdout is not real_stdout}))
"""


def test_specs_parsed_in_parallel_by_a_fresh_process(tmp_path: Path) -> None:
    """A restarted server parses specs on several threads at once (scheduler tick, cache
    refresh, PUT /v1/models): the first parses of a process must not fail or disturb it."""
    spec = schedule_spec()
    del spec["schedule"]
    registry = tmp_path / "models"
    (registry / "seed").mkdir(parents=True)
    (registry / "seed" / "model.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [sys.executable, "-c", RACE, str(registry), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"errors": [], "stdout_swapped": False}, report


def schedule_spec() -> dict[str, Any]:
    return {
        "description": "naive airline retrained every 2 seconds",
        "data": {"source": {"builtin": "airline"}, "time": "month", "targets": ["passengers"]},
        "freq": "M",
        "horizon": 12,
        "forecaster": {"class": "NaiveForecaster", "params": {"strategy": "last"}},
        "schedule": "* * * * * */2",  # croniter: six fields, seconds last
        "promotion": {"policy": "always"},
    }


def test_two_replicas_trigger_each_schedule_slot_once(start_server: ServerFactory, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    (registry / "every2s").mkdir(parents=True)
    (registry / "every2s" / "model.yaml").write_text(yaml.safe_dump(schedule_spec()))
    data = tmp_path / "data"
    env = {"FORECAST_SCHEDULE_POLL_SECONDS": "1"}
    replicas = [start_server(registry, data, **env), start_server(registry, data, **env)]
    for replica in replicas:
        replica.wait_ready()

    def slot_jobs(http: httpx.Client) -> list[dict[str, Any]]:
        jobs = http.get("/v1/jobs", params={"model": "every2s", "kind": "retrain", "limit": 1000}).json()["jobs"]
        return [j for j in jobs if j["params"].get("trigger") == "schedule"]

    with replicas[0].client() as one, replicas[1].client() as two:
        observed_from = time.monotonic()
        deadline = observed_from + 90
        jobs = slot_jobs(one)
        # ~8 s at least (4 slots of */2; it was 15 s of */5 slots: 3), and until two slots made
        # jobs and one of them finished; a retrain that is still running absorbs the slots that
        # fall inside it (one active retrain per model)
        while time.monotonic() < deadline and (
            time.monotonic() - observed_from < 8 or len(jobs) < 2 or not any(j["status"] == "succeeded" for j in jobs)
        ):
            time.sleep(0.5)
            jobs = slot_jobs(one)
        assert {j["id"] for j in jobs} <= {j["id"] for j in slot_jobs(two)}  # one shared store

    for replica in replicas:
        replica.stop()

    store = JobStore(f"sqlite:///{data / 'jobs.sqlite'}")
    try:
        jobs = [j.public() for j in store.list(model="every2s", kind="retrain", limit=1000)]
    finally:
        store.dispose()
    assert jobs and all(j["params"]["trigger"] == "schedule" for j in jobs)
    assert all(j["status"] != "running" for j in jobs)
    slots = collections.Counter(j["params"]["slot"] for j in jobs)
    assert len(slots) >= 2, jobs
    assert all(count == 1 for count in slots.values()), slots
    for slot in slots:
        assert slot.endswith("+00:00") and int(slot[17:19]) % 2 == 0, slot  # a */2 second slot, UTC
    succeeded = [j for j in jobs if j["status"] == "succeeded"]
    assert succeeded, jobs
    versions = Registry(registry).list_versions("every2s")
    assert len(versions) >= len(succeeded)
    made_by = {Registry(registry).read_manifest("every2s", v)["job_id"] for v in versions}
    assert {j["id"] for j in succeeded} <= made_by
