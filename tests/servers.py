"""The real server as a subprocess: `forecast-service serve` on a free loopback port.

One harness for every folder that runs the server for real (startup, shutdown, signals,
hot reload, restarts, replicas). Every server writes its output to a log file; conftests
import `pytest_runtest_makereport` to attach the logs of the servers a failed test used.
Stopping a server always ends with SIGKILL for whatever is left of it: its process group
when it runs in a session of its own, and the processes it started (forkserver, job
workers) in any case.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

HOST = "127.0.0.1"
CLI = Path(sys.executable).with_name("forecast-service")
STARTUP_TIMEOUT = 60.0
LOG_TAIL = 8000
ACCESS_OK = re.compile(r'^INFO: +[\d.:]+ - "[A-Z]+ \S+ HTTP/[\d.]+" 2\d\d ')  # uvicorn's plain access line
ACCESS_JSON = '"logger":"service.access"'
SERVER_ENV = {"FORECAST_POLL_INTERVAL": "0.2", "FORECAST_LOG_LEVEL": "info"}


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


# --------------------------------------------------------------------------- processes, from /proc
def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name: [state, ppid, pgrp, ...]."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (children, grandchildren, ...)."""
    parents = {pid: int(fields[1]) for pid in _pids() if (fields := _stat(pid)) is not None}
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    return [
        pid for pid in _pids() if (fields := _stat(pid)) is not None and int(fields[2]) == pgid and fields[0] != "Z"
    ]


# --------------------------------------------------------------------------- one server
class ServerProcess:
    """One `forecast-service serve` process; output goes to ``log_path``.

    Parameters
    ----------
    registry, log_path
        The registry folder it serves and the file its stdout and stderr go to (appended).
    *extra_args
        More `serve` options (``"--workers", "2"``).
    port
        The port to listen on; a free one by default.
    data_dir
        ``FORECAST_DATA_DIR`` (job store, datasets): a server restarted on it, or a second
        replica, shares its jobs. By default (none given here or in the environment) the
        ``data`` folder beside ``log_path``, never the checkout's ``./data``, which the servers
        of every test (and of every pytest-xdist worker) would share.
    clean_env
        Drop the ``FORECAST_*`` variables of the test run's own environment.
    new_session
        Start it in a session of its own (``start_new_session``): its process group, its
        id in `pgid`, is killed whole when it stops.
    command
        What runs `serve`: the console script by default.
    ready_timeout, client_timeout, stop_timeout
        Defaults of `wait_ready`, `client` and `stop`.
    ready_path
        What `wait_ready` polls until it answers 200.
    **env
        Environment variables for the server, over ``FORECAST_POLL_INTERVAL=0.2`` and
        ``FORECAST_LOG_LEVEL=info``.
    """

    def __init__(
        self,
        registry: Path,
        log_path: Path,
        *extra_args: str,
        port: int | None = None,
        data_dir: Path | None = None,
        clean_env: bool = False,
        new_session: bool = False,
        command: Sequence[str] = (str(CLI),),
        ready_timeout: float = STARTUP_TIMEOUT,
        client_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        ready_path: str = "/readyz",
        **env: str,
    ) -> None:
        self.registry = registry
        self.port = port or free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.args = [*command, "serve", "--registry", str(registry), "--host", HOST, "--port", str(self.port)]
        self.args.extend(extra_args)
        outer = {k: v for k, v in os.environ.items() if not (clean_env and k.startswith("FORECAST_"))}
        if data_dir is None and "FORECAST_DATA_DIR" not in {**outer, **env}:
            data_dir = log_path.parent / "data"
        data = {"FORECAST_DATA_DIR": str(data_dir)} if data_dir is not None else {}
        self.env = {**outer, **SERVER_ENV, **data, **env}
        self.new_session = new_session
        self.ready_timeout = ready_timeout
        self.client_timeout = client_timeout
        self.stop_timeout = stop_timeout
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None
        self.children: set[int] = set()  # processes it started, killed at `stop` if still alive

    def start(self) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=self.new_session,
            )
        self.pgid = self.process.pid if self.new_session else None
        return self

    def log(self, access: bool = True) -> str:
        """The log's tail, without uvicorn's lines of successful requests (``access=False``: no access lines)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        kept = (line for line in lines if not ACCESS_OK.match(line) and (access or ACCESS_JSON not in line))
        return "\n".join(kept)[-LOG_TAIL:]

    def wait_ready(self, timeout: float | None = None, path: str | None = None) -> ServerProcess:
        """Poll `ready_path` until 200; fail with the log if the process dies or the deadline passes."""
        assert self.process is not None
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(base_url=self.base_url, timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited with {self.process.returncode} before ready:\n{self.log()}")
                try:
                    response = http.get(path or self.ready_path)
                    if response.status_code == 200:
                        return self
                    last = f"{response.status_code} {response.text}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout:.0f}s (last: {last}):\n{self.log()}")

    def client(self, timeout: float | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=self.client_timeout if timeout is None else timeout)

    def kill(self) -> None:
        """SIGKILL the server process only, as an OOM kill or a power cut would: no shutdown hook
        runs and its children are left to their fate (`stop` kills what is left of them)."""
        assert self.process is not None
        self.children |= descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int | None:
        """Send ``sig``, wait up to ``timeout`` s, then kill; then SIGKILL whatever is left of
        it (its process group, the processes it started). Returns the server's exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.children |= descendants(self.process.pid)
            self.process.send_signal(sig)
            try:
                self.process.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
        for pid in self.children:  # only processes this server started
            if alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self.children.clear()
        return self.process.returncode


def running_server(registry: Path, log_path: Path, *extra_args: str, **options: Any) -> Iterator[ServerProcess]:
    """Start, wait until ready, yield, and always stop (``yield from`` it in a fixture)."""
    server = ServerProcess(registry, log_path, *extra_args, **options).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- many servers in a test
class ServerFactory:
    """``factory(registry, *args, **options)`` -> a started (not yet ready) `ServerProcess`
    logging to ``log_dir/server-<n>.log``; ``options`` given here apply to every server.
    Leaving it as a context manager stops them all."""

    def __init__(self, log_dir: Path, **options: Any) -> None:
        self.log_dir = log_dir
        self.options = options
        self.servers: list[ServerProcess] = []

    def __call__(self, registry: Path, *extra_args: str, **options: Any) -> ServerProcess:
        log_path = self.log_dir / f"server-{len(self.servers)}.log"
        server = ServerProcess(registry, log_path, *extra_args, **{**self.options, **options})
        self.servers.append(server)
        return server.start()

    def __enter__(self) -> ServerFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.stop()


class DataServerFactory(ServerFactory):
    """``factory(registry, data_dir, *args, **options)``: the test names each server's data
    folder, so that a restarted server, or a second replica, shares the first one's jobs."""

    def __call__(self, registry: Path, data_dir: Path, *extra_args: str, **options: Any) -> ServerProcess:  # type: ignore[override]
        return super().__call__(registry, *extra_args, data_dir=data_dir, **options)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """``start_server(registry, *args, **env)`` -> a started `ServerProcess`; all are stopped after the test."""
    with ServerFactory(tmp_path) as factory:
        yield factory


# --------------------------------------------------------------------------- failure reports
def attach_server_logs(item: pytest.Item, report: pytest.TestReport) -> None:
    """Append the log of every server a failed test used (`ServerProcess` and `ServerFactory`
    fixtures) to its report, without the access lines."""
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        servers = value.servers if isinstance(value, ServerFactory) else [value]
        for server in servers:
            if isinstance(server, ServerProcess):
                report.sections.append((f"server log ({server.base_url})", server.log(access=False) or "(empty)"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Import into a conftest to attach server logs to the failures of its folder."""
    outcome = yield
    attach_server_logs(item, outcome.get_result())


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body; fails if none comes within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before a response: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            assert chunk, "connection closed in the middle of the response body"
            body += chunk
    except TimeoutError:
        raise AssertionError(f"no response within {timeout:.1f}s (got {data!r})") from None
    return int(lines[0].split()[1]), headers, body
