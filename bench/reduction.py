"""Global XGBoost reduction predict on a panel: sktime's recursive predict vs the whole-panel
fast path (`service.forecasting.reduction`) vs mlforecast (when installed).

The model is the tourism-monthly demo's: one XGBRegressor over all series on
``WindowSummarizer(lag: [1, 2, 12], mean: [[1, 3], [1, 12]])`` features, recursive. sktime's
own predict runs once (it takes tens of seconds at 1,000 series), the fast path and
mlforecast (the same features: lags 1, 2, 12 and rolling means of 3 and 12 on lag 1, its own
XGBoost fit) ``--repeats`` times, best kept. Single-threaded XGBoost everywhere.

`python -m bench.reduction [--series 1000] [--length 120] [--horizon 12] [--out FILE]`
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.build import synthetic_panel
from bench.retrain import sktime_panel

LAG_FEATURE = {"lag": [1, 2, 12], "mean": [[1, 3], [1, 12]]}
XGB = {"n_estimators": 50, "max_depth": 4, "learning_rate": 0.1, "n_jobs": 1}


def fit_sktime(y: pd.DataFrame) -> tuple[Any, float]:
    from sktime.forecasting.compose import make_reduction
    from sktime.transformations.summarize import WindowSummarizer
    from xgboost import XGBRegressor

    forecaster = make_reduction(
        XGBRegressor(**XGB),
        strategy="recursive",
        pooling="global",
        window_length=None,
        transformers=[WindowSummarizer(lag_feature=LAG_FEATURE, n_jobs=1)],
    )
    started = time.perf_counter()
    forecaster.fit(y)
    return forecaster, time.perf_counter() - started


def best_of(repeats: int, call: Any) -> tuple[Any, float]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - started)
    return result, best


def time_mlforecast(table: pd.DataFrame, horizon: int, repeats: int) -> dict[str, Any] | None:
    if importlib.util.find_spec("mlforecast") is None:
        return None
    from mlforecast import MLForecast
    from mlforecast.lag_transforms import RollingMean
    from xgboost import XGBRegressor

    long = pd.DataFrame(
        {"unique_id": table["series"], "ds": pd.to_datetime(table["month"]), "y": table["y"].astype("float64")}
    )
    mlf = MLForecast(
        models={"xgb": XGBRegressor(**XGB)},
        freq="MS",
        lags=[1, 2, 12],
        lag_transforms={1: [RollingMean(window_size=3), RollingMean(window_size=12)]},
        num_threads=1,
    )
    started = time.perf_counter()
    mlf.fit(long)
    fit_seconds = time.perf_counter() - started
    out, predict_seconds = best_of(repeats, lambda: mlf.predict(h=horizon))
    out = out.sort_values(["unique_id", "ds"])
    return {"fit_s": fit_seconds, "predict_s": predict_seconds, "values": out["xgb"].to_numpy()}


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def run(series: int, length: int, horizon: int, repeats: int) -> dict[str, Any]:
    from service.forecasting.reduction import fast_global_predict

    table = synthetic_panel(series, length)
    y = sktime_panel(table)
    fh = list(range(1, horizon + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forecaster, fit_seconds = fit_sktime(y)
        fast, fast_seconds = best_of(repeats, lambda: fast_global_predict(forecaster, fh))
        assert fast is not None, "the fast path refused the demo configuration"
        slow, sktime_seconds = best_of(1, lambda: forecaster.predict(fh=fh))
        ml = time_mlforecast(table, horizon, repeats)
    result: dict[str, Any] = {
        "series": series,
        "length": length,
        "horizon": horizon,
        "xgb": XGB,
        "sktime_fit_s": round(fit_seconds, 3),
        "sktime_predict_s": round(sktime_seconds, 3),
        "fast_predict_s": round(fast_seconds, 4),
        "speedup_vs_sktime": round(sktime_seconds / fast_seconds, 1),
        "fast_vs_sktime_max_rel_diff": max_rel(fast.to_numpy().ravel(), slow.to_numpy().ravel()),
    }
    if ml is not None:
        result.update(
            {
                "mlforecast_fit_s": round(ml["fit_s"], 3),
                "mlforecast_predict_s": round(ml["predict_s"], 4),
                "fast_over_mlforecast": round(fast_seconds / ml["predict_s"], 2),
                # mlforecast fits its own XGBoost (its column order): close, not identical
                "fast_vs_mlforecast_max_rel_diff": max_rel(fast.to_numpy().ravel(), ml["values"]),
            }
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reduction", description=__doc__)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--length", type=int, default=120)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5, help="for the fast path and mlforecast")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args.series, args.length, args.horizon, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
