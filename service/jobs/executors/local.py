"""Local executor: one process per job, forked from a forkserver with sktime imported.

A job's process ends with its job: once the outcome is recorded it ends the workers it
started (`release_workers`) and exits. Should it still be alive a grace period later (a
pool nobody shut down), its handle kills it with every process below it, and so does a
cancel: no worker of a finished job keeps running, and none holds a runner slot.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from service.jobs.context import WorkerContext
from service.jobs.runner import JobHandle
from service.jobs.worker import release_workers, run_job

log = logging.getLogger(__name__)

EXIT_GRACE = 10.0  # seconds a job's process may take to exit after its outcome is recorded


def _job_process(job_id: str, context: WorkerContext, recorded: Any) -> None:
    """The job's own process: run the job, say its outcome is recorded, end its workers."""
    try:
        run_job(job_id, context)
    finally:
        recorded.set()
        release_workers()


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: [state, ppid, ...] (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux, from /proc; elsewhere none)."""
    if not sys.platform.startswith("linux"):
        return set()
    children: dict[int, set[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        if (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), set()).add(int(entry))
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = set().union(*(children.get(p, set()) for p in frontier)) - found
        found |= frontier
    return found


def _resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"resource_tracker" in handle.read()
    except OSError:
        return False


def kill_tree(pid: int, cleanup: float = 2.0) -> None:
    """SIGKILL ``pid`` and every process below it; stopped first, so it starts no more.

    Resource trackers (multiprocessing's, loky's) are spared a moment: once the processes
    they serve are gone they remove what those left (joblib's folders and loky's semaphores
    in /dev/shm) and exit; one still there after ``cleanup`` seconds is killed too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGSTOP)
    below = descendants(pid)
    trackers = {p for p in below if _resource_tracker(p)}
    for target in (pid, *(below - trackers)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)
    deadline = time.monotonic() + cleanup
    while (trackers := {p for p in trackers if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.02)
    for target in trackers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)


class ProcessHandle:
    """A job's process. ``recorded`` is set by the process once the job's outcome is in the
    store; a process still alive ``grace`` seconds after that is killed with its workers."""

    def __init__(
        self, process: multiprocessing.process.BaseProcess, recorded: Any = None, grace: float = EXIT_GRACE
    ) -> None:
        self.process = process
        self.recorded = recorded
        self.grace = grace
        self._recorded_at: float | None = None

    def running(self) -> bool:
        if not self.process.is_alive():
            return False
        if self.recorded is not None and self.recorded.is_set():
            if self._recorded_at is None:
                self._recorded_at = time.monotonic()
            elif time.monotonic() - self._recorded_at > self.grace:
                log.warning(
                    "job process %s was still alive %.0f s after its job ended: killed with its workers",
                    self.process.pid,
                    self.grace,
                )
                self.cancel()
                return False
        return True

    def exitcode(self) -> int | None:
        return self.process.exitcode

    def cancel(self) -> None:
        """Kill the job's process and every worker it started."""
        if self.process.is_alive() and self.process.pid is not None:
            kill_tree(self.process.pid)
        self.process.join(timeout=10)


class LocalProcessExecutor:
    """One process per job from a forkserver that has sktime imported already."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("forkserver")
        # sktime, the job code and the app module imported once: a job starts in milliseconds
        self._context.set_forkserver_preload(["service.jobs.worker", "service.jobs.tasks"])

    def start(self, job_id: str, context: WorkerContext) -> JobHandle:
        # not a daemon: sktime's loky backend starts processes of its own for panels; the
        # job's process ends them when the job ends, its handle kills whatever is left, and
        # PR_SET_PDEATHSIG kills the job's process if the runner dies
        recorded = self._context.Event()
        process = self._context.Process(
            target=_job_process, args=(job_id, context, recorded), name=f"job-{job_id[:8]}", daemon=False
        )
        process.start()
        return ProcessHandle(process, recorded)

    def shutdown(self) -> None:
        return None
