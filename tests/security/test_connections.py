"""Slow and vanishing clients against a real server: the header deadline (first request and
keep-alive), the keep-alive timeout, the connection limit, the open-files limit, the
body-pause 408, client disconnects in /metrics, and CLI settings reaching ``--workers``."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import os
import resource
import selectors
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.registry.store import Registry
from tests.servers import read_response

from .conftest import HOST, ServerProcess, publish_naive

HEADER_TIMEOUT = 2.0  # was 3.0: still 4x KEEP_ALIVE_TIMEOUT, so an idle close by the header deadline fails its test
BODY_TIMEOUT = 1.0
KEEP_ALIVE_TIMEOUT = 0.5
MAX_CONNECTIONS = 20
SLACK = 2.0  # two shared cores: generous, and still far below "never"
PROBLEM_JSON = "application/problem+json"
TIMEOUTS = {
    "FORECAST_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "FORECAST_BODY_TIMEOUT": str(BODY_TIMEOUT),
    "FORECAST_KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE_TIMEOUT),
    "FORECAST_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
}
HALF_HEADER = b"GET /healthz HTTP/1.1\r\nHost: te"


def server_env(root: Path) -> dict[str, str]:
    return {**TIMEOUTS, "FORECAST_DATA_DIR": str(root / "data"), "FORECAST_SCHEDULER": "false"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server (empty registry) with small timeouts, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("connections")
    (root / "models").mkdir()
    process = ServerProcess(root / "models", root / "server.log", **server_env(root)).start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


# --------------------------------------------------------------------------- helpers
def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection((HOST, server.port), timeout=10)


def seconds_until_closed(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closes ``sock`` (EOF or reset); None if still open after ``limit``."""
    started = time.monotonic()
    while (left := limit - (time.monotonic() - started)) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def request_count(server: ServerProcess, method: str, route: str, status: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    wanted = {"method": method, "route": route, "status": status}
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "forecast_http_request_duration_seconds_count"
        and all(sample.labels.get(k) == v for k, v in wanted.items())
    )


def wait_closed(sockets: list[socket.socket], limit: float) -> list[socket.socket]:
    """Wait until the server has closed each of ``sockets``; returns those still open after ``limit``."""
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_ = set(sockets)
    deadline = time.monotonic() + limit
    while open_ and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                closed = not sock.recv(65536)
            except ConnectionResetError:
                closed = True
            except BlockingIOError:
                closed = False
            if closed:
                selector.unregister(sock)
                open_.discard(sock)
    selector.close()
    return list(open_)


@contextlib.contextmanager
def half_open(server: ServerProcess, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that each send half a header line, then nothing."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = connect(server)
            sockets.append(sock)
            with contextlib.suppress(OSError):  # a server out of descriptors may drop it at once
                sock.sendall(HALF_HEADER)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def healthz_status(server: ServerProcess, timeout: float) -> int | str:
    try:
        return httpx.get(f"{server.base_url}/healthz", timeout=timeout).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__


# --------------------------------------------------------------------------- header deadline
def test_half_a_header_line_is_closed_within_the_header_timeout(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(HALF_HEADER)
        closed_after = seconds_until_closed(sock, HEADER_TIMEOUT + SLACK)
    assert closed_after is not None, f"a half-sent header still held its connection after {HEADER_TIMEOUT + SLACK}s"
    assert closed_after > HEADER_TIMEOUT * 0.8, f"closed after {closed_after:.2f}s, before the header timeout"


def test_keep_alive_connection_gets_the_header_deadline_for_its_next_request(server: ServerProcess) -> None:
    """uvicorn cancels its keep-alive timer on the first byte: a slow next request must not live forever."""
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_response(sock, 10)[0] == 200
        sock.sendall(HALF_HEADER)
        closed_after = seconds_until_closed(sock, HEADER_TIMEOUT + SLACK)
    assert closed_after is not None, "the second request's half header held the keep-alive connection open"


def test_idle_keep_alive_connection_is_closed_after_keep_alive_timeout(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_response(sock, 10)[0] == 200
        closed_after = seconds_until_closed(sock, HEADER_TIMEOUT)  # the header deadline would close it later
    assert closed_after is not None, f"an idle keep-alive connection was still open after {HEADER_TIMEOUT}s"
    assert closed_after < KEEP_ALIVE_TIMEOUT + 1.5


def test_half_open_flood_counts_against_max_connections_and_is_closed(server: ServerProcess) -> None:
    with half_open(server, 50) as sockets:
        time.sleep(0.3)  # let the server accept them
        assert healthz_status(server, 5.0) == 503, "FORECAST_MAX_CONNECTIONS is not the server's connection limit"
        still_open = wait_closed(sockets, HEADER_TIMEOUT + SLACK)
        assert not still_open, f"{len(still_open)} of 50 half-open connections outlived the header timeout"
        assert healthz_status(server, 5.0) == 200


def test_half_open_flood_under_an_open_files_limit_does_not_lock_clients_out(server: ServerProcess) -> None:
    """The incident: more half-open connections than free file descriptors; real clients must get in again."""
    assert server.process is not None
    pid = server.process.pid
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    original = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 40, original[1]))
    try:
        with half_open(server, 60):
            time.sleep(0.3)
            deadline = time.monotonic() + 2 * HEADER_TIMEOUT + SLACK
            seen: list[int | str] = []
            while time.monotonic() < deadline and (not seen or seen[-1] != 200):
                seen.append(healthz_status(server, max(0.1, min(2.0, deadline - time.monotonic()))))
                time.sleep(0.1)
            assert seen[-1] == 200, f"/healthz never answered 200 while the flood was held: {seen}"
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, original)


# --------------------------------------------------------------------------- body pauses
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/models/nothing/predict"), ("PUT", "/v1/datasets/stalled?time=t&targets=y")],
    ids=["fast-lane", "route"],
)
def test_a_body_that_pauses_too_long_gets_408_problem(server: ServerProcess, method: str, path: str) -> None:
    with connect(server) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n".encode()
        )
        for chunk in range(3):  # a slow but steady body, longer than the timeout in all, is not cut
            if chunk:
                time.sleep(BODY_TIMEOUT * 0.5)
            sock.sendall(b" " * 10)
        last_chunk = time.monotonic()
        status, headers, body = read_response(sock, BODY_TIMEOUT + SLACK)
        waited = time.monotonic() - last_chunk
        assert status == 408, body
        assert headers["content-type"].startswith(PROBLEM_JSON)
        problem = json.loads(body)
        assert {"type", "title", "status", "detail"} <= problem.keys()
        assert problem["status"] == 408 and "FORECAST_BODY_TIMEOUT" in problem["detail"]
        assert waited > BODY_TIMEOUT * 0.8, f"408 {waited:.2f}s after the last chunk: the deadline is per pause"
        assert seconds_until_closed(sock, SLACK) is not None, "the connection stayed open after the 408"


# --------------------------------------------------------------------------- client disconnects
@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("PUT", "/v1/datasets/gone?time=t&targets=y", "/v1/datasets/{name}"),
        ("POST", "/v1/models/nothing/predict", "/v1/models/{name}/predict"),
    ],
    ids=["route", "fast-lane"],
)
def test_client_gone_mid_body_is_counted_as_499_not_500(
    server: ServerProcess, method: str, path: str, route: str
) -> None:
    before = request_count(server, method, route, "499")
    log_offset = server.log_path.stat().st_size
    with connect(server) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
            + b"{" * 10
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while request_count(server, method, route, "499") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert request_count(server, method, route, "499") == before + 1
    for status in ("500", "400"):
        assert request_count(server, method, route, status) == 0, f"the vanished client was counted as {status}"
    log = server.log_path.read_bytes()[log_offset:].decode(errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log and "Exception in ASGI" not in log, log[-3000:]


# --------------------------------------------------------------------------- --workers
def test_workers_serve_the_registry_and_timeouts_given_on_the_command_line(tmp_path: Path) -> None:
    registry = tmp_path / "given"
    with warnings.catch_warnings(record=True):  # sktime's remember_data notice: swallowed
        publish_naive(Registry(registry), "toy")
    (tmp_path / "elsewhere").mkdir()
    server = ServerProcess(
        registry,
        tmp_path / "server.log",
        "--workers",
        "2",
        FORECAST_REGISTRY=str(tmp_path / "elsewhere"),  # what the workers served before: not the --registry
        **server_env(tmp_path),
    ).start()
    try:
        server.wait_ready()
        deadline = time.monotonic() + 30
        for _ in range(6):  # fresh connections: the kernel spreads them over both workers
            while (ready := httpx.get(f"{server.base_url}/readyz", timeout=10)).status_code == 503:
                assert time.monotonic() < deadline, ready.text  # the other worker may still be loading
                time.sleep(0.2)
            assert ready.status_code == 200 and ready.json()["models"] == ["toy"], ready.text
        with connect(server) as sock:  # the workers' uvicorn has the header deadline too
            sock.sendall(HALF_HEADER)
            assert seconds_until_closed(sock, HEADER_TIMEOUT + SLACK) is not None
    finally:
        server.stop()


# --------------------------------------------------------------------------- uvicorn internals
def test_the_uvicorn_internals_that_service_serving_protocol_uses_still_exist() -> None:
    """service/serving_protocol.py subclasses uvicorn's httptools protocol: an upgrade that renames
    what it relies on must fail here, not silently drop the header deadline."""
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from service.serving_protocol import HeaderTimeoutProtocol, protocol_factory

    assert issubclass(HeaderTimeoutProtocol, HttpToolsProtocol)
    assert list(inspect.signature(HttpToolsProtocol.__init__).parameters) == [
        "self",
        "config",
        "server_state",
        "app_state",
        "_loop",
    ]
    for callback in ("connection_made", "connection_lost", "on_headers_complete", "on_response_complete"):
        assert callable(getattr(HttpToolsProtocol, callback)), callback

    async def app(scope: object, receive: object, send: object) -> None:  # pragma: no cover - never called
        raise AssertionError

    loop = asyncio.new_event_loop()
    try:
        config = Config(app, http=protocol_factory(1.0))  # type: ignore[arg-type]
        config.load()
        made = config.http_protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)  # type: ignore[call-arg]
        assert isinstance(made, HeaderTimeoutProtocol)
        assert made.loop is loop
        assert isinstance(made.pipeline, collections.deque)
        transport = mock.MagicMock(spec=asyncio.Transport)
        transport.get_extra_info.return_value = None
        transport.is_closing.return_value = False
        made.connection_made(transport)
        assert made.transport is transport
        loop.run_until_complete(asyncio.sleep(1.2))
        transport.close.assert_called_once()  # the header deadline, armed on connection_made
        made.connection_lost(None)
    finally:
        loop.close()
