"""Finished jobs leave: on request (`delete_job`) or after the retention (`purge_expired`),
their row in the job store and their folder of files (``data_dir/jobs/<id>``) both go."""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from service.jobs.store import Job, JobIds, JobStore

log = logging.getLogger(__name__)


def job_dir(data_dir: str | Path, job_id: str) -> Path:
    """Where a job keeps its files (a backtest's fold predictions)."""
    return Path(data_dir) / "jobs" / job_id


def _remove_files(data_dir: str | Path, job_ids: JobIds) -> None:
    for job_id in job_ids:
        shutil.rmtree(job_dir(data_dir, job_id), ignore_errors=True)


def delete_job(store: JobStore, data_dir: str | Path, job_id: str) -> Job:
    """Delete one finished job (`Conflict` while queued or running, `NotFound` if unknown)."""
    job = store.delete(job_id)
    _remove_files(data_dir, [job_id])
    return job


def purge_expired(store: JobStore, data_dir: str | Path, days: float) -> JobIds:
    """Delete every job that finished more than ``days`` ago (0: keep them all)."""
    if days <= 0:
        return []
    purged = store.purge_finished(timedelta(days=days))
    _remove_files(data_dir, purged)
    if purged:
        log.info("deleted %d jobs finished more than %g days ago (FORECAST_JOB_RETENTION_DAYS)", len(purged), days)
    return purged
