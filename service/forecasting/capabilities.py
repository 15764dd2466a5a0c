"""What a fitted forecaster can do, read from sktime's tags and checked by trying it."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from service.forecasting.predict import future_index, private_copy
from service.tables import Schema


def _tag(forecaster: Any, name: str, default: Any = None) -> Any:
    try:
        return forecaster.get_tag(name, default, raise_error=False)
    except TypeError:  # older signature
        return forecaster.get_tag(name, default)


def probe_exogenous(training_x: pd.DataFrame | None, schema: Schema, fh_steps: int = 1) -> pd.DataFrame | None:
    """Future exogenous values for a capability probe: the last observed row repeated."""
    if training_x is None or not schema.exogenous:
        return None

    index = future_index(training_x.index, list(range(1, fh_steps + 1)))
    if isinstance(training_x.index, pd.MultiIndex):
        last = training_x.groupby(level=list(range(training_x.index.nlevels - 1))).tail(1)
        last.index = last.index.droplevel(-1)  # each series' last row, by its keys
        rows = last.reindex(index.droplevel(-1)).to_numpy()
    else:
        rows = [training_x.iloc[-1].to_numpy()] * len(index)
    return pd.DataFrame(rows, index=index, columns=training_x.columns)


def probe_capabilities(forecaster: Any, schema: Schema, training_x: pd.DataFrame | None) -> dict[str, Any]:
    """Tags promise; trying on a private copy tells what this fitted version delivers."""
    result: dict[str, Any] = {
        "exogenous": {"required": bool(schema.exogenous), "columns": list(schema.exogenous)},
    }
    x_probe = probe_exogenous(training_x, schema)
    probe = one_series(forecaster)
    if probe is not forecaster and x_probe is not None:
        x_probe = x_probe.loc[x_probe.index.droplevel(-1)[0]]  # the first series' rows
    for capability, method, kwargs in (
        ("pred_int", "predict_interval", {"coverage": [0.9]}),
        ("quantiles", "predict_quantiles", {"alpha": [0.5]}),
    ):
        if not _tag(forecaster, "capability:pred_int", False):
            result[capability] = {
                "available": False,
                "reason": f"{type(forecaster).__name__} does not support prediction intervals "
                "(sktime tag capability:pred_int is False)",
            }
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                getattr(private_copy(probe), method)(fh=[1], X=x_probe, **kwargs)
        except Exception as exc:  # the promise failed on this fitted version: record why
            result[capability] = {
                "available": False,
                "reason": f"{type(forecaster).__name__}.{method} failed when tried at publish time: "
                f"{type(exc).__name__}: {exc}"[:500],
            }
        else:
            result[capability] = {"available": True, "reason": None}
    if len(schema.targets) > 1 and result["pred_int"]["available"] and result["quantiles"]["available"]:
        disagreement = _quantile_interval_disagreement(probe, x_probe)
        if disagreement:
            result["quantiles"] = {"available": False, "reason": disagreement}
    return result


def one_series(forecaster: Any) -> Any:
    """For a panel of per-series models (sktime vectorisation), the first series' fitted
    forecaster: probing it costs one series, not the whole panel."""
    inner = getattr(forecaster, "forecasters_", None)
    if isinstance(inner, pd.DataFrame) and inner.size:
        return inner.iloc[0, 0]
    return forecaster


def _quantile_interval_disagreement(forecaster: Any, x_probe: pd.DataFrame | None) -> str | None:
    """sktime's contract: the 90% interval's bounds are the 0.05 and 0.95 quantiles.
    sktime 1.2's VAR breaks it for several targets (columns shuffled); such quantiles
    are not served."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private = private_copy(forecaster)
        interval = private.predict_interval(fh=[1], X=x_probe, coverage=[0.9])
        quantiles = private.predict_quantiles(fh=[1], X=x_probe, alpha=[0.05, 0.95])
    for target in {c[0] for c in interval.columns}:
        lower = interval[(target, 0.9, "lower")].to_numpy(dtype=float)
        upper = interval[(target, 0.9, "upper")].to_numpy(dtype=float)
        q_low = quantiles[(target, 0.05)].to_numpy(dtype=float)
        q_high = quantiles[(target, 0.95)].to_numpy(dtype=float)
        if not (np.allclose(lower, q_low, rtol=1e-6, atol=1e-9) and np.allclose(upper, q_high, rtol=1e-6, atol=1e-9)):
            return (
                f"{type(forecaster).__name__}.predict_quantiles disagrees with predict_interval for '{target}' "
                "when tried at publish time (a known sktime defect for multivariate VAR); quantiles are not served"
            )
    return None
