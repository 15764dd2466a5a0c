"""A backtest survives the death of the service the SPEC way: the server process is
SIGKILLed while a job runs; its worker dies with it; the restarted server marks the job
`failed` (interrupted), never leaves it `running`, and runs new jobs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.jobs.store import JobStore
from tests.factories import wait_for

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
FINISHED = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()  # [state, ppid, ...]


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def survivors(pids: set[int], timeout: float) -> set[int]:
    """The ``pids`` still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := {pid for pid in pids if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def describe(pids: set[int]) -> str:
    out = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")[:90]
        except FileNotFoundError:
            command = "(gone)"
        out.append(f"{pid}: {command}")
    return "; ".join(out)


class Server:
    """`python -m service.cli serve` on a free loopback port; output in a log file."""

    def __init__(self, registry: Path, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
        env.update(
            FORECAST_DATA_DIR=str(data_dir),
            FORECAST_JOB_STALE_SECONDS="5",
            FORECAST_POLL_INTERVAL="0.2",
            FORECAST_LOG_LEVEL="info",
        )
        args = [sys.executable, "-m", "service.cli", "serve", "--registry", str(registry)]
        args += ["--host", HOST, "--port", str(self.port)]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self.children: set[int] = set()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if http.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout:.0f}s:\n{self.log()}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=90.0)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, exactly like an OOM kill or a power cut."""
        self.children |= descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.children |= descendants(self.process.pid)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in self.children:  # only processes this server started
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[Path, Path], Server]]:
    started: list[Server] = []

    def start(registry: Path, data_dir: Path) -> Server:
        server = Server(registry, data_dir, tmp_path / f"server-{len(started)}.log")
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.cleanup()


def get_job(server: Server, job_id: str) -> dict[str, Any]:
    with server.client() as http:
        response = http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_sigkill_during_a_backtest_then_restart_marks_it_interrupted(
    trained_registry_path: Path, tmp_path: Path, servers: Callable[[Path, Path], Server]
) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    for name in ("airline", "tourism-monthly"):
        shutil.copytree(trained_registry_path / name, registry / name, ignore=shutil.ignore_patterns("*.lock"))
    data_dir = tmp_path / "data"

    first = servers(registry, data_dir)
    first.wait_ready()
    with first.client() as http:
        response = http.post(
            "/v1/models/tourism-monthly/backtests",
            json={"splitter": {"type": "folds", "folds": 6, "horizon": 3}, "metrics": ["MAE"]},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    def running() -> bool:
        job = get_job(first, job_id)
        assert job["status"] in ("queued", "running"), f"{job}\n{first.log()}"
        return job["status"] == "running" and job["progress"]["stage"] in ("loading", "folds")

    wait_for(running, 90, "the backtest is running in its worker")
    workers = descendants(first.process.pid)
    assert workers, "the running job has no worker process under the server"

    first.kill()
    # the job's worker (and the forkserver it came from) must die with the server, or an orphan
    # keeps computing and, if nobody restarts the service, reports the job `succeeded` on its
    # own; checked at the end so that the restart path below runs either way
    orphans = survivors(workers, timeout=10)
    orphan_commands = describe(orphans)
    assert get_job_from_db(data_dir, job_id)["status"] == "running", "precondition: the killed server left it running"

    second = servers(registry, data_dir)
    second.wait_ready()

    def settled() -> bool:
        return get_job(second, job_id)["status"] != "running"

    wait_for(settled, 10, "the restarted server settles the interrupted job")
    job = get_job(second, job_id)
    assert job["status"] == "failed", job
    assert "interrupted" in (job["error"] or ""), job
    assert job["result"] is None

    # nothing flips it later: no orphan survived to report success
    time.sleep(3.0)
    job = get_job(second, job_id)
    assert job["status"] == "failed" and job["result"] is None, job

    # and the restarted server runs new backtests
    with second.client() as http:
        response = http.post(
            "/v1/models/airline/backtests",
            params={"wait": "true", "timeout": 60},
            json={"splitter": {"type": "folds", "folds": 1, "horizon": 6}, "metrics": ["MAE"]},
        )
    assert response.status_code in (200, 202), response.text
    new_id = response.json()["id"]
    deadline = time.monotonic() + 90
    while (new := get_job(second, new_id))["status"] not in FINISHED and time.monotonic() < deadline:
        time.sleep(0.2)
    assert new["status"] == "succeeded", f"{new}\n{second.log()}"
    assert get_job(second, job_id)["status"] == "failed"

    assert not orphans, (
        f"processes of the killed server still ran 10 s after SIGKILL: {orphan_commands}; the job's worker "
        "outlives the service (its PR_SET_PDEATHSIG watches the forkserver, which itself stays up)"
    )


def get_job_from_db(data_dir: Path, job_id: str) -> dict[str, Any]:
    """Read a job straight from the SQLite store (no server running)."""
    store = JobStore(f"sqlite:///{data_dir / 'jobs.sqlite'}")
    try:
        return store.get(job_id).public()
    finally:
        store.dispose()
