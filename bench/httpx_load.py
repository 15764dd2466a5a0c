"""The fallback load generator: an httpx AsyncClient in its own process, bounded in
requests and time. Prints one ``BENCH_RESULT {json}`` line.

``python -m bench.httpx_load URL --body FILE --concurrency C --duration S --max-requests N``
(``--bodies FILE``: JSON lines, one body each, sent in turn: a different body per request)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.stats import percentile


@dataclass
class Tally:
    """What the workers share: the request budget, latencies, errors."""

    budget: int
    bodies: list[bytes]
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    sent: int = 0

    def take(self) -> bytes | None:
        """The next body, one request from the budget; None when it is spent."""
        if self.budget <= 0:
            return None
        self.budget -= 1
        self.sent += 1
        return self.bodies[self.sent % len(self.bodies)]


async def worker(client: httpx.AsyncClient, url: str, deadline: float, tally: Tally) -> None:
    """POST the next body until the deadline or the budget runs out."""
    # identity, as wrk sends: httpx asks for gzip by default, and the server gzips answers
    # of 1 KB or more, which would make these figures incomparable with wrk's and older runs
    headers = {"content-type": "application/json", "accept-encoding": "identity"}
    while time.perf_counter() < deadline and (body := tally.take()) is not None:
        started = time.perf_counter()
        try:
            response = await client.post(url, content=body, headers=headers)
            if response.status_code >= 300:
                tally.errors += 1
        except httpx.HTTPError:
            tally.errors += 1
        tally.latencies.append(time.perf_counter() - started)


async def generate(
    url: str, bodies: list[bytes], concurrency: int, duration: float, max_requests: int, timeout: float
) -> dict:
    """Run ``concurrency`` workers on one client; the summary the harness reads."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    tally = Tally(budget=max_requests, bodies=bodies)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        started = time.perf_counter()
        deadline = started + duration
        await asyncio.gather(*(worker(client, url, deadline, tally) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(tally.latencies),
        "errors": tally.errors,
        "elapsed_s": elapsed,
        "p50_ms": percentile(tally.latencies, 50) * 1000,
        "p99_ms": percentile(tally.latencies, 99) * 1000,
        "max_ms": max(tally.latencies, default=float("nan")) * 1000,
    }


def event_loop_runner():  # type: ignore[no-untyped-def]
    """uvloop's ``run`` when installed (a faster client), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return getattr(uvloop, "run", asyncio.run)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the load subprocess."""
    parser = argparse.ArgumentParser(prog="python -m bench.httpx_load")
    parser.add_argument("url")
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--bodies", type=Path, help="JSON lines, one body each, sent in turn (instead of --body)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.bodies is not None:
        bodies = [line for line in args.bodies.read_bytes().splitlines() if line.strip()]
    else:
        bodies = [args.body.read_bytes()]
    result = event_loop_runner()(
        generate(args.url, bodies, args.concurrency, args.duration, args.max_requests, args.timeout)
    )
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
