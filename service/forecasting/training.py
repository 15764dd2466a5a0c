"""Fit a model spec on its data and publish the result as a new registry version."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
from joblib.parallel import LokyBackend, register_parallel_backend

from service.datasets.sources import read_source
from service.errors import InvalidInput, ServiceError
from service.forecasting.specs import ModelSpec
from service.jobs.dask_executor import on_dask_worker, seceded
from service.registry.store import PublishRequest, Registry
from service.tables import Schema, canonical_table, to_sktime

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
FitProgress = Callable[[int, int], None]  # (series fitted, series in all)

COUNTING_LOKY = "forecast-service-loky"
FIT_REPORT_EVERY_S = 0.5  # progress of a panel fit is reported at most this often


class _CountingLokyBackend(LokyBackend):
    """joblib's loky backend that also reports finished tasks: joblib calls
    ``batch_completed`` in the parent process after every batch of per-series fits."""

    def batch_completed(self, batch_size: int, duration: float) -> None:
        super().batch_completed(batch_size, duration)
        listener = _fit_listener
        if listener is not None:
            listener(batch_size)


register_parallel_backend(COUNTING_LOKY, _CountingLokyBackend)
_fit_listener: Callable[[int], None] | None = None


@contextlib.contextmanager
def reporting_fits(report: FitProgress, series: int, tasks_per_series: int) -> Iterator[None]:
    """Count per-series fits finished by the counting backend and ``report`` them, at most
    every ``FIT_REPORT_EVERY_S``. sktime 1.2's vectorised fit makes two parallel passes over
    the series, a quick clone then the fit: the first pass is not counted. A failing report
    (a cancelled job) is left to the caller: its runner stops the process."""
    global _fit_listener
    lock = threading.Lock()
    clones = series * tasks_per_series
    tasks, reported_at = 0, 0.0

    def count(finished: int) -> None:
        nonlocal tasks, reported_at
        with lock:
            tasks += finished
            now = time.monotonic()
            if tasks <= clones or now - reported_at < FIT_REPORT_EVERY_S:
                return
            reported_at = now
            done = min((tasks - clones) // tasks_per_series, series)
        with contextlib.suppress(Exception):
            report(done, series)

    _fit_listener = count
    try:
        yield
    finally:
        _fit_listener = None


def schema_of(spec: ModelSpec) -> Schema:
    assert spec.kind is not None
    return Schema(
        kind=spec.kind,
        keys=tuple(spec.data.keys),
        time=spec.data.time,
        targets=tuple(spec.data.targets),
        exogenous=tuple(spec.data.exogenous),
        freq=spec.freq,
    )


@dataclass
class FitResult:
    forecaster: Any
    training: pd.DataFrame
    schema: Schema
    fit_seconds: float
    y: pd.DataFrame
    x: pd.DataFrame | None

    @property
    def series_count(self) -> int:
        return len(self.y.index.droplevel(-1).unique()) if self.y.index.nlevels > 1 else 1


def fit_spec(
    spec: ModelSpec, training: pd.DataFrame, parallel: bool = False, progress: FitProgress | None = None
) -> FitResult:
    """Validate the long table against the spec, build the estimator, fit it; with
    ``parallel``, per-series models of a panel fit on all cores (sktime's loky backend,
    the best of its backends on 2 cores) and ``progress`` hears how many are fitted."""
    schema = schema_of(spec)
    table = canonical_table(training, schema, what="training data")
    y, x = to_sktime(table, schema)
    forecaster = spec.build_forecaster()
    panel = parallel and y.index.nlevels > 1
    on_dask = panel and on_dask_worker()
    series = len(y.index.droplevel(-1).unique()) if y.index.nlevels > 1 else 1
    counting: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if on_dask:  # per-series fits on the cluster (sktime's dask backend) inside a Dask job
        forecaster.set_config(**{"backend:parallel": "dask", "backend:parallel:params": {}})
    elif panel:  # on all local cores, counted as they finish
        backend_params = {"backend": COUNTING_LOKY, "n_jobs": -1}
        forecaster.set_config(**{"backend:parallel": "joblib", "backend:parallel:params": backend_params})
        if progress is not None:
            # a univariate forecaster is also vectorised over target columns
            multivariate = forecaster.get_tag("capability:multivariate", False, raise_error=False)
            counting = reporting_fits(progress, series, 1 if multivariate else len(schema.targets))
    started = time.perf_counter()
    with warnings.catch_warnings(), seceded(), counting:  # seceded: no-op outside a Dask task
        warnings.simplefilter("ignore")
        try:
            forecaster.fit(y, X=x, fh=list(range(1, spec.horizon + 1)))
        except Exception as exc:
            raise InvalidInput(f"fitting {spec.forecaster.get('class')} failed: {type(exc).__name__}: {exc}") from exc
    if panel:  # the published version predicts where no cluster is and no counter listens
        forecaster.set_config(**{"backend:parallel": "loky", "backend:parallel:params": {"n_jobs": -1}})
    return FitResult(forecaster, table, schema, time.perf_counter() - started, y, x)


def train_and_publish(
    registry: Registry,
    name: str,
    *,
    promote: bool = True,
    progress: Progress | None = None,
    job_id: str | None = None,
) -> int:
    """Read the spec's source, fit, publish; point ``production`` at the new version."""
    say = progress or (lambda _stage: None)
    spec = registry.read_spec(name)
    if spec is None:
        registry.require_model(name)
        raise InvalidInput(f"model '{name}' has no {name}/model.yaml to train from", model=name)
    say("loading data")
    raw, _ = read_source(spec.data.source, base_dir=registry.model_dir(name))
    say("fitting")
    result = fit_spec(spec, raw)
    say("publishing")
    version = registry.publish(
        name,
        result.forecaster,
        PublishRequest(
            training=result.training,
            schema=result.schema,
            horizon=spec.horizon,
            coverage=spec.coverage,
            quantiles=spec.quantiles,
            spec=registry.read_spec_raw(name),
            source=spec.data.source,
            job_id=job_id,
            fit_seconds=round(result.fit_seconds, 4),
        ),
    )
    if promote:
        registry.set_alias(name, "production", version)
    return version


def _log_training(name: str, position: str, stage: str) -> None:
    log.info("training %s (%s): %s", name, position, stage)


def models_without_versions(registry: Registry) -> list[str]:
    return [
        n for n in registry.list_models() if registry.read_spec_raw(n) is not None and not registry.list_versions(n)
    ]


def train_missing(registry: Registry) -> dict[str, int]:
    """Train every model that has a spec but no version (the demo registry's first start),
    logging each stage; a model that fails is logged and skipped."""
    published: dict[str, int] = {}
    names = models_without_versions(registry)
    for i, name in enumerate(names, start=1):
        started = time.perf_counter()
        try:
            published[name] = train_and_publish(
                registry,
                name,
                progress=functools.partial(_log_training, name, f"{i}/{len(names)}"),
            )
        except ServiceError as exc:
            log.error("training %s failed: %s", name, exc.detail)
            continue
        log.info("trained %s v%d in %.1fs", name, published[name], time.perf_counter() - started)
    return published
