"""Local executor: one process per job, forked from a forkserver with sktime imported."""

from __future__ import annotations

import multiprocessing

from service.jobs.context import WorkerContext
from service.jobs.runner import JobHandle
from service.jobs.worker import run_job


class ProcessHandle:
    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process

    def running(self) -> bool:
        return self.process.is_alive()

    def exitcode(self) -> int | None:
        return self.process.exitcode

    def cancel(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)


class LocalProcessExecutor:
    """One process per job from a forkserver that has sktime imported already."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("forkserver")
        # sktime, the job code and the app module imported once: a job starts in milliseconds
        self._context.set_forkserver_preload(["service.jobs.worker", "service.jobs.tasks"])

    def start(self, job_id: str, context: WorkerContext) -> JobHandle:
        # not a daemon: sktime's loky backend starts processes of its own for panels;
        # the runner kills workers on shutdown and PR_SET_PDEATHSIG kills orphans
        process = self._context.Process(target=run_job, args=(job_id, context), name=f"job-{job_id[:8]}", daemon=False)
        process.start()
        return ProcessHandle(process)

    def shutdown(self) -> None:
        return None
