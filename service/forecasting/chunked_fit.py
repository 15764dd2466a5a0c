"""Fit a panel's per-series models in a few chunks of series on all local cores.

sktime vectorises a forecaster that does not take panels natively: one clone per series.
Its loky backend ships every series and every fitted clone as a task of its own, twice
(a clone pass, then the fit pass), and on two cores that costs about what it saves. Here
each worker fits a whole chunk with sktime's own serial vectorisation, and the fitted
object is assembled exactly as `BaseForecaster.fit` does it, with the chunks' per-series
forecasters in sktime's order. Tests compare every output with sktime's own fit.

Workers are forked from this process when it runs no other thread (a job's worker
process): they start at once with sktime imported, where fresh loky workers spend seconds
importing it. A process with threads (a server) could fork a child holding a lock, so it
starts loky's fresh workers. Each worker's BLAS runs one thread: two workers with two
BLAS threads each ran 2-3x slower on two cores.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np
import pandas as pd
from joblib import cpu_count
from joblib.externals.loky import ProcessPoolExecutor as LokyExecutor
from sktime.datatypes import VectorizedDF
from threadpoolctl import threadpool_limits

from service.forecasting.progress import FitProgress
from service.forecasting.sktime_internals import convert_inputs, finish_vectorized_fit
from service.observability import quiet_sktime_warnings
from service.processes import die_with_parent, on_dask_worker

CHUNKS_PER_CORE = 4  # smaller chunks even out the cores' finish times and report progress more often


def fit_in_chunks(
    forecaster: Any, y: pd.DataFrame, x: pd.DataFrame | None, fh: Any, progress: FitProgress | None = None
) -> Any | None:
    """``forecaster`` (unfitted) fitted on the panel ``y`` like ``forecaster.fit(y, X=x, fh=fh)``,
    or None when sktime would not fit it per series (the caller fits it as usual)."""
    split = _split_panel(forecaster, y, x)
    if split is None:
        return None
    assembled, x_inner, y_inner, rows, parts = split
    levels = rows.nlevels

    chunks = [
        (i, forecaster, series_rows(y, part, levels), series_rows(x, part, levels), fh) for i, part in enumerate(parts)
    ]
    if on_dask_worker():  # a task per chunk on the cluster (sktime's dask backend makes one per series)
        sizes = [len(part) for part in parts]

        def chunk_progress(chunks_done: int, _total: int) -> None:
            if progress is not None:  # chunks finish in any order: about this many series
                progress(sum(sizes[:chunks_done]), len(rows))

        fitted = dict(map_chunks(_fit_chunk, chunks, chunk_progress))
    else:
        fitted = _fit_locally(chunks, len(rows), progress)
    forecasters = pd.concat([fitted[i] for i in range(len(parts))]).reindex(rows)
    return finish_vectorized_fit(assembled, y_inner, x_inner, fh, forecasters)


def _fit_locally(chunks: list[tuple[Any, ...]], total: int, progress: FitProgress | None) -> dict[int, pd.DataFrame]:
    """The chunks fitted on this machine's cores, in a pool of its own."""
    fitted: dict[int, pd.DataFrame] = {}
    done = 0
    with _workers() as pool:  # a failure or a cancel (from `progress`) drops the chunks not fitted yet
        futures = [pool.submit(_fit_chunk, *chunk) for chunk in chunks]
        for future in as_completed(futures):
            index, forecasters = future.result()
            fitted[index] = forecasters
            done += len(forecasters)
            if progress is not None:
                progress(done, total)
    return fitted


def can_fork() -> bool:
    """Forking is safe only where no other thread could hold a lock the child inherits."""
    return threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()


@contextlib.contextmanager
def _workers() -> Iterator[Executor]:
    """A pool of its own, whose workers have ended when the block has: joined after a fit;
    after a failure or a cancel, chunks not started are dropped and the running ones not
    waited for (loky's workers are killed at once; forked ones end with their chunk, or when
    the job's process ends them). Its futures are never cancelled one by one: a loky pool
    whose workers are killed fails on a cancelled future and leaves them running."""
    pool: ProcessPoolExecutor | LokyExecutor
    if can_fork():
        context = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(cpu_count(), mp_context=context, initializer=die_with_parent)
    else:
        pool = LokyExecutor(cpu_count(), initializer=_start_fresh_worker)
    try:
        yield pool
    except BaseException:
        if isinstance(pool, LokyExecutor):
            pool.shutdown(wait=True, kill_workers=True)
        else:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _start_fresh_worker() -> None:
    """A loky worker (a fresh interpreter): it ends with its parent and routes library
    warnings through the log as the parent does."""
    die_with_parent()
    quiet_sktime_warnings()


def _fit_chunk(index: int, forecaster: Any, y: pd.DataFrame, x: pd.DataFrame | None, fh: Any) -> tuple[int, Any]:
    """In a worker: sktime's serial vectorised fit of one chunk; its per-series forecasters."""
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        chunk = forecaster.clone()
        chunk.set_config(**{"backend:parallel": None})
        chunk.fit(y, X=x, fh=fh)
    return index, chunk.forecasters_


def series_chunks(forecaster: Any, y: pd.DataFrame, x: pd.DataFrame | None) -> list[tuple[Any, Any]] | None:
    """The panel ``y`` (and ``x``) split into chunks of whole series, in sktime's series order,
    or None when sktime would not vectorise ``forecaster`` over the series."""
    split = _split_panel(forecaster, y, x)
    if split is None:
        return None
    parts, levels = split[4], split[3].nlevels
    return [(series_rows(y, part, levels), series_rows(x, part, levels)) for part in parts]


def _split_panel(forecaster: Any, y: pd.DataFrame, x: pd.DataFrame | None) -> tuple[Any, ...] | None:
    """(a clone of ``forecaster``, sktime's inner x and y, the series in sktime's order, chunks of
    those series), or None when sktime would not vectorise ``forecaster`` over the series."""
    assembled = forecaster.clone()
    x_inner, y_inner = convert_inputs(assembled, y, x)
    rows = y_inner.get_iter_indices()[0] if isinstance(y_inner, VectorizedDF) else None
    if rows is None or len(rows) < 2:
        return None
    parts = [rows[i] for i in np.array_split(np.arange(len(rows)), min(len(rows), _parallelism() * CHUNKS_PER_CORE))]
    return assembled, x_inner, y_inner, rows, parts


def _parallelism() -> int:
    """How many chunks can run at once: this machine's cores, or inside a Dask task the
    cluster's worker threads."""
    if on_dask_worker():
        from distributed import get_client

        return max(1, sum(get_client().nthreads().values()))
    return cpu_count()


def series_rows(frame: pd.DataFrame | None, labels: pd.Index, levels: int) -> pd.DataFrame | None:
    """The rows of a (series..., time) frame whose first ``levels`` index levels are one of ``labels``."""
    if frame is None:
        return None
    instances = frame.index.droplevel(list(range(levels, frame.index.nlevels)))
    return frame[instances.isin(labels)]


def map_chunks(func: Any, chunks: list[tuple[Any, ...]], progress: Any = None) -> list[Any]:
    """``func(*chunk)`` for every chunk on the workers, results in chunk order; ``progress(done,
    total)`` after each chunk (it may raise to cancel: chunks not started are dropped)."""
    if on_dask_worker():
        return _map_on_cluster(func, chunks, progress)
    results: dict[int, Any] = {}
    with _workers() as pool:
        futures = {pool.submit(func, *chunk): i for i, chunk in enumerate(chunks)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if progress is not None:
                progress(len(results), len(chunks))
    return [results[i] for i in range(len(chunks))]


_SHARED: list[Any] = []  # what forked workers of `map_shared` read by position (inherited, never pickled)


def _call_shared(func: Any, position: int, args: tuple[Any, ...]) -> Any:
    return func(position, _SHARED[position], *args)


def map_shared(func: Any, items: list[Any], args: tuple[Any, ...] = (), progress: Any = None) -> list[Any]:
    """``func(position, item, *args)`` for every item on the workers, results in order. Forked
    workers read the items from this process's memory (no pickling on the way in); loky's
    fresh workers are sent them."""
    global _SHARED
    if len(items) < 2:
        return [func(i, item, *args) for i, item in enumerate(items)]
    if not can_fork() or on_dask_worker():  # loky's workers, or the cluster's, are sent the items
        return map_chunks(func, [(i, item, *args) for i, item in enumerate(items)], progress)
    _SHARED = items
    try:
        return map_chunks(_call_shared, [(func, i, args) for i in range(len(items))], progress)
    finally:
        _SHARED = []


def _map_on_cluster(func: Any, chunks: list[tuple[Any, ...]], progress: Any = None) -> list[Any]:
    """`map_chunks` inside a Dask task: one task per chunk on the cluster's workers, this
    task seceded from its worker's pool while it waits; a failure or a cancel (``progress``
    raising) cancels the tasks not finished."""
    from distributed import as_completed as completed
    from distributed import worker_client

    with worker_client() as client:
        futures = [client.submit(func, *chunk, pure=False) for chunk in chunks]
        position = {future.key: i for i, future in enumerate(futures)}
        results: dict[int, Any] = {}
        try:
            for future in completed(futures):
                results[position[future.key]] = future.result()
                if progress is not None:
                    progress(len(results), len(chunks))
        except BaseException:
            client.cancel(futures)
            raise
    return [results[i] for i in range(len(chunks))]
