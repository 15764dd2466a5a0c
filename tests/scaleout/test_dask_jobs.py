"""Jobs on a real Dask cluster (LocalCluster: a scheduler and one worker process with one
thread) through the runner's executor seam: the same results as the local executor, the
app with FORECAST_DASK_SCHEDULER, and cancel of queued and running jobs."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from service.forecasting.backtest import SplitterSpec
from service.jobs.context import WorkerContext
from service.jobs.executors.dask import DaskExecutor, DaskHandle, run_on_worker
from service.jobs.executors.local import LocalProcessExecutor
from service.jobs.runner import JobRunner
from service.jobs.store import JobStore, process_owner
from service.jobs.tasks import job_dir
from service.registry.store import Registry
from tests.factories import wait_for
from tests.scaleout.conftest import local_cluster
from tests.scaleout.jobs_api import SMALL, app_client, drive, job_of, start_backtest, wait_job

pytestmark = pytest.mark.slow

PARAMS: dict[str, Any] = {
    "version": 1,
    "splitter": dataclasses.asdict(SplitterSpec("folds", horizon=12, folds=3)),
    "strategy": "refit",
    "metrics": ["MAE", "RMSE", "MASE", "pinball", "coverage"],
    "coverage": [0.8],
    "quantiles": [0.1, 0.5, 0.9],
    "series": None,
    "dataset": None,
    "dataset_version": None,
}


def without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "timing" and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run_one_job(executor: Any, registry_path: Path, root: Path) -> tuple[dict[str, Any], pd.DataFrame, str]:
    """A backtest of airline v1 through a JobRunner on ``executor``, on a SQLite store of its own."""
    url = f"sqlite:///{root / 'jobs.sqlite'}"
    store = JobStore(url)
    context = WorkerContext(
        jobs_url=url, registry_path=str(registry_path), data_dir=str(root / "data"), owner=process_owner()
    )
    runner = JobRunner(store, executor, context, max_concurrent=1)
    try:
        job, _ = store.create("backtest", "airline", PARAMS, total=3)
        runner.tick()
        assert store.get(job.id).status == "running"
        handle = runner.handles[job.id]
        finished = drive(runner, store, job.id)
        assert handle.exitcode() == 0
        # how it ran: a Dask task keyed by the job, or a local process
        how = f"{handle.future.key} {handle.future.status}" if isinstance(handle, DaskHandle) else "process"
    finally:
        runner.shutdown()
        store.dispose()
    assert finished.status == "succeeded", finished
    assert (finished.done, finished.total, finished.error) == (3, 3, None)
    predictions = pd.read_parquet(job_dir(context.data_dir, job.id) / "predictions.parquet")
    assert finished.result is not None
    return finished.result, predictions, how


def test_backtest_on_the_dask_worker_equals_the_local_executor(
    dask_cluster: Any, dask_client: Any, registry_path: Path, tmp_path: Path
) -> None:
    executor = DaskExecutor(dask_cluster.scheduler_address)
    on_dask, dask_predictions, how = run_one_job(executor, registry_path, tmp_path / "dask")
    local, local_predictions, _ = run_one_job(LocalProcessExecutor(), registry_path, tmp_path / "local")

    # it ran as a Dask task keyed by the job, on the worker process (not here)
    assert how.startswith("job-") and how.endswith(" finished"), how
    worker_pids = set(dask_client.run(os.getpid).values())
    assert worker_pids and os.getpid() not in worker_pids
    assert executor._client is None, "shutdown() did not close the executor's client"

    # the same numbers and predictions as a local worker process (all but the timings)
    assert without_timings(on_dask) == without_timings(local)
    assert on_dask["n_folds"] == 3 and on_dask["aggregate"]["MAE"] > 0
    pd.testing.assert_frame_equal(dask_predictions, local_predictions)


def test_app_with_a_dask_scheduler_runs_backtests_there(dask_cluster: Any, registry_path: Path) -> None:
    with app_client(registry_path, dask_scheduler=dask_cluster.scheduler_address) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        assert isinstance(runtime.runner.executor, DaskExecutor)
        created = start_backtest(client, "airline", SMALL)
        assert created["status"] in ("queued", "running")
        job = wait_job(client, created["id"])
        assert job["status"] == "succeeded", job
        assert job["result"]["n_folds"] == 2 and job["result"]["aggregate"]["MAE"] > 0
        assert job["progress"]["done"] == job["progress"]["total"] == 2
        # the worker wrote the job's files to the shared data folder: the API serves the plot
        plot = client.get(f"/v1/jobs/{created['id']}/plot.png")
        assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
        wait_for(lambda: created["id"] not in runtime.runner.handles, 10, "the finished job's handle is reaped")


def test_a_retrain_on_dask_publishes_to_the_shared_registry(dask_cluster: Any, registry_path: Path) -> None:
    """The worker fits, snapshots the data into the shared data folder, publishes v2 into the
    shared registry and promotes it; the API serves v2 right after."""
    with app_client(registry_path, dask_scheduler=dask_cluster.scheduler_address, scheduler=False) as client:
        response = client.post("/v1/models/airline/retrain", json={"promote": "always"})
        assert response.status_code == 202, response.text
        job = wait_job(client, response.json()["id"])
        assert job["status"] == "succeeded", job
        result = job["result"]
        assert result["version"] == 2 and result["promoted"] is True, result
        # written by the worker process into the registry folder the API reads
        assert Registry(registry_path).read_aliases("airline")["production"] == 2
        wait_for(
            lambda: client.post("/v1/models/airline/predict", json={"horizon": 3}).json().get("version") == 2,
            10,
            "the retrained version is served",
        )


FOLDS = 12


def busy_keys(client: Any) -> list[str]:
    """The keys whose functions run in a worker thread now (cancelled ones included)."""
    active = client.run(lambda dask_worker: sorted(str(k) for k in dask_worker.active_keys))
    return [key for keys in active.values() for key in keys]


def job_files(registry_path: Path, job_id: str) -> Path:
    return job_dir(registry_path.parent / "data", job_id)


def test_cancel_on_dask_queued_pending_and_running_jobs(
    dask_cluster: Any, dask_client: Any, registry_path: Path
) -> None:
    long_body = {"splitter": {"type": "folds", "folds": FOLDS, "horizon": 3}, "metrics": ["MAE"]}
    with app_client(registry_path, dask_scheduler=dask_cluster.scheduler_address, max_concurrent_jobs=2) as client:
        runner = client.app.state.runtime.runner  # type: ignore[attr-defined]
        long = start_backtest(client, "tourism-monthly", long_body)
        wait_job(client, long["id"], until=lambda j: j["status"] == "running" and j["progress"]["stage"] == "folds")

        # the runner starts a second job, but the only worker thread is busy: Dask holds it
        pending = start_backtest(client, "airline", SMALL)
        wait_for(lambda: pending["id"] in runner.handles, 10, "the second job is submitted to the cluster")
        # a third waits in the store: the runner runs two at most
        queued = start_backtest(client, "airline", SMALL)
        assert job_of(client, queued["id"])["status"] == "queued"

        # a queued job is cancelled at once, without ever starting
        response = client.post(f"/v1/jobs/{queued['id']}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled" and response.json()["started_at"] is None

        # a job Dask holds: its task is cancelled before it runs
        assert client.post(f"/v1/jobs/{pending['id']}/cancel").status_code == 200
        cancelled = wait_job(client, pending["id"], timeout=30)
        assert cancelled["status"] == "cancelled" and cancelled["result"] is None, cancelled
        assert cancelled["progress"]["done"] == 0

        # the running job: marked cancelled at once; the worker stops at its next fold
        response = client.post(f"/v1/jobs/{long['id']}/cancel")
        assert response.status_code == 200, response.text
        stopped = wait_job(client, long["id"], timeout=30)
        assert stopped["status"] == "cancelled" and stopped["result"] is None, stopped
        wait_for(lambda: long["id"] not in runner.handles, 10, "the cancelled job's handle is dropped")
        # Dask cannot kill the thread: the task ends at its next fold, without the rest of the backtest
        wait_for(lambda: not busy_keys(dask_client), 60, "the cancelled task leaves the worker thread")
        assert not (job_files(registry_path, long["id"]) / "predictions.parquet").exists(), "it ran every fold"
        final = job_of(client, long["id"])
        assert final["status"] == "cancelled" and final["progress"]["done"] < final["progress"]["total"] == FOLDS

        # the slot is free: a new job runs to success on the same worker
        after = wait_job(client, start_backtest(client, "airline", SMALL)["id"])
        assert after["status"] == "succeeded", after
        for job_id in (queued["id"], pending["id"]):
            assert job_of(client, job_id)["status"] == "cancelled"
            assert not job_files(registry_path, job_id).exists(), "a cancelled job ran"


def test_a_worker_that_cannot_reach_the_job_store_fails_the_job(
    dask_cluster: Any, registry_path: Path, tmp_path: Path
) -> None:
    """The task raises (here: the store's URL is a path the worker cannot create): the
    handle's exit code is 1 and the runner fails the job instead of leaving it running."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    store = JobStore(url)
    context = WorkerContext(
        jobs_url="sqlite:////proc/no-such-dir/jobs.sqlite",
        registry_path=str(registry_path),
        data_dir=str(tmp_path / "data"),
        owner=process_owner(),
    )
    runner = JobRunner(store, DaskExecutor(dask_cluster.scheduler_address), context, max_concurrent=1)
    try:
        job, _ = store.create("backtest", "airline", PARAMS, total=3)
        failed = drive(runner, store, job.id, timeout=60)
    finally:
        runner.shutdown()
        store.dispose()
    assert failed.status == "failed" and failed.error == "worker process exited with code 1", failed


def test_an_unreachable_scheduler_fails_the_job_with_the_reason(registry_path: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    store = JobStore(url)
    context = WorkerContext(jobs_url=url, registry_path=str(registry_path), data_dir=str(tmp_path), owner="me")
    runner = JobRunner(store, DaskExecutor(address, connect_timeout=1.0), context)
    try:
        job, _ = store.create("backtest", "airline", PARAMS, total=3)
        runner.tick()
        failed = store.get(job.id)
    finally:
        runner.shutdown()
        store.dispose()
    assert failed.status == "failed", failed
    assert f"could not start a worker: cannot reach the Dask scheduler at {address}" in (failed.error or "")


def test_the_task_skips_a_job_that_is_not_its_runners_running_job(tmp_path: Path) -> None:
    """A task Dask starts late or recomputes never runs a job twice."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    store = JobStore(url)
    context = WorkerContext(jobs_url=url, registry_path=str(tmp_path), data_dir=str(tmp_path), owner="runner-A")
    try:
        queued, _ = store.create("backtest", "airline", PARAMS)
        assert run_on_worker(queued.id, context) == "skipped"
        theirs, _ = store.create("backtest", "airline", PARAMS)
        assert store.claim(theirs.id, "runner-B")
        assert run_on_worker(theirs.id, context) == "skipped"
        cancelled, _ = store.create("backtest", "airline", PARAMS)
        assert store.claim(cancelled.id, "runner-A")
        store.request_cancel(cancelled.id)
        assert run_on_worker(cancelled.id, context) == "skipped"
        done, _ = store.create("backtest", "airline", PARAMS)
        assert store.claim(done.id, "runner-A") and store.finish(done.id, "runner-A", "succeeded", result={})
        assert run_on_worker(done.id, context) == "skipped"
        for job in (queued, theirs, cancelled, done):
            assert store.get(job.id).stage in ("queued", "starting", "succeeded"), "the task touched the job"
    finally:
        store.dispose()


def test_per_series_fits_fan_out_over_the_cluster_from_inside_a_job(dask_client: Any) -> None:
    """sktime's "dask" backend inside a task on the only worker thread: ``seceded`` frees the
    thread, so the per-series sub-tasks run (without it they would wait for it forever)."""

    def fit_panel_in_a_task() -> tuple[bool, int, list[int]]:
        import pandas as pd
        from sktime.forecasting.naive import NaiveForecaster

        from service.processes import on_dask_worker, seceded

        index = pd.MultiIndex.from_product([["a", "b", "c"], pd.period_range("2020-01", periods=24, freq="M")])
        y = pd.DataFrame({"y": [float(i % 24 + 100 * (i // 24)) for i in range(72)]}, index=index)
        forecaster = NaiveForecaster(strategy="last")
        forecaster.set_config(**{"backend:parallel": "dask", "backend:parallel:params": {}})
        with seceded():
            forecaster.fit(y, fh=[1, 2])
        predicted = forecaster.predict()
        return on_dask_worker(), len(forecaster.forecasters_), [int(v) for v in predicted["y"].iloc[::2]]

    before = set(dask_client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))
    on_worker, fitted, predicted = dask_client.submit(fit_panel_in_a_task, pure=False).result(timeout=90)
    assert on_worker and fitted == 3
    assert predicted == [23, 123, 223]
    after = set(dask_client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))
    assert len(after - before) >= 2, f"no per-series sub-tasks reached the scheduler: {after - before}"
    assert not on_dask_worker_here()


def on_dask_worker_here() -> bool:
    from service.processes import on_dask_worker

    return on_dask_worker()


def _fit_theta_and_count_remember_data_notices() -> int:
    """On a worker: what sktime prints on stderr while one Theta fits, counted for its
    remember_data FutureWarning."""
    import contextlib
    import io

    from sktime.datasets import load_airline
    from sktime.forecasting.theta import ThetaForecaster

    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        ThetaForecaster(sp=12).fit(load_airline(), fh=[1])
    return printed.getvalue().count("remember_data")


def test_every_cluster_worker_handles_warnings_as_a_job_does() -> None:
    """Workers that run no job (only sktime's per-series tasks or shard tasks) get the job's
    warning handling from the executor's plugin; a bare client's worker prints the notice."""
    with local_cluster(2) as cluster:
        from distributed import Client

        bare = Client(cluster.scheduler_address, timeout=30, set_as_default=False)
        try:
            workers = list(bare.scheduler_info()["workers"])
            before = [
                bare.submit(_fit_theta_and_count_remember_data_notices, workers=[w], pure=False).result()
                for w in workers
            ]
            executor = DaskExecutor(cluster.scheduler_address)
            executor.client()  # connecting registers the plugin on every worker
            after = [
                bare.submit(_fit_theta_and_count_remember_data_notices, workers=[w], pure=False).result()
                for w in workers
            ]
            executor.shutdown()
        finally:
            bare.close(timeout=10)
    assert len(workers) == 2
    assert all(n > 0 for n in before), before
    assert after == [0, 0], after
