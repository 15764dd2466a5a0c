"""Library warnings go through the log: one line each, once per kind, JSON lines unless
FORECAST_LOG_JSON is off; sktime 1.2's remember_data notice is silenced, also after sktime's
ForecastingHorizon has left its ``default`` FutureWarning filter in front of ours. The real
server's log is JSON lines from its start through a panel retrain and live predicts, and
`forecast-service train` prints no raw warning block."""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sktime.datasets import load_airline
from sktime.forecasting.naive import NaiveForecaster

from service.observability import WARNINGS_LOGGER, JsonFormatter, WarningRouter, quiet_sktime_warnings
from tests.conftest import DEMO_SPECS
from tests.servers import CLI, ServerFactory

RAW_WARNING = re.compile(r"^\S+:\d+: \w*Warning: |^\s+warn(ings\.warn)?\(")  # what warnings.formatwarning prints


def per_series_panel(series: int = 12, length: int = 48) -> dict[str, Any]:
    """A panel sktime fits per series: one clone of the forecaster each (each one warned)."""
    return {
        "kind": "panel",
        "data": {
            "source": {"builtin": "tourism-monthly", "series": series, "length": length},
            "keys": ["series"],
            "time": "month",
            "targets": ["visitors"],
        },
        "freq": "M",
        "horizon": 6,
        "forecaster": {"class": "ThetaForecaster", "params": {"sp": 12}},
        "coverage": [0.9],
        "promotion": {"policy": "always"},
    }


GLOBAL_PANEL = {
    "kind": "panel",
    "data": {
        "source": {"builtin": "tourism-monthly", "series": 8, "length": 48},
        "keys": ["series"],
        "time": "month",
        "targets": ["visitors"],
    },
    "freq": "M",
    "horizon": 6,
    "forecaster": {
        "class": "make_reduction",
        "params": {
            "estimator": {"class": "LinearRegression"},
            "strategy": "recursive",
            "pooling": "global",
            "window_length": 12,
        },
    },
    "promotion": {"policy": "always"},
}


def write_registry(root: Path, specs: dict[str, dict[str, Any] | None]) -> Path:
    """``specs``: name -> spec (None: the demo model's own)."""
    for name, spec in specs.items():
        (root / name).mkdir(parents=True)
        if spec is None:
            (root / name / "model.yaml").write_bytes((DEMO_SPECS / name / "model.yaml").read_bytes())
        else:
            (root / name / "model.yaml").write_text(yaml.safe_dump(spec))
    return root


def captured(logger_name: str = WARNINGS_LOGGER) -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger(logger_name).addHandler(handler)
    return stream, handler


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- in process
def test_each_kind_of_warning_is_logged_once_as_one_json_line() -> None:
    stream, handler = captured()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = WarningRouter()
            for _ in range(3):
                warnings.warn("a notice that\n   spans lines", UserWarning, stacklevel=1)
            warnings.warn("another notice", UserWarning, stacklevel=1)
            warnings.warn("a notice that\n   spans lines", RuntimeWarning, stacklevel=1)
    finally:
        logging.getLogger(WARNINGS_LOGGER).removeHandler(handler)
    lines = json_lines(stream.getvalue())
    assert [(line["category"], line["message"]) for line in lines] == [
        ("UserWarning", "a notice that spans lines"),
        ("UserWarning", "another notice"),
        ("RuntimeWarning", "a notice that spans lines"),
    ]
    assert {(line["level"], line["logger"], line["origin"]) for line in lines} == {("warning", "py.warnings", __name__)}
    assert lines[0]["location"].startswith(__file__)


def test_the_remember_data_notice_is_dropped_even_behind_sktimes_default_filter() -> None:
    stream, handler = captured()
    try:
        with warnings.catch_warnings():
            quiet_sktime_warnings()
            warnings.showwarning = router = WarningRouter()
            forecaster = NaiveForecaster().fit(load_airline(), fh=[1, 2])
            forecaster.predict()
            # what sktime's ForecastingHorizon leaves in front of every filter when it converts
            # times (sktime.utils.warnings._SuppressWarningPattern): the filter alone does not hold
            warnings.filterwarnings("default", category=FutureWarning)
            for _ in range(5):
                forecaster.clone().fit(load_airline(), fh=[1]).predict()
            warnings.warn("still shown", FutureWarning, stacklevel=1)
    finally:
        logging.getLogger(WARNINGS_LOGGER).removeHandler(handler)
    messages = [line["message"] for line in json_lines(stream.getvalue())]
    assert "still shown" in messages
    assert not [m for m in messages if "remember_data" in m]
    assert router.seen  # the router saw what passed the filters


# ----------------------------------------------------------------------------- processes
SCRIPT = textwrap.dedent(
    """
    import warnings
    from service.observability import quiet_sktime_warnings
    quiet_sktime_warnings()
    from sktime.datasets import load_airline
    from sktime.forecasting.naive import NaiveForecaster
    forecaster = NaiveForecaster().fit(load_airline(), fh=[1, 2])
    forecaster.predict()
    for _ in range(5):
        forecaster.clone().fit(load_airline(), fh=[1])
    for _ in range(3):
        warnings.warn("something odd\\nhappened", UserWarning)
    """
)


@pytest.mark.parametrize("json_on", [True, False])
def test_a_process_nobody_configured_logging_in_writes_one_line_per_kind(json_on: bool) -> None:
    """The CLI and job workers: no handler anywhere, still one line, in FORECAST_LOG_JSON's format."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
    if not json_on:
        env["FORECAST_LOG_JSON"] = "false"
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    if json_on:
        entry = json.loads(lines[0])
        assert (entry["level"], entry["category"], entry["message"]) == (
            "warning",
            "UserWarning",
            "something odd happened",
        )
    else:
        assert lines[0].endswith("WARNING py.warnings: something odd happened")


def test_cli_train_prints_no_raw_warning_block(tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "models", {"panel": per_series_panel()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
    result = subprocess.run(
        [str(CLI), "train", "panel", "--registry", str(registry)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "remember_data" not in output
    assert not [line for line in output.splitlines() if RAW_WARNING.search(line)], output
    for line in output.splitlines():
        if "Warning" in line:
            json.loads(line)  # a warning, if any, is a JSON line
    assert "panel v1 published and promoted" in result.stdout


# ----------------------------------------------------------------------------- the real server
def wait_job(http: httpx.Client, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job = http.get(f"/v1/jobs/{job_id}").json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.3)
        job = http.get(f"/v1/jobs/{job_id}").json()
    return job


def run_server_through(tmp_path: Path, specs: dict[str, dict[str, Any] | None], retrain: str) -> str:
    """Serve ``specs`` (trained at start), retrain ``retrain`` through a job, predict from the
    fast path and live from every model; the server's whole log once it has stopped."""
    registry = write_registry(tmp_path / "models", specs)
    with ServerFactory(tmp_path, clean_env=True, new_session=True, ready_timeout=240.0, client_timeout=60.0) as start:
        server = start(registry, "--train-missing", data_dir=tmp_path / "data").wait_ready()
        with server.client() as http:
            queued = http.post(f"/v1/models/{retrain}/retrain")
            assert queued.status_code == 202, queued.text
            job = wait_job(http, queued.json()["id"])
            assert job["status"] == "succeeded", (job, server.log())
            for name in specs:
                for body in ({"horizon": 3}, {"horizon": 20}):
                    answer = http.post(f"/v1/models/{name}/predict", json=body)
                    assert answer.status_code == 200, (name, body, answer.text)
        assert server.stop() == 0
    return server.log_path.read_text()


# loky's resource tracker is a process of joblib's own (not a worker: no initializer runs in
# it); at shutdown it may warn about memmapped folders of the gate backtests, in plain text
RESOURCE_TRACKER = ("loky/backend/resource_tracker.py", "  warnings.warn(")


def assert_json_lines_with_each_warning_kind_once(log: str, tolerate_resource_tracker: bool = False) -> None:
    entries = []
    for number, line in enumerate(log.splitlines(), start=1):
        if tolerate_resource_tracker and any(marker in line for marker in RESOURCE_TRACKER):
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"log line {number} is not JSON: {line[:300]!r}\n{log[-6000:]}") from None
    assert "remember_data" not in log
    kinds = collections.Counter(
        (e.get("category"), e.get("origin"), e["message"][:60]) for e in entries if e["logger"] == WARNINGS_LOGGER
    )
    assert all(count == 1 for count in kinds.values()), kinds


@pytest.mark.slow
def test_server_log_is_json_lines_through_training_a_panel_retrain_and_predicts(tmp_path: Path) -> None:
    log = run_server_through(
        tmp_path, {"airline": None, "panel": per_series_panel(), "global": GLOBAL_PANEL}, retrain="global"
    )
    assert_json_lines_with_each_warning_kind_once(log)
    assert "loaded global v2" in log


@pytest.mark.slow
def test_server_log_is_json_lines_through_a_per_series_panel_retrain(tmp_path: Path) -> None:
    log = run_server_through(tmp_path, {"panel": per_series_panel(series=6, length=36)}, retrain="panel")
    assert_json_lines_with_each_warning_kind_once(log, tolerate_resource_tracker=True)


# ----------------------------------------------------------------------------- the access log's thread
class _Seen(logging.Handler):
    """Records as a root handler receives them, with the thread that handled them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((threading.current_thread().name, json.loads(self.format(record))))


def test_access_lines_are_written_off_the_event_loop_with_their_request_id(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.observability import access_log, access_log_queue
    from tests.conftest import make_settings

    (tmp_path / "models").mkdir()
    seen = _Seen()
    root = logging.getLogger()
    level = root.level
    root.addHandler(seen)
    root.setLevel(logging.INFO)
    try:
        with TestClient(create_app(make_settings(tmp_path / "models", scheduler=False))) as client:
            assert access_log_queue.running
            loop_thread = client.portal.call(lambda: threading.current_thread().name)  # type: ignore[union-attr]
            for n in range(20):
                assert client.get("/healthz", headers={"X-Request-ID": f"req-{n}"}).status_code == 200
        assert not access_log_queue.running  # stopped with the lifespan
        assert access_log.handlers == [] and access_log.propagate
    finally:
        root.removeHandler(seen)
        root.setLevel(level)
    access = [(thread, line) for thread, line in seen.lines if line["logger"] == "service.access"]
    assert [line["request_id"] for _, line in access] == [f"req-{n}" for n in range(20)]  # all, in order
    assert all(line["route"] == "/healthz" and line["status"] == 200 for _, line in access)
    assert loop_thread not in {thread for thread, _ in access}  # formatted and written by the listener


def test_without_a_running_app_access_lines_are_written_where_they_are_logged() -> None:
    from service.observability import AccessLogQueue, request_id_var

    logger = logging.getLogger("service.access.test")
    seen = _Seen()
    logger.parent.addHandler(seen)  # type: ignore[union-attr]
    logger.setLevel(logging.INFO)
    queued = AccessLogQueue(logger)
    try:
        for n, step in enumerate(["before", "start", "start", "stop", "stop", "after"]):
            if step in ("start", "stop"):
                getattr(queued, step)()  # a second app in the same process shares it
            token = request_id_var.set(f"rid-{n}")
            queued.log({"step": step, "running": queued.running})
            request_id_var.reset(token)
    finally:
        logger.parent.removeHandler(seen)  # type: ignore[union-attr]
    here = threading.current_thread().name
    lines = [(line["step"], line["running"], line["request_id"], thread == here) for thread, line in seen.lines]
    assert lines == [
        ("before", False, "rid-0", True),
        ("start", True, "rid-1", False),
        ("start", True, "rid-2", False),
        ("stop", True, "rid-3", False),  # one app still runs
        ("stop", False, "rid-4", True),
        ("after", False, "rid-5", True),
    ]
    assert all(line["message"] == "request" and line["logger"] == "service.access.test" for _, line in seen.lines)
