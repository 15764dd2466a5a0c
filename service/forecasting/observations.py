"""How a fitted version takes new actuals (a predict's ``observations``), found by trying.

sktime's ``update(update_params=False)`` moves only the cutoff for many adapters (Theta,
ExponentialSmoothing, AutoETS, VAR in sktime 1.2): the forecast would silently ignore the
new data. So at publish a private copy is updated with two different next actuals and the
one-step forecasts compared:

- ``state``: fixed parameters, new data (``update_params=False``) moves the forecast;
- ``refit``: only a refit on the private copy (``update_params=True``) moves it; each
  request's refit is bounded by the server's live-predict timeout (a 503 past it), and the
  manifest records the probe's seconds;
- ``none``: neither; a predict with observations is then refused (422) naming the reason.

The decision depends on the forecasts only, never on timing, so a version gets the same
mode on a busy machine and on an idle one. The whole default horizon is compared: a
seasonal naive forecaster's first step does not depend on the newest actual.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

from service.errors import InvalidInput
from service.forecasting.capabilities import one_series, probe_exogenous
from service.forecasting.predict import private_copy
from service.forecasting.sktime_internals import remembered_x, remembered_y
from service.tables import Schema

MODES = ("state", "refit", "none")


def _next_rows(frame: pd.DataFrame | pd.Series, steps: int = 1) -> pd.Index:
    """The index of the ``steps`` times after each series' last row."""
    index = frame.index
    if isinstance(index, pd.MultiIndex):
        last = frame.groupby(level=list(range(index.nlevels - 1))).tail(1).index
        return pd.MultiIndex.from_tuples(
            [(*t[:-1], t[-1] + s) for t in last for s in range(1, steps + 1)], names=index.names
        )
    return pd.Index([index[-1] + s for s in range(1, steps + 1)], name=index.name)


def _perturbed(y: pd.DataFrame | pd.Series, factor: float) -> pd.DataFrame | pd.Series:
    """Each series' last value moved by ``factor`` (of itself, or of the data's spread when
    the data is not all positive), one step after the cutoff."""
    values = np.asarray(y, dtype=float)
    if isinstance(y.index, pd.MultiIndex):
        last = y.groupby(level=list(range(y.index.nlevels - 1))).tail(1)
    else:
        last = y.iloc[-1:]
    current = last.to_numpy(dtype=float)
    if np.nanmin(values) > 0:  # stay positive: log / Box-Cox transformers refuse zero and negatives
        moved = current * (1.0 + 0.5 * factor)
    else:
        moved = current + factor * (float(np.nanstd(values)) + np.abs(current) + 1.0)
    result = last.copy()
    result.iloc[:] = moved if isinstance(last, pd.DataFrame) else moved.ravel()
    result.index = _next_rows(y)
    return result


def _forecast_after(
    forecaster: Any, y_new: Any, x_new: Any, x_future: Any, steps: int, update_params: bool
) -> tuple[np.ndarray, float]:
    private = private_copy(forecaster)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private.update(y_new, X=x_new, update_params=update_params)
        point = private.predict(fh=list(range(1, steps + 1)), X=x_future)
    return np.asarray(point, dtype=float).ravel(), time.perf_counter() - started


def _try(forecaster: Any, y: Any, x: Any, schema: Schema, horizon: int, update_params: bool) -> dict[str, Any]:
    """Whether an update with ``update_params`` moves the forecast over ``horizon`` steps,
    and what it cost."""
    x_new = x_future = None
    rows = probe_exogenous(x, schema, fh_steps=horizon + 1)
    if rows is not None:
        steps = rows.index.get_level_values(-1)
        first = steps == steps.min()
        x_new, x_future = rows[first], rows[~first]
    try:
        low, seconds_low = _forecast_after(forecaster, _perturbed(y, -1.0), x_new, x_future, horizon, update_params)
        high, seconds_high = _forecast_after(forecaster, _perturbed(y, +1.0), x_new, x_future, horizon, update_params)
    except Exception as exc:  # the adapter refused the update: this mode is not available
        return {"moves": False, "seconds": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    moves = bool(np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and not np.allclose(low, high))
    return {"moves": moves, "seconds": round(max(seconds_low, seconds_high), 4), "error": None}


def probe_observations(
    forecaster: Any, schema: Schema, choice: str = "auto", series_count: int = 1, horizon: int = 12
) -> dict[str, Any]:
    """The manifest's ``observations`` entry: the mode this version uses for new actuals,
    who chose it, why, and what the probe saw. A spec's explicit ``state``/``refit`` that
    the probe shows to ignore the data is refused (`InvalidInput`), never served silently."""
    if choice not in ("auto", *MODES):
        raise InvalidInput(f"observations: '{choice}' is not one of auto, state, refit, none", field="observations")
    if choice == "none":
        return {"mode": "none", "chosen_by": "spec", "reason": "the spec says observations: none", "probe": {}}
    probe = one_series(forecaster)
    scale = series_count if probe is not forecaster else 1
    y, x = remembered_y(probe), remembered_x(probe)
    if y is None:
        reason = f"{type(forecaster).__name__} remembers no training data, so it cannot be updated"
        if choice != "auto":
            raise InvalidInput(f"the spec asks for observations: {choice}, but {reason}", field="observations")
        return {"mode": "none", "chosen_by": "probe", "reason": reason, "probe": {}}
    horizon = max(int(horizon), 1)
    seen: dict[str, Any] = {"state": _try(probe, y, x, schema, horizon, update_params=False)}
    if choice == "refit" or (choice == "auto" and not seen["state"]["moves"]):
        seen["refit"] = _try(probe, y, x, schema, horizon, update_params=True)
        if seen["refit"]["seconds"] is not None:
            seen["refit"]["seconds"] = round(seen["refit"]["seconds"] * scale, 4)
    name = type(forecaster).__name__
    if choice == "state" and not seen["state"]["moves"]:
        raise InvalidInput(
            f"the spec asks for observations: state, but {name} ignores new actuals with fixed parameters "
            f"({_why(seen['state'])}); use observations: refit or none",
            field="observations",
        )
    if choice == "refit" and seen["refit"]["moves"]:
        mode, reason = "refit", f"the spec asks for observations: refit ({name} is refitted on a private copy)"
    elif choice != "refit" and seen["state"]["moves"]:
        mode, reason = "state", f"{name} moves its forecast with new actuals at fixed parameters"
    elif seen.get("refit", {}).get("moves"):
        mode = "refit"
        reason = (
            f"{name} ignores new actuals at fixed parameters ({_why(seen['state'])}); it is refitted on a "
            f"private copy (about {seen['refit']['seconds']} s per request)"
        )
    elif choice == "refit":
        raise InvalidInput(
            f"the spec asks for observations: refit, but a refit of {name} with new actuals "
            f"{_why(seen['refit'])}; use observations: none",
            field="observations",
        )
    else:
        mode = "none"
        reason = (
            f"{name} ignores new actuals at fixed parameters ({_why(seen['state'])}) and "
            f"a refit {_why(seen.get('refit', {}))}"
        )
    return {"mode": mode, "chosen_by": "probe" if choice == "auto" else "spec", "reason": reason, "probe": seen}


def _why(result: dict[str, Any]) -> str:
    if result.get("error"):
        return f"the update failed: {result['error']}"
    return "the forecast did not move when the next actual changed"
