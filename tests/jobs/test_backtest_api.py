"""Backtests over HTTP with the real job runner: each job runs in a worker process of its
own, its progress and result are read back through /v1/jobs, and the result equals
sktime's `evaluate` run directly in the test."""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sktime.forecasting.model_evaluation import evaluate
from sktime.performance_metrics.forecasting import (
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanAbsoluteScaledError,
    MeanSquaredError,
)
from sktime.performance_metrics.forecasting.probabilistic import EmpiricalCoverage, PinballLoss
from sktime.split import ExpandingWindowSplitter

from service.app import create_app
from service.registry.store import Registry
from service.tables import Schema, to_sktime
from tests.conftest import make_settings, wait_ready
from tests.factories import wait_for

pytestmark = pytest.mark.slow

FINISHED = ("succeeded", "failed", "cancelled")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROBLEM_JSON = "application/problem+json"
SMALL = {"splitter": {"type": "folds", "folds": 1, "horizon": 6}, "metrics": ["MAE"]}


@dataclass
class Api:
    client: TestClient
    app: FastAPI
    registry: Path

    def start(self, name: str, body: dict[str, Any], **query: Any) -> Any:
        return self.client.post(f"/v1/models/{name}/backtests", json=body, params=query)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(
        self, job_id: str, until: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 120.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Poll the job until ``until(job)`` (default: finished); returns it and every state seen."""
        until = until or (lambda j: j["status"] in FINISHED)
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            job = self.job(job_id)
            seen.append(job)
            if until(job):
                return job, seen
            if job["status"] in FINISHED or time.monotonic() > deadline:
                raise AssertionError(f"job did not reach the wanted state in {timeout:.0f}s: {job}")
            time.sleep(0.05)

    def run(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.start(name, body)
        assert response.status_code in (200, 202), response.text
        job, _ = self.wait(response.json()["id"])
        return job

    def job_count(self) -> int:
        response = self.client.get("/v1/jobs", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return len(response.json()["jobs"])

    @property
    def handles(self) -> dict[str, Any]:
        return self.app.state.runtime.runner.handles


def _app(registry: Path, data_dir: Path, **settings: Any) -> Iterator[Api]:
    app = create_app(make_settings(registry, data_dir=data_dir, **settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield Api(client, app, registry)


@pytest.fixture(scope="module")
def api(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app (real runner, two job processes at most) on a private registry copy and data dir."""
    root = tmp_path_factory.mktemp("backtest-api")
    registry = root / "models"
    shutil.copytree(trained_registry_path, registry, ignore=shutil.ignore_patterns(".lock"))
    yield from _app(registry, root / "data")


def assert_problem(response: Any, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"], body
    for word in words:
        assert word.lower() in body["detail"].lower(), (word, body)
    return body


def assert_png(response: Any) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_MAGIC) and len(response.content) > 1000


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


# --------------------------------------------------------------------------- a whole job
def test_backtest_job_runs_reports_progress_and_equals_sktime_evaluate(api: Api) -> None:
    body = {
        "splitter": {"type": "expanding", "initial_window": 108, "step": 12, "horizon": 12},
        "strategy": "update",
        "metrics": ["MAE", "RMSE", "MAPE", "sMAPE", "MASE", "WAPE", "pinball", "coverage"],
        "quantiles": [0.1, 0.5, 0.9],
        "coverage": [0.8],
    }
    response = api.start("airline", body)
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/jobs/{created['id']}"
    assert created["kind"] == "backtest" and created["model"] == "airline"
    assert created["status"] in ("queued", "running")
    assert created["progress"]["total"] == 3

    job, seen = api.wait(created["id"])

    assert job["status"] == "succeeded", job
    assert job["error"] is None
    done = [s["progress"]["done"] for s in seen]
    assert done == sorted(done), f"progress went backwards: {done}"
    assert {s["progress"]["total"] for s in seen} == {3}
    assert job["progress"]["done"] == job["progress"]["total"] == 3
    assert {s["status"] for s in seen} <= {"queued", "running", "succeeded"}
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]

    # the same numbers as sktime's evaluate, run here on the same version and data
    registry = Registry(api.registry)
    loaded = registry.load("airline", 1)
    schema = Schema.from_dict(loaded.manifest["schema"])
    y, _ = to_sktime(registry.read_training("airline", 1), schema)
    metrics = {
        "MAE": MeanAbsoluteError(),
        "RMSE": MeanSquaredError(square_root=True),
        "MAPE": MeanAbsolutePercentageError(symmetric=False),
        "sMAPE": MeanAbsolutePercentageError(symmetric=True),
        "MASE": MeanAbsoluteScaledError(),
        "pinball": PinballLoss(alpha=[0.1, 0.5, 0.9]),
        "coverage": EmpiricalCoverage(coverage=[0.8]),
    }
    for ours, metric in metrics.items():
        metric.name = f"direct_{ours}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = evaluate(
            loaded.forecaster.clone(),
            ExpandingWindowSplitter(fh=list(range(1, 13)), initial_window=108, step_length=12),
            y,
            strategy="update",
            scoring=list(metrics.values()),
            return_data=True,
        )
    result = job["result"]
    assert result["model"] == "airline" and result["version"] == 1 and result["strategy"] == "update"
    assert result["n_folds"] == len(result["folds"]) == len(frame) == 3
    for fold, (_, row) in zip(result["folds"], frame.iterrows(), strict=True):
        assert fold["cutoff"].startswith(row["cutoff"].to_timestamp().strftime("%Y-%m-%d"))
        for ours, metric in metrics.items():
            assert fold["metrics"][ours] == pytest.approx(row[f"test_{metric.name}"], rel=1e-9), ours
        actual = row["y_test"].iloc[:, 0].to_numpy()
        predicted = row["y_pred"].reindex(row["y_test"].index).iloc[:, 0].to_numpy()
        assert fold["metrics"]["WAPE"] == pytest.approx(abs(actual - predicted).sum() / abs(actual).sum(), rel=1e-9)
    for name in body["metrics"]:
        mean = sum(f["metrics"][name] for f in result["folds"]) / 3
        assert result["aggregate"][name] == pytest.approx(mean, rel=1e-9)
    assert result["timing"]["fit_seconds"] >= 0 and result["timing"]["wall_seconds"] > 0

    # the worker process is gone and the runner forgot it
    wait_for(lambda: created["id"] not in api.handles, 10, "the finished job's handle is reaped")


@pytest.fixture(scope="module")
def small_job(api: Api) -> Any:
    """The response to a small airline backtest started with ``?wait=true`` (shared: each job costs
    a worker process)."""
    return api.start("airline", SMALL, wait="true", timeout=60)


def test_wait_true_answers_200_with_the_result(api: Api, small_job: Any) -> None:
    response = small_job
    assert response.status_code == 200, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "succeeded", job
    assert job["result"]["n_folds"] == 1
    assert job["result"]["folds"][0]["metrics"]["MAE"] > 0
    assert api.job(job["id"]) == job


def test_job_list_filters_by_model_kind_and_status(api: Api, small_job: Any) -> None:
    ok = api.job(small_job.json()["id"])
    # sktime 1.2's evaluate cannot predict intervals with exogenous data: the job fails, with the reason
    failed = api.run(
        "uschange",
        {"splitter": {"type": "folds", "folds": 1, "horizon": 4}, "metrics": ["MAE", "coverage"], "coverage": [0.8]},
    )
    assert ok["status"] == "succeeded", ok
    assert failed["status"] == "failed", failed
    assert failed["error"] and failed["result"] is None

    def listed(**query: Any) -> list[dict[str, Any]]:
        response = api.client.get("/v1/jobs", params=query)
        assert response.status_code == 200, response.text
        return response.json()["jobs"]

    jobs = listed(model="airline", kind="backtest", status="succeeded")
    assert ok["id"] in {j["id"] for j in jobs} and failed["id"] not in {j["id"] for j in jobs}
    assert all((j["model"], j["kind"], j["status"]) == ("airline", "backtest", "succeeded") for j in jobs)
    jobs = listed(status="failed")
    assert failed["id"] in {j["id"] for j in jobs} and all(j["status"] == "failed" for j in jobs)
    jobs = listed(model="uschange")
    assert [j["id"] for j in jobs] == [failed["id"]]
    assert ok["id"] not in {j["id"] for j in listed(kind="retrain")}
    assert listed(model="no-such-model") == []
    created = [j["created_at"] for j in listed()]
    assert created == sorted(created, reverse=True), "not newest first"
    assert len(listed(limit=1)) == 1
    assert_problem(api.client.get("/v1/jobs", params={"status": "bogus"}), 422)

    # a failed job has no plot
    assert_problem(api.client.get(f"/v1/jobs/{failed['id']}/plot.png"), 409, "failed")


# --------------------------------------------------------------------------- plots
def test_backtest_plots(api: Api, small_job: Any) -> None:
    airline = api.job(small_job.json()["id"])
    assert airline["status"] == "succeeded", airline
    assert_png(api.client.get(f"/v1/jobs/{airline['id']}/plot.png"))
    assert_problem(api.client.get(f"/v1/jobs/{airline['id']}/plot.png", params={"series": "T001"}), 404)

    panel = api.run(
        "tourism-monthly",
        {
            "splitter": {"type": "folds", "folds": 1, "horizon": 3},
            "metrics": ["MAE", "MASE"],
            "series": [["T001"], ["T002"]],
        },
    )
    assert panel["status"] == "succeeded", panel
    result = panel["result"]
    assert [s["series"] for s in result["per_series"]] == [["T001"], ["T002"]]
    assert [s["series"] for s in result["folds"][0]["series"]] == [["T001"], ["T002"]]
    url = f"/v1/jobs/{panel['id']}/plot.png"
    assert_png(api.client.get(url, params={"series": "T001"}))
    assert_png(api.client.get(url))  # a default series
    assert_problem(api.client.get(url, params={"series": "T999"}), 404, "T999")
    assert_problem(api.client.get(url, params={"series": "T001/extra"}), 404)


# --------------------------------------------------------------------------- refused up front
def test_invalid_backtests_are_422_and_leave_no_job(api: Api) -> None:
    before = api.job_count()

    no_fold = api.start("airline", {"splitter": {"type": "expanding", "initial_window": 500, "horizon": 12}})
    assert assert_problem(no_fold, 422, "no fold")["field"] == "splitter"

    unknown_metric = api.start("airline", {"metrics": ["MAE", "bogus"]})
    assert "bogus" in str(assert_problem(unknown_metric, 422, "bogus")["metrics"])

    no_intervals = api.start(
        "sales-hierarchy", {"metrics": ["MAE", "coverage"], "coverage": [0.8], "splitter": {"folds": 1, "horizon": 3}}
    )
    assert assert_problem(no_intervals, 422, "interval")["capability"] == "capability:pred_int"

    no_quantile_levels = api.start("airline", {"metrics": ["pinball"]})
    assert_problem(no_quantile_levels, 422, "quantiles")

    hierarchy_update = api.start("sales-hierarchy", {"strategy": "update", "splitter": {"folds": 1}})
    assert assert_problem(hierarchy_update, 422, "refit")["field"] == "strategy"

    assert_problem(api.start("airline", {"splitter": {"type": "weekly"}}), 422)
    assert_problem(api.start("airline", {"coverage": [1.5], "metrics": ["coverage"]}), 422)
    assert_problem(api.start("airline", {"surprise": 1}), 422)
    assert_problem(api.start("no-such-model", SMALL), 404)
    assert_problem(api.start("airline", {**SMALL, "version": 99}), 404)
    assert_problem(api.start("airline", {**SMALL, "alias": "no-such-alias"}), 404)
    assert_problem(api.start("tourism-monthly", {**SMALL, "series": [["T999"]]}), 404, "T999")

    assert api.job_count() == before, "a refused backtest left a job behind"


def test_folds_splitter_longer_than_the_data_is_422_and_leaves_no_job(api: Api) -> None:
    """13 folds of 12 months need 156 months; airline has 144. sktime's ExpandingGreedySplitter
    still counts 13 splits (the first with an empty training and test window), so the
    fold count alone does not catch it."""
    before = api.job_count()
    response = api.start("airline", {"splitter": {"type": "folds", "folds": 13, "horizon": 12}, "metrics": ["MAE"]})
    assert_problem(response, 422, "split")
    assert api.job_count() == before, "a refused backtest left a job behind"


def test_unknown_job_is_404(api: Api) -> None:
    assert_problem(api.client.get("/v1/jobs/0123456789abcdef"), 404)
    assert_problem(api.client.post("/v1/jobs/0123456789abcdef/cancel"), 404)
    assert_problem(api.client.get("/v1/jobs/0123456789abcdef/plot.png"), 404)


def test_cancel_of_a_finished_job_is_409(api: Api, small_job: Any) -> None:
    job = api.job(small_job.json()["id"])
    assert job["status"] == "succeeded", job
    assert_problem(api.client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "succeeded")
    assert api.job(job["id"])["status"] == "succeeded"


# --------------------------------------------------------------------------- cancel while running
@pytest.fixture
def single_slot_api(registry_path: Path, tmp_path: Path) -> Iterator[Api]:
    """An app that runs one job at a time."""
    yield from _app(registry_path, tmp_path / "data", max_concurrent_jobs=1)


def test_cancel_stops_the_running_worker_and_frees_its_slot(single_slot_api: Api) -> None:
    api = single_slot_api
    long = api.start(
        "tourism-monthly", {"splitter": {"type": "folds", "folds": 6, "horizon": 3}, "metrics": ["MAE"]}
    ).json()
    assert long["status"] in ("queued", "running"), long
    _, seen = api.wait(
        long["id"], until=lambda j: j["status"] == "running" and j["progress"]["stage"] in ("loading", "folds")
    )
    wait_for(lambda: long["id"] in api.handles, 10, "the runner holds the running job's handle")
    pid = api.handles[long["id"]].process.pid
    assert not process_gone(pid)

    # an unfinished job has no plot; the next job waits for the only slot
    assert_problem(api.client.get(f"/v1/jobs/{long['id']}/plot.png"), 409, "running")
    waiting = api.start("airline", SMALL).json()
    queued = api.start("airline", SMALL).json()
    time.sleep(1.0)  # a few runner ticks: the slot is taken, so both stay queued
    assert api.job(waiting["id"])["status"] == "queued"

    # a queued job is cancelled at once, without ever running
    response = api.client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["started_at"] is None

    response = api.client.post(f"/v1/jobs/{long['id']}/cancel")
    assert response.status_code == 200, response.text
    cancelled, _ = api.wait(long["id"], timeout=30)
    assert cancelled["status"] == "cancelled", cancelled
    assert "cancel" in (cancelled["error"] or "")
    assert cancelled["result"] is None
    wait_for(lambda: long["id"] not in api.handles, 10, "the cancelled job's handle is dropped")
    wait_for(lambda: process_gone(pid), 10, f"the cancelled job's worker (pid {pid}) exits")

    # the slot is free: the waiting job runs to completion
    done, _ = api.wait(waiting["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert api.job(queued["id"])["status"] == "cancelled"
    # the killed worker never writes a late outcome
    final = api.job(long["id"])
    assert final["status"] == "cancelled" and final["result"] is None
    assert final["progress"]["done"] < final["progress"]["total"] == 6
    done_values = [s["progress"]["done"] for s in seen]
    assert done_values == sorted(done_values)
