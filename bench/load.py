"""Load runs against a server from a separate process on loopback: wrk (with a Lua script
for the POST body) when installed, else the httpx fallback in `bench.httpx_load`."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT_MARK = "BENCH_RESULT "

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
local count = 0
local max_requests = {max_requests}
response = function(status, headers, body)
  count = count + 1
  if count >= max_requests then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{mark}{{"requests": %d, "elapsed_s": %.6f, "errors": %d, "socket_errors": %d, '
    .. '"p50_ms": %.4f, "p99_ms": %.4f, "max_ms": %.4f}}\\n',
    summary.requests, summary.duration / 1e6, e.status + e.connect + e.read + e.write + e.timeout,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


WRK_BODIES_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {{}}
for line in io.lines([==[{bodies}]==]) do
  if #line > 0 then bodies[#bodies + 1] = line end
end
local sent = 0
request = function()
  sent = sent + 1
  return wrk.format(nil, nil, nil, bodies[(sent % #bodies) + 1])
end
"""
"""The head of a wrk script sending a different body per request (JSON lines, in turn);
`WRK_SCRIPT`'s counting and result line follow it."""


@dataclass(frozen=True)
class Target:
    """One request, repeated: POST ``body`` to ``url``; or, with ``bodies`` (a file of JSON
    lines, one body each), a different body per request, in turn."""

    url: str
    body: bytes
    bodies: Path | None = None


@dataclass
class LoadResult:
    """One load run: throughput, latency percentiles, errors."""

    generator: str
    concurrency: int
    requests: int
    errors: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": self.rps}


def wrk_path() -> str | None:
    """The wrk binary, when installed (Debian: apt-get install wrk)."""
    return shutil.which("wrk")


def choose_generator(requested: str = "auto") -> str:
    """``wrk`` or ``httpx``: ``auto`` prefers wrk, which does not become the bottleneck."""
    if requested == "wrk" and wrk_path() is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk, or use --generator httpx")
    if requested == "auto":
        return "wrk" if wrk_path() else "httpx"
    return requested


def generator_version(generator: str) -> str:
    """A version string for the results file."""
    if generator == "httpx":
        import httpx

        return f"httpx {httpx.__version__} AsyncClient ({sys.executable})"
    completed = subprocess.run([wrk_path() or "wrk", "--version"], capture_output=True, text=True, timeout=10)
    first = (completed.stdout or completed.stderr).splitlines()
    return first[0].split(" [")[0].strip() if first else "wrk"


def parse_result(stdout: str, generator: str, concurrency: int) -> LoadResult:
    """The ``BENCH_RESULT {json}`` line a generator printed."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            raw = json.loads(line[len(RESULT_MARK) :])
            return LoadResult(
                generator=generator,
                concurrency=concurrency,
                requests=int(raw["requests"]),
                errors=int(raw["errors"]),
                elapsed_s=float(raw["elapsed_s"]),
                p50_ms=float(raw["p50_ms"]),
                p99_ms=float(raw["p99_ms"]),
                max_ms=float(raw["max_ms"]),
            )
    raise RuntimeError(f"{generator} printed no result:\n{stdout[-2000:]}")


def wrk_command(target: Target, concurrency: int, duration: float, script: Path, timeout: float) -> list[str]:
    """One wrk thread (the server has one worker; the other core is the client's)."""
    return [
        wrk_path() or "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, math.ceil(duration))}s",
        f"--timeout={math.ceil(timeout)}s",
        "-s",
        str(script),
        target.url,
    ]


def run_wrk(
    target: Target, concurrency: int, duration: float, max_requests: int, workdir: Path, timeout: float
) -> LoadResult:
    """One wrk run; wrk counts whole seconds, so ``duration`` is rounded up to one at least."""
    body = target.body.decode()
    if "]==]" in body or "]==]" in str(target.bodies):
        raise ValueError("the request body cannot be embedded in the Lua script")
    script = workdir / f"wrk-{abs(hash((target, concurrency))) % 10**8}.lua"
    text = WRK_SCRIPT.format(body=body, max_requests=max_requests, mark=RESULT_MARK)
    if target.bodies is not None:  # the same counting and result line, a request function in front
        text = WRK_BODIES_SCRIPT.format(bodies=target.bodies.resolve()) + text.split("\n", 3)[3]
    script.write_text(text)
    command = wrk_command(target, concurrency, duration, script, timeout)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=duration + timeout + 30)
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return parse_result(completed.stdout, "wrk", concurrency)


def run_httpx(
    target: Target, concurrency: int, duration: float, max_requests: int, workdir: Path, timeout: float
) -> LoadResult:
    """One run of the httpx generator in its own process."""
    body_file = workdir / f"body-{abs(hash(target.body)) % 10**8}.json"
    body_file.write_bytes(target.body)
    bodies = ["--bodies", str(target.bodies)] if target.bodies is not None else []
    command = [
        sys.executable,
        "-m",
        "bench.httpx_load",
        target.url,
        "--body",
        str(body_file),
        *bodies,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        "--max-requests",
        str(max_requests),
        "--timeout",
        str(timeout),
    ]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=duration + timeout + 60)
    if completed.returncode != 0:
        raise RuntimeError(f"httpx load generator failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return parse_result(completed.stdout, "httpx", concurrency)


def run_load(
    generator: str,
    target: Target,
    concurrency: int,
    duration: float,
    max_requests: int,
    workdir: Path,
    timeout: float = 30.0,
) -> LoadResult:
    """One bounded load run with the chosen generator."""
    runner = run_wrk if generator == "wrk" else run_httpx
    return runner(target, concurrency, duration, max_requests, workdir, timeout)
