"""Monitoring of a 1000-series monthly panel (ThetaForecaster sp=12, length 60, horizon 12,
coverage 0.8 and 0.95, a drift policy declared), in one run:

* the record's growth: after each of ``versions`` published versions (all trained on the
  same 60 months, as retrains before new data arrives), `Monitor.sync` records its
  precomputed forecast; the record's bytes (`RecordStore.size`) after each, the bytes one
  version adds, and those per 1000 series;
* ingest of 1000 series x 12 new actuals (the 12 months after the cutoff, one CSV table),
  validated, stored, joined to every recorded forecast and scored (anomalies, drift):
  `Monitor.ingest` in process on a fresh copy of the record per repeat (cold: a new
  `Monitor`; warm: its forecast tables already read), and ``POST /v1/models/{name}/actuals``
  on a uvicorn subprocess; time and rows/s;
* the monitoring query over every series: `Monitor.report` in process and
  ``GET /v1/models/{name}/monitoring``;
* baselines in the same run: pandas reading and parsing the same CSV (what any ingest
  pays), and sktime's ``MeanAbsoluteScaledError`` called per series on the same forecast
  and actual pairs (inputs built outside the timer) against our vectorised
  `metrics_report` on those pairs (every metric, per series, per step, overall); the two
  MASE figures are checked equal.

``python -m bench.monitoring [--series N] [--repeats R] [--no-http] [--out bench/results.json]``;
also part of ``python -m bench`` (figures under "monitoring").
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import yaml

from bench.build import synthetic_panel
from bench.report import fmt, write_results
from bench.servers import start_service, wait_ready
from bench.stats import ratio, summarise

MODEL = "monitored"
HORIZON = 12
COVERAGE = [0.8, 0.95]
REQUEST_TIMEOUT_S = 300.0
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"series": 1000, "length": 60, "versions": 3, "repeats": 3, "http": True},
    "full": {"series": 1000, "length": 60, "versions": 3, "repeats": 7, "http": True},
}


def say(message: str) -> None:
    print(f"[bench.monitoring] {message}", file=sys.stderr, flush=True)


def spec(forecaster: str) -> dict[str, Any]:
    params = {"sp": 12} if forecaster == "ThetaForecaster" else {"sp": 12, "strategy": "last"}
    return {
        "description": "benchmark panel for monitoring, synthetic monthly series",
        "kind": "panel",
        "data": {"source": {"path": "panel.csv"}, "keys": ["series"], "time": "month", "targets": ["y"]},
        "freq": "M",
        "horizon": HORIZON,
        "forecaster": {"class": forecaster, "params": params},
        "coverage": COVERAGE,
        "promotion": {"policy": "always"},
        # a declared policy: every ingest judges the production version's live MASE over the window
        "monitoring": {"metric": "MASE", "window": HORIZON, "action": "alert"},
    }


def write_model(root: Path, series: int, length: int, forecaster: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The model folder (``length`` months of history) and the ``HORIZON`` months that follow
    (the actuals, same process); returns (history, actuals)."""
    table = synthetic_panel(series, length + HORIZON, seed=7)
    table["y"] = table["y"].clip(lower=1.0)  # Theta deseasonalises multiplicatively: positive data
    months = np.sort(table["month"].unique())
    history = table[table["month"].isin(months[:length])].reset_index(drop=True)
    actuals = table[table["month"].isin(months[length:])].reset_index(drop=True)
    folder = root / MODEL
    folder.mkdir(parents=True, exist_ok=True)
    history.to_csv(folder / "panel.csv", index=False)
    (folder / "model.yaml").write_text(yaml.safe_dump(spec(forecaster), sort_keys=False))
    return history, actuals


def data_dir(root: Path) -> Path:
    """Where bench.serve's service keeps its data for registry ``root`` (so it finds the record)."""
    return root.parent / f"{root.name}-data"


def monitor_on(root: Path, data: Path) -> Any:
    from service.jobs.monitor import Monitor
    from service.records.store import RecordStore
    from service.registry.store import Registry

    return Monitor(Registry(root), RecordStore(data), None)


def publish_versions(root: Path, versions: int, series: int) -> list[dict[str, Any]]:
    """Train and publish ``versions`` versions, each recorded by `Monitor.sync` at once; the
    record's size after each."""
    from service.forecasting.training import train_and_publish
    from service.registry.store import FORECAST, Registry

    registry = Registry(root)
    monitor = monitor_on(root, data_dir(root))
    grown = []
    for _ in range(versions):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            version = train_and_publish(registry, MODEL, parallel=series >= 200)
        trained = time.perf_counter() - started
        started = time.perf_counter()
        recorded = monitor.sync(MODEL)
        synced = time.perf_counter() - started
        if recorded != [version]:
            raise RuntimeError(f"sync recorded {recorded}, expected [{version}]")
        metas = {record_id: size for record_id, _, size in monitor.records.forecast_metas(MODEL)}
        size = monitor.records.size(MODEL)
        grown.append(
            {
                "version": version,
                "train_publish_seconds": round(trained, 3),
                "sync_seconds": round(synced, 4),
                "record_bytes": size["bytes"],
                "record_files": size["files"],
                "version_record_bytes": metas[f"v{version}"],
                "registry_forecast_bytes": (registry.version_dir(MODEL, version) / FORECAST).stat().st_size,
            }
        )
        say(f"v{version}: trained+published {trained:.1f} s, synced {synced:.3f} s, record {size['bytes']:,} bytes")
    return grown


def growth_figures(grown: list[dict[str, Any]], series: int) -> dict[str, Any]:
    sizes = [0] + [g["record_bytes"] for g in grown]
    added = [after - before for before, after in itertools.pairwise(sizes)]
    per_version = summarise([float(a) for a in added])
    return {
        "versions": grown,
        "bytes_added_per_version": per_version,
        "bytes_per_version_per_1000_series": per_version["median"] * 1000 / series,
        "bytes_per_forecast_row": per_version["median"] / (series * HORIZON),
    }


# ----------------------------------------------------------------------------- in process
def fresh_copy(base: Path, into: Path) -> Path:
    """A copy of the record as publishing left it (forecasts, no actuals)."""
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(base / "monitoring", into / "monitoring", ignore=shutil.ignore_patterns("*.lock"))
    return into


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def ingest_once(root: Path, data: Path, csv: bytes, warm: bool) -> tuple[float, dict[str, Any], Any]:
    """`Monitor.ingest` of the CSV table on a fresh copy of the record; the upload's parse
    (pandas, as the HTTP route does) is inside the timer. ``warm``: the forecast tables
    read (and the versions synced) beforehand, as in a server that has seen an upload."""
    monitor = monitor_on(root, data)
    if warm:
        monitor.sync(MODEL)
        monitor.records.read_forecasts(MODEL)
    seconds, answer = timed(lambda: monitor.ingest(MODEL, pd.read_csv(io.BytesIO(csv)), source="actuals"))
    return seconds, answer, monitor


def check_ingest(answer: dict[str, Any], rows: int, versions: int) -> None:
    if answer["rows"] != rows or answer["matched"] != rows or answer["forecasts_met"] != rows * versions:
        raise RuntimeError(f"ingest did not match every actual to every version: {answer}")


def check_report(report: dict[str, Any], rows: int, versions: int) -> None:
    points = [v["points"] for v in report["versions"]]
    if points != [rows] * versions:
        raise RuntimeError(f"the report's points per version are {points}, expected {[rows] * versions}")


def production_pairs(monitor: Any, window: int) -> tuple[pd.DataFrame, Any]:
    """The production version's joined pairs in the window, from the public pure functions."""
    from service.forecasting import monitoring as mon

    name = MODEL
    schema = monitor.schema(name)
    pairs = monitor.pairs(name, schema)
    production = monitor.registry.read_aliases(name)["production"]
    return mon.window_of(pairs[pairs["version"] == production], window), schema


def sktime_inputs(pairs: pd.DataFrame, history: pd.DataFrame) -> list[tuple[str, pd.Series, pd.Series, pd.Series]]:
    """Per series: actuals, point forecast and training series as sktime takes them (built
    outside the timer)."""
    from service.forecasting.monitoring import times_of

    train = history.assign(month=pd.PeriodIndex(pd.to_datetime(history["month"]), freq="M"))
    trains = {  # unnamed, like the other two (sktime aligns a named series' column with theirs: NaN)
        key: pd.Series(part["y"].to_numpy(dtype=float), index=pd.PeriodIndex(part["month"], freq="M"))
        for key, part in train.groupby("series", sort=False)
    }
    found = []
    for key, part in pairs.sort_values("_t").groupby("series", sort=False):
        index = pd.PeriodIndex(pd.to_datetime(times_of(part["_t"].to_numpy(), "M")), freq="M")
        y_true = pd.Series(part["actual"].to_numpy(), index=index)
        y_pred = pd.Series(part["point"].to_numpy(), index=index)
        found.append((str(key), y_true, y_pred, trains[key]))
    return found


def sktime_mase(inputs: list[tuple[str, pd.Series, pd.Series, pd.Series]]) -> tuple[float, dict[str, float]]:
    """sktime's MASE per series (its default sp=1, like the service's): seconds and values."""
    from sktime.performance_metrics.forecasting import MeanAbsoluteScaledError

    metric = MeanAbsoluteScaledError()
    values = {}
    started = time.perf_counter()
    for key, y_true, y_pred, y_train in inputs:
        values[key] = float(metric(y_true, y_pred, y_train=y_train))
    return time.perf_counter() - started, values


def our_metrics(pairs: pd.DataFrame, schema: Any) -> tuple[float, dict[str, float]]:
    from service.forecasting.monitoring import metrics_report

    seconds, report = timed(lambda: metrics_report(pairs, schema))
    return seconds, {row["series"][0]: row["metrics"]["MASE"] for row in report["per_series"]}


def parse_baseline(csv: bytes) -> float:
    """pandas reading the CSV and parsing its month column: the floor of any ingest."""

    def parse() -> Any:
        frame = pd.read_csv(io.BytesIO(csv))
        return pd.PeriodIndex(pd.to_datetime(frame["month"]), freq="M")

    return timed(parse)[0]


def run_in_process(
    root: Path, scratch: Path, csv: bytes, history: pd.DataFrame, rows: int, versions: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Every in-process figure ``repeats`` times, interleaved with its baselines."""
    runs: dict[str, list[float]] = {
        k: [] for k in ("ingest_cold", "ingest_warm", "report", "pandas_parse", "sktime_mase", "our_metrics")
    }
    extra: dict[str, Any] = {}
    for repeat in range(repeats):
        cold, answer, _ = ingest_once(root, fresh_copy(data_dir(root), scratch / "cold"), csv, warm=False)
        check_ingest(answer, rows, versions)
        warm, answer, monitor = ingest_once(root, fresh_copy(data_dir(root), scratch / "warm"), csv, warm=True)
        check_ingest(answer, rows, versions)
        query, report = timed(lambda: monitor.report(MODEL))  # noqa: B023 - called at once
        check_report(report, rows, versions)
        runs["ingest_cold"].append(cold)
        runs["ingest_warm"].append(warm)
        runs["report"].append(query)
        runs["pandas_parse"].append(parse_baseline(csv))
        pairs, schema = production_pairs(monitor, HORIZON)
        inputs = sktime_inputs(pairs, history)
        theirs_s, theirs = sktime_mase(inputs)
        ours_s, ours = our_metrics(pairs, schema)
        runs["sktime_mase"].append(theirs_s)
        runs["our_metrics"].append(ours_s)
        if repeat == 0:
            size = monitor.records.size(MODEL)
            extra = {
                "record_bytes_after_ingest": size["bytes"],
                "actuals_bytes": size["bytes"] - sum(m[2] for m in monitor.records.forecast_metas(MODEL)),
                "anomalies": answer["anomalies"],
                "drift_state": answer["drift"].get("state"),
                "report_bytes_json": len(json.dumps(report, default=str)),
                "mase_series_compared": len(theirs),
                "mase_max_abs_difference": max(abs(theirs[k] - ours[k]) for k in theirs),
            }
            if set(theirs) != set(ours) or not extra["mase_max_abs_difference"] <= 1e-9:  # NaN fails too
                raise RuntimeError(f"our MASE differs from sktime's: {extra['mase_max_abs_difference']}")
        say(
            f"repeat {repeat + 1}/{repeats}: ingest cold {cold:.3f} s, warm {warm:.3f} s, report {query:.3f} s, "
            f"pandas parse {runs['pandas_parse'][-1]:.3f} s, sktime MASE per series {theirs_s:.3f} s, "
            f"our metrics_report {ours_s:.3f} s"
        )
    return runs, extra


# ----------------------------------------------------------------------------- over HTTP
def run_http(root: Path, workdir: Path, csv: bytes, rows: int, versions: int, repeats: int) -> dict[str, list[float]]:
    """POST the same actuals ``repeats`` times (repeat r finds r - 1 identical uploads
    stored: the newest wins), then GET the report ``repeats`` times, on one server."""
    runs: dict[str, list[float]] = {"post_actuals": [], "get_monitoring": []}
    server = start_service("monitoring_service", root, workdir)
    try:
        wait_ready(server, timeout=600.0)
        url = f"{server.base_url}/v1/models/{MODEL}"
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            for repeat in range(repeats):
                seconds, response = timed(
                    lambda: client.post(f"{url}/actuals", content=csv, headers={"content-type": "text/csv"})
                )
                if response.status_code != 200:
                    raise RuntimeError(f"POST actuals answered {response.status_code}: {response.text[:500]}")
                check_ingest(response.json(), rows, versions)
                runs["post_actuals"].append(seconds)
                say(f"HTTP repeat {repeat + 1}/{repeats}: POST actuals {seconds:.3f} s")
            for repeat in range(repeats):
                seconds, response = timed(lambda: client.get(f"{url}/monitoring"))
                if response.status_code != 200:
                    raise RuntimeError(f"GET monitoring answered {response.status_code}: {response.text[:500]}")
                check_report(response.json(), rows, versions)
                runs["get_monitoring"].append(seconds)
                say(f"HTTP repeat {repeat + 1}/{repeats}: GET monitoring {seconds:.3f} s")
    except BaseException:
        say(f"server log tail:\n{server.log_tail()}")
        raise
    finally:
        server.stop()
    return runs


# ----------------------------------------------------------------------------- the run
def run_monitoring_benchmark(
    workdir: Path,
    series: int = 1000,
    length: int = 60,
    versions: int = 3,
    repeats: int = 3,
    http: bool = True,
    forecaster: str = "ThetaForecaster",
) -> dict[str, Any]:
    """The whole benchmark in ``workdir``; plain data (results.json's "monitoring")."""
    started = time.perf_counter()
    root = workdir / "registry"
    history, actuals = write_model(root, series, length, forecaster)
    rows = len(actuals)
    csv = actuals.to_csv(index=False).encode()
    say(f"{series} series x {length} months, {forecaster}: publishing {versions} versions")
    grown = publish_versions(root, versions, series)
    runs, extra = run_in_process(root, workdir / "scratch", csv, history, rows, versions, repeats)
    if http:
        runs.update(run_http(root, workdir, csv, rows, versions, repeats))
    seconds = {k: summarise(v) for k, v in runs.items() if v}
    rows_per_s = {
        k: summarise([rows / s for s in runs[k]]) for k in ("ingest_cold", "ingest_warm", "post_actuals") if runs.get(k)
    }
    pairs = list(zip(runs["ingest_warm"], runs["pandas_parse"], runs["sktime_mase"], runs["our_metrics"], strict=True))
    ratios = {
        "ingest warm / pandas read+parse of the same CSV": summarise([ratio(i, p) for i, p, _, _ in pairs]),
        "ingest cold / pandas read+parse of the same CSV": summarise(
            [ratio(c, p) for c, p in zip(runs["ingest_cold"], runs["pandas_parse"], strict=True)]
        ),
        "sktime MASE per series / our metrics_report (speed-up)": summarise([ratio(s, o) for _, _, s, o in pairs]),
        "sktime MASE per series / whole ingest warm (speed-up)": summarise([ratio(s, i) for i, _, s, _ in pairs]),
    }
    if runs.get("post_actuals"):
        ratios["POST actuals / in-process ingest warm"] = summarise(
            [ratio(h, i) for h, i in zip(runs["post_actuals"], runs["ingest_warm"], strict=True)]
        )
        ratios["GET monitoring / in-process report"] = summarise(
            [ratio(h, i) for h, i in zip(runs["get_monitoring"], runs["report"], strict=True)]
        )
    return {
        "series": series,
        "length": length,
        "horizon": HORIZON,
        "coverage": COVERAGE,
        "model": f"{forecaster}(sp=12), monthly panel, a MASE drift policy (action alert)",
        "versions": versions,
        "repeats": repeats,
        "actual_rows": rows,
        "csv_bytes": len(csv),
        "seconds": seconds,
        "rows_per_second": rows_per_s,
        "ratios": ratios,
        "record": growth_figures(grown, series),
        "checks": extra,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "notes": [
            f"every version is trained on the same {length} months, so the {rows} actuals (the {HORIZON} months "
            f"after the cutoff) meet each of the {versions} recorded forecasts ({rows * versions} pairs)",
            "ingest = parse the CSV with pandas + Monitor.ingest (validate, store, join, anomalies, drift), each "
            "repeat on a fresh copy of the record; cold: a new Monitor reads the forecasts from Parquet, warm: "
            "already read",
            "report = Monitor.report over every series (per version: overall, per step, per series), after the warm "
            "ingest",
            "sktime MASE: MeanAbsoluteScaledError() called once per series on the production version's pairs (inputs "
            "built outside the timer); ours: metrics_report on the same pairs, every metric; MASE checked equal",
            "HTTP: one uvicorn worker; the same CSV POSTed each repeat (repeat r finds r - 1 identical uploads, "
            "the newest wins); the GETs follow the POSTs",
        ],
    }


def format_monitoring(results: dict[str, Any]) -> str:
    head = (
        f"monitoring, {results['series']} series x {results['length']} months, h={results['horizon']}, "
        f"{results['versions']} versions, {results['repeats']} repeats: median [min-max]"
    )
    lines = [head]
    for name, summary in results["seconds"].items():
        lines.append(f"    {name + ' s':<58}{summary['median']:>10.3f} [{summary['min']:.3f}-{summary['max']:.3f}]")
    for name, summary in results["rows_per_second"].items():
        lines.append(f"    {name + ' rows/s':<58}{fmt(summary['median']):>10}")
    for name, summary in results["ratios"].items():
        lines.append(f"    {name:<58}{fmt(summary['median']):>10}")
    record = results["record"]
    lines.append(f"    {'record bytes added per version':<58}{fmt(record['bytes_added_per_version']['median']):>10}")
    lines.append(f"    {'  per 1000 series':<58}{fmt(record['bytes_per_version_per_1000_series']):>10}")
    lines.append(f"    {'  per forecast row':<58}{fmt(record['bytes_per_forecast_row']):>10}")
    growth = ", ".join(f"v{v['version']} {v['record_bytes']:,}" for v in record["versions"])
    lines.append(f"    record bytes after each version: {growth}")
    return "\n".join(lines)


def run_monitoring_into(out: Path, profile: str) -> dict[str, Any]:
    """The profile's sizes; the figures go to ``out`` under "monitoring"."""
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as folder:
        results = run_monitoring_benchmark(Path(folder), **SIZES[profile])
    print(format_monitoring(results), flush=True)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged["monitoring"] = results
    write_results(out, merged)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.monitoring", description=__doc__)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forecaster", choices=["ThetaForecaster", "NaiveForecaster"], default="ThetaForecaster")
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    parser.add_argument("--out", type=Path, default=None, help="also add the figures to this results.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as folder:
        results = run_monitoring_benchmark(
            Path(folder), args.series, args.length, args.versions, args.repeats, not args.no_http, args.forecaster
        )
    print(format_monitoring(results))
    if args.out is not None:
        merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
        merged["monitoring"] = results
        write_results(args.out, merged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
