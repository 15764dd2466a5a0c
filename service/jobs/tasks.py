"""What each job kind does inside its worker process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from service.datasets.store import DatasetStore
from service.forecasting.backtest import BacktestRequest, run_backtest, run_baseline, with_value_added
from service.forecasting.leaderboard import LeaderboardRequest, candidate_spec, run_leaderboard
from service.forecasting.predict import run_forecast
from service.forecasting.progress import Progress
from service.forecasting.shards import ShardCache, is_sharded, load_fitted, open_sharded, shardable, split
from service.forecasting.specs import allow_list, write_spec
from service.forecasting.training import spec_forecaster
from service.jobs.context import WorkerContext
from service.jobs.monitor import Monitor
from service.jobs.retention import job_dir
from service.jobs.retrain import RetrainParams, load_training_data, model_spec, retrain
from service.jobs.store import Job
from service.jobs.submit import backtest_data, export_file
from service.records.store import RecordStore
from service.tables import Schema, TableFileWriter, canonical_table, to_sktime, write_parquet

log = logging.getLogger(__name__)


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
    progress("baseline", 0, request.splitter.build().get_n_splits(y))  # first: the folds' count only goes up
    baseline = run_baseline(y, request, schema)
    result, predictions = run_backtest(
        loaded.forecaster, y, x, request, schema, on_progress=lambda done, total: progress("folds", done, total)
    )
    result = with_value_added(result, baseline)
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


EXPORT_CHUNK_SERIES = 500
"""Series forecast and written at a time by an export (its progress steps)."""


def run_export_job(job: Job, context: WorkerContext, progress: Progress) -> dict[str, Any]:
    """The version's forecast for every series, a chunk of series at a time, into one file;
    written beside its final name and renamed there when whole."""
    registry = context.registry()
    version = int(job.params["version"])
    progress("loading", 0, None)
    manifest = registry.verified_manifest(job.model, version)
    schema = Schema.from_dict(manifest["schema"])
    steps = list(range(1, int(job.params["horizon"]) + 1))
    coverage, quantiles = list(job.params["coverage"]), list(job.params["quantiles"])
    if is_sharded(manifest):
        model = open_sharded(registry, job.model, version, manifest, ShardCache(max_bytes=0))
        parts: Any = (model.shard(n) for n in range(len(model.files)))
    else:
        forecaster = registry.load(job.model, version).forecaster
        parts = split(forecaster, EXPORT_CHUNK_SERIES) if shardable(forecaster) else [forecaster]
    total = max(1, int((manifest.get("series") or {}).get("count") or 1))
    target = export_file(job, context.data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    writer = TableFileWriter(partial, job.params["format"], schema)
    done = 0
    try:
        progress("series", 0, total)
        for part in parts:
            table = run_forecast(part, schema, steps, coverage, quantiles)
            writer.write(table)
            done += len(table[list(schema.keys)].drop_duplicates()) if schema.keys else 1
            progress("series", min(done, total), total)
        writer.close()
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return {
        "model": job.model,
        "version": version,
        "file": target.name,
        "format": job.params["format"],
        "rows": writer.rows,
        "series": done,
        "bytes": target.stat().st_size,
        "horizon": len(steps),
        "coverage": coverage,
        "quantiles": quantiles,
        "download": f"/v1/models/{job.model}/exports/{job.id}",
    }


def run_leaderboard_job(job: Job, context: WorkerContext, progress: Progress) -> dict[str, Any]:
    """Backtest the candidates on the model's data; with ``publish: best``, retrain with the
    winner through the gate, and when it is promoted make it the model's spec."""
    registry, datasets = context.registry(), DatasetStore(context.data_dir)
    sources_root = Path(context.sources_root) if context.sources_root else None
    progress("loading data", 0, None)
    spec = model_spec(registry, datasets, job.model, "run a leaderboard")
    raw, data_ref = load_training_data(
        registry,
        datasets,
        job.model,
        spec,
        job.params.get("dataset_version"),
        sql_url=context.sql_url,
        sources_root=sources_root,
    )
    schema = spec.table_schema()
    y, x = to_sktime(canonical_table(raw, schema, what="training data"), schema)
    request = LeaderboardRequest.from_params(job.params)
    forecasters = [spec_forecaster(candidate_spec(spec, c), y, x) for c in request.candidates]
    result = {"model": job.model, "data": data_ref, **run_leaderboard(request, forecasters, y, x, schema, progress)}
    if job.params.get("publish") == "best" and result["winner"] is not None:
        winner = next(c for c in result["candidates"] if c["name"] == result["winner"])
        update = {
            "forecaster": winner["forecaster"],
            "intervals": winner.get("intervals", "native"),
            "engine": winner.get("engine", "sktime"),
        }
        published = retrain(
            registry,
            datasets,
            job.model,
            RetrainParams(promote=job.params.get("promote")),
            job_id=job.id,
            sql_url=context.sql_url,
            sources_root=sources_root,
            progress=progress,
            spec_update=update,
            data=(raw, data_ref),
        )
        if published["promoted"]:  # scheduled retrains go on with the winner
            write_spec(registry, job.model, {**(registry.read_spec_raw(job.model) or {}), **update})
        result["published"] = {**published, "candidate": winner["name"], "spec_updated": published["promoted"]}
    return result


def run_retrain_job(job: Job, context: WorkerContext, progress: Progress) -> dict[str, Any]:
    """A retrain; then the new version's forecast goes into the monitoring record (before
    retention can prune it), and the result says what triggered it (a drift breach, a slot)."""
    registry = context.registry()
    result = retrain(
        registry,
        DatasetStore(context.data_dir),
        job.model,
        RetrainParams.from_dict(job.params),
        job_id=job.id,
        sql_url=context.sql_url,
        sources_root=Path(context.sources_root) if context.sources_root else None,
        progress=progress,
    )
    try:
        Monitor(registry, RecordStore(context.data_dir), None).sync(job.model)
    except Exception:  # the version is published and decided; the next sync records it
        log.exception("monitoring record of %s not written", job.model)
    if job.params.get("trigger"):
        result["trigger"] = {k: job.params[k] for k in ("trigger", "breach", "slot") if k in job.params}
    return result


# imported by the forkserver before any job: every job process inherits the built allow-list
allow_list()
