"""Uploads, appends and deletes of datasets: parse, find the column roles and the time
frequency, validate, store a version."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from service.datasets.store import Roles
from service.errors import Conflict, InvalidInput, LimitExceeded, NotFound, ServiceError
from service.forecasting.specs import ModelSpec, read_spec
from service.tables import TableLimits, TimeFreq, read_upload, resolve_freq


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
        max_columns=s.max_columns_per_table, max_rows=s.max_rows_per_request, max_decoded_bytes=s.max_decoded_bytes
    )


def _check_rows(runtime: Any, frame: Any) -> None:
    limit = runtime.settings.max_rows_per_request
    if len(frame) > limit:
        raise LimitExceeded(f"the upload has {len(frame)} rows; at most {limit} (FORECAST_MAX_ROWS_PER_REQUEST)")


def upload(
    runtime: Any,
    name: str,
    body: bytes,
    content_type: str | None,
    given: dict[str, Any],
    model: str | None,
    missing: str = "error",
) -> dict[str, Any]:
    frame = read_upload(body, content_type, limits=_limits(runtime))
    _check_rows(runtime, frame)
    roles, frequency = _roles(runtime, name, given, model, frame)
    runtime.datasets.put(
        name, frame, roles, missing=missing, frequency=frequency.to_dict() if frequency is not None else None
    )
    return runtime.datasets.describe(name)


def append(runtime: Any, name: str, body: bytes, content_type: str | None, missing: str = "error") -> dict[str, Any]:
    runtime.datasets.describe(name)  # 404 before parsing
    frame = read_upload(body, content_type, limits=_limits(runtime))
    _check_rows(runtime, frame)
    runtime.datasets.append(name, frame, missing=missing)
    return runtime.datasets.describe(name)


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
