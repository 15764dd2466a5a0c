"""The one module that touches private names of sktime (and of CPython's multiprocessing).

Everything else uses public API. Each private name is listed in `PRIVATE_NAMES` and has a
test (``tests/forecasting/test_sktime_internals.py``) that fails naming it if an upgrade
drops or renames it; the accessors below fail the same way at run time
(`InternalsChanged`), never with a bare AttributeError somewhere deep.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pandas as pd

# (owner, name) -> what we use it for
PRIVATE_NAMES: dict[tuple[str, str], str] = {
    ("BaseForecaster", "_X"): "the exogenous data a fitted forecaster remembers (publish, capability probe)",
    ("BaseForecaster", "_y"): "the target data a fitted forecaster remembers (publish of a notebook model)",
    ("BaseForecaster", "_check_X_y"): "sktime's own input conversion before a chunked panel fit",
    ("BaseForecaster", "_update_y_X"): "remembering the whole panel after a chunked fit, as fit does",
    ("BaseForecaster", "_check_fh"): "setting fh after a chunked fit, as fit does",
    ("BaseForecaster", "_is_vectorized"): "marking a chunk-fitted panel as vectorised, as fit does; "
    "telling a per-series panel (sharded versions) from a natively panel one",
    ("BaseForecaster", "_yvec"): "the VectorizedDF a vectorised fit keeps, as fit does",
    ("BaseForecaster", "_state"): "marking a chunk-fitted forecaster fitted, as fit does",
    ("BaseForecaster", "_get_varnames"): "the target's variable names for the quantile columns of our own "
    "forecasters (forecasting/auto.py), as sktime's own forecasters name them",
    ("ReconcilerForecaster", "_requires_residuals"): "refusing update strategies sktime 1.2 cannot run",
    ("_GeneralisedStatsForecastAdapter", "_instantiate_model"): "the statsforecast model a StatsForecast* "
    "adapter fits per series, fitted natively on the whole panel (forecasting/engines.py)",
    ("multiprocessing.forkserver", "_forkserver._forkserver_alive_fd"): "a job worker closes its copy of "
    "the forkserver's alive pipe, so the forkserver exits when the server does",
}


class InternalsChanged(RuntimeError):
    """A private name this module relies on is gone: update it for the new library version."""


def _missing(owner: Any, name: str) -> InternalsChanged:
    import sktime

    label = owner if isinstance(owner, str) else type(owner).__name__
    return InternalsChanged(
        f"{label}.{name} is missing (sktime {sktime.__version__}): service/forecasting/sktime_internals.py "
        "relies on it and needs updating"
    )


def _get(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _missing(obj, name) from None


# ----------------------------------------------------------------------------- remembered data
def remembered_y(forecaster: Any) -> Any:
    """The target data a fitted sktime forecaster remembers (None for other objects)."""
    return getattr(forecaster, "_y", None)


def variable_names(forecaster: Any) -> list[Any]:
    """The target's variable names a fitted forecaster saw in fit (one per column)."""
    return list(_get(forecaster, "_get_varnames")())


def remembered_x(forecaster: Any) -> Any:
    """The exogenous data a fitted sktime forecaster remembers (None if none)."""
    return getattr(forecaster, "_X", None)


def requires_residuals(forecaster: Any) -> bool:
    """ReconcilerForecaster (MinT) keeps residuals that sktime 1.2 fails to update."""
    return bool(getattr(forecaster, "_requires_residuals", False))


# ----------------------------------------------------------------------------- chunked panel fit
def convert_inputs(forecaster: Any, y: pd.DataFrame, x: pd.DataFrame | None) -> tuple[Any, Any]:
    """sktime's own conversion of (y, X) to its inner types: (X_inner, y_inner), the latter
    a `VectorizedDF` when the forecaster fits per series."""
    return _get(forecaster, "_check_X_y")(X=x, y=y)


def is_vectorized(forecaster: Any) -> bool:
    """Whether sktime fitted ``forecaster`` per series (its ``forecasters_`` are the models)."""
    return bool(getattr(forecaster, "_is_vectorized", False))


def finish_vectorized_fit(assembled: Any, y_inner: Any, x_inner: Any, fh: Any, forecasters: pd.DataFrame) -> Any:
    """What `BaseForecaster.fit` does around its vectorised fit, given the per-series fitted
    forecasters (``forecasters_``) that were fitted elsewhere."""
    if not hasattr(assembled, "_state"):  # _is_vectorized and _yvec appear only during a fit
        raise _missing(assembled, "_state")
    _get(assembled, "_update_y_X")(y_inner, x_inner)
    _get(assembled, "_check_fh")(fh)
    assembled._is_vectorized = True
    assembled._yvec = y_inner
    assembled.forecasters_ = forecasters
    assembled._state = "fitted"
    return assembled


# ----------------------------------------------------------------------------- CPython
def close_forkserver_alive_fd() -> None:
    """In a process forked by the forkserver: close the inherited write end of the
    forkserver's alive pipe, or forkserver and child wait on each other forever."""
    from multiprocessing import forkserver

    server = _get(forkserver, "_forkserver")
    if not hasattr(server, "_forkserver_alive_fd"):
        raise _missing("multiprocessing.forkserver._forkserver", "_forkserver_alive_fd")
    alive = server._forkserver_alive_fd
    if alive is not None:
        with contextlib.suppress(OSError):
            os.close(alive)
        server._forkserver_alive_fd = None


# ----------------------------------------------------------------------------- statsforecast twins
def statsforecast_model(adapter: Any) -> Any:
    """The statsforecast model object a sktime ``StatsForecast*`` adapter would fit per
    series (its own class and validated parameters), for the whole-panel engine."""
    return _get(adapter, "_instantiate_model")()


# ----------------------------------------------------------------------------- fast global reduction
PRIVATE_NAMES[("_BaseWindowForecaster", "_cur_y")] = (
    "the target data a reduction's recursive predict reads (forecasting/reduction.py reads the same)"
)
PRIVATE_NAMES[("_BaseWindowForecaster", "_cur_X")] = "the exogenous data a reduction's recursive predict reads"


def window_data(forecaster: Any) -> Any:
    """The target data a fitted sktime window forecaster (a reduction) predicts from: what
    it was fitted on plus every update since."""
    return _get(forecaster, "_cur_y")


def window_exogenous(forecaster: Any) -> Any:
    """The exogenous data a fitted sktime window forecaster predicts from (None if none)."""
    return _get(forecaster, "_cur_X")


def adopt_fitted(wrapper: Any, fitted: Any, fh: Any) -> Any:
    """What `BaseForecaster.fit` does around its ``_fit``, for a wrapper (``forecaster_``)
    around ``fitted``, an already fitted forecaster: the wrapper takes its data, cutoff
    and horizon and is fitted without fitting anything again."""
    if not hasattr(wrapper, "_state"):
        raise _missing(wrapper, "_state")
    x_inner, y_inner = convert_inputs(wrapper, remembered_y(fitted), remembered_x(fitted))
    _get(wrapper, "_update_y_X")(y_inner, x_inner)
    _get(wrapper, "_check_fh")(fh)
    wrapper._is_vectorized = False
    wrapper.forecaster_ = fitted
    wrapper._state = "fitted"
    return wrapper
