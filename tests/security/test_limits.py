"""Limits: body size (declared or streamed, memory bounded), horizon, series, rows, and the
live-predict timeout (503 + Retry-After)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import make_settings, wait_ready
from tests.servers import read_response

from .conftest import HOST, ServerProcess, copy_models

PROBLEM_JSON = "application/problem+json"
LIMIT = 1024 * 1024  # FORECAST_MAX_BODY_BYTES (and FORECAST_MAX_UPLOAD_BYTES) of the server under test
MB = 1024 * 1024


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


# --------------------------------------------------------------------------- in process
def test_declared_oversized_body_is_refused_before_it_is_read(registry_path: Path) -> None:
    """The ASGI app answers 413 from the Content-Length alone: ``receive`` is never called."""
    app = create_app(make_settings(registry_path, max_body_bytes=LIMIT, max_upload_bytes=LIMIT, scheduler=False))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read although Content-Length was over the limit")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for method, path in [
        ("POST", "/v1/models/airline/predict"),
        ("PUT", "/v1/datasets/big"),
        ("PUT", "/v1/models/big"),
        ("POST", "/v1/models/airline/backtests"),
    ]:
        sent.clear()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"content-length", str(LIMIT + 1).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        asyncio.run(app(scope, receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        assert start["status"] == 413, (path, sent)
        headers = dict(start["headers"])
        assert headers[b"content-type"].startswith(PROBLEM_JSON.encode())
        body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
        assert body["status"] == 413 and str(LIMIT) in body["detail"]


@pytest.fixture
def limited(registry_path: Path) -> Iterator[TestClient]:
    settings = make_settings(
        registry_path,
        max_body_bytes=LIMIT,
        max_horizon=24,
        max_series_per_request=3,
        max_rows_per_request=5,
        max_upload_rows=5,
        max_upload_bytes=LIMIT,
        scheduler=False,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def test_streamed_oversized_body_is_refused_in_process(limited: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b" " * (LIMIT // 2)

    response = limited.post(
        "/v1/models/airline/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)


def test_horizon_over_the_maximum_is_422(limited: TestClient) -> None:
    assert limited.post("/v1/models/airline/predict", json={"horizon": 24}).status_code == 200
    body = assert_problem(limited.post("/v1/models/airline/predict", json={"horizon": 25}), 422)
    assert body.get("maximum") == 24 and body.get("field") == "horizon", body
    body = assert_problem(limited.post("/v1/models/airline/predict", json={"fh": [1, 400]}), 422)
    assert body.get("field") == "fh", body
    body = assert_problem(limited.post("/v1/models/airline/predict", json={"timestamps": ["1963-01-01"]}), 422)
    assert body.get("field") == "timestamps", body
    assert_problem(limited.get("/v1/models/airline/forecast.png", params={"horizon": 25}), 422)


def test_too_many_series_is_422(limited: TestClient) -> None:
    ids = limited.post("/v1/models/tourism-monthly/predict", json={"horizon": 1}).json()["forecast"]["series"]
    ok = limited.post("/v1/models/tourism-monthly/predict", json={"horizon": 1, "series": ids[:3]})
    assert ok.status_code == 200, ok.text
    body = assert_problem(
        limited.post("/v1/models/tourism-monthly/predict", json={"horizon": 1, "series": ids[:4]}), 422
    )
    assert body.get("field") == "series", body
    # the check comes before any lookup: thousands of unknown names are refused as cheaply
    many = [f"nope-{i}" for i in range(5000)]
    assert_problem(limited.post("/v1/models/tourism-monthly/predict", json={"horizon": 1, "series": many}), 422)


def test_too_many_rows_is_422(limited: TestClient) -> None:
    months = ["1961-01-01", "1961-02-01", "1961-03-01", "1961-04-01", "1961-05-01", "1961-06-01"]
    observations = {"month": months, "passengers": [420.0, 410.0, 450.0, 460.0, 470.0, 520.0]}
    body = assert_problem(
        limited.post("/v1/models/airline/predict", json={"horizon": 2, "observations": observations}), 422
    )
    assert body.get("field") == "observations", body
    five = {k: v[:5] for k, v in observations.items()}
    assert limited.post("/v1/models/airline/predict", json={"horizon": 2, "observations": five}).status_code == 200

    exogenous = {
        "quarter": list(range(187, 193)),
        **{c: [0.1] * 6 for c in ("income", "production", "savings", "unemployment")},
    }
    body = assert_problem(limited.post("/v1/models/uschange/predict", json={"horizon": 6, "exogenous": exogenous}), 422)
    assert body.get("field") == "exogenous", body

    csv = "t,y\n" + "".join(f"{i},{i}.5\n" for i in range(1, 7))
    response = limited.put("/v1/datasets/rows?time=t&targets=y", content=csv, headers={"content-type": "text/csv"})
    assert_problem(response, 422)
    assert limited.get("/v1/datasets/rows").status_code == 404, "a refused upload was stored"


# --------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def server(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("limits-server")
    registry = copy_models(trained_registry_path, root / "models", ["airline", "tourism-monthly"])
    process = ServerProcess(
        registry,
        root / "server.log",
        FORECAST_MAX_BODY_BYTES=str(LIMIT),
        FORECAST_MAX_UPLOAD_BYTES=str(LIMIT),
        FORECAST_LIVE_PREDICT_TIMEOUT="0.5",
        FORECAST_DATA_DIR=str(root / "data"),
        FORECAST_SCHEDULER="false",
    ).start()
    try:
        process.wait_ready()
        yield process
    finally:
        # a timed-out live forecast may still run in a worker thread: no need to wait for it
        process.stop(signal.SIGKILL)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_declared_oversized_body_gets_413_without_sending_it(server: ServerProcess) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v1/models/airline/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )  # 100 MB announced, not a byte sent: the answer must not wait for them
        status, headers, body = read_response(sock)
    assert status == 413
    assert headers["content-type"].startswith(PROBLEM_JSON)
    assert json.loads(body)["status"] == 413
    assert time.monotonic() - started < 5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/models/airline/predict"), ("PUT", "/v1/datasets/big?time=t&targets=y")]
)
def test_chunked_oversized_body_is_413(server: ServerProcess, method: str, path: str) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
        for _ in range(3 * LIMIT // 65536):
            yield b" " * 65536

    with httpx.Client(base_url=server.base_url, timeout=30.0) as http:
        response = http.request(method, path, content=body(), headers={"content-type": "application/json"})
        assert "content-length" not in response.request.headers
        assert_problem(response, 413)
        assert http.get("/v1/datasets/big").status_code == 404


@pytest.mark.slow
def test_streaming_200mb_keeps_server_memory_bounded(server: ServerProcess) -> None:
    assert server.process is not None
    pid = server.process.pid
    baseline = rss_mb(pid)
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                peak = max(peak, rss_mb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    chunk = b"7" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    total = 200 * MB
    sent = 0
    answer = b""
    try:
        with socket.create_connection((HOST, server.port), timeout=30) as sock:
            sock.sendall(
                b"PUT /v1/datasets/stream?time=t&targets=y HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                while sent < total:
                    if select.select([sock], [], [], 0)[0]:
                        data = sock.recv(65536)
                        answer += data
                        if not data:
                            break  # the server closed the connection: it will not read the rest
                    sock.sendall(frame)
                    sent += len(chunk)
                sock.sendall(b"0\r\n\r\n")
            sock.settimeout(10)
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                while b"\r\n\r\n" not in answer:
                    data = sock.recv(65536)
                    if not data:
                        break
                    answer += data
    finally:
        done.set()
        sampler.join()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert sent > 2 * LIMIT
    assert peak - baseline < 50, f"server RSS grew {peak - baseline:.0f} MB while {sent / MB:.0f} MB streamed to it"
    with httpx.Client(base_url=server.base_url, timeout=10.0) as http:
        assert http.get("/healthz").status_code == 200


@pytest.mark.slow
def test_slow_live_predict_times_out_with_503_and_retry_after(server: ServerProcess) -> None:
    """tourism-monthly beyond its precomputed 12 steps is a live global XGBoost forecast
    over 60 series: seconds, far beyond the 0.5 s setting."""
    with httpx.Client(base_url=server.base_url, timeout=60.0) as http:
        started = time.monotonic()
        response = http.post("/v1/models/tourism-monthly/predict", json={"horizon": 24})
        elapsed = time.monotonic() - started
        body = assert_problem(response, 503)
        assert "FORECAST_LIVE_PREDICT_TIMEOUT" in body["detail"], body
        retry_after = response.headers.get("retry-after")
        assert retry_after is not None and int(retry_after) > 0, response.headers
        assert elapsed < 5, f"the 503 came after {elapsed:.1f}s"
        # the server stays responsive meanwhile: the fast path does not wait for the live call
        fast = http.post("/v1/models/airline/predict", json={"horizon": 3})
        assert fast.status_code == 200, fast.text
        assert http.get("/healthz").status_code == 200
