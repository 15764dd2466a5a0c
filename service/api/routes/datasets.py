from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from service.api import catalog, uploads
from service.api.deps import AdminAccess, ReadAccess, RuntimeDep
from service.api.paging import PAGE_TOKEN_MAX
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.datasets.store import DATASET_NAME
from service.schemas.datasets import DatasetInfo, DatasetList

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES)
TABLE_BODY = {
    "content": {
        "text/csv": {"schema": {"type": "string", "minLength": 1}},
        "application/json": {
            "schema": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "array"}}
        },
        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
    },
    "required": True,
}
DatasetName = Annotated[str, Path(description="Dataset name", examples=["sales"], pattern=DATASET_NAME.pattern)]
Missing = Annotated[
    Literal["error", "drop", "ffill", "interpolate"],
    Query(
        description="Missing values (empty, null, NaN): error (a 422 naming them), drop the rows, ffill (carry the "
        "last value forward) or interpolate (linearly, between values) within each series"
    ),
]


@contextlib.asynccontextmanager
async def spooled_body(request: Request, runtime: RuntimeDep) -> AsyncIterator[FilePath]:
    """The request body streamed to a file in the datasets folder's tmp area (never one
    bytes object in memory; BodyLimits counts it against FORECAST_MAX_UPLOAD_BYTES), removed
    afterwards, also on error or disconnect."""
    folder = uploads.tmp_dir(runtime)
    handle, name = tempfile.mkstemp(prefix="upload-", suffix=".body", dir=folder)
    path = FilePath(name)
    try:
        with os.fdopen(handle, "wb") as out:
            async for chunk in request.stream():
                out.write(chunk)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value is not None else None


@router.put(
    "/{name}",
    response_model=DatasetInfo,
    summary="Upload a whole table: a new immutable version (CSV, JSON table or Parquet) (admin)",
    dependencies=[AdminAccess],
    openapi_extra={"requestBody": TABLE_BODY},
    responses={404: PROBLEM, 413: PROBLEM, 422: PROBLEM, 503: PROBLEM},
)
async def put_dataset(
    name: DatasetName,
    request: Request,
    runtime: RuntimeDep,
    time: Annotated[str | None, Query(description="Time column")] = None,
    targets: Annotated[str | None, Query(description="Target columns, comma-separated")] = None,
    keys: Annotated[str | None, Query(description="Key columns, top level first, comma-separated")] = None,
    exogenous: Annotated[str | None, Query(description="Exogenous columns, comma-separated")] = None,
    freq: Annotated[
        str | None,
        Query(
            description="pandas frequency: a period frequency (M, Q, Y, D, h) or a timestamp alias (MS, W-SAT, h), "
            "stored as the periods that start at the times sent; omitted: inferred from the times (integers: steps)"
        ),
    ] = None,
    model: Annotated[str | None, Query(description="Take the column roles from this model's spec")] = None,
    missing: Missing = "error",
) -> DatasetInfo:
    roles = {"time": time, "targets": _csv(targets), "keys": _csv(keys), "exogenous": _csv(exogenous), "freq": freq}
    async with spooled_body(request, runtime) as body:
        doc = await runtime.run_ingest(
            uploads.upload, runtime, name, body, request.headers.get("content-type"), roles, model, missing
        )
    return DatasetInfo(**doc)


@router.post(
    "/{name}/observations",
    response_model=DatasetInfo,
    summary="Append rows (same key+time replaces): a new version (admin)",
    dependencies=[AdminAccess],
    openapi_extra={"requestBody": TABLE_BODY},
    responses={404: PROBLEM, 413: PROBLEM, 422: PROBLEM, 503: PROBLEM},
)
async def append_observations(
    name: DatasetName, request: Request, runtime: RuntimeDep, missing: Missing = "error"
) -> DatasetInfo:
    async with spooled_body(request, runtime) as body:
        doc = await runtime.run_ingest(
            uploads.append, runtime, name, body, request.headers.get("content-type"), missing
        )
    return DatasetInfo(**doc)


@router.get("", response_model=DatasetList, summary="Datasets with their versions, a page at a time")
async def list_datasets(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Datasets per page")] = 100,
    page_token: Annotated[
        str | None, Query(max_length=PAGE_TOKEN_MAX, description="`next_page_token` of the previous page (opaque)")
    ] = None,
) -> DatasetList:
    return await runtime.run_blocking(catalog.list_datasets, runtime.datasets, limit, page_token)


@router.delete(
    "/{name}",
    status_code=204,
    summary="Delete a dataset and its versions; refused (409) while a model reads it (admin)",
    dependencies=[AdminAccess],
    responses={404: PROBLEM, 409: PROBLEM},
)
async def delete_dataset(name: DatasetName, runtime: RuntimeDep) -> Response:
    await runtime.run_ingest(uploads.delete, runtime, name)
    return Response(status_code=204)


@router.get(
    "/{name}",
    response_model=DatasetInfo,
    summary="Versions, series count, time range, columns",
    responses={404: PROBLEM},
)
async def get_dataset(name: DatasetName, runtime: RuntimeDep) -> DatasetInfo:
    return DatasetInfo(**await runtime.run_blocking(runtime.datasets.describe, name))
