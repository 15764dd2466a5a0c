"""Build the benchmark's registry in a folder: the demo `airline` model and a synthetic
monthly panel, both trained and published (publishing precomputes the fast-path table).

Run as ``python -m bench.build ROOT --panel-series N`` so sktime's per-clone warnings land
in a log file rather than on the benchmark's stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
AIRLINE = "airline"
PANEL = "panel"

# TrendForecaster: no prediction intervals, so publishing skips the capability probes that
# make a 1000-series NaiveForecaster take minutes to publish. The request the panel figure
# sends ({}: every series, default horizon, point forecasts) is answered alike for any model.
PANEL_SPEC = """\
description: Synthetic monthly panel for the benchmark ({series} series x {length} months).
kind: panel
data:
  source: {{path: panel.csv}}
  keys: [series]
  time: month
  targets: [y]
freq: M
horizon: 12
forecaster: {{class: TrendForecaster, params: {{}}}}
"""


def synthetic_panel(series: int, length: int, seed: int = 0) -> pd.DataFrame:
    """A long table (series, month, y): trend + yearly season + noise per series."""
    rng = np.random.default_rng(seed)
    months = pd.period_range(end="2007-12", periods=length, freq="M").start_time.strftime("%Y-%m-%d")
    steps = np.arange(length)
    level = rng.uniform(50, 500, size=(series, 1))
    slope = rng.normal(0, 0.5, size=(series, 1))
    season = rng.uniform(0, 30, size=(series, 1)) * np.sin(2 * np.pi * steps / 12)
    values = level + slope * steps + season + rng.normal(0, 5, size=(series, length))
    return pd.DataFrame(
        {
            "series": np.repeat([f"S{i:04d}" for i in range(series)], length),
            "month": np.tile(np.asarray(months), series),
            "y": values.ravel().round(3),
        }
    )


def write_panel_model(root: Path, series: int, length: int) -> None:
    """``ROOT/panel/model.yaml`` and the CSV it reads."""
    folder = root / PANEL
    folder.mkdir(parents=True, exist_ok=True)
    synthetic_panel(series, length).to_csv(folder / "panel.csv", index=False)
    (folder / "model.yaml").write_text(PANEL_SPEC.format(series=series, length=length))


def write_airline_model(root: Path) -> None:
    """``ROOT/airline/model.yaml``, copied from the demo registry."""
    (root / AIRLINE).mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "models" / AIRLINE / "model.yaml", root / AIRLINE / "model.yaml")


def train(root: Path, name: str) -> dict[str, Any]:
    """Train and publish one model; its version and the seconds it took."""
    from service.forecasting.training import train_and_publish
    from service.registry.store import Registry

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        version = train_and_publish(Registry(root), name)
    return {"version": version, "seconds": round(time.perf_counter() - started, 3)}


def build_registry(root: Path, panel_series: int, panel_length: int) -> dict[str, Any]:
    """Write both specs and train both models; what was built, with timings."""
    from service.observability import quiet_sktime_warnings

    quiet_sktime_warnings()
    root.mkdir(parents=True, exist_ok=True)
    write_airline_model(root)
    write_panel_model(root, panel_series, panel_length)
    built = {AIRLINE: train(root, AIRLINE), PANEL: train(root, PANEL)}
    built[PANEL].update(series=panel_series, length=panel_length, forecaster="TrendForecaster")
    return built


def main(argv: list[str] | None = None) -> int:
    """Entry point of the build subprocess: prints what was built as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.build")
    parser.add_argument("root", type=Path)
    parser.add_argument("--panel-series", type=int, required=True)
    parser.add_argument("--panel-length", type=int, default=120)
    args = parser.parse_args(argv)
    built = build_registry(args.root, args.panel_series, args.panel_length)
    print("BENCH_RESULT " + json.dumps(built), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
