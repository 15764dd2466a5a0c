"""Protocol adapters' overhead against our own predict route, on one uvicorn subprocess serving
the airline demo (Theta, 12 months, quantiles 0.1/0.5/0.9) and the 60-series tourism panel:

* ``POST /v1/models/{name}/predict`` as a client sends it twice: the first answer is cached by
  the fast lane, so the repeat costs no forecasting ("predict, cached");
* the same predict with ``alias: production`` (the fast lane does not cache aliased requests):
  the precomputed table sliced and encoded by the route ("predict");
* KServe's ``POST /v1/timeseries/forecast`` for the same horizon and quantiles ("kserve");
* MLflow's ``POST /mlflow/{name}/invocations`` with an empty frame (the version's default
  horizon, coverages and quantiles; "mlflow");
* with 3 new actuals (a live forecast): predict with ``observations`` and kserve with the same
  values as the input series ("predict live", "kserve live").

Each request is sent ``requests`` times in a row on one keep-alive connection after a warm-up;
p50 and p90 in ms, and the ratios of p50s (adapter / predict) per repeat.

``python -m bench.protocols [--requests N] [--repeats R] [--out bench/results.json]``; also part
of ``python -m bench`` (figures under "protocols").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.report import fmt, write_results
from bench.servers import start_service, wait_ready
from bench.stats import ratio, summarise

REPO = Path(__file__).resolve().parents[1]
MODELS = ("airline", "tourism-monthly")
QUANTILES = [0.1, 0.5, 0.9]
ACTUALS = [417.0, 391.0, 419.0]
SIZES = {"quick": {"requests": 200, "repeats": 3}, "full": {"requests": 1000, "repeats": 5}}


def build_registry(root: Path, trained: Path | None = None) -> Path:
    """The two demos' specs, trained here (a few seconds), or copied from ``trained``."""
    from service.forecasting.training import train_and_publish
    from service.observability import quiet_sktime_warnings
    from service.registry.store import Registry

    quiet_sktime_warnings()
    registry = root / "models"
    if trained is not None:
        for name in MODELS:
            shutil.copytree(trained / name, registry / name, ignore=shutil.ignore_patterns("*.lock"))
        return registry
    for name in MODELS:
        (registry / name).mkdir(parents=True)
        shutil.copy(REPO / "models" / name / "model.yaml", registry / name / "model.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODELS:
            train_and_publish(Registry(registry), name)
    return registry


def kserve_body(model: str, name: str, values: list[float], start: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "univariate_time_series", "name": name, "series": values, "frequency": "M"}
    if start:
        item["start_timestamp"] = start
    return {"model": model, "inputs": [item], "options": {"horizon": 12, "quantiles": QUANTILES}}


def requests_to_time() -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "predict, cached": ("/v1/models/airline/predict", {"horizon": 12, "quantiles": QUANTILES}),
        "predict": ("/v1/models/airline/predict", {"horizon": 12, "quantiles": QUANTILES, "alias": "production"}),
        "kserve": ("/v1/timeseries/forecast", kserve_body("airline", "passengers", [])),
        "mlflow": ("/mlflow/airline/invocations", {"dataframe_split": {"columns": [], "data": []}}),
        "predict, panel series": (
            "/v1/models/tourism-monthly/predict",
            {"series": ["T007"], "horizon": 12, "quantiles": QUANTILES, "alias": "production"},
        ),
        "kserve, panel series": ("/v1/timeseries/forecast", kserve_body("tourism-monthly", "T007", [])),
        "predict live": (
            "/v1/models/airline/predict",
            {
                "horizon": 12,
                "quantiles": QUANTILES,
                "observations": {"month": ["1961-01", "1961-02", "1961-03"], "passengers": ACTUALS},
            },
        ),
        "kserve live": ("/v1/timeseries/forecast", kserve_body("airline", "passengers", ACTUALS, "1961-01-01")),
    }


def latencies(client: httpx.Client, path: str, body: dict[str, Any], count: int) -> list[float]:
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    for _ in range(5):  # warm-up: the first answer fills the fast lane's cache
        assert client.post(path, content=payload, headers=headers).status_code == 200
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        r = client.post(path, content=payload, headers=headers)
        seconds.append(time.perf_counter() - start)
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
    return seconds


def same_numbers(client: httpx.Client) -> dict[str, float]:
    """The adapters' numbers against predict's, in the same run (max abs differences)."""
    table = client.post("/v1/models/airline/predict", json={"horizon": 12, "quantiles": QUANTILES}).json()["forecast"]
    kserve = client.post("/v1/timeseries/forecast", json=kserve_body("airline", "passengers", [])).json()
    content = kserve["outputs"][0]["content"][0]
    mlflow = client.post("/mlflow/airline/invocations", json={"dataframe_split": {"columns": [], "data": []}}).json()
    points = [r["predict__passengers"] for r in mlflow["predictions"]]
    return {
        "kserve_mean_vs_predict": float(np.max(np.abs(np.subtract(content["mean_forecast"], table["passengers"])))),
        "kserve_q0.9_vs_predict": float(
            np.max(np.abs(np.subtract(content["quantiles"]["0.9"], table["passengers_q0.9"])))
        ),
        "mlflow_point_vs_predict": float(np.max(np.abs(np.subtract(points, table["passengers"])))),
    }


def run_protocols_benchmark(workdir: Path, requests: int, repeats: int, trained: Path | None = None) -> dict[str, Any]:
    """``trained``: a registry holding the two demos trained already (tests)."""
    registry = build_registry(workdir, trained)
    server = start_service("protocols_service", registry, workdir)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in requests_to_time()}
    try:
        wait_ready(server)
        with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
            checks = same_numbers(client)
            for _ in range(repeats):
                for name, (path, body) in requests_to_time().items():
                    seconds = np.asarray(latencies(client, path, body, requests)) * 1000
                    runs[name].append(
                        {"p50": float(np.percentile(seconds, 50)), "p90": float(np.percentile(seconds, 90))}
                    )
    finally:
        server.stop()
    p50 = {name: summarise([r["p50"] for r in rows]) for name, rows in runs.items()}
    p90 = {name: summarise([r["p90"] for r in rows]) for name, rows in runs.items()}
    pairs = {
        "kserve / predict (p50)": ("kserve", "predict"),
        "mlflow / predict (p50)": ("mlflow", "predict"),
        "kserve / predict, panel series (p50)": ("kserve, panel series", "predict, panel series"),
        "kserve live / predict live (p50)": ("kserve live", "predict live"),
        "predict / predict, cached (p50)": ("predict", "predict, cached"),
    }
    ratios = {
        label: summarise([ratio(a["p50"], b["p50"]) for a, b in zip(runs[num], runs[den], strict=True)])
        for label, (num, den) in pairs.items()
    }
    return {"requests": requests, "repeats": repeats, "p50_ms": p50, "p90_ms": p90, "ratios": ratios, "checks": checks}


def format_protocols(results: dict[str, Any]) -> str:
    lines = [f"protocols: {results['requests']} sequential requests x {results['repeats']} repeats, one connection"]
    for name, summary in results["p50_ms"].items():
        lines.append(
            f"  {name:<24} p50 {fmt(summary['median'], 3)} ms   p90 {fmt(results['p90_ms'][name]['median'], 3)} ms"
        )
    for label, summary in results["ratios"].items():
        lines.append(f"  {label:<40} {fmt(summary['median'])}x")
    lines.append(f"  numbers: {results['checks']}")
    return "\n".join(lines)


def run_protocols_into(out: Path, profile: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-protocols-") as folder:
        results = run_protocols_benchmark(Path(folder), **SIZES[profile])
    print(format_protocols(results), flush=True)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged["protocols"] = results
    write_results(out, merged)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also add the figures to this results.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-protocols-") as folder:
        results = run_protocols_benchmark(Path(folder), args.requests, args.repeats)
    print(format_protocols(results), flush=True)
    if args.out is not None:
        merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
        merged["protocols"] = results
        write_results(args.out, merged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
