"""Runs queued jobs in worker processes behind an executor seam.

The runner lives in the API process: it claims queued jobs from the store (any replica
may), starts each in its own process (never the web worker's thread), beats the heart
of the jobs it runs, kills the ones whose cancel was asked, and fails jobs whose owner
died (``interrupted``). A Dask distributed executor can fill the same seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any, Protocol

from service.jobs.context import WorkerContext
from service.jobs.retention import purge_expired
from service.jobs.store import JobStore

log = logging.getLogger(__name__)


class JobHandle(Protocol):
    def running(self) -> bool: ...

    def exitcode(self) -> int | None: ...

    def cancel(self) -> None: ...


class JobExecutor(Protocol):
    def start(self, job_id: str, context: WorkerContext) -> JobHandle: ...

    def shutdown(self) -> None: ...


def _owner_dead_here(owner: str | None) -> bool:
    """True when ``owner`` (host:pid:boot) is a process of this host that no longer runs."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        executor: JobExecutor,
        context: WorkerContext,
        max_concurrent: int = 2,
        stale_after: float = 30.0,
        poll_interval: float = 0.5,
        retention_days: float = 0.0,
    ) -> None:
        self.store = store
        self.executor = executor
        self.context = context
        self.max_concurrent = max_concurrent
        self.stale_after = stale_after
        self.poll_interval = poll_interval
        self.retention_days = retention_days  # finished jobs older than this are deleted (0: never)
        self._last_purge: float | None = None
        self.handles: dict[str, JobHandle] = {}
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._last_stale_check = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_finished: Any = None  # called with (job_id) from the runner thread

    @property
    def owner(self) -> str:
        return self.context.owner

    def wake(self) -> None:
        """Claim now instead of at the next poll; safe from any thread."""
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._wake.set)
        else:
            self._wake.set()

    def recover(self) -> list[str]:
        """On start: jobs left running by a dead process are failed (interrupted)."""
        failed = self.store.fail_interrupted(self.stale_after, _owner_dead_here)
        for job_id in failed:
            log.warning("job %s was running in a process that stopped: marked failed (interrupted)", job_id)
        return failed

    def tick(self) -> None:
        """One round: reap, cancel, heartbeat, fail stale jobs, claim queued ones."""
        with self._lock:
            self._reap()
            self._cancel_requested()
            self.store.heartbeat(list(self.handles), self.owner)
            if time.monotonic() - self._last_stale_check > max(self.stale_after / 3, 1.0):
                self._last_stale_check = time.monotonic()
                self.recover()
            self._claim()
        self._purge()

    PURGE_EVERY: float = 3600.0  # seconds between retention passes (and one at start)

    def _purge(self) -> None:
        if self.retention_days <= 0:
            return
        if self._last_purge is not None and time.monotonic() - self._last_purge < self.PURGE_EVERY:
            return
        self._last_purge = time.monotonic()
        purge_expired(self.store, self.context.data_dir, self.retention_days)

    def _reap(self) -> None:
        for job_id, handle in list(self.handles.items()):
            if handle.running():
                continue
            code = handle.exitcode()
            del self.handles[job_id]
            # a worker that died without writing its outcome (crash, OOM kill, signal)
            if code != 0 and self.store.finish(
                job_id, self.owner, "failed", error=f"worker process exited with code {code}"
            ):
                log.error("job %s: worker exited with code %s", job_id, code)
            if self.on_finished is not None:
                try:
                    self.on_finished(job_id)
                except Exception:  # a hook must not stop the runner
                    log.exception("job %s: on_finished hook failed", job_id)

    def _cancel_requested(self) -> None:
        for job_id in self.store.cancel_requested(list(self.handles)):
            handle = self.handles.pop(job_id)
            handle.cancel()
            self.store.finish(job_id, self.owner, "cancelled", error="cancelled while running")
            log.info("job %s cancelled; its worker was stopped", job_id)

    def _claim(self) -> None:
        free = self.max_concurrent - len(self.handles)
        if free <= 0:
            return
        for job_id in self.store.queued_ids(free * 2):
            if len(self.handles) >= self.max_concurrent:
                break
            if self.store.claim(job_id, self.owner):
                try:
                    self.handles[job_id] = self.executor.start(job_id, self.context)
                except Exception as exc:  # could not start a process: the job fails, not the server
                    self.store.finish(job_id, self.owner, "failed", error=f"could not start a worker: {exc}")

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        last_error = None
        recovered = False
        while not stop.is_set():
            try:
                if not recovered:
                    await asyncio.to_thread(self.recover)
                    recovered = True
                await asyncio.to_thread(self.tick)
                last_error = None
            except Exception as exc:  # the loop must outlive a database hiccup (or a read-only one)
                if str(exc) != last_error:  # once per distinct failure, not every poll
                    log.exception("job runner tick failed")
                last_error = str(exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    def shutdown(self, mark: str = "failed") -> None:
        """Stop local workers; their jobs are failed (interrupted) so none stays running."""
        error = "interrupted: the service shut down"
        try:  # the record first: whatever happens to the workers next, no job stays `running`
            self.store.fail_owned(self.owner, error)
        except Exception:  # the database may be gone too; the next start fails them as stale
            log.exception("could not mark this process's jobs interrupted")
        locked = self._lock.acquire(timeout=1.0)  # a tick stuck on the database must not hold shutdown
        try:
            for job_id, handle in list(self.handles.items()):
                handle.cancel()
                self.store.finish(job_id, self.owner, mark, error="interrupted: the service shut down")
            self.handles.clear()
        finally:
            if locked:
                self._lock.release()
        self.executor.shutdown()
