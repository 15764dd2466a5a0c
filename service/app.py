"""`create_app(settings)`: routers, the error table, lifespan (scan + watch the registry)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service import __version__
from service.api import openapi, problems
from service.api.compression import GzipLargeAnswers
from service.api.limits import BodyLimits
from service.api.routes import (
    backtests,
    datasets,
    exports,
    forecasters,
    health,
    jobs,
    kserve,
    leaderboards,
    mlflow,
    models,
    monitoring,
    predict,
    ui,
)
from service.api.uploads import sweep_spools
from service.forecasting.allowlist import allowed_classes
from service.forecasting.training import models_without_versions, train_missing
from service.jobs.scheduler import run_scheduler
from service.observability import RequestObserver, access_log_queue, quiet_sktime_warnings
from service.runtime import Runtime
from service.serving.fastlane import PredictFastLane
from service.settings import Settings

log = logging.getLogger(__name__)


def prepare(runtime: Runtime) -> None:
    """First start: train models that have no version yet (if asked), then load the registry.
    Models whose spec says ``first_start: background`` (fits of minutes) are trained after
    that, once the server is ready: /readyz does not wait for them, and until the first
    version of one is published its predicts answer 503 saying it is training."""
    if runtime.settings.train_missing:
        runtime.training = True
        try:
            train_missing(runtime.registry, runtime.settings.sources_root)
        finally:
            runtime.training = False
    runtime.cache.refresh()
    # what start-up loaded (sktime, the versions) lives as long as the process: keep it out of
    # the collector's full passes, which otherwise pause every thread for ~100-200 ms
    gc.collect()
    gc.freeze()
    if not runtime.settings.train_missing or not runtime.settings.train_background or runtime.stop.is_set():
        return
    runtime.first_training = frozenset(models_without_versions(runtime.registry, "background"))
    try:
        if train_missing(runtime.registry, runtime.settings.sources_root, background=True):
            runtime.cache.refresh()  # serve them now, not at the next poll
    finally:
        runtime.first_training = frozenset()


async def in_daemon_thread(func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` in a daemon thread of its own, awaited. Unlike ``asyncio.to_thread``
    (the loop's default executor, joined when ``asyncio.run`` ends), nothing waits for it
    at shutdown: a SIGTERM during the first start's training stops the server at once (a
    publish cut short leaves only a staging folder, removed at the next start)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def target() -> None:
        result, error = None, None
        try:
            result = func(*args)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=getattr(func, "__name__", "work"), daemon=True).start()
    return await done


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    quiet_sktime_warnings()
    # import every allow-listed library module now, before any thread starts: a scan that
    # unpickles while another thread imports sklearn fails with 'partially initialized module'
    allowed_classes()
    runtime = Runtime.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.stop.clear()
        await asyncio.to_thread(runtime.registry.cleanup_staging)
        await asyncio.to_thread(sweep_spools, runtime)
        initial = asyncio.create_task(in_daemon_thread(prepare, runtime))
        watcher = asyncio.create_task(runtime.cache.watch(settings.poll_interval, runtime.stop))
        runner = asyncio.create_task(runtime.runner.run(runtime.stop))
        tasks = [initial, watcher, runner]
        if settings.scheduler:
            tasks.append(
                asyncio.create_task(
                    run_scheduler(
                        runtime.registry,
                        runtime.jobs,
                        settings.schedule_poll_seconds,
                        runtime.stop,
                        runtime.runner.wake,
                    )
                )
            )
        if settings.access_log:
            access_log_queue.start()  # access lines are written by a thread, not the event loop
        try:
            yield
        finally:
            if settings.access_log:
                access_log_queue.stop()  # the requests are over: every line is written now
            runtime.stop.set()
            runtime.runner.wake()
            # running jobs first: they must never be left `running` (marked interrupted)
            await asyncio.to_thread(runtime.runner.shutdown)
            # then the loops, briefly: a scan or first-start training in a thread is not waited for
            done, _ = await asyncio.wait(tasks, timeout=2.0)
            for task in done:
                with contextlib.suppress(Exception):
                    task.result()
            runtime.jobs.dispose()
            runtime.executor.shutdown(wait=False, cancel_futures=True)
            runtime.ingest.shutdown(wait=False, cancel_futures=True)

    # the docs' Swagger UI and ReDoc assets are served by the app itself (fastapi-offline), no CDN
    app = FastAPIOffline(
        title="forecast-service",
        version=__version__,
        description="Serve sktime forecasters from a versioned model registry: single, panel and "
        "hierarchical forecasts, intervals and quantiles, hot-reloaded versions.",
        lifespan=lifespan,
        generate_unique_id_function=openapi.operation_id,  # stable ids: listModels, predict, ...
        swagger_ui_parameters={"validatorUrl": None},  # no call to the public validator either
    )
    app.state.runtime = runtime
    problems.install(app)
    openapi.install(app)
    app.add_middleware(
        PredictFastLane,
        responses=runtime.responses,
        cache=runtime.cache,
        keys=runtime.keys,
        metrics=runtime.metrics,
        max_body_bytes=settings.max_body_bytes,
        limits=runtime.limits,
    )
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_body_bytes,
        pause_seconds=settings.body_timeout,
        upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(GzipLargeAnswers)  # outside the fast lane: its cached answers are compressed too
    app.add_middleware(RequestObserver, metrics=runtime.metrics, access_log=settings.access_log)
    app.include_router(predict.router)  # first: the hot route is matched first
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(backtests.router)
    app.include_router(leaderboards.router)
    app.include_router(monitoring.router)
    app.include_router(jobs.router)
    app.include_router(exports.router)
    app.include_router(datasets.router)
    app.include_router(forecasters.router)
    app.include_router(kserve.router)
    app.include_router(mlflow.router)
    app.include_router(ui.router)
    return app
