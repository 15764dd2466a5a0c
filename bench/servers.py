"""Start and stop benchmark servers: real uvicorn subprocesses on 127.0.0.1, free ports."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    """A running server subprocess and where to reach it."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``: only this server's own process."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spawn(name: str, args: list[str], workdir: Path) -> Server:
    """Start ``python -m bench.serve ARGS --port P`` with its output in ``workdir/NAME.log``."""
    port = free_port()
    log = workdir / f"{name}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.serve", *args, "--port", str(port)],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C reaches the harness, which stops its servers itself
        )
    return Server(name, port, process, log)


def wait_ready(server: Server, timeout: float = 180.0) -> None:
    """Poll GET /readyz until 200; raise with the server's log when it dies or times out."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server {server.name} exited ({server.process.returncode}):\n{server.log_tail()}")
            try:
                if client.get(f"{server.base_url}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"server {server.name} not ready after {timeout:g}s:\n{server.log_tail()}")


def start_service(
    name: str, registry: Path, workdir: Path, response_cache_bytes: int | None = None, log: bool = False
) -> Server:
    """Our app on ``registry`` (not yet waited for); ``log``: logging as the CLI sets it up."""
    args = ["service", "--registry", str(registry)]
    if response_cache_bytes is not None:
        args += ["--response-cache-bytes", str(response_cache_bytes)]
    if log:
        args.append("--log")
    return spawn(name, args, workdir)


def start_floor(name: str, payload: Path, path: str, workdir: Path, answers: Path | None = None) -> Server:
    """The bare FastAPI floor returning ``payload`` on POST ``path`` (with ``answers``: each
    body's own answer) (not yet waited for)."""
    args = ["floor", "--payload", str(payload), "--path", path]
    if answers is not None:
        args += ["--answers", str(answers)]
    return spawn(name, args, workdir)
