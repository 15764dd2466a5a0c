"""Entry point of a job's worker process: run the job, write its outcome to the store."""

from __future__ import annotations

import logging
import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any

# imported in the forkserver once, so each job starts in milliseconds
import sktime.forecasting.model_evaluation  # noqa: F401
from joblib.externals.loky import get_reusable_executor

from service.errors import ServiceError
from service.forecasting.progress import Cancelled, Progress
from service.forecasting.sktime_internals import close_forkserver_alive_fd
from service.jobs.context import WorkerContext
from service.jobs.store import Job, JobStore
from service.jobs.tasks import run_backtest_job, run_export_job, run_leaderboard_job, run_retrain_job
from service.observability import quiet_sktime_warnings
from service.processes import die_with_parent

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent (the forkserver) dies, so no orphan
    finishes a job. The forkserver exits when the server's "alive" pipe closes, but every
    forked child inherits that pipe's write end: close ours, or the two wait on each other."""
    die_with_parent()
    close_forkserver_alive_fd()


def release_workers(timeout: float = 5.0) -> None:
    """End every worker process this process started, so that it exits as soon as it returns.

    At exit, multiprocessing joins the children a process started, and the idle workers of
    joblib's reusable loky executor (sktime's ``"loky"`` backend, e.g. a panel's backtest)
    wait ~300 s for more work: the job's process, and its runner slot, would wait with them.
    In a job's own process, once its outcome is recorded: the workers are killed, not drained."""
    if not multiprocessing.active_children():
        return
    try:  # joblib's shared executor: its manager thread ends too, so nothing is left to join
        get_reusable_executor(reuse=True).shutdown(wait=True, kill_workers=True)
    except Exception:  # whatever is left is killed below
        log.exception("could not shut down joblib's loky workers")
    children = multiprocessing.active_children()  # any other pool's workers
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout)


def handlers() -> dict[str, Callable[[Job, WorkerContext, Progress], dict[str, Any]]]:
    return {
        "backtest": run_backtest_job,
        "export": run_export_job,
        "leaderboard": run_leaderboard_job,
        "retrain": run_retrain_job,
    }


def run_job(job_id: str, context: WorkerContext, *, die_with_parent: bool = True) -> None:
    """Run one job and record its outcome. ``die_with_parent``: this process is the job's
    own (local executor) and must die with the runner; false in a long-lived Dask worker."""
    if die_with_parent:
        _die_with_parent()
    quiet_sktime_warnings()
    store = JobStore(context.jobs_url)
    job = store.get(job_id)

    def progress(stage: str, done: int, total: int | None) -> None:
        if not store.progress(job_id, context.owner, stage, done, total):
            raise Cancelled

    try:
        result = handlers()[job.kind](job, context, progress)
    except Cancelled:
        store.finish(job_id, context.owner, "cancelled", error="cancelled")
    except ServiceError as exc:
        store.finish(job_id, context.owner, "failed", error=exc.detail)
    except Exception as exc:  # a job's failure is recorded, never lost
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        store.finish(job_id, context.owner, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
    else:
        store.finish(job_id, context.owner, "succeeded", result=result)
    finally:
        store.dispose()
