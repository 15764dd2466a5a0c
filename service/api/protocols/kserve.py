"""KServe's time-series protocol over the served versions: a `ForecastRequest` becomes the same
`PredictQuery` our predict route builds, and the same `Answer` becomes a `ForecastResponse`.

Naming: a single-series model's input may have any name (it is echoed); a panel's or a
hierarchy's series is named by its key values joined by '/', top level first, e.g. ``T001`` or
``Food preparation/Hobs`` (``Food preparation/__total`` for an aggregate node). An input's
``series`` are actuals after the version's cutoff, used as `observations`: the forecast starts
one step after the last of them. A model with several targets takes
``multivariate_time_series`` inputs whose ``series`` hold one list of the targets' values (in
the model's target order) per time step; its forecasts have the same shape.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from starlette.responses import Response

from service.errors import InvalidInput
from service.forecasting.served import Answer, PredictQuery, ServedVersion
from service.schemas.kserve import ForecastRequest, Frequency, TimeSeriesInput, TimeSeriesType
from service.tables import encode_json, format_times, parse_times, quantile_column, wire_to_frame

PREFIX = "/v1/timeseries/"

MODEL_REF = re.compile(r"(?P<name>[^:@]+)(?::(?P<version>[0-9]{1,9})|@(?P<alias>[^:@]+))?")

PERIODS: dict[Frequency, str] = {
    Frequency.SECOND: "s",
    Frequency.SECOND_SHORT: "s",
    Frequency.MINUTE: "min",
    Frequency.MINUTE_SHORT: "min",
    Frequency.HOUR: "h",
    Frequency.HOUR_SHORT: "h",
    Frequency.DAY: "D",
    Frequency.DAY_SHORT: "D",
    Frequency.WEEK: "W",
    Frequency.WEEK_SHORT: "W",
    Frequency.MONTH: "M",
    Frequency.MONTH_SHORT: "M",
    Frequency.QUARTER: "Q",
    Frequency.QUARTER_SHORT: "Q",
    Frequency.YEAR: "Y",
    Frequency.YEAR_SHORT: "Y",
}
"""Each protocol frequency as a pandas period frequency."""


def model_ref(text: str) -> tuple[str, int | None, str | None]:
    """``name``, ``name:version`` or ``name@alias``."""
    match = MODEL_REF.fullmatch(text)
    if match is None:
        raise InvalidInput(
            f"model '{text[:100]}' is not 'name', 'name:version' (a number) or 'name@alias'", field="model"
        )
    version = match["version"]
    return match["name"], int(version) if version else None, match["alias"]


def _period_kind(freq: str) -> tuple[type, int]:
    """A period frequency's offset class and multiple: W-SAT and W are both weeks, 2h is not h."""
    offset = pd.Period("2000-01-01", freq=freq).freq
    return type(offset), int(offset.n)


def servable(name: str, schema_freq: str | None, exogenous: Sequence[str]) -> str | None:
    """Why a model's version cannot speak this protocol (None: it can)."""
    if exogenous:
        return (
            f"it needs future values of {list(exogenous)}, which the KServe time-series protocol cannot carry: "
            f"use POST /v1/models/{name}/predict with 'exogenous'"
        )
    if schema_freq is None:
        return "its times are integers, and the KServe time-series protocol needs timestamps and a frequency"
    return None


@dataclass(frozen=True)
class Plan:
    """What one `ForecastRequest` asks of one version: the queries to answer, and for each
    input the query it belongs to and its series key."""

    queries: list[PredictQuery]
    slots: list[tuple[int, tuple[str, ...]]]
    quantiles: list[float]


def plan(request: ForecastRequest, served: ServedVersion) -> Plan:
    """The request as `PredictQuery`s: one for a panel or hierarchy (every input's series
    together), one per input for a single-series model (each input is its own history)."""
    schema = served.schema
    why = servable(served.name, schema.freq, schema.exogenous)
    if why is not None:
        raise InvalidInput(
            f"model '{served.name}' version {served.version} cannot be served here: {why}", field="model"
        )
    assert schema.freq is not None
    horizon = request.options.horizon
    if horizon < 1:
        raise InvalidInput(f"options.horizon is {horizon}: forecast at least 1 step", field="options.horizon")
    quantiles = list(request.options.quantiles or [])
    for q in quantiles:
        if not 0.0 < q < 1.0:
            raise InvalidInput(f"options.quantiles: {q} is not strictly between 0 and 1", field="options.quantiles")
    if not request.inputs:
        raise InvalidInput("inputs is empty: send at least one time series", field="inputs")
    levels = tuple(sorted(set(quantiles)))
    model_kind = _period_kind(schema.freq)
    seen: dict[tuple[str, ...], int] = {}
    rows: list[dict[str, list[Any]]] = []
    keys_of: list[tuple[str, ...]] = []
    for i, item in enumerate(request.inputs):
        _check_frequency(item, i, schema.freq, model_kind)
        key = _series_key(item, i, schema.keys)
        if schema.keys and key in seen:
            raise InvalidInput(
                f"inputs[{i}] names series '{item.name}' again (also inputs[{seen[key]}]): send each series once",
                field=f"inputs[{i}].name",
            )
        seen[key] = i
        keys_of.append(key)
        rows.append(_observations(item, i, key, schema, served.cutoff))
    if schema.keys:
        # the series with new actuals in one query, those without in another (a predict with
        # observations forecasts only the series they name)
        query_of: dict[bool, list[tuple[tuple[str, ...], dict[str, list[Any]]]]] = {}
        queries, slots = [], []
        for key, columns in zip(keys_of, rows, strict=True):
            query_of.setdefault(bool(columns[schema.time]), []).append((key, columns))
        for group in query_of.values():
            queries.append(_query(horizon, levels, tuple(k for k, _ in group), _table([c for _, c in group], schema)))
        place = {key: q for q, group in enumerate(query_of.values()) for key, _ in group}
        slots = [(place[key], key) for key in keys_of]
    else:
        queries = [_query(horizon, levels, None, _table([r], schema)) for r in rows]
        slots = [(i, ()) for i in range(len(rows))]
    return Plan(queries=queries, slots=slots, quantiles=quantiles)


def _query(
    horizon: int, levels: tuple[float, ...], series: tuple[tuple[str, ...], ...] | None, observations: Any
) -> PredictQuery:
    return PredictQuery(horizon=horizon, series=series, quantiles=levels, observations=observations)


def _check_frequency(item: TimeSeriesInput, i: int, model_freq: str, model_kind: tuple[type, int]) -> None:
    if _period_kind(PERIODS[item.frequency]) != model_kind:
        raise InvalidInput(
            f"inputs[{i}].frequency is '{item.frequency.value}', but the model's times are of frequency "
            f"'{model_freq}': send the model's frequency",
            field=f"inputs[{i}].frequency",
        )


def _series_key(item: TimeSeriesInput, i: int, keys: tuple[str, ...]) -> tuple[str, ...]:
    if not keys:
        return ()
    parts = tuple(item.name.split("/"))
    if len(parts) != len(keys):
        raise InvalidInput(
            f"inputs[{i}].name '{item.name[:200]}' has {len(parts)} part(s); this model names a series by "
            f"{len(keys)} key(s) {list(keys)} joined by '/'",
            field=f"inputs[{i}].name",
        )
    return parts


def _observations(
    item: TimeSeriesInput, i: int, key: tuple[str, ...], schema: Any, cutoff: Any
) -> dict[str, list[Any]]:
    """An input's values as column-oriented observation rows (none for an empty series)."""
    targets = schema.targets
    values = item.series
    where = f"inputs[{i}].series"
    multivariate = item.type == TimeSeriesType.MULTIVARIATE
    if multivariate != (len(targets) > 1):
        wanted = TimeSeriesType.MULTIVARIATE if len(targets) > 1 else TimeSeriesType.UNIVARIATE
        raise InvalidInput(
            f"inputs[{i}].type is '{item.type.value}', but the model forecasts {len(targets)} target(s) "
            f"{list(targets)}: send '{wanted.value}'",
            field=f"inputs[{i}].type",
        )
    columns: dict[str, list[Any]] = {k: [] for k in (*schema.keys, schema.time, *targets)}
    if not values:
        return columns
    if multivariate:
        for step, row in enumerate(values):
            if not isinstance(row, list) or len(row) != len(targets):
                raise InvalidInput(
                    f"{where}[{step}] must hold {len(targets)} numbers, one per target {list(targets)}",
                    field=f"{where}[{step}]",
                )
        matrix = np.asarray(values, dtype="float64")
    else:
        if any(isinstance(v, list) for v in values):
            raise InvalidInput(f"{where} must be a list of numbers for '{item.type.value}'", field=where)
        matrix = np.asarray(values, dtype="float64").reshape(-1, 1)
    if item.start_timestamp is not None:
        (start,) = parse_times([item.start_timestamp], schema.freq, f"inputs[{i}].start_timestamp")
    else:
        start = _scalar(cutoff) + 1
    times = format_times(pd.period_range(start=start, periods=len(matrix), freq=start.freq))
    for k, part in zip(schema.keys, key, strict=True):
        columns[k] = [part] * len(matrix)
    columns[schema.time] = list(times)
    for j, target in enumerate(targets):
        columns[target] = matrix[:, j].tolist()
    return columns


def _scalar(cutoff: Any) -> Any:
    return cutoff[-1] if isinstance(cutoff, pd.Index) else cutoff


def _table(rows: list[dict[str, list[Any]]], schema: Any) -> Any:
    """Every input's observation rows as one DataFrame (`service.tables`), or None."""
    merged: dict[str, list[Any]] = {c: [] for c in (*schema.keys, schema.time, *schema.targets)}
    for columns in rows:
        for name, cells in columns.items():
            merged[name].extend(cells)
    if not merged[schema.time]:
        return None
    return wire_to_frame(merged, "observations")


def response(request: ForecastRequest, served: ServedVersion, plan: Plan, answers: list[Answer]) -> bytes:
    """The answers as one `ForecastResponse`: one output, one forecast per input, in input order."""
    schema = served.schema
    by_query = [_rows_by_series(answer, schema.keys) for answer in answers]
    content = []
    for item, (q, key) in zip(request.inputs, plan.slots, strict=True):
        columns = answers[q].columns
        rows = by_query[q].get(key, np.zeros(0, dtype="int64"))
        times = columns[schema.time][rows]
        forecast: dict[str, Any] = {
            "type": item.type.value,
            "name": item.name,
            "mean_forecast": _values(columns, schema.targets, rows),
            "frequency": item.frequency.value,
            "start_timestamp": str(times[0]) if len(times) else "",
        }
        if plan.quantiles:
            forecast["quantiles"] = {
                str(level): _values(columns, [quantile_column(t, level) for t in schema.targets], rows)
                for level in plan.quantiles
            }
        content.append(forecast)
    return encode_json(
        {
            "id": uuid.uuid4().hex,
            "created_at": int(time.time()),
            "status": "completed",
            "model": request.model,
            "outputs": [{"type": "forecast", "id": uuid.uuid4().hex, "status": "completed", "content": content}],
        }
    )


def _rows_by_series(answer: Answer, keys: tuple[str, ...]) -> dict[tuple[str, ...], np.ndarray]:
    columns = answer.columns
    if not keys:
        return {(): np.arange(len(next(iter(columns.values()))))}
    ids = pd.Series(list(zip(*(columns[k].astype(str) for k in keys), strict=True)), dtype=object)
    return {tuple(group): np.asarray(rows) for group, rows in ids.groupby(ids).indices.items()}


def _values(columns: dict[str, np.ndarray], names: Sequence[str], rows: np.ndarray) -> Any:
    """One column's values (univariate), or one list per time step across the columns."""
    if len(names) == 1:
        return np.asarray(columns[names[0]][rows], dtype="float64")
    return np.column_stack([np.asarray(columns[n][rows], dtype="float64") for n in names])


ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    413: "PayloadTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
}


def error_response(
    status: int, title: str, detail: str, headers: dict[str, str] | None, extra: dict[str, Any]
) -> Response:
    """An error in the protocol's form: ``{"error": {code, message, param, type}}``."""
    param = extra.get("field") or extra.get("column")
    error = {
        "code": str(status),
        "message": detail,
        "param": str(param) if param is not None else None,
        "type": ERROR_TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError"),
    }
    return Response(encode_json({"error": error}), status_code=status, media_type="application/json", headers=headers)
