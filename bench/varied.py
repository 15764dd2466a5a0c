"""Serving speed for real traffic: predict bodies that vary per request (random series
subsets of the panel, random horizons) against the FastAPI floor returning each body's own
answer, at concurrency 32. Figures go to results.json under "varied".

The service is measured twice: with its response cache off (every request parsed, sliced
from the precomputed table and encoded: the worst case, every body new) and on (other
spellings and repeats of a request answered from the cache). Both log as `forecast-service
serve` does (JSON lines, access log on) unless ``log=False``.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.build import PANEL
from bench.load import LoadResult, Target, choose_generator, generator_version, run_load
from bench.profiles import Profile
from bench.run import (
    BAR_P99,
    BAR_THROUGHPUT,
    REQUEST_TIMEOUT_S,
    build_registry,
    check,
    describe,
    expect,
    predict_path,
    say,
    work_folder,
)
from bench.servers import Server, start_floor, start_service, wait_ready
from bench.stats import ratio, summarise

CONCURRENCY = 32
BODIES = 2000
MAX_SERIES = 8  # series per request: 1..MAX_SERIES
HORIZON = 12  # the panel's precomputed horizon


@dataclass(frozen=True)
class VariedScenario:
    key: str
    label: str
    server: str


SCENARIOS = (
    VariedScenario("floor_varied", "(a) floor: bare FastAPI, each body's own answer bytes", "floor"),
    VariedScenario("varied_uncached", "(v) panel predict, varying bodies, response cache off", "service_nocache"),
    VariedScenario("varied_cached", "(w) panel predict, varying bodies, response cache on", "service"),
)


def varied_bodies(series: int, count: int = BODIES, seed: int = 0) -> list[bytes]:
    """Distinct predict bodies: 1..MAX_SERIES random series of the panel, a random horizon
    (or a random set of steps), as clients spell them (keys in either order)."""
    rng = random.Random(seed)
    ids = [f"S{i:04d}" for i in range(series)]
    found: dict[bytes, None] = {}
    while len(found) < count:
        chosen = rng.sample(ids, rng.randint(1, min(MAX_SERIES, series)))
        if rng.random() < 0.25:
            steps: dict[str, Any] = {"fh": sorted(rng.sample(range(1, HORIZON + 1), rng.randint(1, 4)))}
        else:
            steps = {"horizon": rng.randint(1, HORIZON)}
        body = {"series": chosen, **steps} if rng.random() < 0.5 else {**steps, "series": chosen}
        found[json.dumps(body).encode()] = None
    return list(found)


def fetch_answers(server: Server, bodies: list[bytes]) -> list[bytes]:
    """Each body's answer from our service (outside any timer); every one must be a 200."""
    url = f"{server.base_url}{predict_path(PANEL)}"
    headers = {"content-type": "application/json", "accept-encoding": "identity"}
    answers = []
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        for body in bodies:
            response = client.post(url, content=body, headers=headers)
            expect(response.status_code == 200, f"{body!r} answered {response.status_code}: {response.text[:300]}")
            answers.append(response.content)
    return answers


def start_servers(
    registry: Path, workdir: Path, bodies: list[bytes], stack: contextlib.ExitStack, log: bool
) -> tuple[dict[str, Server], dict[str, Any]]:
    """Our app twice (cache on and off), then the floor holding every body's answer."""
    service = start_service("service", registry, workdir, log=log)
    stack.callback(service.stop)
    nocache = start_service("service_nocache", registry, workdir, response_cache_bytes=0, log=log)
    stack.callback(nocache.stop)
    wait_ready(service)
    wait_ready(nocache)
    answers = fetch_answers(nocache, bodies)
    sample = bodies[:: max(1, len(bodies) // 50)]
    expect(
        fetch_answers(service, sample) == answers[:: max(1, len(bodies) // 50)],
        "the service answers differently with its response cache on and off",
    )
    table = workdir / "floor-answers.jsonl"
    table.write_text("".join(json.dumps([b.decode(), a.decode()]) + "\n" for b, a in zip(bodies, answers, strict=True)))
    default = workdir / "floor-default.json"
    default.write_bytes(answers[0])
    floor = start_floor("floor", default, predict_path(PANEL), workdir, answers=table)
    stack.callback(floor.stop)
    wait_ready(floor)
    expect(fetch_answers(floor, sample) == answers[:: max(1, len(bodies) // 50)], "the floor does not return our bytes")
    sizes = [len(a) for a in answers]
    return {"service": service, "service_nocache": nocache, "floor": floor}, {
        "bodies": len(bodies),
        "answer_bytes": {"median": statistics.median(sizes), "min": min(sizes), "max": max(sizes)},
    }


def load_once(
    generator: str,
    scenario: VariedScenario,
    servers: dict[str, Server],
    bodies: Path,
    duration: float,
    profile: Profile,
    workdir: Path,
) -> LoadResult:
    target = Target(f"{servers[scenario.server].base_url}{predict_path(PANEL)}", b"{}", bodies=bodies)
    return run_load(generator, target, CONCURRENCY, duration, profile.max_requests, workdir, REQUEST_TIMEOUT_S)


def run_varied_benchmark(
    profile: Profile, out: Path, generator: str = "auto", keep: bool = False, log: bool = True
) -> dict[str, Any]:
    """The whole run; its figures are merged into ``out`` under "varied" and returned."""
    chosen = choose_generator(generator)
    with work_folder(keep) as workdir, contextlib.ExitStack() as stack:
        registry = workdir / "registry"
        say(f"varied bodies: building the registry (panel of {profile.panel_series} series)")
        built = build_registry(registry, profile, workdir)
        bodies = varied_bodies(profile.panel_series)
        servers, answers = start_servers(registry, workdir, bodies, stack, log)
        body_file = workdir / "bodies.jsonl"
        body_file.write_bytes(b"\n".join(bodies) + b"\n")
        for scenario in SCENARIOS:
            if profile.warmup_s > 0:
                load_once(chosen, scenario, servers, body_file, profile.warmup_s, profile, workdir)
        runs: dict[str, list[LoadResult]] = {s.key: [] for s in SCENARIOS}
        for repeat in range(1, profile.repeats + 1):
            for scenario in SCENARIOS:
                result = load_once(chosen, scenario, servers, body_file, profile.duration_s, profile, workdir)
                runs[scenario.key].append(result)
                say(f"varied repeat {repeat}/{profile.repeats} {scenario.key}: {describe(result)}")
    results = {
        "profile": profile.to_dict(),
        "generator": generator_version(chosen),
        "concurrency": CONCURRENCY,
        "service_logging": "JSON lines at info, access log on" if log else "off",
        "registry": built[PANEL],
        "answers": answers,
        "figures": {
            s.key: {
                "label": s.label,
                "server": s.server,
                "rps": summarise([r.rps for r in runs[s.key]]),
                "p50_ms": summarise([r.p50_ms for r in runs[s.key]]),
                "p99_ms": summarise([r.p99_ms for r in runs[s.key]]),
                "errors": [r.errors for r in runs[s.key]],
                "runs": [r.to_dict() for r in runs[s.key]],
            }
            for s in SCENARIOS
        },
        "checks": varied_checks(runs),
        "notes": [
            f"{len(bodies)} distinct bodies sent in turn: 1..{MAX_SERIES} random series of {profile.panel_series}, "
            f"a random horizon 1..{HORIZON} (a quarter as fh lists); the floor answers each with our exact bytes",
            f"load from a separate {chosen} process on 127.0.0.1 (one thread); ratios paired per repeat, medians "
            "over repeats",
        ],
    }
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged["varied"] = results
    out.write_text(json.dumps(merged, indent=2, default=str))
    print(format_varied(results), flush=True)
    return results


def varied_checks(runs: dict[str, list[LoadResult]]) -> list[dict[str, Any]]:
    """The bars of issue 13 item 6 (cache off: every body new), then the cached figures."""
    floor = runs["floor_varied"]
    pairs = {key: list(zip(runs[key], floor, strict=True)) for key in ("varied_uncached", "varied_cached")}
    found = []
    for key, bar in (("varied_uncached", True), ("varied_cached", False)):
        found += [
            check(
                f"({key}) / (a) throughput, c={CONCURRENCY}",
                [ratio(b.rps, a.rps) for b, a in pairs[key]],
                f">= {BAR_THROUGHPUT}" if bar else None,
                (lambda v: v >= BAR_THROUGHPUT) if bar else None,
            ),
            check(
                f"({key}) / (a) p99, c={CONCURRENCY}",
                [ratio(b.p99_ms, a.p99_ms) for b, a in pairs[key]],
                f"<= {BAR_P99}" if bar else None,
                (lambda v: v <= BAR_P99) if bar else None,
            ),
        ]
    return found


def format_varied(results: dict[str, Any]) -> str:
    lines = [f"varying bodies, c={results['concurrency']} ({results['service_logging']})"]
    for key, fig in results["figures"].items():
        lines.append(
            f"  {key:16} {fig['rps']['median']:8,.0f} req/s  p50 {fig['p50_ms']['median']:6.2f} ms  "
            f"p99 {fig['p99_ms']['median']:6.2f} ms"
        )
    for c in results["checks"]:
        mark = {True: "ok", False: "MISSED", None: ""}[c["ok"]]
        lines.append(f"  {c['name']}: {c['value']:.3f} {c['bar'] or ''} {mark}")
    return "\n".join(lines)
