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
from service.errors import InvalidInput, SeriesNotFound
from service.forecasting.backtest import BacktestRequest, validate_request
from service.forecasting.served import ServedVersion
from service.forecasting.specs import read_spec
from service.jobs.retrain import RetrainParams, check_gate_metric
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
