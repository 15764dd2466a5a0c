"""The `forecast-service` command: serve, and the registry offline."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import TyperException

from service.errors import ServiceError
from service.forecasting.specs import read_spec

console = Console()
err_console = Console(stderr=True)


def _error(message: str) -> None:
    """One line on stderr, whatever the terminal's width; the message is text, not markup."""
    err_console.print(Text.assemble(("error:", "red"), " ", " ".join(message.split())), soft_wrap=True)


class OneLineErrors(TyperGroup):
    """Every error of a command is one line on stderr and exit code 2; ``--debug`` lets an
    unexpected one through with its traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click Context
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # exits, and usage errors shown by typer (exit 2)
            raise
        except ServiceError as exc:
            _error(exc.detail)
            raise typer.Exit(code=2) from None
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            _error(f"{type(exc).__name__}: {exc} (forecast-service --debug ... shows the traceback)")
            raise typer.Exit(code=2) from None


app = typer.Typer(
    help="Serve sktime forecasters from a versioned model registry.", no_args_is_help=True, cls=OneLineErrors
)
models_app = typer.Typer(help="Inspect the registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error")] = False,
) -> None:
    """Serve sktime forecasters from a versioned model registry."""


RegistryOption = Annotated[
    Path | None, typer.Option("--registry", "-r", help="Registry folder (default: FORECAST_REGISTRY or ./models)")
]


def _settings(registry: Path | None = None, **overrides: Any) -> Any:
    from service.settings import Settings

    values = {k: v for k, v in overrides.items() if v is not None}
    if registry is not None:
        values["registry"] = registry
    return Settings(**values)


def _registry(registry: Path | None) -> Any:
    from service.observability import quiet_sktime_warnings
    from service.registry.store import Registry

    quiet_sktime_warnings()
    settings = _settings(registry)
    return Registry(settings.registry, signing_key=settings.signing_key_bytes)


def _fail(exc: ServiceError) -> None:
    _error(exc.detail)
    raise typer.Exit(code=2)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
    )


def train_models(registry: Any, names: list[str], promote: bool = True) -> dict[str, int]:
    """Train and publish ``names`` with a progress bar (stages per model); ``promote``: point
    each one's ``production`` alias at its new version."""
    from service.forecasting.training import train_and_publish

    stages = ["loading data", "fitting", "publishing"]
    published = {}
    with _progress() as progress:
        overall = progress.add_task("training", total=len(names) * len(stages))
        for name in names:
            started = time.perf_counter()

            def advance(stage: str, _done: int, _total: int | None, name: str = name) -> None:
                progress.update(overall, description=f"{name}: {stage}")
                progress.advance(overall)

            published[name] = train_and_publish(registry, name, promote=promote, progress=advance)
            err_console.print(f"  {name}: v{published[name]} in {time.perf_counter() - started:.1f}s")
    return published


@app.command()
def serve(
    registry: RegistryOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (FORECAST_HOST, default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (FORECAST_PORT, default 8000)")] = None,
    train_missing: Annotated[
        bool, typer.Option("--train-missing", help="First train every model that has a spec but no version")
    ] = False,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Serve without API keys on a non-loopback address (never in production)")
    ] = False,
) -> None:
    """Serve the registry over HTTP (uvicorn)."""
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.observability import configure_logging

    try:
        settings = _settings(registry, host=host, port=port, insecure=insecure or None)
    except ValidationError as exc:
        _error(exc.errors()[0]["msg"].removeprefix("Value error, "))
        raise typer.Exit(code=2) from None
    configure_logging(settings.log_level, json_lines=settings.log_json)
    if settings.insecure and settings.api_keys is None and settings.api_keys_file is None:
        logging.getLogger("service").warning(
            "INSECURE: serving on %s without API keys: anyone who can reach it can publish, retrain and read",
            settings.host,
        )
    _check_port_free(settings.host, settings.port)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: make that a clean exit 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if train_missing or settings.train_missing:
        from service.forecasting.training import models_without_versions

        reg = _registry(settings.registry)
        reg.cleanup_staging()
        missing = models_without_versions(reg)
        # a person at a terminal: progress bars, then serve; --workers: here, once (each worker would train)
        if missing and (sys.stderr.isatty() or workers > 1):
            err_console.print(f"training {len(missing)} model(s) without a version: {', '.join(missing)}")
            try:
                train_models(reg, missing)
            except ServiceError as exc:
                _fail(exc)
        elif missing:  # containers, CI: serve /healthz at once, train in the background (/readyz 503 until done)
            settings = settings.model_copy(update={"train_missing": True})
    if workers > 1:
        err_console.print("[yellow]--workers > 1: each worker loads every model itself[/yellow]")
        _export_to_workers(settings)
        uvicorn.run("service.app:create_app", factory=True, workers=workers, **_uvicorn_options(settings))
    else:
        application = create_app(settings)
        config = uvicorn.Config(application, log_config=None, access_log=False, **_uvicorn_options(settings))
        BoundedShutdownServer(config, settings.shutdown_timeout + 5.0, application.state.runtime.runner).run()
        # in-flight sktime threads were given FORECAST_SHUTDOWN_TIMEOUT; do not wait for them
        # at interpreter exit (their answers have nowhere to go): exit now, cleanly
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _uvicorn_options(settings: Any) -> dict[str, Any]:
    """What both serving paths give uvicorn: bind address, timeouts, the connection limit."""
    from service.serving_protocol import protocol_factory

    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "http": protocol_factory(settings.header_timeout),
        "timeout_keep_alive": settings.keep_alive_timeout,  # typed int, used as a float (call_later)
        "limit_concurrency": settings.max_connections,
        "timeout_graceful_shutdown": int(settings.shutdown_timeout),
    }


def _export_to_workers(settings: Any) -> None:
    """uvicorn's workers import `create_app` afresh and build Settings from the environment:
    every setting given here (flags included) goes there as its FORECAST_* variable."""
    from pydantic import SecretStr

    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is not None:
            os.environ[f"FORECAST_{name.upper()}"] = (
                value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            )


class BoundedShutdownServer:
    """uvicorn's server, with a watchdog armed at the first SIGTERM/SIGINT: in-flight requests
    get the graceful timeout, cleanup a few seconds more, then the process exits (0) even
    if a sktime call or a database lock still holds a thread."""

    def __new__(cls, config: Any, limit: float, runner: Any) -> Any:
        import threading

        import uvicorn

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                if not self.should_exit:
                    watchdog = threading.Timer(limit, lambda: os._exit(0))
                    watchdog.daemon = True
                    watchdog.start()
                    # this process's jobs end now (failed: interrupted), not after the drain
                    threading.Thread(target=runner.shutdown, name="jobs-shutdown", daemon=True).start()
                super().handle_exit(sig, frame)

        return _Server(config)


def _check_port_free(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            _error(f"cannot bind {host}:{port}: {exc.strerror}")
            raise typer.Exit(code=2) from None


@models_app.command("list")
def models_list(registry: RegistryOption = None) -> None:
    """Models with their kind, versions and production version."""
    reg = _registry(registry)
    table = Table("name", "kind", "freq", "versions", "production", "description")
    for name in reg.list_models():
        spec = None
        try:
            spec = read_spec(reg, name)
        except ServiceError as exc:
            err_console.print(f"[yellow]{name}: {exc.detail}[/yellow]")
        versions = reg.list_versions(name)
        table.add_row(
            name,
            (spec.kind if spec else "") or "",
            (spec.freq if spec else "") or "",
            ", ".join(map(str, versions)) or "-",
            str(reg.read_aliases(name).get("production", "-")),
            (spec.description if spec else "")[:60],
        )
    console.print(table)


@models_app.command("show")
def models_show(name: str, registry: RegistryOption = None) -> None:
    """Spec, versions, aliases and the latest manifest of one model, as JSON."""
    reg = _registry(registry)
    try:
        reg.require_model(name)
        versions = reg.list_versions(name)
        doc = {
            "name": name,
            "spec": reg.read_spec_raw(name),
            "versions": versions,
            "aliases": reg.read_aliases(name),
            "latest_manifest": reg.read_manifest(name, versions[-1]) if versions else None,
        }
    except ServiceError as exc:
        _fail(exc)
    console.print_json(json.dumps(doc, default=str))


@app.command()
def train(
    name: str,
    registry: RegistryOption = None,
    promote: Annotated[bool, typer.Option(help="Point 'production' at the new version")] = True,
) -> None:
    """Fit a model's spec on its declared data and publish a new version."""
    reg = _registry(registry)
    try:
        version = train_models(reg, [name], promote=promote)[name]
    except ServiceError as exc:
        _fail(exc)
    if not promote:
        console.print(f"{name} v{version} published (production unchanged)")
    else:
        console.print(f"{name} v{version} published and promoted to production")


@app.command()
def publish(
    name: str,
    file: Annotated[
        Path, typer.Argument(help="A fitted sktime forecaster: sktime save() .zip or a joblib/pickle file")
    ],
    registry: RegistryOption = None,
    horizon: Annotated[int | None, typer.Option(help="Default horizon (default: the spec's, or 12)")] = None,
    promote: Annotated[bool, typer.Option(help="Point 'production' at the new version")] = False,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            help="Target column name(s), in order (comma-separated or repeated; default: the spec's, or the data's)",
        ),
    ] = None,
    time_column: Annotated[
        str | None, typer.Option("--time", help="Time column name (default: the spec's, or the data's, or 'time')")
    ] = None,
) -> None:
    """Publish a forecaster fitted elsewhere (e.g. in a notebook) as a new version."""
    from service.forecasting.publishing import publish_fitted, read_fitted

    targets = [t.strip() for given in target for t in given.split(",") if t.strip()] if target else None
    reg = _registry(registry)
    try:
        forecaster = read_fitted(file)
        version = publish_fitted(reg, name, forecaster, horizon=horizon, time=time_column, targets=targets)
        if promote:
            reg.set_alias(name, "production", version)
    except ServiceError as exc:
        _fail(exc)
    console.print(f"{name} v{version} published" + (" and promoted to production" if promote else ""))


@app.command()
def promote(
    name: str,
    version: int,
    alias: Annotated[str, typer.Option(help="Alias to move")] = "production",
    registry: RegistryOption = None,
) -> None:
    """Point an alias at a version (promotion and rollback)."""
    reg = _registry(registry)
    try:
        aliases = reg.set_alias(name, alias, version)
    except ServiceError as exc:
        _fail(exc)
    console.print(f"{name}: {alias} -> v{version}  ({json.dumps(aliases)})")


@app.command()
def backtest(
    name: str,
    registry: RegistryOption = None,
    version: Annotated[int | None, typer.Option(help="Version (default: the production alias)")] = None,
    alias: Annotated[str | None, typer.Option(help="Alias (default: production)")] = None,
    splitter: Annotated[str, typer.Option(help="expanding | sliding | folds")] = "folds",
    horizon: Annotated[int, typer.Option(help="Steps forecast in each fold")] = 12,
    folds: Annotated[int | None, typer.Option(help="folds: how many last windows")] = 3,
    initial_window: Annotated[int | None, typer.Option(help="expanding: first training window")] = None,
    window_length: Annotated[int | None, typer.Option(help="sliding: training window")] = None,
    step: Annotated[int | None, typer.Option(help="Steps between cutoffs (default: horizon)")] = None,
    strategy: Annotated[str, typer.Option(help="refit | update | no-update_params")] = "refit",
    metrics: Annotated[str, typer.Option(help="Comma-separated: MAE,RMSE,MAPE,sMAPE,MASE,WAPE,pinball,coverage")] = (
        "MAE,RMSE,MAPE,sMAPE,MASE,WAPE"
    ),
    coverage: Annotated[str | None, typer.Option(help="Comma-separated interval coverages")] = None,
    quantiles: Annotated[str | None, typer.Option(help="Comma-separated quantile levels")] = None,
) -> None:
    """Backtest a version offline (sktime evaluate) with a progress bar and a table of results."""
    from service.forecasting.backtest import BacktestRequest, SplitterSpec, run_backtest, validate_request
    from service.tables import Schema, to_sktime

    def floats(text: str | None) -> tuple[float, ...]:
        return tuple(float(v) for v in text.split(",")) if text else ()

    reg = _registry(registry)
    try:
        number = reg.resolve(name, version=version, alias=alias)
        loaded = reg.load(name, number)
        schema = Schema.from_dict(loaded.manifest["schema"])
        y, x = to_sktime(reg.read_training(name, number, loaded.manifest), schema)
        request = BacktestRequest(
            splitter=SplitterSpec(splitter, horizon, initial_window, window_length, step, folds),  # type: ignore[arg-type]
            strategy=strategy,  # type: ignore[arg-type]
            metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
            coverage=floats(coverage),
            quantiles=floats(quantiles),
        )
        total = validate_request(request, loaded.manifest["capabilities"], y, loaded.forecaster)
        with _progress() as progress:
            task = progress.add_task(f"{name} v{number}: folds", total=total)
            result, _ = run_backtest(
                loaded.forecaster,
                y,
                x,
                request,
                schema,
                on_progress=lambda done, _t: progress.update(task, completed=done),
            )
    except ServiceError as exc:
        _fail(exc)
    table = Table("fold", "cutoff", *request.metrics, "fit s", "predict s")
    for fold in result["folds"]:
        table.add_row(
            str(fold["fold"]),
            str(fold["cutoff"]),
            *[_fmt(fold["metrics"][m]) for m in request.metrics],
            f"{fold['fit_seconds']:.3f}",
            f"{fold['predict_seconds']:.3f}",
        )
    table.add_row("mean", "", *[_fmt(result["aggregate"][m]) for m in request.metrics], "", "", style="bold")
    console.print(table)


jobs_app = typer.Typer(help="Jobs in the job store (backtests, retrains).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


def _job_store(registry: Path | None) -> Any:
    from service.jobs.store import JobStore

    return JobStore(_settings(registry).resolved_jobs_url)


def _follow(store: Any, job_id: str, runner: Any = None, timeout: float = 3600.0) -> Any:
    """A progress bar until the job finishes; with ``runner``, this process runs it."""
    job = store.get(job_id)
    deadline = time.monotonic() + timeout
    with _progress() as progress:
        task = progress.add_task(f"{job.kind} {job.model}", total=job.total)
        while not job.finished and time.monotonic() < deadline:
            if runner is not None:
                runner.tick()
            time.sleep(0.3)
            job = store.get(job_id)
            progress.update(
                task, description=f"{job.kind} {job.model}: {job.stage}", completed=job.done, total=job.total
            )
    return job


def _print_job(job: Any) -> None:
    console.print_json(json.dumps(job.public(), default=str))


@app.command()
def retrain(
    name: str,
    registry: RegistryOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Run it here and wait, with a progress bar")] = False,
    promote: Annotated[str | None, typer.Option(help="auto | always | never (default: the spec's policy)")] = None,
    dataset_version: Annotated[str | None, typer.Option(help="Dataset version (default: latest)")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key, same job")] = None,
) -> None:
    """Queue a retrain in the job store (a running server picks it up), or run it with --wait."""
    from service.jobs.executors.local import LocalProcessExecutor
    from service.jobs.runner import JobRunner
    from service.jobs.submit import submit_retrain
    from service.runtime import worker_context

    settings = _settings(registry)
    reg = _registry(registry)
    store = _job_store(registry)
    body = {k: v for k, v in {"promote": promote, "dataset_version": dataset_version}.items() if v is not None}
    try:
        job, created = submit_retrain(store, reg, name, body, idempotency_key, sources_root=settings.sources_root)
    except ServiceError as exc:
        _fail(exc)
    err_console.print(f"{'queued' if created else 'existing'} retrain job {job.id} ({job.status})")
    if not wait:
        _print_job(job)
        return
    runner = JobRunner(
        store,
        LocalProcessExecutor(),
        worker_context(settings, reg),
        max_concurrent=1,
        stale_after=settings.job_stale_seconds,
    )
    job = _follow(store, job.id, runner)
    _print_job(job)
    if job.status != "succeeded":
        raise typer.Exit(code=1)


@jobs_app.command("list")
def jobs_list(
    registry: RegistryOption = None,
    model: Annotated[str | None, typer.Option(help="Only this model")] = None,
    kind: Annotated[str | None, typer.Option(help="backtest | retrain")] = None,
    status: Annotated[str | None, typer.Option(help="queued | running | succeeded | failed | cancelled")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
) -> None:
    """Jobs, newest first."""
    table = Table()
    table.add_column("id", no_wrap=True, min_width=32)  # whole, to paste into `jobs show`
    table.add_column("kind", no_wrap=True, min_width=8)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("done", no_wrap=True)
    table.add_column("model", overflow="fold")
    for job in _job_store(registry).list(model, kind, status, limit):
        table.add_row(job.id, job.kind, job.status, f"{job.done}/{job.total or '?'}", job.model)
    console.print(table)


@jobs_app.command("show")
def jobs_show(
    job_id: str,
    registry: RegistryOption = None,
    follow: Annotated[bool, typer.Option("--follow", help="Show a progress bar until it finishes")] = False,
) -> None:
    """One job with progress and result (JSON)."""
    store = _job_store(registry)
    try:
        job = _follow(store, job_id) if follow else store.get(job_id)
    except ServiceError as exc:
        _fail(exc)
    _print_job(job)


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return "-" if value is None else f"{value:.4g}"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
