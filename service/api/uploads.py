"""Uploads, appends and deletes of datasets: parse, find the column roles and the time
frequency, validate, store a version."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from service.datasets.store import Roles
from service.errors import Conflict, InvalidInput, InvalidTable, LimitExceeded, NotFound, ServiceError
from service.forecasting.specs import ModelSpec, read_spec
from service.tables import (
    PARQUET_TYPES,
    TableLimits,
    TimeFreq,
    check_columns,
    csv_header_width,
    read_upload,
    resolve_freq,
)

log = logging.getLogger(__name__)

CSV_TYPES = ("text/csv", "application/csv")
HEADER_PROBE = 8 * 2**20  # bytes of a CSV file read for its header check


def tmp_dir(runtime: Any) -> Path:
    """The datasets folder's own tmp area, where upload bodies are spooled."""
    folder = Path(runtime.datasets.root) / ".tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


SPOOL_PATTERN = "upload-*.body"
SPOOL_MAX_AGE = 3600.0  # seconds: older spools belong to no live upload (a body pauses at most FORECAST_BODY_TIMEOUT)


def sweep_spools(runtime: Any, max_age: float = SPOOL_MAX_AGE) -> list[Path]:
    """Remove upload bodies left in the tmp area by a process that died mid-upload (a crash
    skips the ``finally`` that removes them); recent ones may be another replica's upload."""
    removed = []
    cutoff = time.time() - max_age
    folder = Path(runtime.datasets.root) / ".tmp"
    try:
        for path in folder.glob(SPOOL_PATTERN):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
    except OSError as exc:  # a read-only or unreadable data folder: the server still starts and serves
        log.warning("upload spools not swept: %s", exc.strerror or type(exc).__name__)
    if removed:
        log.warning("removed %d upload spool file(s) left by an interrupted upload", len(removed))
    return removed


def read_body_file(runtime: Any, path: Path | bytes, content_type: str | None) -> pd.DataFrame:
    """An upload spooled to ``path``: CSV parsed from the file (its header record counted
    first), Parquet read memory-mapped (no copy of the file in memory; the footer checks of
    ``read_upload`` apply), JSON read whole, bounded by FORECAST_MAX_BODY_BYTES."""
    if isinstance(path, bytes):  # the CLI's in-process upload
        return read_upload(path, content_type, limits=_limits(runtime))
    kind = (content_type or "").split(";")[0].strip().lower()
    size = path.stat().st_size
    limits = _limits(runtime)
    if size and kind in CSV_TYPES:
        with path.open("rb") as f:
            head = f.read(HEADER_PROBE)
        if len(head) == HEADER_PROBE and b"\n" not in head and b"\r" not in head:
            raise LimitExceeded(
                f"the CSV header record is longer than {HEADER_PROBE} bytes", field="body", maximum=HEADER_PROBE
            )
        check_columns(csv_header_width(head), "body", limits.max_columns)
        try:  # never more rows than the limit (+1 to tell): a huge file of tiny rows is refused, not parsed
            return pd.read_csv(path, nrows=limits.max_rows + 1)
        except (ValueError, TypeError, pd.errors.ParserError) as exc:
            raise InvalidTable(f"the body cannot be read as {kind}: {exc}"[:500], field="body") from None
    if size and kind in PARQUET_TYPES:
        with pa.memory_map(str(path)) as mapped:
            return read_upload(mapped.read_buffer(), content_type, limits=limits)  # type: ignore[arg-type]
    limit = runtime.settings.max_body_bytes
    if size > limit:
        raise LimitExceeded(
            f"a JSON table upload is at most {limit} bytes (setting FORECAST_MAX_BODY_BYTES); "
            "send larger tables as CSV or Parquet",
            field="body",
            maximum=limit,
        )
    return read_upload(path.read_bytes(), content_type, limits=limits)


def _given_roles(given: dict[str, Any], frame: Any) -> tuple[Roles, TimeFreq | None]:
    """Roles from the query; the frequency given (a period frequency or a timestamp alias)
    or inferred from the time column (`resolve_freq`)."""
    roles = Roles.from_dict({**given, "freq": None})
    if roles.time not in frame.columns:  # the table check names the missing column
        return Roles.from_dict(given), None
    frequency = resolve_freq(frame[roles.time], given.get("freq"), roles.time)
    return replace(roles, freq=frequency.freq), frequency


def _roles(
    runtime: Any, name: str, given: dict[str, Any], model: str | None, frame: Any
) -> tuple[Roles, TimeFreq | None]:
    if given.get("time") or given.get("targets"):
        return _given_roles(given, frame)
    roles, spec = _known_roles(runtime, name, given, model)
    if spec is None or roles.freq is not None or "freq" in spec.model_fields_set or roles.time not in frame.columns:
        return roles, None
    # the spec leaves freq out (to its dataset): inferred from the times, as without roles
    frequency = resolve_freq(frame[roles.time], None, roles.time)
    return replace(roles, freq=frequency.freq), frequency


def _known_roles(runtime: Any, name: str, given: dict[str, Any], model: str | None) -> tuple[Roles, ModelSpec | None]:
    """The roles of the model spec ``model``, of the stored dataset, or of a spec that reads
    it; with the spec they came from (None: the stored dataset's)."""
    if model is not None:
        spec = read_spec(runtime.registry, model)
        if spec is None:
            raise NotFound(f"model '{model}' has no spec to take column roles from", model=model)
        return Roles.from_schema(spec.table_schema()), spec
    try:
        return runtime.datasets.roles(name), None
    except NotFound:
        pass
    for candidate in runtime.registry.list_models():
        try:
            found = read_spec(runtime.registry, candidate)
        except ServiceError:
            continue
        if found is not None and found.data.dataset == name and found.declares_roles:
            return Roles.from_schema(found.table_schema()), found
    raise InvalidInput(
        f"dataset '{name}' is new: give its columns (?time=...&targets=...&keys=...&freq=...) "
        "or ?model=NAME to take them from a model spec",
        field="time",
    )


def _limits(runtime: Any) -> TableLimits:
    s = runtime.settings
    return TableLimits(
        max_columns=s.max_columns_per_table, max_rows=s.max_upload_rows, max_decoded_bytes=s.max_decoded_bytes
    )


def _check_rows(runtime: Any, frame: Any) -> None:
    limit = runtime.settings.max_upload_rows
    if len(frame) > limit:
        raise LimitExceeded(f"the upload has more than {limit} rows, the most allowed (FORECAST_MAX_UPLOAD_ROWS)")


def upload(
    runtime: Any,
    name: str,
    body: Path | bytes,
    content_type: str | None,
    given: dict[str, Any],
    model: str | None,
    missing: str = "error",
) -> dict[str, Any]:
    frame = read_body_file(runtime, body, content_type)
    _check_rows(runtime, frame)
    roles, frequency = _roles(runtime, name, given, model, frame)
    runtime.datasets.put(
        name, frame, roles, missing=missing, frequency=frequency.to_dict() if frequency is not None else None
    )
    return runtime.datasets.describe(name)


def append(
    runtime: Any, name: str, body: Path | bytes, content_type: str | None, missing: str = "error"
) -> dict[str, Any]:
    runtime.datasets.describe(name)  # 404 before parsing
    frame = read_body_file(runtime, body, content_type)
    _check_rows(runtime, frame)
    runtime.datasets.append(name, frame, missing=missing)
    _appended_actuals(runtime, name, frame)
    return runtime.datasets.describe(name)


def _appended_actuals(runtime: Any, name: str, frame: pd.DataFrame) -> None:
    """Rows appended to a dataset are actuals of every model whose spec reads it. The append
    stands whatever they say to monitoring (a row it cannot score is logged, not refused)."""
    for model in readers(runtime, name):
        if model.endswith(".source") or not runtime.registry.list_versions(model):
            continue
        try:
            runtime.monitor.ingest(model, frame, source="dataset")
        except ServiceError as exc:
            log.warning("actuals of %s from dataset %s not taken: %s", model, name, exc.detail)


def actuals(runtime: Any, name: str, body: Path | bytes, content_type: str | None) -> dict[str, Any]:
    """``POST /v1/models/{name}/actuals``: a table of actuals for a model."""
    runtime.registry.require_model(name)  # 404 before parsing
    frame = read_body_file(runtime, body, content_type)
    _check_rows(runtime, frame)
    return runtime.monitor.ingest(name, frame, source="actuals")


def readers(runtime: Any, name: str) -> list[str]:
    """Models whose spec reads dataset ``name``, or whose versions name it as the snapshot
    of their declared source (``<model>.source``)."""
    models = runtime.registry.list_models()
    found = [name.removesuffix(".source")] if name.endswith(".source") and name[:-7] in models else []
    for candidate in models:
        try:
            spec = read_spec(runtime.registry, candidate)
        except ServiceError:
            continue  # a spec file that does not parse names no dataset anyone can train on
        if spec is not None and spec.data.source.get("dataset") == name and candidate not in found:
            found.append(candidate)
    return found


def delete(runtime: Any, name: str) -> None:
    """Remove a dataset no model reads (409 naming the models that do)."""
    runtime.datasets.describe(name)  # 404 first
    using = readers(runtime, name)
    if using:
        raise Conflict(
            f"dataset '{name}' is read by model(s) {using}: point their specs at another source, or delete them, "
            "before deleting it",
            dataset=name,
            models=using,
        )
    runtime.datasets.delete(name)
