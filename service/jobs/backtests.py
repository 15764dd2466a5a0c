"""Starting a backtest job: everything checked before a job exists."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from service.datasets.store import DatasetStore
from service.errors import InvalidInput, SeriesNotFound
from service.forecasting.backtest import BacktestRequest, validate_request
from service.forecasting.served import ServedVersion
from service.jobs.store import Job, JobStore
from service.registry.store import Registry
from service.tables import Schema, canonical_table, to_sktime


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
) -> Job:
    """Validate against the data (422 before any job is stored), then queue."""
    training, data_ref = backtest_data(
        registry, datasets, served.name, served.version, served.manifest, dataset, dataset_version
    )
    y, _ = to_sktime(training, served.schema)
    n_folds = validate_request(request, served.capabilities, y, served.forecaster)
    if request.series is not None:
        unknown = [list(s) for s in request.series if s not in set(served.series)]
        if unknown:
            raise SeriesNotFound(f"{served.name} has no series {unknown[:5]}", field="series")
    params: dict[str, Any] = {
        "version": served.version,
        "splitter": dataclasses.asdict(request.splitter),
        "strategy": request.strategy,
        "metrics": list(request.metrics),
        "coverage": list(request.coverage),
        "quantiles": list(request.quantiles),
        "series": [list(s) for s in request.series] if request.series is not None else None,
        "dataset": dataset,
        "dataset_version": data_ref.rsplit("@", 1)[1] if dataset is not None else None,
    }
    job, _ = jobs.create("backtest", served.name, params, total=n_folds, submitter=submitter, max_active=max_active)
    return job
