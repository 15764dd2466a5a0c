"""The `forecast-service` command: serve, the registry and data folders offline, or a
running server over HTTP (``--url`` / ``FORECAST_URL``).

Imports are deferred to the commands that need them: ``models list`` reads the registry
folder without importing sktime, FastAPI or the job store (well under a second).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import TyperException

from service import __version__
from service.errors import ServiceError

console = Console()
err_console = Console(stderr=True)
SHORT_ID = 8  # job ids are shown by their first 8 characters; any unique prefix of 4+ is accepted
FULL_ID = 32
_INTEGER = re.compile(r"^-?\d+$")


def _error(message: str) -> None:
    """One line on stderr, whatever the terminal's width; the message is text, not markup."""
    err_console.print(Text.assemble(("error:", "red"), " ", " ".join(message.split())), soft_wrap=True)


def _warn(message: str) -> None:
    err_console.print(Text.assemble(("warning:", "yellow"), " ", " ".join(message.split())), soft_wrap=True)


def _die(message: str) -> NoReturn:
    _error(message)
    raise typer.Exit(code=2)


def _client_error(exc: Exception) -> str | None:
    """The one-line message of an error of the HTTP client (remote mode), if it is one."""
    client = sys.modules.get("service.client")
    if client is not None and isinstance(exc, client.ForecastServiceError):
        return f"{exc.status} {exc.title}: {exc.detail}"
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return f"cannot reach the server ({type(exc).__name__}: {exc}); check --url / FORECAST_URL"
    return None


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
            known = _client_error(exc)
            if known is not None:
                _error(known)
                raise typer.Exit(code=2) from None
            if ctx.params.get("debug"):
                raise
            _error(f"{type(exc).__name__}: {exc} (forecast-service --debug ... shows the traceback)")
            raise typer.Exit(code=2) from None


app = typer.Typer(
    help="Serve sktime forecasters from a versioned model registry.", no_args_is_help=True, cls=OneLineErrors
)
models_app = typer.Typer(help="Inspect the registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")
datasets_app = typer.Typer(help="Datasets: upload, list, describe.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
jobs_app = typer.Typer(help="Jobs in the job store (backtests, retrains).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"forecast-service {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit")
    ] = False,
) -> None:
    """Serve sktime forecasters from a versioned model registry."""


RegistryOption = Annotated[
    Path | None, typer.Option("--registry", "-r", help="Registry folder (default: FORECAST_REGISTRY or ./models)")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Datasets and job store folder (default: FORECAST_DATA_DIR or ./data)"),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="FORECAST_URL",
        help="Drive a running server at this URL instead of the local folders (FORECAST_URL)",
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="FORECAST_API_KEY", help="API key for --url (FORECAST_API_KEY)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON on stdout instead of a table")]


def _settings(registry: Path | None = None, data_dir: Path | None = None, **overrides: Any) -> Any:
    from service.settings import Settings

    values = {k: v for k, v in overrides.items() if v is not None}
    if registry is not None:
        values["registry"] = registry
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**values)


def _registry(registry: Path | None, warn_missing: bool = True, sktime: bool = True) -> Any:
    """The registry folder; ``sktime``: this command unpickles or fits (silence sktime's notices)."""
    from service.registry.store import Registry

    if sktime:
        from service.observability import quiet_sktime_warnings

        quiet_sktime_warnings()
    settings = _settings(registry)
    if warn_missing and not Path(settings.registry).is_dir():
        _warn(
            f"the registry folder {Path(settings.registry).resolve()} does not exist "
            "(give --registry DIR or set FORECAST_REGISTRY)"
        )
    return Registry(settings.registry, signing_key=settings.signing_key_bytes, shard_series=settings.shard_series)


def _data_dir(data_dir: Path | None, registry: Path | None = None) -> Path:
    """The data folder (datasets, job store); a warning when it does not exist."""
    folder = Path(_settings(registry, data_dir).data_dir)
    if not folder.is_dir():
        _warn(
            f"the data folder {folder.resolve()} does not exist (give --data-dir DIR or set FORECAST_DATA_DIR; "
            "a server must use the same folder to see these datasets and jobs)"
        )
    return folder


@contextmanager
def _remote(url: str, api_key: str | None) -> Iterator[Any]:
    from service.client import Client

    with Client(url, api_key=api_key, timeout=60.0) as client:
        yield client


def _fail(exc: ServiceError) -> NoReturn:
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


def _print_json(doc: Any) -> None:
    console.print_json(json.dumps(doc, default=str))


def _print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], whole: Sequence[str] = ()) -> None:
    """A table on stdout that never cuts a value: in a terminal wide enough, a rich table
    whose ``whole`` columns (names, ids) are never wrapped or shortened and the others fold;
    elsewhere (a pipe, a file, a narrow terminal) plain columns separated by two spaces."""
    cells = [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    kept = sum(w for c, w in zip(columns, widths, strict=True) if c in whole)
    if console.is_terminal and kept + 3 * len(columns) + 8 * (len(columns) - len(whole)) <= console.width:
        table = Table()
        for column, width in zip(columns, widths, strict=True):
            if column in whole:
                table.add_column(column, no_wrap=True, min_width=width)
            else:
                table.add_column(column, overflow="fold")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    for row in [list(columns), *cells]:
        line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        console.print(Text(line), soft_wrap=True, highlight=False)


def _floats(text: str | None) -> list[float] | None:
    return [float(v) for v in text.split(",") if v.strip()] if text else None


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def _time_value(text: str) -> str | int:
    return int(text) if _INTEGER.match(text.strip()) else text.strip()


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "text/csv"
    if suffix in (".parquet", ".pq"):
        return "application/vnd.apache.parquet"
    if suffix == ".json":
        return "application/json"
    _die(f"{path}: use a .csv, .parquet or .json file")


def _read_table(path: Path) -> Any:
    """A table file (CSV, Parquet or a column-oriented JSON table) as a DataFrame."""
    from service.tables import read_upload

    if not path.is_file():
        _die(f"no such file: {path}")
    return read_upload(path.read_bytes(), _content_type(path), what=path.name)


def train_models(registry: Any, names: list[str], promote: bool = True, datasets: Any = None) -> dict[str, int]:
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

            published[name] = train_and_publish(registry, name, promote=promote, progress=advance, datasets=datasets)
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
    if not Path(settings.registry).is_dir():
        logging.getLogger("service").warning(
            "the registry folder %s does not exist (give --registry DIR or set FORECAST_REGISTRY)",
            Path(settings.registry).resolve(),
        )
    if settings.insecure and settings.api_keys is None and settings.api_keys_file is None:
        logging.getLogger("service").warning(
            "INSECURE: serving on %s without API keys: anyone who can reach it can publish, retrain and read",
            settings.host,
        )
    _check_port_free(settings.host, settings.port)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: make that a clean exit 0, at
    # once (an interpreter exit would join the pools of a fit still running in a thread)
    signal.signal(signal.SIGTERM, lambda *_: _exit_now())
    if train_missing or settings.train_missing:
        from service.forecasting.training import models_without_versions

        reg = _registry(settings.registry)
        reg.cleanup_staging()
        # a spec's first_start: background (fits of minutes) trains once the server is ready
        missing, later = models_without_versions(reg, "wait"), models_without_versions(reg, "background")
        later = later if settings.train_background else []
        if workers > 1:  # each worker would train: here, once, every one of them
            missing, later = missing + later, []
        # a person at a terminal: progress bars, then serve
        if missing and (sys.stderr.isatty() or workers > 1):
            err_console.print(f"training {len(missing)} model(s) without a version: {', '.join(missing)}")
            try:
                train_models(reg, missing)
            except ServiceError as exc:
                _fail(exc)
            missing = []
        if later:
            err_console.print(f"training {', '.join(later)} in the background once the server is ready")
        if missing or later:  # containers, CI: serve /healthz at once, train in the background (/readyz 503)
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
        _exit_now()


def _exit_now() -> NoReturn:
    """Exit 0 with the logs flushed, without the interpreter's exit: it would join every
    thread and process pool still at work (a first-start fit in the background)."""
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


# ---------------------------------------------------------------------- models
def _local_models(reg: Any) -> list[dict[str, Any]]:
    """What `GET /v1/models` lists, from the folder: the spec document as written (not
    built: no sktime import) and the manifest of the production (else latest) version."""
    rows = []
    for name in reg.list_models():
        raw: dict[str, Any] = {}
        try:
            raw = reg.read_spec_raw(name) or {}
        except ServiceError as exc:
            _warn(f"{name}: {exc.detail}")
        versions = reg.list_versions(name)
        production = None
        try:
            production = reg.read_aliases(name).get("production")
        except ServiceError as exc:
            _warn(f"{name}: {exc.detail}")
        manifest: dict[str, Any] = {}
        if versions:
            try:
                manifest = reg.read_manifest(name, production or versions[-1])
            except ServiceError as exc:
                _warn(f"{name}: {exc.detail}")
        data: dict[str, Any] = raw["data"] if isinstance(raw.get("data"), dict) else {}
        kind = manifest.get("kind") or raw.get("kind") or (("panel" if data.get("keys") else "single") if raw else None)
        rows.append(
            {
                "name": name,
                "description": str(raw.get("description") or ""),
                "kind": kind,
                "freq": manifest.get("freq") or raw.get("freq"),
                "series_count": (manifest.get("series") or {}).get("count"),
                "production_version": production,
                "versions": versions,
                "last_trained": manifest.get("created_at"),
                "headline_metric": (manifest.get("metrics") or {}).get("headline"),
            }
        )
    return rows


@models_app.command("list")
def models_list(
    registry: RegistryOption = None, url: UrlOption = None, api_key: KeyOption = None, as_json: JsonOption = False
) -> None:
    """Models with their kind, frequency, series and production version."""
    if url:
        with _remote(url, api_key) as client:
            rows = client.models()
    else:
        rows = _local_models(_registry(registry, sktime=False))
    if as_json:
        _print_json(rows)
        return
    _print_table(
        ["name", "kind", "freq", "series", "production", "last trained", "description"],
        [
            [
                m["name"],
                m.get("kind"),
                m.get("freq"),
                m.get("series_count"),
                m.get("production_version"),
                (m.get("last_trained") or "")[:19],
                m.get("description"),
            ]
            for m in rows
        ],
        whole=["name"],
    )


@models_app.command("put")
def models_put(
    name: str,
    file: Annotated[Path, typer.Argument(help="The spec: a model.yaml (YAML) or .json file")],
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only check the spec (and its dataset); write nothing")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create or replace a model's spec, checked against the allow-list and its dataset."""
    if not file.is_file():
        _die(f"no such file: {file}")
    if url:
        with _remote(url, api_key) as client:
            doc = client.put_spec(name, file, dry_run=dry_run)
    else:
        from service.api import catalog

        local = _local_upload(data_dir, registry)
        kind = "application/json" if file.suffix.lower() == ".json" else "application/yaml"
        try:
            _, spec, check = catalog.put_spec(local.registry, local.datasets, name, file.read_bytes(), kind, dry_run)
        except ServiceError as exc:
            _fail(exc)
        doc = {"name": name, "spec": spec, "check": check, "dry_run": dry_run}
    if as_json:
        _print_json(doc)
        return
    checked = doc.get("check") or {}
    verdict = "checked" if checked.get("checked") else str(checked.get("reason") or "not checked against data")
    typer.echo(f"{name}: spec {'checked, not written (dry run)' if dry_run else 'stored'} ({verdict})")


@models_app.command("show")
def models_show(name: str, registry: RegistryOption = None, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Spec, versions, aliases and the latest manifest of one model, as JSON."""
    if url:
        with _remote(url, api_key) as client:
            detail = client.model(name)
            versions = [v["version"] for v in detail.get("versions", [])]
            detail["latest_manifest"] = client.manifest(name, versions[-1]) if versions else None
        _print_json(detail)
        return
    reg = _registry(registry, sktime=False)
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
    _print_json(doc)


# ---------------------------------------------------------------------- train, publish, promote
PromoteOption = Annotated[
    bool | None,
    typer.Option(
        "--promote/--no-promote",
        help="Point 'production' at the new version (default: yes, unless the spec's promotion policy is 'never')",
    ),
]


def _promotes(reg: Any, name: str, promote: bool | None) -> bool:
    """`train` and `publish` agree: promote unless told not to or the spec says ``never``."""
    if promote is not None:
        return promote
    try:
        raw = reg.read_spec_raw(name) or {}
    except ServiceError:
        return True
    policy: dict[str, Any] = raw["promotion"] if isinstance(raw.get("promotion"), dict) else {}
    return policy.get("policy") != "never"


def _published(name: str, version: int, promoted: bool, as_json: bool) -> None:
    if as_json:
        _print_json({"model": name, "version": version, "promoted": promoted})
    else:
        typer.echo(
            f"{name} v{version} published" + (" and promoted to production" if promoted else " (production unchanged)")
        )


@app.command()
def train(
    name: str,
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    promote: PromoteOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fit a model's spec on its declared data (an uploaded dataset: from --data-dir) and publish
    a new version (here, on the registry folder)."""
    from service.datasets.store import DatasetStore

    reg = _registry(registry)
    datasets = DatasetStore(_settings(registry, data_dir).data_dir)
    promoted = _promotes(reg, name, promote)
    try:
        version = train_models(reg, [name], promote=promoted, datasets=datasets)[name]
    except ServiceError as exc:
        _fail(exc)
    _published(name, version, promoted, as_json)


@app.command()
def publish(
    name: str,
    file: Annotated[
        Path, typer.Argument(help="A fitted sktime forecaster: sktime save() .zip or a joblib/pickle file")
    ],
    registry: RegistryOption = None,
    horizon: Annotated[int | None, typer.Option(help="Default horizon (default: the spec's, or 12)")] = None,
    promote: PromoteOption = None,
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
    description: Annotated[str | None, typer.Option(help="What this version is (kept in its manifest)")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A label for this version (repeatable)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Publish a forecaster fitted elsewhere (e.g. in a notebook) as a new version."""
    from service.forecasting.publishing import publish_fitted, read_fitted

    targets = [t.strip() for given in target for t in given.split(",") if t.strip()] if target else None
    reg = _registry(registry, warn_missing=False)  # publishing makes the folder
    promoted = _promotes(reg, name, promote)
    try:
        forecaster = read_fitted(file)
        version = publish_fitted(
            reg,
            name,
            forecaster,
            horizon=horizon,
            time=time_column,
            targets=targets,
            description=description,
            tags=tag or (),
        )
        if promoted:
            reg.set_alias(name, "production", version)
    except ServiceError as exc:
        _fail(exc)
    _published(name, version, promoted, as_json)


@app.command()
def promote(
    name: str,
    version: int,
    alias: Annotated[str, typer.Option(help="Alias to move")] = "production",
    registry: RegistryOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Point an alias at a version (promotion and rollback)."""
    if url:
        with _remote(url, api_key) as client:
            aliases = client.set_alias(name, alias, version)["aliases"]
    else:
        try:
            aliases = _registry(registry).set_alias(name, alias, version)
        except ServiceError as exc:
            _fail(exc)
    typer.echo(f"{name}: {alias} -> v{version}  ({json.dumps(aliases)})")


# ---------------------------------------------------------------------- export
@app.command()
def export(
    name: str,
    target: Annotated[Path, typer.Argument(metavar="DIR", help="A new or empty folder for the MLflow model")],
    version: Annotated[int | None, typer.Option(help="Version number (default: the alias)")] = None,
    alias: Annotated[str, typer.Option(help="Alias to export when no --version is given")] = "production",
    registry: RegistryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON")] = False,
) -> None:
    """Write a version as an MLflow model (sktime's mlflow flavour): `mlflow models serve -m DIR`
    then serves its forecast."""
    from service.forecasting.mlflow_export import export_mlflow

    reg = _registry(registry)
    try:
        chosen = reg.resolve(name, version, None if version is not None else alias)
        written = export_mlflow(reg, name, chosen, target)
    except ServiceError as exc:
        _fail(exc)
    if as_json:
        _print_json(written)
        return
    methods = ", ".join(written["predict_method"])
    typer.echo(f"{name} v{chosen} -> {target} (MLflow model, sktime flavour; pyfunc predicts: {methods})")


# ---------------------------------------------------------------------- predict
@app.command()
def predict(
    name: str,
    registry: RegistryOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    horizon: Annotated[int | None, typer.Option(help="Steps ahead (default: the model's horizon)")] = None,
    fh: Annotated[str | None, typer.Option(help="Relative steps, comma-separated: 1,3,12")] = None,
    timestamps: Annotated[
        str | None, typer.Option(help="Absolute times, comma-separated: 1961-03-01,1961-05-01")
    ] = None,
    series: Annotated[
        list[str] | None, typer.Option("--series", help="A series, key values joined by '/' (repeatable)")
    ] = None,
    coverage: Annotated[str | None, typer.Option(help="Interval coverages, comma-separated: 0.8,0.95")] = None,
    quantiles: Annotated[str | None, typer.Option(help="Quantile levels, comma-separated: 0.1,0.5,0.9")] = None,
    observations: Annotated[
        Path | None, typer.Option(help="New actuals after the cutoff: a CSV, Parquet or JSON table file")
    ] = None,
    exogenous: Annotated[
        Path | None, typer.Option(help="Future exogenous values: a CSV, Parquet or JSON table file")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Version (default: the production alias)")] = None,
    alias: Annotated[str | None, typer.Option(help="Alias (default: production)")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the table to a .csv or .parquet file")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Forecasts of a version: CSV on stdout, a CSV/Parquet file (--output), or JSON (--json)."""
    import pandas as pd

    if output is not None and output.suffix.lower() not in (".csv", ".parquet", ".pq"):
        _die(f"--output {output}: use a .csv or .parquet file")
    steps = [int(v) for v in fh.split(",") if v.strip()] if fh else None
    times = [_time_value(v) for v in timestamps.split(",") if v.strip()] if timestamps else None
    observed = _read_table(observations) if observations is not None else None
    future = _read_table(exogenous) if exogenous is not None else None
    if url:
        with _remote(url, api_key) as client:
            frame = client.predict(
                name,
                horizon=horizon,
                fh=steps,
                timestamps=times,
                series=[s.split("/") for s in series] if series else None,
                coverage=_floats(coverage),
                quantiles=_floats(quantiles),
                observations=observed,
                exogenous=future,
                version=version,
                alias=alias,
                time_as="wire",
            )
            doc = {**frame.attrs, "freq": client.schema(name, frame.attrs["version"]).get("freq")}
    else:
        doc, columns = _local_predict(
            name, registry, horizon, steps, times, series, coverage, quantiles, observed, future, version, alias
        )
        frame = pd.DataFrame(columns)
    if output is not None:
        if output.suffix.lower() == ".csv":
            frame.to_csv(output, index=False, lineterminator="\n")
        else:
            frame.to_parquet(output, index=False)
        err_console.print(f"{doc['model']} v{doc['version']}: {len(frame)} rows written to {output}")
    if as_json:
        from service.tables import frame_to_wire

        _print_json({**doc, "forecast": frame_to_wire(frame)})
    elif output is None:
        sys.stdout.write(frame.to_csv(index=False, lineterminator="\n"))


def _local_predict(
    name: str,
    registry: Path | None,
    horizon: int | None,
    steps: list[int] | None,
    times: list[Any] | None,
    series: list[str] | None,
    coverage: str | None,
    quantiles: str | None,
    observed: Any,
    future: Any,
    version: int | None,
    alias: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The answer this registry's version gives, computed here as the server computes it."""
    from service.forecasting.served import Limits, PredictQuery, load_served
    from service.forecasting.shards import ShardCache
    from service.schemas.predict import normalize_series
    from service.tables import format_time

    settings = _settings(registry)
    reg = _registry(registry)
    number = reg.resolve(name, version=version, alias=alias)
    served = load_served(reg, name, number, ShardCache(settings.shard_cache_bytes))
    query = PredictQuery(
        horizon=horizon,
        fh=tuple(steps) if steps is not None else None,
        timestamps=tuple(str(t) if served.freq else t for t in times) if times is not None else None,
        series=tuple(normalize_series(s.split("/"), served.schema.keys) for s in series) if series else None,
        coverage=tuple(sorted(set(_floats(coverage) or ()))),
        quantiles=tuple(sorted(set(_floats(quantiles) or ()))),
        exogenous=future,
        observations=observed,
    )
    limits = Limits(settings.max_horizon, settings.max_series_per_request, settings.max_rows_per_request)
    answer = served.answer(query, limits)
    doc = {"model": name, "version": number, "cutoff": format_time(answer.cutoff), "freq": served.freq}
    return doc, answer.columns


# ---------------------------------------------------------------------- backtest, retrain
@app.command()
def backtest(
    name: str,
    registry: RegistryOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
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
    as_json: JsonOption = False,
) -> None:
    """Backtest a version (sktime evaluate) with a progress bar and a table of results;
    offline on the registry folder, or as a job of the server at --url."""
    names = tuple(_names(metrics) or ())
    if url:
        shape = {
            "type": splitter,
            "horizon": horizon,
            "folds": folds if splitter == "folds" else None,
            "initial_window": initial_window,
            "window_length": window_length,
            "step": step,
        }
        with _remote(url, api_key) as client:
            job = client.backtest(
                name,
                {k: v for k, v in shape.items() if v is not None},
                strategy=strategy,
                metrics=list(names),
                coverage=_floats(coverage),
                quantiles=_floats(quantiles),
                version=version,
                alias=alias,
                wait=True,
                check=False,
            )
        if job["status"] != "succeeded":
            _die(f"backtest job {job['id'][:SHORT_ID]} {job['status']}: {job.get('error')}")
        result = job["result"]
    else:
        result = _local_backtest(
            name,
            registry,
            version,
            alias,
            splitter,
            horizon,
            folds,
            initial_window,
            window_length,
            step,
            strategy,
            names,
            coverage,
            quantiles,
        )
    if as_json:
        _print_json(result)
        return
    table = Table("fold", "cutoff", *names, "fit s", "predict s")
    for fold in result["folds"]:
        table.add_row(
            str(fold["fold"]),
            str(fold["cutoff"]),
            *[_fmt(fold["metrics"][m]) for m in names],
            f"{fold['fit_seconds']:.3f}",
            f"{fold['predict_seconds']:.3f}",
        )
    table.add_row("mean", "", *[_fmt(result["aggregate"][m]) for m in names], "", "", style="bold")
    console.print(table)


def _local_backtest(
    name: str,
    registry: Path | None,
    version: int | None,
    alias: str | None,
    splitter: str,
    horizon: int,
    folds: int | None,
    initial_window: int | None,
    window_length: int | None,
    step: int | None,
    strategy: str,
    metrics: tuple[str, ...],
    coverage: str | None,
    quantiles: str | None,
) -> dict[str, Any]:
    from service.forecasting.backtest import BacktestRequest, SplitterSpec, run_backtest, validate_request
    from service.forecasting.shards import load_fitted
    from service.tables import Schema, to_sktime

    reg = _registry(registry)
    try:
        number = reg.resolve(name, version=version, alias=alias)
        loaded = load_fitted(reg, name, number)
        schema = Schema.from_dict(loaded.manifest["schema"])
        y, x = to_sktime(reg.read_training(name, number, loaded.manifest), schema)
        request = BacktestRequest(
            splitter=SplitterSpec(splitter, horizon, initial_window, window_length, step, folds),  # type: ignore[arg-type]
            strategy=strategy,  # type: ignore[arg-type]
            metrics=metrics,
            coverage=tuple(_floats(coverage) or ()),
            quantiles=tuple(_floats(quantiles) or ()),
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
    return dict(result)


def _job_store(registry: Path | None, data_dir: Path | None = None) -> Any:
    from service.jobs.store import JobStore

    return JobStore(_settings(registry, data_dir).resolved_jobs_url)


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


@app.command()
def retrain(
    name: str,
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for it with a progress bar (locally: run it here)")
    ] = False,
    promote: Annotated[str | None, typer.Option(help="auto | always | never (default: the spec's policy)")] = None,
    dataset_version: Annotated[str | None, typer.Option(help="Dataset version (default: latest)")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key, same job")] = None,
) -> None:
    """Queue a retrain in the job store (a running server picks it up), or run it with --wait;
    with --url, the server at that address queues and runs it."""
    if url:
        with _remote(url, api_key) as client:
            job = client.retrain(
                name,
                promote=promote,
                dataset_version=dataset_version,
                idempotency_key=idempotency_key,  # type: ignore[arg-type]
            )
            err_console.print(f"retrain job {job['id'][:SHORT_ID]} ({job['status']})")
            if wait:
                job = client.wait(job, check=False)
        _print_json(job)
        if wait and job["status"] != "succeeded":
            raise typer.Exit(code=1)
        return
    from service.jobs.executors.local import LocalProcessExecutor
    from service.jobs.runner import JobRunner
    from service.jobs.submit import submit_retrain
    from service.runtime import worker_context

    settings = _settings(registry, data_dir)
    reg = _registry(registry)
    _data_dir(data_dir, registry)
    store = _job_store(registry, data_dir)
    body = {k: v for k, v in {"promote": promote, "dataset_version": dataset_version}.items() if v is not None}
    try:
        job, created = submit_retrain(store, reg, name, body, idempotency_key, sources_root=settings.sources_root)
    except ServiceError as exc:
        _fail(exc)
    err_console.print(f"{'queued' if created else 'existing'} retrain job {job.id[:SHORT_ID]} ({job.status})")
    if not wait:
        _print_json(job.public())
        return
    runner = JobRunner(
        store,
        LocalProcessExecutor(),
        worker_context(settings, reg),
        max_concurrent=1,
        stale_after=settings.job_stale_seconds,
    )
    job = _follow(store, job.id, runner)
    _print_json(job.public())
    if job.status != "succeeded":
        raise typer.Exit(code=1)


@app.command()
def leaderboard(
    name: str,
    candidates: Annotated[
        Path,
        typer.Option(
            help="YAML or JSON: a list of candidates ({name, forecaster, intervals, engine}), or the whole "
            "leaderboard body ({candidates, splitter, metrics, rank_by, ...})",
            exists=True,
            dir_okay=False,
        ),
    ],
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    horizon: Annotated[
        int | None, typer.Option(help="Steps forecast in each fold (default: the file's, or 12)")
    ] = None,
    folds: Annotated[int | None, typer.Option(help="How many last windows (default: the file's, or 3)")] = None,
    rank_by: Annotated[str | None, typer.Option(help="The metric that ranks (default: the spec's gate metric)")] = None,
    publish_best: Annotated[
        bool, typer.Option("--publish-best", help="Retrain with the winner through the promotion gate")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Backtest candidate forecaster specs on the model's data and rank them (with the
    seasonal-naive baseline and each one's forecast value added); offline on the registry
    folder with a progress bar, or as a job of the server at --url."""
    from service.documents import load_document

    doc = load_document(candidates.read_bytes(), "json" if candidates.suffix == ".json" else "yaml", str(candidates))
    body = dict(doc) if isinstance(doc, dict) else {"candidates": doc}
    splitter = dict(body.get("splitter") or {"type": "folds"})
    splitter.update({k: v for k, v in {"horizon": horizon, "folds": folds}.items() if v is not None})
    body["splitter"] = splitter
    if rank_by is not None:
        body["rank_by"] = rank_by
    publish = "best" if publish_best else None
    if url:
        with _remote(url, api_key) as client:
            job = client.leaderboard(name, body, publish=publish, wait=True, check=False)
    else:
        job = _local_leaderboard(name, body, publish, registry, data_dir)
    if job["status"] != "succeeded":
        _die(f"leaderboard job {job['id'][:SHORT_ID]} {job['status']}: {job.get('error')}")
    result = job["result"]
    if as_json:
        _print_json(result)
        return
    metrics = result["metrics"]
    table = Table("rank", "candidate", *metrics, f"FVA {result['rank_by']} %", "series won", "status")
    for row in result["candidates"]:
        fva = (row.get("fva") or {}).get(result["rank_by"])
        table.add_row(
            str(row["rank"] or "-"),
            row["name"] + (" (baseline)" if row.get("baseline") else ""),
            *[_fmt((row.get("aggregate") or {}).get(m)) for m in metrics],
            _fmt(fva),
            str(result["wins"].get(row["name"], 0)),
            row["status"] + (f": {row['error'][:60]}" if row.get("error") else ""),
        )
    console.print(table)
    if result.get("published"):
        published = result["published"]
        console.print(
            f"published {published['candidate']} as v{published['version']}: {published['decision']} "
            f"({published['reason']})"
        )


def _local_leaderboard(
    name: str, body: dict[str, Any], publish: str | None, registry: Path | None, data_dir: Path | None
) -> dict[str, Any]:
    from pydantic import ValidationError

    from service.datasets.store import DatasetStore
    from service.jobs.executors.local import LocalProcessExecutor
    from service.jobs.retrain import model_spec
    from service.jobs.runner import JobRunner
    from service.jobs.submit import submit_leaderboard
    from service.runtime import worker_context
    from service.schemas.jobs import LeaderboardBody

    settings = _settings(registry, data_dir)
    reg = _registry(registry)
    folder = _data_dir(data_dir, registry)
    try:
        parsed = LeaderboardBody.model_validate(body)
    except ValidationError as exc:
        _die(f"the candidates file is not a leaderboard: {exc}")
    store = _job_store(registry, data_dir)
    datasets = DatasetStore(folder)
    try:
        spec = model_spec(reg, datasets, name, "run a leaderboard")
        request = parsed.to_request(spec.table_schema().keys, spec.promotion.metric)
        job = submit_leaderboard(
            store,
            reg,
            datasets,
            name,
            request,
            publish=publish,
            promote=parsed.promote,
            dataset_version=parsed.dataset_version,
            sql_url=settings.sql_url,
            sources_root=settings.sources_root,
        )
    except ServiceError as exc:
        _fail(exc)
    err_console.print(f"leaderboard job {job.id[:SHORT_ID]} of {name}: {len(request.candidates)} candidates")
    runner = JobRunner(
        store,
        LocalProcessExecutor(),
        worker_context(settings, reg),
        max_concurrent=1,
        stale_after=settings.job_stale_seconds,
    )
    return dict(_follow(store, job.id, runner).public())


# ---------------------------------------------------------------------- monitoring
LIVE_METRICS = ("MAE", "RMSE", "MAPE", "sMAPE", "MASE", "WAPE")


def _local_runtime(registry: Path | None, data_dir: Path | None, warn_missing: bool = True) -> Any:
    """What `service.api.uploads` and the monitoring endpoints need of a runtime (settings,
    registry, datasets, the monitor on this data folder's record and job stores), built
    here as the server builds it."""
    from types import SimpleNamespace

    from service.datasets.store import DatasetStore
    from service.jobs.monitor import Monitor
    from service.records.store import RecordStore

    settings = _settings(registry, data_dir)
    reg = _registry(registry, warn_missing=warn_missing)
    datasets = DatasetStore(settings.data_dir)
    monitor = Monitor(
        reg,
        RecordStore(settings.data_dir),
        _job_store(registry, data_dir),
        datasets,
        max_rows=settings.record_max_rows,
        max_age_days=settings.record_max_age_days,
    )
    return SimpleNamespace(settings=settings, registry=reg, datasets=datasets, monitor=monitor)


@app.command()
def monitoring(
    name: str,
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    version: Annotated[int | None, typer.Option(help="One version (default: every version with actuals)")] = None,
    series: Annotated[
        list[str] | None, typer.Option("--series", help="A series, key values joined by '/' (repeatable)")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only actuals at or after this time")] = None,
    window: Annotated[int | None, typer.Option(help="Times in the rolling window (default: the spec's)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Live accuracy per version over the rolling window, against what its backtest
    promised, and the drift policy's state; offline on the local folders, or from --url."""
    if url:
        with _remote(url, api_key) as client:
            doc = client.monitoring(name, version=version, series=series or None, since=since, window=window)
    else:
        from service.schemas.predict import normalize_series

        runtime = _local_runtime(registry, data_dir)
        _data_dir(data_dir, registry)
        try:
            keys = runtime.monitor.schema(name).keys
            chosen = tuple(normalize_series(s.split("/"), keys) for s in series) if series else None
            doc = runtime.monitor.report(
                name,
                version=version,
                series=chosen,
                since=_time_value(since) if since is not None else None,
                window=window,
            )
        except ServiceError as exc:
            _fail(exc)
    if as_json:
        _print_json(doc)
        return
    _print_monitoring(doc)


def _print_monitoring(doc: dict[str, Any]) -> None:
    policy = doc["policy"]
    metric = policy.get("metric") or "MASE"
    rows = []
    for entry in doc["versions"]:
        overall = entry.get("overall") or {}
        window = entry["window"]
        rows.append(
            [
                entry["version"],
                "yes" if entry["production"] else "",
                window["points"],
                f"{window['start']} .. {window['end']}" if window["start"] is not None else None,
                *[_fmt(overall.get(m)) for m in LIVE_METRICS],
                _fmt((entry.get("promised") or {}).get(metric)),
                _fmt((entry.get("drift") or {}).get(metric)),
            ]
        )
    columns = ["version", "production", "points", "window", *LIVE_METRICS, f"promised {metric}", f"drift {metric}"]
    _print_table(columns, rows, whole=["version", "window"])
    line = f"policy: {policy['state']} (action {policy['action']})"
    if policy.get("declared") and policy["state"] not in ("none", "no_promise"):
        line += (
            f"; v{policy.get('version')} {metric} live {_fmt(policy.get('live'))}, limit {_fmt(policy.get('limit'))}"
            f" = promised {_fmt(policy.get('promised'))} x (1 + {policy.get('degrade')}),"
            f" {policy.get('points')} points (needs {policy.get('min_actuals')})"
        )
    if policy.get("job"):
        line += f"; retrain job {str(policy['job'])[:SHORT_ID]}"
    typer.echo(line)
    typer.echo(f"{doc['actuals']} actual rows stored; window {doc['window']} times")


@app.command()
def actuals(
    name: str,
    file: Annotated[Path, typer.Argument(help="A CSV, Parquet or column-oriented JSON table of actuals")],
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a model's actuals: joined to every recorded forecast and scored; prints how many
    met one, the anomalies and the drift policy's state (a breach with action retrain
    queues the retrain)."""
    if not file.is_file():
        _die(f"no such file: {file}")
    if url:
        with _remote(url, api_key) as client:
            doc = client.send_actuals(name, file)
    else:
        from service.api import uploads

        runtime = _local_runtime(registry, data_dir)
        try:
            doc = uploads.actuals(runtime, name, file.read_bytes(), _content_type(file))
        except ServiceError as exc:
            _fail(exc)
    if as_json:
        _print_json(doc)
        return
    missed = doc["unmatched"]
    typer.echo(
        f"{name}: {doc['rows']} rows, {doc['matched']} matched a recorded forecast ({doc['forecasts_met']} "
        f"forecast-actual pairs); {missed['rows']} unmatched ({missed['unknown_series']} of unknown series, "
        f"{missed['uncovered_times']} at times no forecast covers)"
    )
    typer.echo(f"anomalies: {doc['anomalies']} outside the {doc['coverage']:g} interval")
    drift = doc["drift"]
    line = f"drift: {drift['state']} (action {drift['action']})"
    if drift.get("ratio") is not None:
        line += f"; {drift.get('metric')} live / promised = {_fmt(drift['ratio'])}"
    if drift.get("job"):
        state = "queued" if drift.get("triggered") else "existing"
        line += f"; {state} retrain job {str(drift['job'])[:SHORT_ID]}"
    typer.echo(line)


# ---------------------------------------------------------------------- jobs
def _job_rows(jobs: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            j["id"][:SHORT_ID],
            j["kind"],
            j["status"],
            f"{j['progress'].get('done') or 0}/{j['progress'].get('total') or '?'}",
            j["model"],
            (j.get("created_at") or "")[:19],
        ]
        for j in jobs
    ]


def _one_job_id(job_id: str, candidates: Callable[[], Sequence[str]]) -> str:
    """A whole job id, or the one job whose id starts with ``job_id`` (4+ characters)."""
    if len(job_id) >= FULL_ID:
        return job_id
    if len(job_id) < 4:
        _die(f"job id {job_id!r} is too short: give at least 4 characters")
    found = [i for i in candidates() if i.startswith(job_id)]
    if not found:
        _die(f"no job with an id starting {job_id!r}")
    if len(found) > 1:
        _die(f"job id {job_id!r} matches {len(found)} jobs ({', '.join(i[:12] for i in found[:5])}); give more of it")
    return found[0]


def _local_jobs(registry: Path | None, data_dir: Path | None) -> Any:
    """The local job store, or None (with a warning) when the data folder does not exist."""
    folder = _data_dir(data_dir, registry)
    settings = _settings(registry, data_dir)
    if settings.jobs_url is None and not folder.is_dir():
        return None
    return _job_store(registry, data_dir)


@jobs_app.command("list")
def jobs_list(
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    model: Annotated[str | None, typer.Option(help="Only this model")] = None,
    kind: Annotated[str | None, typer.Option(help="backtest | retrain")] = None,
    status: Annotated[str | None, typer.Option(help="queued | running | succeeded | failed | cancelled")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Jobs, newest first (ids shortened to 8 characters; any unique prefix works in `jobs show`)."""
    if url:
        with _remote(url, api_key) as client:
            jobs = client.jobs(model, kind, status, limit=limit)[:limit]
    else:
        store = _local_jobs(registry, data_dir)
        jobs = [j.public() for j in store.list(model, kind, status, limit)] if store is not None else []
    if as_json:
        _print_json(jobs)
        return
    _print_table(["id", "kind", "status", "done", "model", "created"], _job_rows(jobs), whole=["id", "model"])


@jobs_app.command("show")
def jobs_show(
    job_id: str,
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    follow: Annotated[bool, typer.Option("--follow", help="Show a progress bar until it finishes")] = False,
) -> None:
    """One job with progress and result (JSON); the id may be shortened to a unique prefix."""
    if url:
        with _remote(url, api_key) as client:
            whole = _one_job_id(job_id, lambda: [j["id"] for j in client.jobs(limit=1000)])
            _print_json(client.wait(whole, check=False) if follow else client.job(whole))
        return
    store = _local_jobs(registry, data_dir)
    if store is None:
        _die(f"no job with id {job_id!r}: there is no job store")
    whole = _one_job_id(job_id, lambda: [j.id for j in store.list(limit=100_000)])
    try:
        job = _follow(store, whole) if follow else store.get(whole)
    except ServiceError as exc:
        _fail(exc)
    _print_json(job.public())


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str,
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Cancel a queued or running job (a running job's worker is stopped by the server that runs it)."""
    if url:
        with _remote(url, api_key) as client:
            whole = _one_job_id(job_id, lambda: [j["id"] for j in client.jobs(limit=1000)])
            job = client.cancel(whole)
    else:
        store = _local_jobs(registry, data_dir)
        if store is None:
            _die(f"no job with id {job_id!r}: there is no job store")
        whole = _one_job_id(job_id, lambda: [j.id for j in store.list(limit=100_000)])
        try:
            job = store.request_cancel(whole).public()
        except ServiceError as exc:
            _fail(exc)
    err_console.print(f"{job['kind']} job {job['id'][:SHORT_ID]} of {job['model']}: {job['status']}")
    _print_json(job)


# ---------------------------------------------------------------------- datasets
def _local_upload(data_dir: Path | None, registry: Path | None) -> Any:
    """What `service.api.uploads` needs of a runtime, for this process's folders (the
    monitor too: rows appended to a dataset are actuals of the models that read it)."""
    return _local_runtime(registry, data_dir, warn_missing=False)


@datasets_app.command("put")
def datasets_put(
    name: str,
    file: Annotated[Path, typer.Argument(help="A CSV, Parquet or column-oriented JSON table")],
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    time_column: Annotated[str | None, typer.Option("--time", help="Time column")] = None,
    targets: Annotated[str | None, typer.Option(help="Target columns, comma-separated")] = None,
    keys: Annotated[str | None, typer.Option(help="Key columns, top level first, comma-separated")] = None,
    exogenous: Annotated[str | None, typer.Option(help="Exogenous columns, comma-separated")] = None,
    freq: Annotated[str | None, typer.Option(help="Period frequency (M, Q, D, ...); none = integer time")] = None,
    model: Annotated[str | None, typer.Option(help="Take the column roles from this model's spec")] = None,
    append: Annotated[bool, typer.Option("--append", help="Append rows (same key+time replaces) instead")] = False,
    missing: Annotated[
        str, typer.Option(help="Missing values: error (default), drop, ffill or interpolate, per series")
    ] = "error",
    as_json: JsonOption = False,
) -> None:
    """Upload a table as a new version of a dataset (or --append rows to it)."""
    if not file.is_file():
        _die(f"no such file: {file}")
    if url:
        with _remote(url, api_key) as client:
            if append:
                doc = client.append(name, file, missing=missing)
            else:
                doc = client.upload_dataset(
                    name,
                    file,
                    time=time_column,
                    targets=_names(targets),
                    keys=_names(keys),
                    exogenous=_names(exogenous),
                    freq=freq,
                    model=model,
                    missing=missing,
                )
    else:
        from service.api import uploads

        runtime = _local_upload(data_dir, registry)
        body, kind = file.read_bytes(), _content_type(file)
        roles = {"time": time_column, "targets": _names(targets), "keys": _names(keys), "exogenous": _names(exogenous)}
        try:
            if append:
                doc = uploads.append(runtime, name, body, kind, missing=missing)
            else:
                doc = uploads.upload(runtime, name, body, kind, {**roles, "freq": freq}, model, missing=missing)
        except ServiceError as exc:
            _fail(exc)
    if as_json:
        _print_json(doc)
        return
    latest = doc["versions"][-1] if doc.get("versions") else {}
    typer.echo(
        f"{name}: version {doc['latest']} ({latest.get('rows')} rows, {latest.get('series')} series, "
        f"{latest.get('start')} .. {latest.get('end')})"
    )


@datasets_app.command("list")
def datasets_list(
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Datasets with their latest version, rows, series and time range."""
    if url:
        with _remote(url, api_key) as client:
            docs = client.datasets()
    else:
        from service.datasets.store import DatasetStore

        store = DatasetStore(_data_dir(data_dir, registry))
        docs = [store.describe(n) for n in store.names()]
    if as_json:
        _print_json(docs)
        return
    rows = []
    for doc in docs:
        latest: dict[str, Any] = next((v for v in doc.get("versions", []) if v.get("version") == doc.get("latest")), {})
        rows.append(
            [
                doc["name"],
                doc.get("latest"),
                len(doc.get("versions", [])),
                latest.get("rows"),
                latest.get("series"),
                latest.get("start"),
                latest.get("end"),
            ]
        )
    _print_table(["name", "latest", "versions", "rows", "series", "start", "end"], rows, whole=["name", "latest"])


@datasets_app.command("show")
def datasets_show(
    name: str,
    registry: RegistryOption = None,
    data_dir: DataDirOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Roles, versions, series count and time range of one dataset (JSON)."""
    if url:
        with _remote(url, api_key) as client:
            doc = client.dataset(name)
    else:
        from service.datasets.store import DatasetStore

        try:
            doc = DatasetStore(_data_dir(data_dir, registry)).describe(name)
        except ServiceError as exc:
            _fail(exc)
    _print_json(doc)


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return "-" if value is None else f"{value:.4g}"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
