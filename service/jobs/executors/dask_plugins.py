"""Dask worker plugins the service registers on its cluster (needs the scale extra)."""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from service.observability import quiet_sktime_warnings


class QuietWarnings(WorkerPlugin):
    """Every worker of the cluster, those that join later too, handles warnings as a job's
    process does (`quiet_sktime_warnings`): a worker that runs no job, only the per-series
    tasks of sktime's dask backend or our shard tasks, printed sktime's remember_data notice
    once per series (1,437 lines for one 1,500-series retrain)."""

    name = "forecast-service-quiet-warnings"

    def setup(self, worker: Any) -> None:
        quiet_sktime_warnings()
