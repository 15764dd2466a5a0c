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
import os
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

_SERVED_CHILD = """
import gc, json, os, statistics, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np, pandas as pd
import sktime.forecasting.base
from service.forecasting.served import Limits, PredictQuery, load_served
from service.forecasting.shards import ShardCache
from service.registry.store import Registry
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def p50(call, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter(); call(); times.append(time.perf_counter() - started)
    return statistics.median(times)
root, single_root, next_value = sys.argv[1], sys.argv[2], float(sys.argv[3])
gc.collect(); before = resident()
started = time.perf_counter()
served = load_served(Registry(root), "panel", 1, ShardCache(256 * 2**20))
ready = time.perf_counter() - started
gc.collect(); rss = resident() - before
limits = Limits(max_series=100_000)
rng = np.random.default_rng(0)
pick = min(10, len(served.series))
subsets = [tuple(served.series[i] for i in rng.choice(len(served.series), pick, replace=False)) for _ in range(50)]
it = iter(subsets * 4)
fast = p50(lambda: served.answer(PredictQuery(series=next(it), coverage=(0.8,)), limits), 200)
cutoff = served.cutoff
one = served.series[len(served.series) // 2]
obs = pd.DataFrame({"series": [one[0]], "month": [cutoff + 1], "y": [next_value]})
query = PredictQuery(observations=obs, horizon=12)
started = time.perf_counter(); served.answer(query, limits); first_live = time.perf_counter() - started
live = p50(lambda: served.answer(query, limits), 20)
single = load_served(Registry(single_root), "single", 1, ShardCache(2**30))
obs_single = pd.DataFrame({"month": [cutoff + 1], "y": [next_value]})
single_query = PredictQuery(observations=obs_single, horizon=12)
single.answer(single_query, limits)
live_single = p50(lambda: single.answer(single_query, limits), 20)
import pyarrow as pa
everything = Limits(max_series=len(served.series) + 1, max_rows=10**9)
started = time.perf_counter()
whole = served.answer(PredictQuery(coverage=(0.8,)), everything)
select_s = time.perf_counter() - started
started = time.perf_counter()
sink = pa.BufferOutputStream()
batch = pa.record_batch({k: pa.array(v) for k, v in whole.columns.items()})
with pa.ipc.new_stream(sink, batch.schema) as writer:
    writer.write_batch(batch)
arrow_s = time.perf_counter() - started
rows = len(next(iter(whole.columns.values())))
print(json.dumps({"ready_seconds": ready, "resident_bytes": rss, "fast_10_series_p50_ms": 1000 * fast,
    "whole_panel_rows": rows, "whole_panel_rows_per_s": rows / (select_s + arrow_s),
    "whole_panel_select_s": select_s, "whole_panel_arrow_s": arrow_s, "whole_panel_arrow_bytes": sink.getvalue().size,
    "live_observations_1_series_first_ms": 1000 * first_live, "live_observations_1_series_p50_ms": 1000 * live,
    "single_series_model_observations_p50_ms": 1000 * live_single,
    "shards_loaded": len(served.sharded.cache.loads) if served.sharded else None,
    "shards": served.manifest.get("shards", {}).get("count")}))
"""

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
    artifact_bytes = len(artifact)
    started = time.perf_counter()
    pickle.loads(artifact)
    seconds["unpickle"] = time.perf_counter() - started
    path = workdir / f"panel-{series}.pkl"
    path.write_bytes(artifact)
    memory = resident_bytes(path)
    path.unlink()
    del artifact
    sharded = measure_sharded(fitted, table, schema, workdir / f"sharded-{series}")
    seconds["sharded_publish"] = sharded.pop("publish_seconds")
    native = time_statsforecast(table)
    if native is not None:
        seconds["statsforecast_fit"] = native["fit"]
    per_series_ms = {k: 1000 * v / series for k, v in seconds.items()}
    return {
        "series": series,
        "length": length,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "per_series_ms": {k: round(v, 4) for k, v in per_series_ms.items()},
        "artifact_bytes": artifact_bytes,
        "artifact_bytes_per_series": round(artifact_bytes / series, 1),
        "sharded": sharded,
        "resident_bytes": memory,
        "resident_bytes_per_series": round(memory / series, 1),
        "fit_vs_statsforecast": (
            round(seconds["fit"] / seconds["statsforecast_fit"], 3) if seconds.get("statsforecast_fit") else None
        ),
    }


def measure_sharded(fitted: Any, table: Any, schema: Any, root: Path) -> dict[str, Any]:
    """The same fitted panel published as shards (parallel pickle + precompute per shard), then
    served by a fresh process: ready time, resident bytes, fast path and live `observations`
    for one series against a single-series model's same request."""
    from sktime.forecasting.theta import ThetaForecaster

    from service.forecasting.publishing import PublishRequest, publish_version
    from service.registry.store import SHARD_SERIES, Registry
    from service.tables import Schema, canonical_table, to_sktime

    table = canonical_table(table, schema, what="bench panel")
    request = PublishRequest(training=table, schema=schema, horizon=HORIZON, coverage=COVERAGE)
    series = len(fitted.forecasters_)
    per_shard = int(os.environ.get("BENCH_SHARD_SERIES", 0)) or min(SHARD_SERIES, max(series // 4, 1))
    started = time.perf_counter()
    publish_version(Registry(root, shard_series=per_shard), "panel", fitted, request)
    publish = time.perf_counter() - started
    single_schema = Schema("single", (), "month", ("y",), (), "M")
    first = table[table["series"] == table["series"].iloc[0]].drop(columns="series").reset_index(drop=True)
    one = canonical_table(first, single_schema, what="one series")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = ThetaForecaster(sp=12).fit(to_sktime(one, single_schema)[0], fh=list(range(1, HORIZON + 1)))
    single_request = PublishRequest(training=one, schema=single_schema, horizon=HORIZON, coverage=COVERAGE)
    publish_version(Registry(root.with_name(root.name + "-single")), "single", single, single_request)
    out = subprocess.run(
        [sys.executable, "-c", _SERVED_CHILD, str(root), str(root.with_name(root.name + "-single")), "123.0"],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    served = json.loads(out.stdout.strip().splitlines()[-1])
    served["live_vs_single_series"] = round(
        served["live_observations_1_series_p50_ms"] / served["single_series_model_observations_p50_ms"], 3
    )
    return {"publish_seconds": publish, "series_per_shard": per_shard, **served}


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
