"""Panel scale: what each stage of a panel version costs per series, at several sizes, in one run.

For each size (synthetic monthly panels, length 120, Theta(sp=12) per series) it times, in this
process, the stages a retrain job and a server pay today:

* ``fit``: the service's chunked fit on all local cores (``fit_in_chunks``);
* ``precompute``: the default-horizon forecast with 80%/95% intervals (``run_forecast``);
* ``pickle`` / ``unpickle``: the whole panel as one artifact, and its size;
* ``memory``: the unpickled forecaster's resident bytes (RSS growth of a fresh child process);
* ``statsforecast``: statsforecast's native ``Theta(season_length=12)`` fit on all cores
  (when installed), the bar a user compares with.

From the per-series constants it writes a cost-growth plot and the cost of 1M series on N
workers computed on paper (linear per series, divided by workers; the scheduler's overhead
is not in it). `python -m bench.scale --series 1000,10000 [--plot scale.png]`.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench.build import synthetic_panel
from bench.retrain import sktime_panel, time_statsforecast

HORIZON = 12
COVERAGE = [0.8, 0.95]
STAGES = ("fit", "precompute", "pickle", "unpickle")
PAPER_SERIES = 1_000_000
PAPER_WORKERS = (1, 8, 32, 128)

_RSS_CHILD = """
import gc, os, pickle, sys
import sktime.forecasting.base  # the library's own memory is not the panel's
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
with open(sys.argv[1], "rb") as f:
    data = f.read()
pickle.loads(data)  # a first load imports what the objects need (statsmodels, ...): not the panel's
gc.collect()
before = resident()
obj = pickle.loads(data)
gc.collect()
print(resident() - before)
"""


def say(message: str) -> None:
    print(f"[bench.scale] {message}", file=sys.stderr, flush=True)


def resident_bytes(artifact: Path) -> int:
    """Resident bytes a fresh interpreter grows by when it unpickles ``artifact`` (file read, modules imported)."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(artifact)], check=True, capture_output=True, text=True, timeout=3600
    )
    return max(int(out.stdout.strip().splitlines()[-1]), 0)


def measure_size(series: int, length: int, workdir: Path) -> dict[str, Any]:
    """Every stage once at one size; seconds and the per-series constants."""
    from sktime.forecasting.theta import ThetaForecaster

    from service.forecasting.chunked_fit import fit_in_chunks
    from service.forecasting.predict import private_copy, run_forecast
    from service.tables import Schema

    schema = Schema("panel", ("series",), "month", ("y",), (), "M")
    table = synthetic_panel(series, length, seed=7)
    table["y"] = table["y"].clip(lower=1.0)
    y = sktime_panel(table)
    fh = list(range(1, HORIZON + 1))
    seconds: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        fitted = fit_in_chunks(ThetaForecaster(sp=12), y, None, fh)
        seconds["fit"] = time.perf_counter() - started
        assert fitted is not None, "Theta is fitted per series"
        started = time.perf_counter()
        run_forecast(private_copy(fitted), schema, fh, COVERAGE, [])
        seconds["precompute"] = time.perf_counter() - started
    started = time.perf_counter()
    artifact = pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL)
    seconds["pickle"] = time.perf_counter() - started
    started = time.perf_counter()
    pickle.loads(artifact)
    seconds["unpickle"] = time.perf_counter() - started
    path = workdir / f"panel-{series}.pkl"
    path.write_bytes(artifact)
    memory = resident_bytes(path)
    path.unlink()
    native = time_statsforecast(table)
    if native is not None:
        seconds["statsforecast_fit"] = native["fit"]
    per_series_ms = {k: 1000 * v / series for k, v in seconds.items()}
    return {
        "series": series,
        "length": length,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "per_series_ms": {k: round(v, 4) for k, v in per_series_ms.items()},
        "artifact_bytes": len(artifact),
        "artifact_bytes_per_series": round(len(artifact) / series, 1),
        "resident_bytes": memory,
        "resident_bytes_per_series": round(memory / series, 1),
        "fit_vs_statsforecast": (
            round(seconds["fit"] / seconds["statsforecast_fit"], 3) if seconds.get("statsforecast_fit") else None
        ),
    }


def on_paper(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """1M series from the largest measured size's constants, divided over N workers of 2 cores like
    this machine (the constants were measured on all of its cores)."""
    largest = max(sizes, key=lambda s: s["series"])
    per_series_s = {k: v / 1000 for k, v in largest["per_series_ms"].items() if k in STAGES}
    publish_s = per_series_s["fit"] + per_series_s["precompute"] + per_series_s["pickle"]
    return {
        "series": PAPER_SERIES,
        "from_size": largest["series"],
        "publish_seconds_on_workers": {str(n): round(PAPER_SERIES * publish_s / n, 1) for n in PAPER_WORKERS},
        "one_pickle_bytes": int(PAPER_SERIES * largest["artifact_bytes_per_series"]),
        "resident_bytes_one_process": int(PAPER_SERIES * largest["resident_bytes_per_series"]),
        "assumes": "per-series cost constant (measured linear); N workers of this machine's kind; "
        "no scheduler overhead; one pickle per panel as today (what sharding removes)",
    }


def plot_growth(sizes: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [s["series"] for s in sizes]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for stage in (*STAGES, "statsforecast_fit"):
        values = [s["seconds"].get(stage, math.nan) for s in sizes]
        left.plot(counts, values, marker="o", label=stage)
    left.set(xscale="log", yscale="log", xlabel="series", ylabel="seconds", title="cost per stage")
    left.legend()
    right.plot(counts, [s["artifact_bytes"] / 2**20 for s in sizes], marker="o", label="artifact MiB")
    right.plot(counts, [s["resident_bytes"] / 2**20 for s in sizes], marker="o", label="resident MiB")
    right.set(xscale="log", yscale="log", xlabel="series", ylabel="MiB", title="bytes")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run_scale_benchmark(series: list[int], length: int = 120, plot: Path | None = None) -> dict[str, Any]:
    sizes = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        for n in series:
            say(f"{n} series x {length}")
            sizes.append(measure_size(n, length, Path(folder)))
    results: dict[str, Any] = {"model": "ThetaForecaster(sp=12) per series", "sizes": sizes, "paper": on_paper(sizes)}
    if plot is not None:
        plot_growth(sizes, plot)
        results["plot"] = str(plot)
    return results


def format_scale(results: dict[str, Any]) -> str:
    lines = ["panel scale, per series (ms) and bytes:"]
    header = f"    {'series':>8}" + "".join(f"{k:>12}" for k in (*STAGES, "sf fit")) + f"{'pickle B':>12}{'RSS B':>10}"
    lines.append(header)
    for s in results["sizes"]:
        ms = s["per_series_ms"]
        row = f"    {s['series']:>8}" + "".join(f"{ms.get(k, math.nan):>12.3f}" for k in (*STAGES, "statsforecast_fit"))
        lines.append(row + f"{s['artifact_bytes_per_series']:>12.0f}{s['resident_bytes_per_series']:>10.0f}")
    paper = results["paper"]
    workers = ", ".join(f"{n}: {v:.0f} s" for n, v in paper["publish_seconds_on_workers"].items())
    lines.append(f"    1M series on paper (fit+precompute+pickle) by workers: {workers}")
    lines.append(f"    1M series as one pickle: {paper['one_pickle_bytes'] / 2**30:.1f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--series", default="1000,10000", help="comma-separated sizes")
    parser.add_argument("--length", type=int, default=120)
    parser.add_argument("--plot", type=Path, default=None, help="write the cost-growth plot here (PNG)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    results = run_scale_benchmark([int(s) for s in args.series.split(",")], args.length, args.plot)
    print(format_scale(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
