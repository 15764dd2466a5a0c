"""The real server as a subprocess (`forecast-service serve`) on a free loopback port.

Every server writes its output to a log file; when a test fails, the log's tail is
attached to the report. Teardown always terminates (then kills) the process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

HOST = "127.0.0.1"
CLI = Path(sys.executable).with_name("forecast-service")
STARTUP_TIMEOUT = 60.0
LOG_TAIL = 8000
ACCESS_OK = re.compile(r'^INFO: +[\d.:]+ - "[A-Z]+ \S+ HTTP/[\d.]+" 2\d\d ')


def free_port() -> int:
    """A port nobody listens on right now (bind to 0 on loopback, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def copy_models(source: Path, target: Path, names: list[str]) -> Path:
    """A private registry holding ``names`` copied from a trained registry."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns(".lock", "*.lock"))
    return target


class ServerProcess:
    """One `forecast-service serve` process; output goes to ``log_path``."""

    def __init__(self, registry: Path, log_path: Path, *extra_args: str, port: int | None = None, **env: str) -> None:
        self.registry = registry
        self.port = port or free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.args = [str(CLI), "serve", "--registry", str(registry), "--host", HOST, "--port", str(self.port)]
        self.args.extend(extra_args)
        self.env = {**os.environ, "FORECAST_POLL_INTERVAL": "0.2", "FORECAST_LOG_LEVEL": "info", **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )
        return self

    def log(self) -> str:
        """The log's tail, without the access lines of successful requests."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(line for line in lines if not ACCESS_OK.match(line))[-LOG_TAIL:]

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll /readyz until 200; fail with the log if the process dies or the deadline passes."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(base_url=self.base_url, timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited with {self.process.returncode} before ready:\n{self.log()}")
                try:
                    response = http.get("/readyz")
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout:.0f}s (last: {last}):\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send ``sig``, wait up to ``timeout`` s, then kill; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)


class ServerFactory:
    """Starts servers inside a test (not yet ready); the fixture stops them all afterwards."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[ServerProcess] = []

    def __call__(self, registry: Path, *extra_args: str, port: int | None = None, **env: str) -> ServerProcess:
        log_path = self.log_dir / f"server-{len(self.servers)}.log"
        server = ServerProcess(registry, log_path, *extra_args, port=port, **env)
        self.servers.append(server)
        return server.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the log of every server the test used to its failure report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        servers = value.servers if isinstance(value, ServerFactory) else [value]
        for server in servers:
            if isinstance(server, ServerProcess):
                report.sections.append((f"server log ({server.base_url})", server.log() or "(empty)"))


def running_server(registry: Path, log_path: Path, *extra_args: str, **env: str) -> Iterator[ServerProcess]:
    """Start, wait until ready, yield, and always stop."""
    server = ServerProcess(registry, log_path, *extra_args, **env).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """``start_server(registry, *args)`` -> a started `ServerProcess`; all are stopped after the test."""
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        for server in factory.servers:
            server.stop()


@pytest.fixture(scope="module")
def live_server(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on a private copy of the trained airline, uschange and tourism-monthly models."""
    root = tmp_path_factory.mktemp("live-server")
    registry = copy_models(trained_registry_path, root / "models", ["airline", "uschange", "tourism-monthly"])
    yield from running_server(registry, root / "server.log")


@pytest.fixture
def airline_registry(trained_registry_path: Path, tmp_path: Path) -> Path:
    """A private registry with the trained airline model only (v1, production)."""
    return copy_models(trained_registry_path, tmp_path / "models", ["airline"])


@pytest.fixture
def airline_server(airline_registry: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on `airline_registry`, polling it every 0.2 s."""
    yield from running_server(airline_registry, tmp_path / "server.log")
