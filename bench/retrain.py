"""Retrain of a 1000-series monthly panel (Theta, sp=12), in one run:

* through the service: POST /v1/models/panel/retrain on a uvicorn subprocess, timed until
  the job succeeds (its fit stage is reported apart: the job also backtests the candidate
  and production on the last window and precomputes the fast path at publish);
* sktime's serial default (`ThetaForecaster.fit` on the panel, no backend);
* sktime's best parallel backend on this machine (`loky`, all cores);
* statsforecast called natively on the same data (`Theta(season_length=12)`), after a
  warm-up that compiles its numba code (reported apart).

`python -m bench.retrain [--series N] [--repeats R]`; also part of `python -m bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from bench.build import synthetic_panel
from bench.servers import Server, start_service, wait_ready
from bench.stats import ratio, summarise

MODEL = "panel-theta"
SPEC = """\
description: benchmark panel, {series} synthetic monthly series, Theta per series
kind: panel
data:
  source: {{path: panel.csv}}
  keys: [series]
  time: month
  targets: [y]
freq: M
horizon: 12
forecaster: {{class: ThetaForecaster, params: {{sp: 12}}}}
promotion: {{policy: always}}
"""


def say(message: str) -> None:
    print(f"[bench.retrain] {message}", file=sys.stderr, flush=True)


def write_model(root: Path, series: int, length: int) -> pd.DataFrame:
    folder = root / MODEL
    folder.mkdir(parents=True, exist_ok=True)
    table = synthetic_panel(series, length, seed=7)
    table["y"] = table["y"].clip(lower=1.0)  # Theta deseasonalises multiplicatively: positive data
    table.to_csv(folder / "panel.csv", index=False)
    (folder / "model.yaml").write_text(SPEC.format(series=series))
    return table


def sktime_panel(table: pd.DataFrame) -> pd.DataFrame:
    """The same data as the service reads it (service.tables), in sktime's panel mtype."""
    from service.tables import Schema, canonical_table, to_sktime

    schema = Schema("panel", ("series",), "month", ("y",), (), "M")
    y, _ = to_sktime(canonical_table(table, schema, what="bench panel"), schema)
    return y


def time_sktime_fit(y: pd.DataFrame, backend: str | None) -> float:
    from sktime.forecasting.theta import ThetaForecaster

    forecaster = ThetaForecaster(sp=12)
    forecaster.set_config(warnings="off")
    if backend is not None:
        forecaster.set_config(**{"backend:parallel": backend, "backend:parallel:params": {"n_jobs": -1}})
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forecaster.fit(y, fh=list(range(1, 13)))
    return time.perf_counter() - started


def time_statsforecast(table: pd.DataFrame) -> dict[str, float] | None:
    try:
        from statsforecast import StatsForecast
        from statsforecast.models import Theta
    except ImportError:
        say("statsforecast is not installed (pip install '.[bench]'): its figure is skipped")
        return None
    frame = pd.DataFrame(
        {"unique_id": table["series"], "ds": pd.to_datetime(table["month"]), "y": table["y"].astype(float)}
    )
    warm = frame[frame["unique_id"].isin(frame["unique_id"].unique()[:2])]
    started = time.perf_counter()
    StatsForecast(models=[Theta(season_length=12)], freq="MS", n_jobs=1).fit(warm)
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    StatsForecast(models=[Theta(season_length=12)], freq="MS", n_jobs=-1).fit(frame)
    return {"fit": time.perf_counter() - started, "compile": compile_s}


def retrain_and_wait(client: httpx.Client, model: str, timeout: float = 1800.0) -> tuple[dict[str, Any], float]:
    """POST a retrain of ``model`` and poll until the job ends: the succeeded job and the
    wall seconds from the POST (a RuntimeError for any other end)."""
    started = time.perf_counter()
    response = client.post(f"/v1/models/{model}/retrain", json={})
    response.raise_for_status()
    job_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"{model}: retrain job {job_id} ended {job['status']}: {job.get('error')}")
    return job, wall


def time_service_retrain(server: Server, timeout: float = 1800.0) -> dict[str, Any]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30.0) as client:
        job, wall = retrain_and_wait(client, MODEL, timeout)
    return {"job_wall": wall, "fit": float(job["result"]["fit_seconds"]), "result": job["result"]}


def restart_figures(root: Path, workdir: Path) -> dict[str, float]:
    """A fresh server on the registry the retrain wrote: seconds to ready (every production
    version loaded) and its resident bytes then."""
    started = time.perf_counter()
    server = start_service("restarted_service", root, workdir)
    try:
        wait_ready(server, timeout=600.0)
        ready = time.perf_counter() - started
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    finally:
        server.stop()
    return {"ready_seconds": round(ready, 3), "resident_bytes": rss_kb * 1024}


def run_service_only(workdir: Path, series: int, length: int = 120, jobs_wanted: int = 2) -> dict[str, Any]:
    """The retrain job ``jobs_wanted`` times (the second one gates against the first) and a
    restart, without the sktime baselines: for sizes where those take too long."""
    root = workdir / "retrain-registry"
    write_model(root, series, length)
    server = start_service("retrain_service", root, workdir)
    jobs = []
    try:
        wait_ready(server)
        for repeat in range(jobs_wanted):
            say(f"service retrain {repeat + 1}/{jobs_wanted} of {series} series")
            jobs.append(time_service_retrain(server, timeout=7200.0))
    finally:
        server.stop()
    return {"series": series, "length": length, "jobs": jobs, "restart": restart_figures(root, workdir)}


def run_retrain_benchmark(workdir: Path, series: int = 1000, length: int = 120, repeats: int = 1) -> dict[str, Any]:
    """Every figure ``repeats`` times (interleaved); medians, and ratios per repeat."""
    root = workdir / "retrain-registry"
    table = write_model(root, series, length)
    y = sktime_panel(table)
    server = start_service("retrain_service", root, workdir)
    runs: dict[str, list[float]] = {
        k: [] for k in ("service_job", "service_fit", "sktime_serial", "sktime_loky", "statsforecast")
    }
    compile_s = None
    try:
        wait_ready(server)
        for repeat in range(repeats):
            say(f"repeat {repeat + 1}/{repeats}: service retrain of {series} series")
            service = time_service_retrain(server)
            runs["service_job"].append(service["job_wall"])
            runs["service_fit"].append(service["fit"])
            say("sktime serial default")
            runs["sktime_serial"].append(time_sktime_fit(y, None))
            say("sktime loky")
            runs["sktime_loky"].append(time_sktime_fit(y, "loky"))
            say("statsforecast native")
            native = time_statsforecast(table)
            if native is not None:
                runs["statsforecast"].append(native["fit"])
                compile_s = native["compile"]
    finally:
        server.stop()
    figures = {k: summarise(v) for k, v in runs.items() if v}
    pairs = list(zip(runs["sktime_serial"], runs["service_fit"], runs["service_job"], strict=True))
    ratios = {
        "service fit speed-up vs sktime serial (bar >= 1.8)": summarise([ratio(s, f) for s, f, _ in pairs]),
        "service whole job speed-up vs sktime serial fit": summarise([ratio(s, j) for s, _, j in pairs]),
        "sktime loky speed-up vs serial": summarise(
            [ratio(s, p) for s, p in zip(runs["sktime_serial"], runs["sktime_loky"], strict=True)]
        ),
    }
    if runs["statsforecast"]:
        ratios["service fit / statsforecast native fit"] = summarise(
            [ratio(f, n) for (_, f, _), n in zip(pairs, runs["statsforecast"], strict=True)]
        )
    return {
        "series": series,
        "length": length,
        "model": "ThetaForecaster(sp=12) / statsforecast Theta(season_length=12)",
        "seconds": figures,
        "ratios": ratios,
        "statsforecast_compile_seconds": compile_s,
        "notes": [
            "service fit = the retrain job's fit stage (sktime loky backend across series);",
            "service job = POST to succeeded: data snapshot, fit, gate backtests of candidate and "
            "production (refit on the last window), publish with capability probe and precomputed forecasts",
        ],
    }


def format_retrain(results: dict[str, Any]) -> str:
    lines = [f"retrain, {results['series']} monthly series x {results['length']}: seconds median [min-max]"]
    for name, summary in results["seconds"].items():
        lines.append(f"    {name:<55}{summary['median']:>9.2f} [{summary['min']:.2f}-{summary['max']:.2f}]")
    for name, summary in results["ratios"].items():
        lines.append(f"    {name:<55}{summary['median']:>9.2f}")
    compile_s = results.get("statsforecast_compile_seconds")
    if compile_s is not None:
        lines.append(f"    {'statsforecast numba compile (warm-up, not counted)':<55}{compile_s:>9.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.retrain", description=__doc__)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--service-only", action="store_true", help="two retrain jobs and a restart, no baselines")
    parser.add_argument("--jobs", type=int, default=2, help="with --service-only: how many retrain jobs (1: no gate)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as folder:
        if args.service_only:
            results = run_service_only(Path(folder), args.series, jobs_wanted=args.jobs)
            print(json.dumps(results, indent=2))
        else:
            results = run_retrain_benchmark(Path(folder), args.series, repeats=args.repeats)
            print(format_retrain(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
