"""Uploads and appends: parse, find the column roles, validate, store a version."""

from __future__ import annotations

from typing import Any

from service.datasets.store import Roles
from service.errors import InvalidInput, LimitExceeded, NotFound, ServiceError
from service.forecasting.specs import read_spec
from service.tables import TableLimits, read_upload


def _roles(runtime: Any, name: str, given: dict[str, Any], model: str | None) -> Roles:
    if given.get("time") or given.get("targets"):
        return Roles.from_dict(given)
    if model is not None:
        spec = read_spec(runtime.registry, model)
        if spec is None:
            raise NotFound(f"model '{model}' has no spec to take column roles from", model=model)
        return Roles.from_schema(spec.table_schema())
    try:
        return runtime.datasets.roles(name)
    except NotFound:
        pass
    for candidate in runtime.registry.list_models():
        try:
            spec = read_spec(runtime.registry, candidate)
        except ServiceError:
            continue
        if spec is not None and spec.data.source.get("dataset") == name:
            return Roles.from_schema(spec.table_schema())
    raise InvalidInput(
        f"dataset '{name}' is new: give its columns (?time=...&targets=...&keys=...&freq=...) "
        "or ?model=NAME to take them from a model spec",
        field="time",
    )


def _limits(runtime: Any) -> TableLimits:
    s = runtime.settings
    return TableLimits(
        max_columns=s.max_columns_per_table, max_rows=s.max_rows_per_request, max_decoded_bytes=s.max_decoded_bytes
    )


def _check_rows(runtime: Any, frame: Any) -> None:
    limit = runtime.settings.max_rows_per_request
    if len(frame) > limit:
        raise LimitExceeded(f"the upload has {len(frame)} rows; at most {limit} (FORECAST_MAX_ROWS_PER_REQUEST)")


def upload(
    runtime: Any, name: str, body: bytes, content_type: str | None, given: dict[str, Any], model: str | None
) -> dict[str, Any]:
    frame = read_upload(body, content_type, limits=_limits(runtime))
    _check_rows(runtime, frame)
    roles = _roles(runtime, name, given, model)
    runtime.datasets.put(name, frame, roles)
    return runtime.datasets.describe(name)


def append(runtime: Any, name: str, body: bytes, content_type: str | None) -> dict[str, Any]:
    runtime.datasets.describe(name)  # 404 before parsing
    frame = read_upload(body, content_type, limits=_limits(runtime))
    _check_rows(runtime, frame)
    runtime.datasets.append(name, frame)
    return runtime.datasets.describe(name)
