"""The benchmark harness works end to end on tiny sizes. No timing is asserted: CI does
not time anything (shared/BENCHMARKS.md). Load comes from the httpx generator, which needs
nothing but the dev extra; wrk is optional (`make bench` uses it when installed), so its
plumbing (choice, Lua script, command, result line) is checked without running it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench import load
from bench.__main__ import parse_args
from bench.build import synthetic_panel
from bench.load import RESULT_MARK, Target, choose_generator, parse_result, run_load, wrk_command
from bench.profiles import PROFILES, Profile
from bench.run import run_benchmark
from bench.servers import start_floor, wait_ready
from bench.stats import percentile, ratio, summarise

TINY = Profile(
    name="tiny",
    duration_s=0.3,
    warmup_s=0.0,
    repeats=1,
    max_requests=15,
    panel_series=20,
    panel_length=36,
    sktime_calls=2,
)
BARS = 4


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_summarise_reports_median_min_max_and_repeats() -> None:
    summary = summarise([3.0, 1.0, 2.0])
    assert (summary["median"], summary["min"], summary["max"], summary["repeats"]) == (2.0, 1.0, 3.0, 3)
    assert math.isnan(ratio(1.0, 0.0))


def test_synthetic_panel_is_a_regular_long_table() -> None:
    table = synthetic_panel(series=3, length=24)
    assert len(table) == 72
    assert table["series"].nunique() == 3
    months = pd.PeriodIndex(pd.to_datetime(table.loc[table["series"] == "S0001", "month"]), freq="M")
    assert (months[1:] - months[:-1] == months.freq).all()


def test_command_line_defaults_to_the_quick_profile() -> None:
    args = parse_args([])
    assert args.profile == "quick"
    assert args.out == Path("bench/results.json")
    assert set(PROFILES) == {"quick", "full"}


@pytest.mark.slow
def test_httpx_generator_reads_back_a_floor_server(tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_bytes(b'{"forecast": [1, 2, 3]}')
    server = start_floor("floor", payload, "/predict", tmp_path)
    try:
        wait_ready(server, timeout=60)
        target = Target(f"{server.base_url}/predict", b'{"horizon": 12}')
        result = run_load("httpx", target, concurrency=2, duration=0.5, max_requests=10, workdir=tmp_path)
    finally:
        server.stop()
    assert result.generator == "httpx"
    assert 1 <= result.requests <= 10
    assert result.errors == 0
    assert result.p50_ms > 0 and result.p99_ms >= result.p50_ms


def test_auto_uses_wrk_when_installed_else_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "wrk_path", lambda: None)
    assert choose_generator("auto") == "httpx"
    assert choose_generator("httpx") == "httpx"
    with pytest.raises(RuntimeError, match=r"wrk is not installed.*--generator httpx"):
        choose_generator("wrk")
    monkeypatch.setattr(load, "wrk_path", lambda: "/opt/bin/wrk")
    assert choose_generator("auto") == "wrk"
    assert choose_generator("wrk") == "wrk"


def test_wrk_script_command_and_result_line_fit_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What run_wrk hands wrk, and reads back from it, without a wrk binary."""
    monkeypatch.setattr(load, "wrk_path", lambda: "/opt/bin/wrk")
    body = '{"horizon": 12}'
    script = load.WRK_SCRIPT.format(body=body, max_requests=7, mark=RESULT_MARK)
    assert f"wrk.body = [==[{body}]==]" in script
    assert "local max_requests = 7" in script and RESULT_MARK + '{"requests": %d' in script
    target = Target("http://127.0.0.1:9/predict", body.encode())
    command = wrk_command(target, concurrency=4, duration=0.3, script=tmp_path / "s.lua", timeout=2.5)
    assert command == ["/opt/bin/wrk", "-t1", "-c4", "-d1s", "--timeout=3s", "-s", str(tmp_path / "s.lua"), target.url]
    printed = (
        "Running 1s test @ http://127.0.0.1:9/predict\n"
        f'{RESULT_MARK}{{"requests": 7, "elapsed_s": 0.5, "errors": 0, "socket_errors": 0, '
        '"p50_ms": 0.2, "p99_ms": 0.9, "max_ms": 1.1}\n'
    )
    result = parse_result(printed, "wrk", concurrency=4)
    assert (result.requests, result.errors, result.p99_ms, result.rps) == (7, 0, 0.9, 14.0)
    with pytest.raises(RuntimeError, match="printed no result"):
        parse_result("no line\n", "wrk", concurrency=4)


@pytest.mark.slow
def test_harness_runs_end_to_end_on_tiny_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    run_benchmark(TINY, out, generator="httpx")
    results = json.loads(out.read_text())
    assert {"run", "machine", "libraries", "answers", "figures", "sktime", "checks", "notes"} <= set(results)
    assert results["machine"]["nproc"] >= 1 and results["libraries"]["sktime"]
    assert results["answers"]["panel_rows"] == TINY.panel_series * 12
    airline = {f"{kind}_c{c}" for kind in ("floor", "fast", "live") for c in TINY.concurrency}
    assert set(results["figures"]) == airline | {"panel_cached_c1", "panel_uncached_c1"}
    for key, figure in results["figures"].items():
        assert figure["rps"]["repeats"] == TINY.repeats, key
        assert all(n >= 1 for n in figure["requests"]), key
        assert sum(figure["errors"]) == 0, key
        assert {"median", "min", "max"} <= set(figure["p99_ms"]), key
    assert set(results["sktime"]["variants"]) == {"predict", "predict_interval", "update_predict", "deepcopy"}
    assert sum(check["ok"] is not None for check in results["checks"]) == BARS
    table = capsys.readouterr().out
    assert "(b)/(a) throughput" in table and "(d) sktime in-process" in table
