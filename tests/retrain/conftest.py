"""Real `forecast-service serve` processes for the retrain tests (mirrors the helper of
tests/integration): free loopback ports, a log file per server, bounded waits, and a
teardown that always kills each server's whole process group (its forkserver and job
workers included)."""

from __future__ import annotations

import contextlib
import os
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
STARTUP_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


class Server:
    """One `forecast-service serve` in a session of its own; output goes to ``log_path``."""

    def __init__(self, registry: Path, data_dir: Path, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.args = [str(CLI), "serve", "--registry", str(registry), "--host", HOST, "--port", str(self.port)]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
        self.env = {
            **clean,
            "FORECAST_DATA_DIR": str(data_dir),
            "FORECAST_POLL_INTERVAL": "0.2",
            "FORECAST_LOG_LEVEL": "info",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None

    def start(self) -> Server:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        self.pgid = self.process.pid
        return self

    def log(self) -> str:
        """The log's tail without the access lines."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(line for line in lines if '"logger":"service.access"' not in line)[-8000:]

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> Server:
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
                        return self
                    last = f"{response.status_code} {response.text}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout:.0f}s (last: {last}):\n{self.log()}")

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the server process only (a crash); its children are left to their fate."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL; finally SIGKILL whatever is left of its process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)


class ServerFactory:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[Server] = []

    def __call__(self, registry: Path, data_dir: Path, **env: str) -> Server:
        server = Server(registry, data_dir, self.log_dir / f"server-{len(self.servers)}.log", **env)
        self.servers.append(server)
        return server.start()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """``start_server(registry, data_dir, **env)`` -> a started `Server`; all are stopped afterwards."""
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        for server in factory.servers:
            server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the logs of the servers a failed test started."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    factory = getattr(item, "funcargs", {}).get("start_server")
    if isinstance(factory, ServerFactory):
        for server in factory.servers:
            report.sections.append((f"server log ({server.base_url})", server.log() or "(empty)"))
