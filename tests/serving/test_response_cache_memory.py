"""The response cache holds what it counts: under varied fast-path traffic the server's
memory grows by about its byte budget, and the bytes /metrics reports stay within it.

Counting payload and body lengths only, this 2 MiB budget let the server grow by ~17 MiB
under this traffic: orjson's bytes keep the 4 KB buffer they were written into (a
200-byte answer holds 4 KB), and each entry kept a dozen small objects besides."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sktime.forecasting.naive import NaiveForecaster

from service.forecasting.publishing import PublishRequest, publish_version
from service.registry.store import Registry
from service.serving.fastlane import ARROW, CSV, JSON
from service.tables import to_sktime
from tests.factories import SCHEMA, small_panel
from tests.servers import HOST, ServerFactory

MiB = 1024 * 1024
BUDGET = 2 * MiB
# what the server may grow by beyond the budget: allocator slack (partly used pymalloc pools
# and glibc arenas), metric and logging state, lazy imports and caches of the first requests.
# Measured (2 cores, plateaus): 0.7 MiB with the cache off; 0.7-0.9 MiB over a 1-2 MiB
# budget, once 2.7 MiB (the allocators keep a few MiB more now and then). Counting only
# payload and body lengths: 14.7 MiB.
SLACK = 4 * MiB
REQUESTS = 10000  # distinct bodies: ~4x what fits in the budget (~2600 small answers)
DEADLINE = 25.0  # seconds of traffic at most (7-12 s here; a loaded machine sends fewer)
SERIES, HORIZON, COVERAGE = 40, 12, (0.5, 0.8, 0.9, 0.95)
pytestmark = pytest.mark.slow


def publish_panel(root: Path) -> Path:
    registry = Registry(root)
    table = small_panel(n_series=SERIES, length=36)
    y, _ = to_sktime(table, SCHEMA)
    forecaster = NaiveForecaster(strategy="last").fit(y, fh=list(range(1, HORIZON + 1)))
    request = PublishRequest(training=table, schema=SCHEMA, horizon=HORIZON, coverage=list(COVERAGE))
    registry.set_alias("panel", "production", publish_version(registry, "panel", forecaster, request))
    return root


def varied_requests(seed: int) -> Iterator[tuple[dict[str, object], str]]:
    """Distinct fast-path requests: series subsets, horizons or steps, coverages, media types."""
    rnd = random.Random(seed)
    seen: set[str] = set()
    while True:
        body: dict[str, object] = {"series": [f"s{i}" for i in sorted(rnd.sample(range(SERIES), rnd.randint(1, 2)))]}
        if rnd.random() < 0.3:
            body["horizon"] = rnd.randint(1, HORIZON)
        else:
            body["fh"] = sorted(rnd.sample(range(1, HORIZON + 1), rnd.randint(1, 2)))
        body["coverage"] = sorted(rnd.sample(COVERAGE, rnd.randint(0, 2)))
        media = rnd.choices((JSON, CSV, ARROW), weights=(6, 2, 1))[0]
        key = repr((body, media))
        if key not in seen:
            seen.add(key)
            yield body, media


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def counted(metrics: str) -> tuple[float, float]:
    """The response cache's bytes and entries as /metrics reports them."""
    found = dict(re.findall(r"^(forecast_response_cache_(?:bytes|entries)) (\S+)$", metrics, re.M))
    assert set(found) == {"forecast_response_cache_bytes", "forecast_response_cache_entries"}, "no cache gauges"
    return float(found["forecast_response_cache_bytes"]), float(found["forecast_response_cache_entries"])


async def drive(port: int, requests: Iterator[tuple[dict[str, object], str]], count: int, deadline: float) -> int:
    """``count`` requests on 8 keep-alive connections (fewer once ``deadline`` passes), written
    by hand: httpx would spend more CPU than the server on these 2 cores. Returns how many."""
    sent = 0

    async def connection() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while sent < count and time.monotonic() < deadline:
                sent += 1
                body, media = next(requests)
                payload = orjson.dumps(body)
                writer.write(
                    b"POST /v1/models/panel/predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                    b"Accept: %s\r\nContent-Length: %d\r\n\r\n%s"
                    % (HOST.encode(), media.encode(), len(payload), payload)
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                answer = await reader.readexactly(length)
                assert head.startswith(b"HTTP/1.1 200 "), head + answer
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(8)))
    return sent


def test_server_memory_grows_by_the_budget_not_beyond(tmp_path: Path, start_server: ServerFactory) -> None:
    registry = publish_panel(tmp_path / "models")
    server = start_server(
        registry, FORECAST_RESPONSE_CACHE_BYTES=str(BUDGET), FORECAST_ACCESS_LOG="false", FORECAST_LOG_LEVEL="warning"
    ).wait_ready()
    assert server.process is not None
    pid = server.process.pid
    asyncio.run(drive(server.port, varied_requests(seed=1), 200, time.monotonic() + 10))  # warm-up
    before = rss(pid)
    requests = varied_requests(seed=2)
    deadline = time.monotonic() + DEADLINE
    sent, peak, entries = 0, 0, 0.0
    with server.client() as http:
        while sent < REQUESTS and time.monotonic() < deadline:
            sent += asyncio.run(drive(server.port, requests, 1000, deadline))
            peak = max(peak, rss(pid) - before)
            size, entries = counted(http.get("/metrics").text)
            assert size <= BUDGET, f"the cache counts {size:.0f} bytes, over its budget {BUDGET}"
    assert entries < sent, "the traffic never filled the budget: nothing was evicted"
    assert sent >= 2 * entries, f"only {sent} requests for {entries:.0f} entries: too few to churn the cache"
    assert peak <= BUDGET + SLACK, (
        f"the server grew by {peak / MiB:.1f} MiB under {sent} distinct requests; "
        f"the cache's budget is {BUDGET / MiB:.0f} MiB (+{SLACK / MiB:.0f} MiB slack)"
    )
