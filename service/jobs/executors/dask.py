"""Jobs on a Dask distributed cluster: the scale-out side of the runner's executor seam.

Set ``FORECAST_DASK_SCHEDULER=tcp://scheduler:8786`` and the API's job runner submits
each claimed job (backtest, retrain) to the cluster instead of forking a local process,
so API replicas and workers scale apart. The runner stays in the API process: it claims
jobs, beats their hearts, reaps finished tasks and cancels; the Dask worker runs the job
(``service.jobs.worker.run_job``) and writes the outcome to the job store itself.

What the cluster needs
----------------------
- **The same install on every worker**: the workers import ``service.jobs.worker`` (sktime
  and all), so they run the same image / the same ``forecast-service`` version and Python
  as the API (``pip install 'forecast-service[scale]'``; start them with ``dask worker``).
- **A job store the workers reach**: a Postgres URL
  (``FORECAST_JOBS_URL=postgresql+psycopg://user:password@db/forecast``). A SQLite file
  works only when every worker runs on the API's host (e.g. ``distributed.LocalCluster``)
  and sees the file at the same path; never put SQLite on a network filesystem.
- **Shared registry and data folders at the same paths**: the task carries the API's
  absolute ``registry`` and ``data_dir`` paths, so mount the same volume at the same path
  on the API and every worker. Workers load model versions from the registry, read
  datasets, publish retrained versions there, and write job files (a backtest's
  ``predictions.parquet``) under ``data_dir/jobs/<job id>``, which the API reads back.

What is sent
------------
Only the job id and the runner's :class:`~service.jobs.runner.WorkerContext` (URLs,
paths, the runner's owner tag, the signing key if one is set): never a pickled model or
data frame. The task's return value is a short string; results travel through the store.

Semantics
---------
- ``exitcode()`` is 0 when the task returned, 1 when it raised, was cancelled or its
  client lost the scheduler; the runner then fails the job unless the worker already
  recorded its outcome (a conditional update, so a recorded outcome is never overwritten).
- ``cancel()`` cancels the Dask future: a task that has not started never runs. Dask
  cannot stop a task that is running (a worker thread cannot be killed), so a running
  job stops at its next progress point (between backtest folds, between retrain stages):
  the runner marks it cancelled in the store at once, and the worker's next progress
  report sees that and stops; its late outcome is refused by the store.
- The task first checks that the job is still this runner's running job and skips it
  otherwise, so a task Dask recomputes (lost data) or starts late never runs a job twice
  after its outcome is known. A worker that dies mid-job: Dask reruns the task on another
  worker (``distributed.scheduler.allowed-failures``), then gives up (``KilledWorker``)
  and the runner fails the job.
- Dask workers are long-lived: the worker does not tie itself to a parent process
  (``PR_SET_PDEATHSIG``) as the local executor's one-job processes do.
- Each job holds one worker thread while it runs; use ``dask worker --nthreads 1`` (and
  more workers) for CPU-bound fits, and ``FORECAST_MAX_CONCURRENT_JOBS`` on each API
  replica to bound how many jobs it puts on the cluster.
- The client connects on the first job (not at import or app creation), with
  ``connect_timeout``; a scheduler that cannot be reached fails that job with the reason.
- Per-series fits of a panel inside a job can fan out over the cluster with sktime's
  ``"dask"`` parallel backend: inside a Dask task ``dask.compute`` uses the worker's client,
  and :func:`service.processes.seceded` lets the job's thread leave the worker's pool while it waits, so
  the sub-tasks can run even on the job's own worker (:func:`service.processes.on_dask_worker` tells where
  we are). A worker process is a daemon, so joblib's ``loky`` backend runs sequentially there.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from service.jobs.context import WorkerContext
from service.jobs.runner import JobHandle
from service.jobs.store import JobStore
from service.jobs.worker import run_job

log = logging.getLogger(__name__)

INSTALL_HINT = "install the scale-out extra: pip install 'forecast-service[scale]'"


def run_on_worker(job_id: str, context: WorkerContext) -> str:
    """The Dask task: run the job unless it is no longer this runner's running job."""
    store = JobStore(context.jobs_url)
    try:
        job = store.get(job_id)
    finally:
        store.dispose()
    if job.status != "running" or job.owner != context.owner or job.cancel_requested:
        log.info("job %s is %s (owner %s): not running it", job_id, job.status, job.owner)
        return "skipped"

    run_job(job_id, context, die_with_parent=False)
    return "ran"


class DaskHandle:
    """A job submitted to the cluster, seen through its Dask future."""

    def __init__(self, job_id: str, future: Any) -> None:
        self.job_id = job_id
        self.future = future
        self._code: int | None = None

    def running(self) -> bool:
        return not self.future.done()

    def exitcode(self) -> int | None:
        if not self.future.done():
            return None
        if self._code is None:
            self._code = 0 if self.future.status == "finished" else 1
            if self._code:
                log.error("job %s: its Dask task ended %s%s", self.job_id, self.future.status, self._reason())
        return self._code

    def _reason(self) -> str:
        if self.future.status != "error":
            return ""
        try:
            exc = self.future.exception(timeout=5)
        except Exception:  # the reason is only for the log
            return ""
        return f": {type(exc).__name__}: {exc}"

    def cancel(self) -> None:
        """Cancel the task; a running one stops at its next progress point (see module doc)."""
        try:
            self.future.cancel()
        except Exception:  # a closed client or lost scheduler: the task is gone or will see the store
            log.warning("job %s: could not cancel its Dask task", self.job_id, exc_info=True)


class DaskExecutor:
    """Runs each job as one task on a Dask distributed cluster (``address`` of its scheduler)."""

    def __init__(self, address: str, *, connect_timeout: float = 10.0) -> None:
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                f"FORECAST_DASK_SCHEDULER is set but dask.distributed is missing: {INSTALL_HINT}"
            ) from exc
        self.address = address
        self.connect_timeout = connect_timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The connected client; made on first use and again after it was closed."""
        from distributed import Client

        from service.jobs.executors.dask_plugins import QuietWarnings

        with self._lock:
            if self._client is None or self._client.status in ("closing", "closed"):
                try:
                    self._client = Client(self.address, timeout=self.connect_timeout, set_as_default=False)
                    self._client.register_plugin(QuietWarnings())
                except Exception as exc:
                    self._client = None
                    raise RuntimeError(f"cannot reach the Dask scheduler at {self.address}: {exc}") from exc
            return self._client

    def start(self, job_id: str, context: WorkerContext) -> JobHandle:
        future = self.client().submit(run_on_worker, job_id, context, key=f"job-{job_id}", pure=False)
        return DaskHandle(job_id, future)

    def shutdown(self) -> None:
        """Close the client; the runner has already finished (or failed) the jobs it ran."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
