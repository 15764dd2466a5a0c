"""Starting a backtest job: everything checked before a job exists."""

from __future__ import annotations

import dataclasses
from typing import Any

from service.errors import SeriesNotFound
from service.forecasting.backtest import BacktestRequest, validate_request
from service.forecasting.served import ServedVersion
from service.jobs.store import Job, JobStore
from service.registry.store import Registry
from service.tables import to_sktime


def submit_backtest(jobs: JobStore, registry: Registry, served: ServedVersion, request: BacktestRequest) -> Job:
    """Validate against the version's data (422 before any job is stored), then queue."""
    training = registry.read_training(served.name, served.version, served.manifest)
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
    }
    job, _ = jobs.create("backtest", served.name, params, total=n_folds)
    return job
