"""SIGTERM: requests in flight finish, running jobs end `failed: interrupted`, exit code 0,
and the exit never waits longer than FORECAST_SHUTDOWN_TIMEOUT (plus cleanup)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.jobs.store import JobStore

from .conftest import ServerFactory, ServerProcess, copy_models

pytestmark = pytest.mark.slow

CLEANUP = 15.0  # seconds beyond the shutdown timeout for the lifespan shutdown and the interpreter exit


def slow_predict(server: ServerProcess, outcome: dict[str, Any], timeout: float, horizon: int = 24) -> threading.Thread:
    """tourism-monthly beyond its precomputed 12 steps: a live global XGBoost forecast of
    60 series, seconds long. Runs in a thread; ``outcome`` gets the response or the error."""

    def call() -> None:
        try:
            with httpx.Client(base_url=server.base_url, timeout=timeout) as client:
                outcome["response"] = client.post("/v1/models/tourism-monthly/predict", json={"horizon": horizon})
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    return caller


def sigterm_and_wait(server: ServerProcess, bound: float) -> tuple[int | None, float]:
    """SIGTERM; the exit code (None if still running after ``bound`` + 120 s) and the seconds it took."""
    assert server.process is not None
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=bound + 120)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - sent


def test_sigterm_lets_the_live_predict_finish(
    trained_registry_path: Path, tmp_path: Path, start_server: ServerFactory
) -> None:
    shutdown_timeout = 90  # generous: the forecast may take long on a busy machine
    registry = copy_models(trained_registry_path, tmp_path / "models", ["tourism-monthly"])
    server = start_server(
        registry,
        FORECAST_DATA_DIR=str(tmp_path / "data"),
        FORECAST_SHUTDOWN_TIMEOUT=str(shutdown_timeout),
        FORECAST_LIVE_PREDICT_TIMEOUT="300",
        FORECAST_SCHEDULER="false",
    )
    server.wait_ready()
    outcome: dict[str, Any] = {}
    caller = slow_predict(server, outcome, timeout=shutdown_timeout + 60)
    time.sleep(2.0)  # the request is in, the forecast running
    assert caller.is_alive(), f"the live predict finished within 2 s; the test proves nothing: {outcome}"
    code, took = sigterm_and_wait(server, shutdown_timeout + CLEANUP)
    caller.join(timeout=30)

    assert "error" not in outcome, f"the in-flight request failed: {outcome['error']!r}"
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["forecast"]["visitors"]) == 60 * 24
    assert code == 0, f"exit code {code} after SIGTERM ({took:.0f}s)"
    assert took < shutdown_timeout + CLEANUP, f"exit took {took:.0f}s"
    assert "Traceback" not in server.log(), server.log()


def test_sigterm_interrupts_the_running_job_and_exits_within_the_shutdown_timeout(
    trained_registry_path: Path, tmp_path: Path, start_server: ServerFactory
) -> None:
    """Requests that outlive FORECAST_SHUTDOWN_TIMEOUT are cut off; the running job is
    marked failed (interrupted); the process must not then wait for the forecasts' worker
    threads to finish before it exits. Four live forecasts (they take turns on the
    version's lock) keep those threads busy far longer than the bound on any machine."""
    shutdown_timeout = 1
    cleanup = 8.0
    registry = copy_models(trained_registry_path, tmp_path / "models", ["airline", "tourism-monthly"])
    data_dir = tmp_path / "data"
    server = start_server(
        registry,
        FORECAST_DATA_DIR=str(data_dir),
        FORECAST_SHUTDOWN_TIMEOUT=str(shutdown_timeout),
        FORECAST_LIVE_PREDICT_TIMEOUT="300",
        FORECAST_SCHEDULER="false",
    )
    server.wait_ready()
    with server.client(timeout=30.0) as http:
        # 100 refits of a Theta model: a job that is still running when SIGTERM comes
        started = http.post(
            "/v1/models/airline/backtests",
            json={"splitter": {"type": "folds", "folds": 100, "horizon": 1}, "strategy": "refit"},
        )
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]
        deadline = time.monotonic() + 30
        while (status := http.get(f"/v1/jobs/{job_id}").json()["status"]) == "queued":
            assert time.monotonic() < deadline, "the backtest never started"
            time.sleep(0.1)
        assert status == "running", status
    outcomes: list[dict[str, Any]] = [{} for _ in range(4)]
    callers = [slow_predict(server, outcome, timeout=300, horizon=20 + i) for i, outcome in enumerate(outcomes)]
    time.sleep(2.0)  # the requests are in, the first forecast running, the others waiting for it
    assert all(c.is_alive() for c in callers), f"a live predict finished within 2 s: {outcomes}"
    code, took = sigterm_and_wait(server, shutdown_timeout + cleanup)
    assert code is not None, "the server never exited after SIGTERM"

    job = JobStore(f"sqlite:///{(data_dir / 'jobs.sqlite').resolve()}").get(job_id)
    assert job.status == "failed", job
    assert job.error is not None and "interrupted" in job.error, job
    assert took < shutdown_timeout + cleanup, (
        f"the server exited {took:.0f}s after SIGTERM, FORECAST_SHUTDOWN_TIMEOUT is {shutdown_timeout}s "
        f"(exit code {code}):\n{server.log()[-2000:]}"
    )
    assert code == 0, f"exit code {code}"
