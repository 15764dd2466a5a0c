"""A real `forecast-service serve` on a free loopback port (empty registry) for healthcheck commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

CLI = Path(sys.executable).with_name("forecast-service")


@dataclass
class LiveServer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("ops-server")
    (root / "models").mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
    env.update(FORECAST_DATA_DIR=str(root / "data"), FORECAST_LOG_LEVEL="warning")
    log = root / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(CLI), "serve", "--registry", str(root / "models"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server not up after 60 s: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield LiveServer(port, process, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
