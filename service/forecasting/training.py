"""Fit a model spec on its data and publish the result as a new registry version."""

from __future__ import annotations

import functools
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from service.datasets.sources import read_source
from service.errors import InvalidInput, ServiceError, SpecError
from service.forecasting.backtest import backtest_promise, promised_metrics
from service.forecasting.chunked_fit import fit_in_chunks
from service.forecasting.conformal import residual_counts
from service.forecasting.engines import StatsForecastPanel, statsforecast_twin
from service.forecasting.progress import Cancelled, FitProgress, Progress
from service.forecasting.publishing import PublishRequest, keep_newest, publish_version
from service.forecasting.reduction import fast_reduction
from service.forecasting.specs import (
    CONFORMAL_MIN_RESIDUALS,
    CONFORMAL_PANEL_WINDOWS,
    ModelSpec,
    build_estimator,
    check_conformal,
    conformal_history,
    conformal_too_short,
    natively_panel,
    read_spec,
)
from service.observability import quiet_sktime_warnings
from service.processes import on_dask_worker, seceded
from service.registry.store import Registry
from service.tables import Schema, canonical_table, to_sktime

log = logging.getLogger(__name__)


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
    ``parallel``, per-series models of a panel fit in chunks on all cores (or on the Dask
    cluster inside a Dask job) and ``progress`` hears how many series are fitted."""
    schema = spec.table_schema()
    table = canonical_table(training, schema, what="training data")
    y, x = to_sktime(table, schema)
    forecaster = spec_forecaster(spec, y, x)
    panel = parallel and y.index.nlevels > 1 and type(forecaster).__name__ != "StatsForecastPanel"
    on_dask = panel and on_dask_worker()
    if panel:  # chunks of series on the local cores, or on the cluster inside a Dask job
        backend = ("dask", {}) if on_dask else ("loky", {"n_jobs": -1})
        forecaster.set_config(**{"backend:parallel": backend[0], "backend:parallel:params": backend[1]})
    fh = list(range(1, spec.horizon + 1))
    started = time.perf_counter()
    with warnings.catch_warnings(), seceded():  # seceded: no-op outside a Dask task
        warnings.simplefilter("ignore")
        try:
            fitted = fit_in_chunks(forecaster, y, x, fh, progress) if panel else None
            forecaster = fitted if fitted is not None else forecaster.fit(y, X=x, fh=fh)
        except Cancelled:
            raise
        except Exception as exc:
            raise InvalidInput(f"fitting {spec.forecaster.get('class')} failed: {type(exc).__name__}: {exc}") from exc
    if panel:  # the published version predicts on the local cores, wherever it was fitted
        forecaster.set_config(**{"backend:parallel": "loky", "backend:parallel:params": {"n_jobs": -1}})
    if spec.engine == "auto":  # a global recursive reduction predicts the whole panel at once, same numbers
        forecaster = fast_reduction(forecaster)
    return FitResult(forecaster, table, schema, time.perf_counter() - started, y, x)


def spec_forecaster(spec: ModelSpec, y: pd.DataFrame, x: pd.DataFrame | None = None) -> Any:
    """The spec's unfitted forecaster for this data: ``intervals: conformal`` checked against
    it, on the statsforecast engine where ``engine`` asks for it."""
    forecaster = spec.build_forecaster()
    if spec.intervals == "conformal":
        _check_conformal_data(spec, y)
    if spec.engine != "sktime" and y.index.nlevels > 1:
        if x is not None and spec.engine == "statsforecast":
            raise InvalidInput(
                "engine: statsforecast takes no exogenous data (it would drop the regressors); use engine sktime",
                field="engine",
            )
        if x is None:  # with exogenous data, auto keeps sktime: the engine would fit without the regressors
            forecaster = _engine_forecaster(spec, forecaster)
    return forecaster


def _check_conformal_data(spec: ModelSpec, y: pd.DataFrame) -> None:
    """``intervals: conformal`` on the data itself (a spec whose source is not an uploaded
    dataset is checked only here): every series long enough to calibrate the horizon or, for
    a natively panel forecaster on a panel (`GlobalConformalIntervals`), enough residuals
    pooled over the series at every step."""
    panel = y.index.nlevels > 1
    if panel and natively_panel(build_estimator(spec.forecaster)):
        check_conformal(spec.model_copy(update={"kind": spec.kind or "panel"}), build_estimator(spec.forecaster))
        pooled = residual_counts(y, spec.horizon, CONFORMAL_PANEL_WINDOWS)
        if pooled < CONFORMAL_MIN_RESIDUALS:
            raise SpecError(
                f"intervals: conformal calibrates a global forecaster on {CONFORMAL_PANEL_WINDOWS} whole-panel "
                f"windows ending {spec.horizon} steps or more before the panel's end and needs "
                f"{CONFORMAL_MIN_RESIDUALS} residuals at every step; this panel gives {pooled}: add series or "
                "history, or lower the horizon",
                field="intervals",
                residuals=pooled,
                required_residuals=CONFORMAL_MIN_RESIDUALS,
            )
        return
    lengths = y.groupby(level=list(range(y.index.nlevels - 1))).size() if panel else pd.Series([len(y)])
    shortest = int(lengths.min())
    if shortest < conformal_history(spec.horizon):
        which = f" (series {lengths.idxmin()})" if panel else ""
        raise conformal_too_short(spec.horizon, shortest, "the training data" + which)


def _engine_forecaster(spec: ModelSpec, forecaster: Any) -> Any:
    """The spec's forecaster on the statsforecast engine where ``engine`` asks for it."""
    twin = statsforecast_twin(forecaster)
    if twin is None:
        if spec.engine == "statsforecast":
            raise InvalidInput(
                f"engine: {spec.forecaster.get('class')} has no statsforecast twin; use engine sktime or auto",
                field="engine",
            )
        return forecaster
    model, exact = twin
    return StatsForecastPanel(model) if exact or spec.engine == "statsforecast" else forecaster


def with_quiet_workers(forecaster: Any) -> Any:
    """A forecaster that runs per-series work on loky: its fresh worker processes route
    warnings through the log like this process (`quiet_sktime_warnings` as initializer).
    Set on working copies only (gate backtests), never on a published artifact."""
    if forecaster.get_config().get("backend:parallel") == "loky":
        params = dict(forecaster.get_config().get("backend:parallel:params") or {})
        forecaster.set_config(**{"backend:parallel:params": {**params, "initializer": quiet_sktime_warnings}})
    return forecaster


def train_and_publish(
    registry: Registry,
    name: str,
    *,
    promote: bool = True,
    progress: Progress | None = None,
    job_id: str | None = None,
    sources_root: Path | None = None,
    datasets: Any = None,
    parallel: bool = False,
) -> int:
    """Read the spec's source, fit, publish; point ``production`` at the new version.
    ``datasets`` (a `DatasetStore`) for specs that read an uploaded dataset; ``parallel``:
    a panel's per-series models fit in chunks on all local cores (`fit_spec`)."""
    say = progress or (lambda stage, done, total: None)
    spec = read_spec(registry, name, datasets)
    if spec is None:
        registry.require_model(name)
        raise InvalidInput(f"model '{name}' has no {name}/model.yaml to train from", model=name)
    say("loading data", 0, None)
    raw, _ = read_source(
        spec.data.source, base_dir=registry.model_dir(name), sources_root=sources_root, datasets=datasets
    )
    say("fitting", 0, None)
    result = fit_spec(spec, raw, parallel=parallel)
    metrics = None
    if spec.monitoring is not None and spec.monitoring.action != "none":  # the promise the policy compares with
        say("backtesting", 0, None)
        watched = promised_metrics(spec.monitoring.metric, spec.promotion.metric)
        metrics = backtest_promise(
            with_quiet_workers(result.forecaster.clone()), result.y, result.x, result.schema, spec.horizon, watched
        )
    say("publishing", 0, None)
    version = publish_version(
        registry,
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
            observations=spec.observations,
            metrics=metrics,
        ),
    )
    if promote:
        registry.set_alias(name, "production", version)
    keep_newest(registry, name, spec.keep_versions)
    return version


def _log_training(name: str, position: str, stage: str, _done: int, _total: int | None) -> None:
    log.info("training %s (%s): %s", name, position, stage)


def models_without_versions(registry: Registry, first_start: str | None = None) -> list[str]:
    """Models with a spec and no version; with ``first_start`` (``wait`` or ``background``),
    only those whose spec says so (a spec that does not parse counts as ``wait``: its
    training fails and is logged where the others are trained)."""
    names = [
        n for n in registry.list_models() if registry.read_spec_raw(n) is not None and not registry.list_versions(n)
    ]
    if first_start is None:
        return names
    return [n for n in names if _first_start(registry, n) == first_start]


def _first_start(registry: Registry, name: str) -> str:
    try:
        spec = read_spec(registry, name)
    except ServiceError:
        return "wait"
    return spec.first_start if spec is not None else "wait"


def train_missing(registry: Registry, sources_root: Path | None = None, *, background: bool = False) -> dict[str, int]:
    """Train every model that has a spec but no version (the demo registry's first start),
    logging each stage; a model that fails is logged and skipped. Only the models whose spec
    says ``first_start: wait`` (the default), or with ``background`` those that say
    ``first_start: background``: the server trains those once it is ready, one at a time,
    their series fitted in parallel on the local cores (`fit_spec` ``parallel``)."""
    published: dict[str, int] = {}
    names = models_without_versions(registry, "background" if background else "wait")
    for i, name in enumerate(names, start=1):
        started = time.perf_counter()
        position = f"{i}/{len(names)}{', in the background' if background else ''}"
        try:
            published[name] = train_and_publish(
                registry,
                name,
                progress=functools.partial(_log_training, name, position),
                sources_root=sources_root,
                parallel=background,
            )
        except ServiceError as exc:
            log.error("training %s failed: %s", name, exc.detail)
            continue
        log.info("trained %s v%d in %.1fs", name, published[name], time.perf_counter() - started)
    return published
