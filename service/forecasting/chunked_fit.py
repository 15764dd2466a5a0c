"""Fit a panel's per-series models in a few chunks of series on all local cores.

sktime vectorises a forecaster that does not take panels natively: one clone per series.
Its loky backend ships every series and every fitted clone as a task of its own, twice
(a clone pass, then the fit pass), and on two cores that costs about what it saves. Here
each worker fits a whole chunk with sktime's own serial vectorisation, and the fitted
object is assembled exactly as `BaseForecaster.fit` does it, with the chunks' per-series
forecasters in sktime's order. Tests compare every output with sktime's own fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, cpu_count, delayed
from sktime.datatypes._vectorize import VectorizedDF

FitProgress = Callable[[int, int], None]  # (series fitted, series in all)
CHUNKS_PER_CORE = 4  # smaller chunks even out the cores' finish times and report progress more often


def fit_in_chunks(
    forecaster: Any, y: pd.DataFrame, x: pd.DataFrame | None, fh: Any, progress: FitProgress | None = None
) -> Any | None:
    """``forecaster`` (unfitted) fitted on the panel ``y`` like ``forecaster.fit(y, X=x, fh=fh)``,
    or None when sktime would not fit it per series (the caller fits it as usual)."""
    assembled = forecaster.clone()
    x_inner, y_inner = assembled._check_X_y(X=x, y=y)
    rows = y_inner.get_iter_indices()[0] if isinstance(y_inner, VectorizedDF) else None
    if rows is None or len(rows) < 2:
        return None
    instance_levels = rows.nlevels
    parts = [rows[i] for i in np.array_split(np.arange(len(rows)), min(len(rows), cpu_count() * CHUNKS_PER_CORE))]

    def select(frame: pd.DataFrame | None, part: pd.Index) -> pd.DataFrame | None:
        if frame is None:
            return None
        instances = frame.index.droplevel(list(range(instance_levels, frame.index.nlevels)))
        return frame[instances.isin(part)]

    fitted: dict[int, pd.DataFrame] = {}
    done = 0
    tasks = (delayed(_fit_chunk)(i, forecaster, select(y, part), select(x, part), fh) for i, part in enumerate(parts))
    with Parallel(n_jobs=-1, backend="loky", return_as="generator_unordered") as parallel:
        for index, forecasters in parallel(tasks):
            fitted[index] = forecasters
            done += len(parts[index])
            if progress is not None:
                progress(done, len(rows))

    # what BaseForecaster.fit does around its vectorised fit, on the whole panel
    assembled._update_y_X(y_inner, x_inner)
    assembled._check_fh(fh)
    assembled._is_vectorized = True
    assembled._yvec = y_inner
    assembled.forecasters_ = pd.concat([fitted[i] for i in range(len(parts))]).reindex(rows)
    assembled._state = "fitted"
    return assembled


def _fit_chunk(index: int, forecaster: Any, y: pd.DataFrame, x: pd.DataFrame | None, fh: Any) -> tuple[int, Any]:
    """In a worker: sktime's serial vectorised fit of one chunk; its per-series forecasters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chunk = forecaster.clone()
        chunk.set_config(**{"backend:parallel": None})
        chunk.fit(y, X=x, fh=fh)
    return index, chunk.forecasters_
