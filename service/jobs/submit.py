"""Starting jobs: everything checked before a job exists (422s leave nothing behind),
then queued, and the runner woken so it claims the job at once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from service.datasets.sources import resolve_source_path
from service.datasets.store import DatasetStore
from service.errors import InvalidInput, SeriesNotFound, SpecError
from service.forecasting.backtest import BacktestRequest, validate_request
from service.forecasting.leaderboard import LeaderboardRequest, check_request
from service.forecasting.served import Limits, PredictQuery, ServedVersion
from service.forecasting.specs import read_spec
from service.forecasting.training import spec_forecaster
from service.jobs.retention import job_dir
from service.jobs.retrain import RetrainParams, check_gate_metric, load_training_data, model_spec
from service.jobs.store import Job, JobStore
from service.registry.store import Registry
from service.tables import Schema, canonical_table, to_sktime

Wake = Callable[[], None]
"""Tells the local runner a job is queued (it also polls the store)."""


def backtest_data(
    registry: Registry,
    datasets: DatasetStore,
    name: str,
    version: int,
    manifest: dict[str, Any],
    dataset: str | None,
    dataset_version: str | None,
) -> tuple[pd.DataFrame, str]:
    """The version's training table, or a dataset version checked against the version's columns."""
    if dataset is None:
        if dataset_version is not None:
            raise InvalidInput("'dataset_version' needs 'dataset'", field="dataset_version")
        return registry.read_training(name, version, manifest), "training table of the version"
    table, read_version, _ = datasets.read(dataset, dataset_version)
    schema = Schema.from_dict(manifest["schema"])
    return canonical_table(table, schema, what=f"dataset '{dataset}'"), f"{dataset}@{read_version}"


def submit_backtest(
    jobs: JobStore,
    registry: Registry,
    datasets: DatasetStore,
    served: ServedVersion,
    request: BacktestRequest,
    dataset: str | None = None,
    dataset_version: str | None = None,
    submitter: str | None = None,
    max_active: int | None = None,
    wake: Wake | None = None,
) -> Job:
    """Validate against the data (422 before any job is stored), then queue."""
    training, data_ref = backtest_data(
        registry, datasets, served.name, served.version, served.manifest, dataset, dataset_version
    )
    y, _ = to_sktime(training, served.schema)
    n_folds = validate_request(request, served.capabilities, y, served.forecaster)  # None when sharded: per-series
    if request.series is not None:
        unknown = [list(s) for s in request.series if s not in set(served.series)]
        if unknown:
            raise SeriesNotFound(f"{served.name} has no series {unknown[:5]}", field="series")
    params: dict[str, Any] = {
        "version": served.version,
        **request.to_params(),
        "dataset": dataset,
        "dataset_version": data_ref.rsplit("@", 1)[1] if dataset is not None else None,
    }
    job, _ = jobs.create("backtest", served.name, params, total=n_folds, submitter=submitter, max_active=max_active)
    return job


def request_hash(name: str, body: Mapping[str, Any]) -> str:
    canonical = json.dumps({"model": name, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_retrain(
    jobs: JobStore,
    registry: Registry,
    name: str,
    body: Mapping[str, Any],
    idempotency_key: str | None = None,
    *,
    check_source: bool = True,
    sources_root: Path | None = None,
    wake: Wake | None = None,
) -> tuple[Job, bool]:
    """Returns (job, created). Same key + same body: the same job; same key + another
    body: 422; a retrain of this model already queued or running: that job. With
    ``check_source`` a ``path`` source outside the model folder (or ``sources_root``) is a
    422 before any job exists."""
    registry.require_model(name)
    spec = read_spec(registry, name)  # an invalid model.yaml on disk: 409 naming it, before any job
    if spec is None:
        raise InvalidInput(f"model '{name}' has no spec (model.yaml) to retrain from", model=name)
    if check_source and "path" in spec.data.source:
        resolve_source_path(spec.data.source["path"], registry.model_dir(name), sources_root)
    params = RetrainParams.from_dict(body)
    if params.promote not in (None, "auto", "always", "never"):
        raise InvalidInput("'promote' must be auto, always or never", field="promote")
    if params.gate_metric is not None:
        check_gate_metric(params.gate_metric)
    if params.gate_tolerance is not None and params.gate_tolerance < 0:
        raise InvalidInput("'gate.tolerance' must be >= 0", field="gate.tolerance")
    job, created = jobs.create(
        "retrain",
        name,
        dict(body),
        idempotency_key=idempotency_key,
        request_hash=request_hash(name, body),
        exclusive=True,
    )
    if wake is not None:
        wake()
    return job, created


def submit_leaderboard(
    jobs: JobStore,
    registry: Registry,
    datasets: DatasetStore,
    name: str,
    request: LeaderboardRequest,
    *,
    publish: str | None = None,
    promote: str | None = None,
    dataset_version: str | None = None,
    submitter: str | None = None,
    max_active: int | None = None,
    sql_url: str | None = None,
    sources_root: Path | None = None,
    wake: Wake | None = None,
) -> Job:
    """Check the candidates, the splitter and the series against the model's data (a 422
    leaves nothing behind), then queue one job for every candidate and fold."""
    registry.require_model(name)
    spec = model_spec(registry, datasets, name, "run a leaderboard")
    specs = check_request(spec, request)
    if promote not in (None, "auto", "always", "never"):
        raise InvalidInput("'promote' must be auto, always or never", field="promote")
    raw, data_ref = load_training_data(
        registry, datasets, name, spec, dataset_version, sql_url=sql_url, sources_root=sources_root, snapshot=False
    )
    schema = spec.table_schema()
    y, x = to_sktime(canonical_table(raw, schema, what="training data"), schema)
    n_folds = validate_request(request.backtest, {}, y)
    if request.backtest.series is not None:
        known = set(_series_keys(y))
        unknown = [list(s) for s in request.backtest.series if s not in known]
        if unknown:
            raise SeriesNotFound(f"{name} has no series {unknown[:5]}", field="series")
    for i, (candidate, candidate_spec) in enumerate(zip(request.candidates, specs, strict=True)):
        try:
            validate_request(request.backtest, {}, y, spec_forecaster(candidate_spec, y, x))
        except InvalidInput as exc:
            field = exc.extra.get("field")
            raise SpecError(
                f"candidates[{i}] ({candidate.name}): {exc.detail}",
                **{**exc.extra, "field": f"candidates[{i}].{field}" if field else f"candidates[{i}]"},
            ) from None
    params: dict[str, Any] = {
        **request.to_params(),
        "dataset_version": data_ref["version"] or dataset_version,  # a dataset's: the version checked
        "publish": publish,
        "promote": promote,
    }
    total = (len(request.candidates) + 1) * n_folds
    job, _ = jobs.create("leaderboard", name, params, total=total, submitter=submitter, max_active=max_active)
    if wake is not None:
        wake()
    return job


def _series_keys(y: pd.DataFrame) -> list[tuple[str, ...]]:
    if y.index.nlevels == 1:
        return [()]
    return [tuple(str(v) for v in (k if isinstance(k, tuple) else (k,))) for k in y.index.droplevel(-1).unique()]


EXPORT_FORMATS = {"parquet": ".parquet", "csv": ".csv"}


def submit_export(
    jobs: JobStore,
    served: ServedVersion,
    query: PredictQuery,
    limits: Limits,
    fmt: str,
    target_dir: str | None,
    submitter: str | None = None,
    max_active: int | None = None,
) -> Job:
    """Check ``query`` as a forecast of the version would be checked (422 before any job is
    stored), then queue an export of it for every series."""
    schema = served.schema
    if schema.exogenous:
        raise InvalidInput(
            f"{served.name} needs future values of {list(schema.exogenous)}: a batch export cannot supply them; "
            f"use POST /v1/models/{served.name}/predict with 'exogenous'",
            field="model",
        )
    steps = served.check(query, limits)
    params = {
        "version": served.version,
        "horizon": steps[-1],
        "coverage": list(query.coverage),
        "quantiles": list(query.quantiles),
        "format": fmt,
        "target_dir": target_dir,
    }
    total = len(served.series) or 1
    job, _ = jobs.create("export", served.name, params, total=total, submitter=submitter, max_active=max_active)
    return job


def export_file(job: Job, data_dir: str | Path) -> Path:
    """Where an export job writes its file: the declared export folder, or the job's own folder."""
    name = f"{job.model}-v{job.params['version']}-{job.id}{EXPORT_FORMATS[job.params['format']]}"
    target = job.params.get("target_dir")
    return Path(target) / job.model / name if target else job_dir(data_dir, job.id) / name
