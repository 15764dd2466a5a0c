"""MLflow's scoring protocol over the served versions: what ``mlflow models serve`` answers for
a version exported with sktime's flavour (`service.forecasting.mlflow_export`), by the same
answer path as our predict route.

The input frame (``dataframe_split`` or ``dataframe_records``) is what the flavour's pyfunc
takes as ``X``: the future exogenous rows for a model fitted with exogenous data (columns: the
model's keys, time and exogenous columns, as in a predict's ``exogenous``), an empty frame for
any other model. The answer is ``{"predictions": [...]}``: one record per forecast row, in the
flavour's columns (``predict__<target>``, ``predict_interval__<target>__<coverage>__lower``, ...)
over the version's default horizon, coverages and quantile levels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.responses import Response

from service.errors import InvalidInput
from service.forecasting.mlflow_export import default_levels, pyfunc_columns
from service.forecasting.served import Answer, PredictQuery, ServedVersion
from service.schemas.mlflow import ScoringRequest
from service.tables import encode_json, wire_to_frame

PREFIX = "/mlflow/"


def input_table(body: ScoringRequest) -> dict[str, list[Any]]:
    """The request's frame as a column-oriented table (no columns: an empty frame)."""
    if (body.dataframe_split is None) == (body.dataframe_records is None):
        raise InvalidInput("send exactly one of 'dataframe_split' and 'dataframe_records'", field="body")
    if body.dataframe_split is not None:
        split = body.dataframe_split
        columns = [str(c) for c in split.columns]
        if len(set(columns)) != len(columns):
            raise InvalidInput("dataframe_split.columns holds a name twice", field="dataframe_split.columns")
        table: dict[str, list[Any]] = {c: [] for c in columns}
        for i, row in enumerate(split.data):
            if len(row) != len(columns):
                raise InvalidInput(
                    f"dataframe_split.data[{i}] has {len(row)} values for {len(columns)} columns",
                    field=f"dataframe_split.data[{i}]",
                )
            for c, value in zip(columns, row, strict=True):
                table[c].append(value)
        if split.index is not None and len(split.index) != len(split.data):
            raise InvalidInput("dataframe_split.index and .data differ in length", field="dataframe_split.index")
        return table
    records = body.dataframe_records or []
    names = list(dict.fromkeys(str(k) for record in records for k in record))
    for i, record in enumerate(records):
        missing = [n for n in names if n not in record]
        if missing:
            raise InvalidInput(f"dataframe_records[{i}] lacks {missing}", field=f"dataframe_records[{i}]")
    return {n: [record[n] for record in records] for n in names}


def query(served: ServedVersion, table: dict[str, list[Any]], max_columns: int) -> PredictQuery:
    """The version's default forecast (its horizon, coverages and quantiles), with the frame's
    rows as future exogenous values when the model takes them."""
    horizon, coverage, quantiles = default_levels(served.manifest)
    schema = served.schema
    rows = max((len(v) for v in table.values()), default=0)
    if not schema.exogenous and (table or rows):
        raise InvalidInput(
            f"model '{served.name}' takes no exogenous values: send an empty frame "
            '({"dataframe_split": {"columns": [], "data": []}})',
            field="dataframe_split",
        )
    exogenous = wire_to_frame(table, "exogenous", max_columns) if schema.exogenous else None
    return PredictQuery(
        horizon=horizon,
        coverage=tuple(coverage),
        quantiles=tuple(quantiles),
        exogenous=exogenous,
    )


def predictions(served: ServedVersion, query: PredictQuery, answer: Answer) -> bytes:
    """The answer as the flavour's records: ``{"predictions": [{column: value, ...}, ...]}``."""
    named = pyfunc_columns(served.schema, query.coverage, query.quantiles)
    values = [np.asarray(answer.columns[ours], dtype="float64") for _, ours in named]
    names = [theirs for theirs, _ in named]
    records = [dict(zip(names, row, strict=True)) for row in zip(*(v.tolist() for v in values), strict=True)]
    return encode_json({"predictions": records})


ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    409: "RESOURCE_CONFLICT",
    413: "REQUEST_LIMIT_EXCEEDED",
    422: "INVALID_PARAMETER_VALUE",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}


def error_response(
    status: int, title: str, detail: str, headers: dict[str, str] | None, extra: dict[str, Any]
) -> Response:
    """An error as MLflow's scoring server answers one: ``{"error_code": ..., "message": ...}``."""
    code = ERROR_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")
    return Response(
        encode_json({"error_code": code, "message": detail}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
