"""The benchmark run: build a registry, start the servers, load them in turns, time sktime
in-process, compare against the bars, print the table and write results.json."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.build import AIRLINE, PANEL
from bench.inprocess import load_case, time_variants
from bench.load import LoadResult, Target, choose_generator, generator_version, run_load
from bench.profiles import Profile
from bench.report import format_table, library_versions, machine_info, write_results
from bench.serve import UVICORN_CONFIG
from bench.servers import REPO, Server, start_floor, start_service, wait_ready
from bench.stats import ratio, summarise

HORIZON = 12
COVERAGE = [0.8, 0.95]
OBSERVATIONS = {"month": ["1961-01-01"], "passengers": [417.0]}  # the month after airline's cutoff
FAST_BODY: dict[str, Any] = {"horizon": HORIZON, "coverage": COVERAGE}
LIVE_BODY: dict[str, Any] = {**FAST_BODY, "observations": OBSERVATIONS}
PANEL_BODY: dict[str, Any] = {}  # every series, default horizon
REQUEST_TIMEOUT_S = 30.0

BAR_THROUGHPUT = 0.8
BAR_P99 = 1.5
BAR_PANEL_MS = 50.0
BAR_LIVE = 1.3


def say(message: str) -> None:
    """Progress on stderr (stdout carries the table)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def predict_path(model: str) -> str:
    return f"/v1/models/{model}/predict"


@dataclass(frozen=True)
class Scenario:
    """One kind of load run: which server, which request, how many connections."""

    key: str
    label: str
    server: str
    model: str
    body: dict[str, Any] = field(hash=False)
    concurrency: int

    @property
    def payload(self) -> bytes:
        return json.dumps(self.body).encode()


def scenarios(profile: Profile) -> list[Scenario]:
    """Floor, fast and live side by side per concurrency; then the panel, cached and not."""
    found = []
    for c in profile.concurrency:
        found += [
            Scenario(f"floor_c{c}", "(a) floor: bare FastAPI, same bytes", "floor", AIRLINE, FAST_BODY, c),
            Scenario(f"fast_c{c}", "(b) airline predict, fast path", "service", AIRLINE, FAST_BODY, c),
            Scenario(f"live_c{c}", "(c) airline predict, live (observations)", "service", AIRLINE, LIVE_BODY, c),
        ]
    series = profile.panel_series
    found += [
        Scenario(
            "panel_cached_c1", f"panel {series} series, fast path, response cached", "service", PANEL, PANEL_BODY, 1
        ),
        Scenario(
            "panel_uncached_c1", f"panel {series} series, fast path, cache off", "service_nocache", PANEL, PANEL_BODY, 1
        ),
    ]
    return found


# ----------------------------------------------------------------------------- setup
@contextlib.contextmanager
def work_folder(keep: bool) -> Iterator[Path]:
    """A temporary folder for the registry and logs; kept on failure or when asked."""
    path = Path(tempfile.mkdtemp(prefix="forecast-bench-"))
    failed = False
    try:
        yield path
    except BaseException:
        failed = True
        raise
    finally:
        if keep or failed:
            say(f"work folder kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def build_registry(root: Path, profile: Profile, workdir: Path) -> dict[str, Any]:
    """Train airline and the panel in a subprocess (sktime's warnings go to build.log)."""
    command = [
        sys.executable,
        "-m",
        "bench.build",
        str(root),
        "--panel-series",
        str(profile.panel_series),
        "--panel-length",
        str(profile.panel_length),
    ]
    log = workdir / "build.log"
    with open(log, "wb") as sink:
        completed = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=sink, timeout=1800)
    lines = completed.stdout.decode().splitlines()
    marked = [line for line in lines if line.startswith("BENCH_RESULT ")]
    if completed.returncode != 0 or not marked:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"building the registry failed ({completed.returncode}):\n{tail}")
    return json.loads(marked[-1].removeprefix("BENCH_RESULT "))


def post(server: Server, model: str, body: dict[str, Any]) -> httpx.Response:
    """One request outside any timer (sanity checks, the floor's payload)."""
    return httpx.post(f"{server.base_url}{predict_path(model)}", json=body, timeout=REQUEST_TIMEOUT_S)


def start_servers(registry: Path, workdir: Path, stack: contextlib.ExitStack) -> dict[str, Server]:
    """Our app twice (response cache on, and off for the uncached panel figure), then the
    floor serving the exact bytes of our fast-path answer."""
    service = start_service("service", registry, workdir)
    stack.callback(service.stop)
    nocache = start_service("service_nocache", registry, workdir, response_cache_bytes=0)
    stack.callback(nocache.stop)
    wait_ready(service)
    wait_ready(nocache)
    answer = post(service, AIRLINE, FAST_BODY)
    answer.raise_for_status()
    payload = workdir / "floor-payload.json"
    payload.write_bytes(answer.content)
    floor = start_floor("floor", payload, predict_path(AIRLINE), workdir)
    stack.callback(floor.stop)
    wait_ready(floor)
    return {"service": service, "service_nocache": nocache, "floor": floor}


def expect(condition: bool, message: str) -> None:
    """Stop the run when a server answers something other than what is being measured."""
    if not condition:
        raise RuntimeError(message)


def check_answers(servers: dict[str, Server], panel_series: int) -> dict[str, Any]:
    """Each scenario's request answers 200 with what it claims to measure; their sizes."""
    fast = post(servers["service"], AIRLINE, FAST_BODY)
    floor = post(servers["floor"], AIRLINE, FAST_BODY)
    live = post(servers["service"], AIRLINE, LIVE_BODY)
    panel = post(servers["service_nocache"], PANEL, PANEL_BODY)
    for name, response in (("fast", fast), ("floor", floor), ("live", live), ("panel", panel)):
        expect(response.status_code == 200, f"{name} answered {response.status_code}: {response.text[:500]}")
    expect(floor.content == fast.content, "the floor does not return the fast path's bytes")
    expect(
        live.headers.get("x-cutoff") == OBSERVATIONS["month"][-1], "the live answer did not start from the observations"
    )
    rows = len(panel.json()["forecast"]["series"])
    expect(rows == panel_series * HORIZON, f"the panel answer has {rows} rows, expected {panel_series * HORIZON}")
    return {
        "fast_bytes": len(fast.content),
        "live_bytes": len(live.content),
        "panel_bytes": len(panel.content),
        "panel_rows": rows,
    }


# ----------------------------------------------------------------------------- measuring
def load_once(
    scenario: Scenario, servers: dict[str, Server], generator: str, duration: float, max_requests: int, workdir: Path
) -> LoadResult:
    """One bounded load run of ``scenario``."""
    url = f"{servers[scenario.server].base_url}{predict_path(scenario.model)}"
    target = Target(url, scenario.payload)
    return run_load(generator, target, scenario.concurrency, duration, max_requests, workdir, REQUEST_TIMEOUT_S)


def describe(result: LoadResult) -> str:
    return f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, {result.errors} errors"


def warm_up(profile: Profile, generator: str, servers: dict[str, Server], plan: list[Scenario], workdir: Path) -> None:
    """One discarded short run per scenario (connections, caches, the interpreter's first calls)."""
    if profile.warmup_s <= 0:
        return
    for scenario in plan:
        load_once(scenario, servers, generator, profile.warmup_s, profile.max_requests, workdir)


def measure(
    profile: Profile, generator: str, servers: dict[str, Server], plan: list[Scenario], case: Any, workdir: Path
) -> tuple[dict[str, list[LoadResult]], list[dict[str, float]]]:
    """Repeat all scenarios in turns (baseline next to its subject, so drift of a shared
    machine hits both), with the in-process sktime timings once per repeat."""
    runs: dict[str, list[LoadResult]] = {s.key: [] for s in plan}
    sktime: list[dict[str, float]] = []
    for repeat in range(1, profile.repeats + 1):
        for scenario in plan:
            result = load_once(scenario, servers, generator, profile.duration_s, profile.max_requests, workdir)
            runs[scenario.key].append(result)
            say(f"repeat {repeat}/{profile.repeats} {scenario.key}: {describe(result)}")
        sktime.append(time_variants(case, profile.sktime_calls))
        timings = ", ".join(f"{k} {v:.2f}" for k, v in sktime[-1].items())
        say(f"repeat {repeat}/{profile.repeats} sktime in-process ms per call: {timings}")
    return runs, sktime


# ----------------------------------------------------------------------------- figures
def figure(scenario: Scenario, results: list[LoadResult]) -> dict[str, Any]:
    """One scenario's summary over repeats."""
    return {
        "label": scenario.label,
        "server": scenario.server,
        "model": scenario.model,
        "request": scenario.body,
        "concurrency": scenario.concurrency,
        "rps": summarise([r.rps for r in results]),
        "p50_ms": summarise([r.p50_ms for r in results]),
        "p99_ms": summarise([r.p99_ms for r in results]),
        "requests": [r.requests for r in results],
        "errors": [r.errors for r in results],
        "runs": [r.to_dict() for r in results],
    }


def sktime_figures(repeats: list[dict[str, float]], calls: int) -> dict[str, Any]:
    """Per-variant medians (ms per call) over repeats."""
    variants = {name: summarise([r[name] for r in repeats]) for name in repeats[0]}
    return {
        "model": "airline v1 (ThetaForecaster sp=12), loaded with Registry(path).load('airline', 1)",
        "calls_per_repeat": calls,
        "horizon": HORIZON,
        "coverage": COVERAGE,
        "variants": variants,
    }


def check(name: str, values: list[float], bar: str | None, passes: Any = None) -> dict[str, Any]:
    """A figure with its bar; ``passes(median)`` decides, None marks it informative."""
    summary = summarise(values)
    value = summary["median"]
    ok = None if passes is None or math.isnan(value) else bool(passes(value))
    return {"name": name, "value": value, "bar": bar, "ok": ok, "per_repeat": summary}


def bars(runs: dict[str, list[LoadResult]], sktime: list[dict[str, float]], profile: Profile) -> list[dict[str, Any]]:
    """The bars of BENCHMARKS.md (ratios paired per repeat), then informative ratios."""
    low, high = min(profile.concurrency), max(profile.concurrency)
    floor_lo, fast_lo, live_lo = runs[f"floor_c{low}"], runs[f"fast_c{low}"], runs[f"live_c{low}"]
    floor_hi, fast_hi = runs[f"floor_c{high}"], runs[f"fast_c{high}"]
    uncached, cached = runs["panel_uncached_c1"], runs["panel_cached_c1"]
    pairs_hi = list(zip(fast_hi, floor_hi, strict=True))
    pairs_lo = list(zip(fast_lo, floor_lo, strict=True))
    live = [
        ratio(lv.p50_ms - fl.p50_ms, sk["update_predict"]) for lv, fl, sk in zip(live_lo, floor_lo, sktime, strict=True)
    ]
    series = profile.panel_series
    return [
        check(
            f"(b)/(a) throughput, c={high}",
            [ratio(b.rps, a.rps) for b, a in pairs_hi],
            f">= {BAR_THROUGHPUT}",
            lambda v: v >= BAR_THROUGHPUT,
        ),
        check(
            f"(b)/(a) p99, c={high}",
            [ratio(b.p99_ms, a.p99_ms) for b, a in pairs_hi],
            f"<= {BAR_P99}",
            lambda v: v <= BAR_P99,
        ),
        check(
            f"panel {series} series, fast path, cache off: p50 ms",
            [r.p50_ms for r in uncached],
            f"< {BAR_PANEL_MS:g} ms",
            lambda v: v < BAR_PANEL_MS,
        ),
        check(f"((c) p50 - (a) p50) / (d) update+predict, c={low}", live, f"<= {BAR_LIVE}", lambda v: v <= BAR_LIVE),
        check(f"panel {series} series, fast path, cache off: p99 ms", [r.p99_ms for r in uncached], None),
        check(f"panel {series} series, fast path, cached: p50 ms", [r.p50_ms for r in cached], None),
        check(f"(b)/(a) throughput, c={low}", [ratio(b.rps, a.rps) for b, a in pairs_lo], None),
        check(f"(b)/(a) p99, c={low}", [ratio(b.p99_ms, a.p99_ms) for b, a in pairs_lo], None),
        check(
            f"(d) predict+interval / (b) p50, c={low} (fast path speed-up)",
            [ratio(sk["predict_interval"], b.p50_ms) for sk, b in zip(sktime, fast_lo, strict=True)],
            None,
        ),
        check(f"(c) live throughput, c={high}: req/s", [r.rps for r in runs[f"live_c{high}"]], None),
    ]


def notes(generator: str, profile: Profile, built: dict[str, Any], answers: dict[str, Any]) -> list[str]:
    """What the figures mean, in a few lines."""
    wrk_seconds = " (wrk counts whole seconds)" if generator == "wrk" else ""
    return [
        f"load from a separate {generator} process on 127.0.0.1; {profile.repeats} repeats, scenarios interleaved"
        f"{wrk_seconds}; figures are medians over repeats, ratios paired per repeat",
        "servers: one uvicorn worker each, uvloop + httptools, access log off; the floor returns the exact "
        f"{answers['fast_bytes']} bytes of the fast-path answer",
        f"panel: {profile.panel_series} series x {profile.panel_length} months, {built[PANEL]['forecaster']}, "
        f"request {{}} -> {answers['panel_rows']} rows, {answers['panel_bytes']:,} bytes; 'cache off' is a second "
        "server with response_cache_bytes=0 (slice + JSON encode per request)",
        "(d) update_predict = update(1 new month) + predict + predict_interval on a deep copy made outside the "
        "timer; the live path also pays that deepcopy, listed separately",
    ]


def run_benchmark(profile: Profile, out: Path, generator: str = "auto", keep: bool = False) -> dict[str, Any]:
    """The whole run; returns what it wrote to ``out``."""
    started, started_at = time.perf_counter(), datetime.now(UTC).isoformat(timespec="seconds")
    chosen = choose_generator(generator)
    machine = machine_info()
    plan = scenarios(profile)
    with work_folder(keep) as workdir, contextlib.ExitStack() as stack:
        registry = workdir / "registry"
        say(f"profile {profile.name}: building the registry (airline, panel of {profile.panel_series} series)")
        built = build_registry(registry, profile, workdir)
        say(f"built: {built}; starting servers")
        servers = start_servers(registry, workdir, stack)
        answers = check_answers(servers, profile.panel_series)
        case = load_case(registry, AIRLINE, HORIZON, COVERAGE, OBSERVATIONS)
        say(f"measuring with {chosen}: {len(plan)} scenarios x {profile.repeats} repeats")
        warm_up(profile, chosen, servers, plan, workdir)
        runs, sktime = measure(profile, chosen, servers, plan, case, workdir)
    machine["loadavg_end"] = machine_info()["loadavg"]
    load_seconds = max(1, math.ceil(profile.duration_s)) if chosen == "wrk" else profile.duration_s
    results = {
        "run": {
            "profile": profile.to_dict(),
            "generator": generator_version(chosen),
            "generator_name": chosen,
            "load_seconds": load_seconds,
            "started_at": started_at,
            "elapsed_s": round(time.perf_counter() - started, 1),
            "uvicorn": UVICORN_CONFIG,
            "registry": built,
        },
        "machine": machine,
        "libraries": library_versions(),
        "answers": answers,
        "figures": {s.key: figure(s, runs[s.key]) for s in plan},
        "sktime": sktime_figures(sktime, profile.sktime_calls),
        "checks": bars(runs, sktime, profile),
        "notes": notes(chosen, profile, built, answers),
    }
    write_results(out, results)
    print(format_table(results), flush=True)
    say(f"results written to {out}")
    return results
