"""What one server process holds: settings, registry, loaded models, worker threads."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from service.datasets.store import DatasetStore
from service.errors import AliasNotFound, ModelNotFound, NotReady, ServiceError, VersionLoadError
from service.forecasting.served import Answer, Limits, PredictQuery, ServedVersion
from service.forecasting.shards import ShardCache
from service.jobs.context import WorkerContext
from service.jobs.executors.local import LocalProcessExecutor
from service.jobs.monitor import Monitor, MonitorHooks
from service.jobs.runner import JobExecutor, JobRunner
from service.jobs.store import Job, JobStore, process_owner
from service.observability import Metrics
from service.records.store import RecordStore
from service.registry.store import Registry
from service.security import KeyRing
from service.serving.cache import ModelCache
from service.serving.responses import ResponseCache
from service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    registry: Registry
    cache: ModelCache
    responses: ResponseCache
    executor: ThreadPoolExecutor
    ingest: ThreadPoolExecutor  # parses uploads, apart from the live-predict threads
    ingest_slots: threading.BoundedSemaphore  # queued + running ingest work (`ingest_capacity`)
    jobs: JobStore
    runner: JobRunner
    datasets: DatasetStore
    keys: KeyRing
    metrics: Metrics
    monitor: Monitor
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    training: bool = False  # first-start training of models without versions is running
    first_training: frozenset[str] = frozenset()  # models the first start trains in the background, until done
    # finished retrains whose model this process has re-read since (see `settled`), oldest first
    settled_jobs: OrderedDict[str, None] = field(default_factory=OrderedDict)
    INGEST_QUEUE_FACTOR: ClassVar[int] = 2  # ingest work queued + running, per ingest thread
    SETTLE_SECONDS: ClassVar[float] = 10.0  # longest a job answer or a predict miss waits for a model's re-read
    SETTLED_JOBS: ClassVar[int] = 4096  # finished retrains remembered as settled

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        registry = Registry(
            settings.registry, signing_key=settings.signing_key_bytes, shard_series=settings.shard_series
        )
        metrics = Metrics()
        jobs = JobStore(settings.resolved_jobs_url)
        context = worker_context(settings, registry)
        responses = ResponseCache(settings.response_cache_bytes)
        metrics.watch_responses(lambda: responses.size, lambda: len(responses))
        datasets = DatasetStore(settings.data_dir)
        monitor = Monitor(
            registry,
            RecordStore(settings.data_dir),
            jobs,
            datasets,
            max_rows=settings.record_max_rows,
            max_age_days=settings.record_max_age_days,
            hooks=MonitorHooks(metrics.live_metric_seen, metrics.anomalies_seen, metrics.drift_seen),
        )
        return cls(
            settings=settings,
            registry=registry,
            cache=ModelCache(
                registry,
                extra_versions=settings.version_cache_size,
                on_load=metrics.model_loaded,
                on_forget=responses.forget,
                shards=ShardCache(settings.shard_cache_bytes),
            ),
            responses=responses,
            executor=ThreadPoolExecutor(settings.live_predict_threads, thread_name_prefix="sktime"),
            ingest=ThreadPoolExecutor(settings.ingest_threads, thread_name_prefix="ingest"),
            ingest_slots=threading.BoundedSemaphore(cls.INGEST_QUEUE_FACTOR * settings.ingest_threads),
            jobs=jobs,
            runner=JobRunner(
                jobs,
                make_executor(settings),
                context,
                max_concurrent=settings.max_concurrent_jobs,
                stale_after=settings.job_stale_seconds,
                retention_days=settings.job_retention_days,
            ),
            datasets=datasets,
            keys=KeyRing.load(
                settings.api_keys.get_secret_value() if settings.api_keys else None, settings.api_keys_file
            ),
            metrics=metrics,
            monitor=monitor,
        )

    def __post_init__(self) -> None:
        self.runner.on_finished = self._job_finished

    def _job_finished(self, job_id: str) -> None:
        """Count the job; a finished retrain may have promoted: look now, not at the next poll."""
        job = self.jobs.get(job_id)
        self.metrics.jobs.labels(job.kind, job.status).inc()
        if job.started_at and job.finished_at:
            seconds = (datetime.fromisoformat(job.finished_at) - datetime.fromisoformat(job.started_at)).total_seconds()
            self.metrics.job_seconds.labels(job.kind, job.status).observe(seconds)
        if job.kind == "retrain":
            self.cache.refresh(only=job.model)

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(max_horizon=s.max_horizon, max_series=s.max_series_per_request, max_rows=s.max_rows_per_request)

    async def served(self, name: str, version: int | None = None, alias: str | None = None) -> Any:
        """`_served`; a model the first start is still training in the background (no
        version yet) is a 503 that says so, not a 404."""
        try:
            return await self._served(name, version, alias)
        except AliasNotFound:
            if name not in self.first_training:
                raise
            raise NotReady(
                f"model '{name}' is training its first version (first start, in the background); retry later",
                model=name,
                retry_after=30,
            ) from None

    async def _served(self, name: str, version: int | None = None, alias: str | None = None) -> Any:
        """The version a request uses: from memory, or loaded on a worker thread.

        Read-your-writes on a miss: what memory does not know yet (a model or an alias
        written since the last scan, an alias target still loading) is re-read from the
        registry before the answer is a 404 or a 409 (`ModelCache.settle`: a refresh of that
        model begun after this request arrived, coalesced, off the loop, bounded). The fast
        path (a hit in memory) reads no file: a changed alias of a model that still serves
        is caught by the job read (`settled`) or the next scan."""
        try:
            served = self.cache.peek(name, version, alias)
            if served is not None:
                return served
            return await self.run_blocking(self.cache.get, name, version, alias)
        except (ModelNotFound, AliasNotFound, VersionLoadError, NotReady) as exc:
            if version is not None and not isinstance(exc, ModelNotFound):
                raise  # a version by number is looked up on disk by `get` already
            if not await self.cache.settle(name, self.cache.mark(), self.SETTLE_SECONDS):
                raise
        return await self.run_blocking(self.cache.get, name, version, alias)

    async def settled(self, *jobs: Job) -> None:
        """Before this process reports a finished retrain: re-read its model, so what the
        retrain published and promoted is what a predict here answers next (its worker
        moved the alias before it wrote `succeeded`, and the runner's hook and the registry
        scan come later). Bounded (`SETTLE_SECONDS`), off the loop, once per job: reading
        a job again costs nothing."""
        todo = [job for job in jobs if job.kind == "retrain" and job.finished and job.id not in self.settled_jobs]
        if not todo:
            return
        mark = self.cache.mark()  # after the jobs were read as finished
        models = sorted({job.model for job in todo})
        done = await asyncio.gather(*(self.cache.settle(m, mark, self.SETTLE_SECONDS) for m in models))
        caught_up = {model for model, ok in zip(models, done, strict=True) if ok}
        for job in todo:
            if job.model in caught_up:
                self.settled_jobs[job.id] = None
        while len(self.settled_jobs) > self.SETTLED_JOBS:
            self.settled_jobs.popitem(last=False)

    @property
    def ingest_capacity(self) -> int:
        return self.INGEST_QUEUE_FACTOR * self.settings.ingest_threads

    async def run_ingest(self, func: Any, *args: Any) -> Any:
        """Parse and store an upload on the ingest threads, apart from the live-predict ones.
        At most `ingest_capacity` uploads are queued or running; beyond that a 503 (Retry-After).
        A slot is freed when the work ends, not when a client that went away stops waiting."""
        if not self.ingest_slots.acquire(blocking=False):
            raise NotReady(
                f"{self.ingest_capacity} uploads are being parsed or are waiting for it "
                f"({self.settings.ingest_threads} at a time, setting FORECAST_INGEST_THREADS); retry shortly",
                retry_after=2,
            )
        try:
            future = self.ingest.submit(func, *args)
        except BaseException:
            self.ingest_slots.release()
            raise
        future.add_done_callback(lambda _: self.ingest_slots.release())
        return await asyncio.wrap_future(future)

    async def wait_finished(self, job: Job, seconds: float, interval: float = 0.1) -> Job:
        """The job once it finished (and `settled`), or as it is after ``seconds`` (polled off the loop)."""
        deadline = time.monotonic() + seconds
        while not job.finished and time.monotonic() < deadline:
            await asyncio.sleep(interval)
            job = await asyncio.to_thread(self.jobs.get, job.id)
        await self.settled(job)
        return job

    async def answer(self, served: ServedVersion, query: PredictQuery) -> Answer:
        """A domain query answered as the predict route answers one: from the precomputed table
        when it covers the query, else live on a worker thread (bounded by the live-predict
        timeout), counted, and monitored like a predict (`monitor_answer`). For the protocol
        adapters, which must give the same numbers by the same path."""
        self.metrics.predictions.labels(served.name, str(served.version)).inc()
        answer = None if query.needs_live else served.try_fast(query, self.limits)
        if answer is None:
            timeout = self.settings.live_predict_timeout
            answer = await self.run_blocking(served.answer, query, self.limits, timeout=timeout)
        self.metrics.fast_path.labels(served.name, "fast" if answer.fast else "live").inc()
        if not answer.fast:
            await self.run_blocking(self.monitor_answer, served, answer, query, False, query.coverage, query.quantiles)
        return answer

    def monitor_answer(
        self,
        served: ServedVersion,
        answer: Answer,
        query: PredictQuery | None,
        record: bool,
        coverage: Any,
        quantiles: Any,
    ) -> None:
        """A live answer goes into the monitoring record when asked (``record``, the spec's
        ``record_live``); its observations are actuals when the spec says so. Blocking."""
        policy = self.monitor.policy(served.name)
        if record or policy.record_live:
            self.monitor.record_live(
                served.name, served.version, served.schema, answer.cutoff, answer.columns, coverage, quantiles
            )
        if query is not None and query.observations is not None and policy.observations_are_actuals:
            try:
                self.monitor.ingest(served.name, query.observations, source="observations")
            except ServiceError as exc:  # the forecast stands; the actuals are logged as not taken
                log.warning("observations of %s not taken as actuals: %s", served.name, exc.detail)

    async def run_blocking(self, func: Any, *args: Any, timeout: float | None = None) -> Any:
        """Run CPU work (sktime, matplotlib) on the worker threads, never on the event loop."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, func, *args)
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise NotReady(
                f"the live forecast took longer than {timeout:g}s (setting FORECAST_LIVE_PREDICT_TIMEOUT); "
                "retry later or ask for less",
                retry_after=5,
            ) from None


def make_executor(settings: Settings) -> JobExecutor:
    """Local processes by default; a Dask distributed cluster when its address is set."""
    if settings.dask_scheduler:
        from service.jobs.executors.dask import DaskExecutor  # needs the scale extra: only when asked for

        if settings.resolved_jobs_url.startswith("sqlite"):
            log.warning(
                "FORECAST_DASK_SCHEDULER is set with a SQLite job store: workers on other hosts cannot "
                "reach it; set FORECAST_JOBS_URL to a Postgres URL"
            )
        return DaskExecutor(settings.dask_scheduler)
    return LocalProcessExecutor()


def worker_context(settings: Settings, registry: Registry) -> WorkerContext:
    """What this process's job workers need to reach the same stores."""
    return WorkerContext(
        jobs_url=settings.resolved_jobs_url,
        registry_path=str(registry.root),
        data_dir=str(settings.data_dir.resolve()),
        owner=process_owner(),
        sql_url=settings.sql_url,
        signing_key=settings.signing_key.get_secret_value() if settings.signing_key else None,
        sources_root=str(settings.sources_root.resolve()) if settings.sources_root else None,
        shard_series=registry.shard_series,
    )
