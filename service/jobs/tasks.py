"""What each job kind does inside its worker process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.datasets.store import DatasetStore
from service.forecasting.backtest import BacktestRequest, run_backtest
from service.forecasting.progress import Progress
from service.forecasting.shards import load_fitted
from service.forecasting.specs import allow_list
from service.jobs.context import WorkerContext
from service.jobs.retention import job_dir
from service.jobs.retrain import RetrainParams, retrain
from service.jobs.store import Job
from service.jobs.submit import backtest_data
from service.tables import Schema, to_sktime, write_parquet


def run_backtest_job(job: Job, context: WorkerContext, progress: Progress) -> dict[str, Any]:
    registry = context.registry()
    version = int(job.params["version"])
    progress("loading", 0, None)
    loaded = load_fitted(registry, job.model, version)
    schema = Schema.from_dict(loaded.manifest["schema"])
    training, data_ref = backtest_data(
        registry,
        DatasetStore(context.data_dir),
        job.model,
        version,
        loaded.manifest,
        job.params.get("dataset"),
        job.params.get("dataset_version"),
    )
    y, x = to_sktime(training, schema)
    request = BacktestRequest.from_params(job.params)
    result, predictions = run_backtest(
        loaded.forecaster, y, x, request, schema, on_progress=lambda done, total: progress("folds", done, total)
    )
    folder = job_dir(context.data_dir, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    if len(predictions):
        write_parquet(predictions, schema, folder / "predictions.parquet")
    return {
        "model": job.model,
        "version": version,
        "data": data_ref,
        "schema": schema.to_dict(),
        **result,
    }


def run_retrain_job(job: Job, context: WorkerContext, progress: Progress) -> dict[str, Any]:
    return retrain(
        context.registry(),
        DatasetStore(context.data_dir),
        job.model,
        RetrainParams.from_dict(job.params),
        job_id=job.id,
        sql_url=context.sql_url,
        sources_root=Path(context.sources_root) if context.sources_root else None,
        progress=progress,
    )


# imported by the forkserver before any job: every job process inherits the built allow-list
allow_list()
