"""Prometheus metrics, structured JSON logs and request ids.

One pure ASGI middleware times every request, gives it an ``X-Request-ID`` (echoed when
the client sends a sane one), logs one JSON line (request id, method, route, status,
duration, model, version — never headers or bodies) and feeds the latency histogram. A
client that disconnects before the response starts is counted as status 499, not 500.
While an app runs (its lifespan), access records are made, formatted and written by a
listener thread (`AccessLogQueue`), not on the event loop: the loop only queues their fields.
Library warnings are log records too (`route_warnings`): one line each, once per kind.
"""

from __future__ import annotations

import collections
import functools
import logging
import logging.handlers
import os
import queue
import random
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
access_log = logging.getLogger("service.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """A random version-4 UUID as 32 hex digits, as ``uuid.uuid4().hex`` spells it, from the
    process's PRNG: an id for correlating lines, not a secret, and a urandom call per request
    was a tenth of a fast-path answer's time."""
    return f"{(random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the response started
LOG_RECORD_FIELDS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class Metrics:
    """The service's metrics, on a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "forecast_http_request_duration_seconds",
            "HTTP request latency by route template, method and status",
            ["route", "method", "status"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.predictions = Counter(
            "forecast_predictions_total",
            "Forecast responses served, by model and version",
            ["model", "version"],
            registry=r,
        )
        self.fast_path = Counter(
            "forecast_fast_path_total",
            "Predict answers by path: cache (serialised answer), fast (precomputed), live (sktime)",
            ["model", "path"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "forecast_job_duration_seconds",
            "Job run time by kind and outcome",
            ["kind", "status"],
            registry=r,
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.jobs = Counter("forecast_jobs_total", "Finished jobs by kind and outcome", ["kind", "status"], registry=r)
        self.load_seconds = Histogram(
            "forecast_model_load_seconds",
            "Time to load a version (verify, unpickle, prepare the fast path)",
            ["model"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.load_failures = Counter(
            "forecast_model_load_failures_total", "Versions refused on load", ["model"], registry=r
        )
        self.loaded_versions = Gauge(
            "forecast_loaded_versions", "Versions held in memory per model", ["model"], registry=r
        )
        self.response_cache_bytes = Gauge(
            "forecast_response_cache_bytes",
            "Bytes the response cache holds (payloads, keys, overhead); at most FORECAST_RESPONSE_CACHE_BYTES",
            registry=r,
        )
        self.response_cache_entries = Gauge(
            "forecast_response_cache_entries", "Answers held in the response cache", registry=r
        )

        self.live_metric = Gauge(
            "forecast_live_metric",
            "Live accuracy over the monitoring window: forecasts met by their actuals",
            ["model", "version", "metric"],
            registry=r,
        )
        self.anomalies = Counter(
            "forecast_anomalies", "Actuals outside the served interval, as they arrived", ["model"], registry=r
        )
        self.drift_breach = Gauge(
            "forecast_drift_breach",
            "1 while the production version's live metric breaches its policy",
            ["model"],
            registry=r,
        )

    def live_metric_seen(self, model: str, version: int, metric: str, value: float | None) -> None:
        self.live_metric.labels(model, str(version), metric).set(float("nan") if value is None else value)

    def anomalies_seen(self, model: str, count: int) -> None:
        self.anomalies.labels(model).inc(count)

    def drift_seen(self, model: str, state: str) -> None:
        self.drift_breach.labels(model).set(1.0 if state == "breach" else 0.0)

    def watch_responses(self, size: Callable[[], float], entries: Callable[[], float]) -> None:
        """Read the response cache's counted bytes and its entries at each scrape."""
        self.response_cache_bytes.set_function(size)
        self.response_cache_entries.set_function(entries)

    def model_loaded(self, model: str, _version: int, seconds: float, error: str | None) -> None:
        self.load_seconds.labels(model).observe(seconds)
        if error is not None:
            self.load_failures.labels(model).inc()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # taken along by a queued record (formatted on the listener thread), else the context's
        request_id = record.__dict__.get("request_id") or request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in LOG_RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "info", json_lines: bool = True) -> None:
    """Root logging to stderr; uvicorn's loggers go through it (its access log is ours), and
    so do library warnings (`route_warnings`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(json_lines))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    route_warnings()


class _Batches:
    """The access log's queue: a deque the event loop appends to (no lock, no wake-up) and the
    listener drains every `FLUSH_SECONDS`. A `queue.Queue` wakes the listener per record: one
    GIL hand-over per request, which cost more throughput than writing the line on the loop."""

    FLUSH_SECONDS = 0.005  # short batches: the listener never holds the GIL for long at a time
    MAX_QUEUED = 100_000

    def __init__(self) -> None:
        # bounded: a stalled log sink drops the oldest lines instead of growing without end
        self.items: collections.deque[Any] = collections.deque(maxlen=self.MAX_QUEUED)

    def put_nowait(self, item: Any) -> None:
        self.items.append(item)

    def get(self, block: bool = True) -> Any:
        while True:
            try:
                return self.items.popleft()
            except IndexError:
                if not block:
                    raise queue.Empty from None
                time.sleep(self.FLUSH_SECONDS)


class _Write(logging.Handler):
    """On the listener thread: a queued access entry becomes the record `logging` would have
    made on the loop (its time, thread and request id), handled by the access logger as usual
    (its filters and handlers, then its ancestors')."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger

    def handle(self, record: Any) -> bool:  # type: ignore[override]
        created, thread, thread_name, request_id, extra = record
        try:
            made = self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0, "request", (), None, extra=extra)
            made.created, made.msecs = created, (created - int(created)) * 1000
            made.thread, made.threadName, made.request_id = thread, thread_name, request_id
            self.logger.handle(made)
        except Exception:  # one bad line must not end the listener (every later line would be lost)
            logging.getLogger(__name__).exception("an access log line could not be written")
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - `handle` does the work
        self.handle(record)


class AccessLogQueue:
    """The access log off the event loop: while started, `RequestObserver` appends each
    request's fields to a queue (no LogRecord, no handler, no lock on the loop) and a
    `QueueListener` thread makes the records and hands them to the access logger (formatting
    and writing there). A `QueueHandler` would still build and handle the record on the loop:
    that was half of what the access log cost. Started and stopped with an app's lifespan;
    apps running at once in one process share it (counted); `stop` writes what is queued
    before it returns."""

    def __init__(self, logger: logging.Logger = access_log) -> None:
        self.logger = logger
        self._lock = threading.Lock()
        self._users = 0
        self._queue: _Batches | None = None
        self._listener: logging.handlers.QueueListener | None = None

    @property
    def running(self) -> bool:
        return self._queue is not None

    def log(self, extra: dict[str, Any]) -> None:
        """One access line: queued while running, else logged here and now."""
        records = self._queue
        if records is None:
            self.logger.info("request", extra=extra)
            return
        thread = threading.current_thread()
        records.put_nowait((time.time(), thread.ident, thread.name, request_id_var.get(), extra))

    def start(self) -> None:
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            records = _Batches()
            self._listener = logging.handlers.QueueListener(records, _Write(self.logger))
            self._listener.start()
            self._queue = records

    def stop(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._listener is None:
                return
            self._queue = None  # lines from now on are written where they are logged
            self._listener.stop()  # writes every queued line, then the thread ends
            self._listener = None


access_log_queue = AccessLogQueue()


def _formatter(json_lines: bool) -> logging.Formatter:
    return JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class RequestObserver:
    """Request id, one access log line and the latency histogram for every HTTP request."""

    TIMERS = 4096  # histogram children kept (route, method, status): a label lookup per request costs more

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self._timers: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if incoming and REQUEST_ID.fullmatch(incoming) else new_request_id()
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})
        status = 500
        client_gone = answered = False  # answered: a response started while the client was there
        started = time.perf_counter()

        async def watched_receive() -> Message:
            nonlocal client_gone
            message = await receive()
            client_gone = client_gone or message["type"] == "http.disconnect"
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], not client_gone
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, watched_receive, send_with_id)
        except ClientDisconnect:
            client_gone = True  # nobody to answer and nothing failed: no traceback, no 500
        finally:
            if client_gone and not answered:
                status = CLIENT_CLOSED_REQUEST
            duration = time.perf_counter() - started
            state = scope.get("state") or {}
            # the matched route's template; the fast lane names the route it answers for
            route = getattr(scope.get("route"), "path", None) or state.get("route") or "unmatched"
            timer = self._timers.get((route, scope["method"], status))
            if timer is None:
                if len(self._timers) >= self.TIMERS:
                    self._timers.clear()
                timer = self._timers[(route, scope["method"], status)] = self.metrics.request_seconds.labels(
                    route, scope["method"], str(status)
                )
            timer.observe(duration)
            if self.access_log and access_log.isEnabledFor(logging.INFO):
                access_log_queue.log(
                    {
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(duration * 1000, 3),
                        "model": state.get("model"),
                        "version": state.get("version"),
                    }
                )
            request_id_var.reset(token)


# ----------------------------------------------------------------------------- library warnings
WARNINGS_LOGGER = "py.warnings"  # the logger `logging.captureWarnings` uses
WARNING_KIND_PREFIX = 60  # a warning's kind: category, module and the start of its message
FALSE_WORDS = frozenset({"0", "false", "f", "no", "n", "off"})

# (category, message start, module): library warnings that are known, understood and not
# the reader's business. sktime 1.2's remember_data notice fires in `BaseForecaster.__init__`,
# so on every clone (one per series of a panel fit, per fold of a backtest), before a clone's
# config is copied over: no ``set_config`` silences it (the service does set remember_data
# explicitly, `specs.build_estimator`).
QUIET_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, "The default of config ``remember_data`` will change", "sktime.forecasting.base._base"),
)


def quiet_sktime_warnings() -> None:
    """Silence the library warnings in `QUIET_WARNINGS` and route every other one through the
    logger (`route_warnings`). A filter alone does not hold: sktime's ForecastingHorizon
    leaves a ``default`` FutureWarning filter in front of all others each time it converts
    times (``sktime.utils.warnings._SuppressWarningPattern``), so the router drops them too."""
    for category, message, module in QUIET_WARNINGS:
        warnings.filterwarnings(
            "ignore", message=re.escape(message), category=category, module=re.escape(module) + r"\Z"
        )
    route_warnings()


def route_warnings() -> None:
    """Library warnings become log records of ``py.warnings`` (JSON lines under
    `configure_logging`), one line each and once per kind per process, never the raw
    multi-line block; where nobody configured logging (the CLI, a job worker forked from
    the server), in the format FORECAST_LOG_JSON asks for."""
    if warnings.showwarning is not _router:
        _router.previous = warnings.showwarning
        warnings.showwarning = _router


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (rich swaps it during a progress bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class WarningRouter:
    """`warnings.showwarning` replacement: known noise dropped, each kind logged once."""

    def __init__(self) -> None:
        self.previous: Any = warnings.showwarning
        self.seen: set[tuple[str, str, str]] = set()
        self.lock = threading.Lock()
        self.fallback: logging.Handler | None = None

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if file is not None:  # a caller that names a stream wants the classic rendering there
            self.previous(message, category, filename, lineno, file, line)
            return
        text = str(message)
        module = module_of(filename)
        if any(
            issubclass(category, quiet) and text.startswith(start) and module == where
            for quiet, start, where in QUIET_WARNINGS
        ):
            return
        kind = (f"{category.__module__}.{category.__qualname__}", module, text[:WARNING_KIND_PREFIX])
        with self.lock:
            if kind in self.seen:
                return
            self.seen.add(kind)
        log = logging.getLogger(WARNINGS_LOGGER)
        if not log.isEnabledFor(logging.WARNING):
            return
        extra = {"category": category.__name__, "origin": module, "location": f"{filename}:{lineno}"}
        record = log.makeRecord(
            log.name, logging.WARNING, filename, lineno, " ".join(text.split()), (), None, extra=extra
        )
        if log.hasHandlers():
            log.handle(record)
        else:
            self._fallback().handle(record)

    def _fallback(self) -> logging.Handler:
        if self.fallback is None:
            handler = _StderrHandler()
            json_lines = os.environ.get("FORECAST_LOG_JSON", "true").strip().lower() not in FALSE_WORDS
            handler.setFormatter(_formatter(json_lines))
            self.fallback = handler
        return self.fallback


@functools.lru_cache(maxsize=512)
def module_of(filename: str) -> str:
    """The dotted name of the module a warning comes from (its file's stem if none is loaded)."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            return name
    return os.path.splitext(os.path.basename(filename))[0]


_router = WarningRouter()
