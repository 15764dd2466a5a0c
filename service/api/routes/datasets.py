from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from service.api import uploads
from service.api.deps import AdminAccess, ReadAccess, RuntimeDep
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
    freq: Annotated[str | None, Query(description="Period frequency (M, Q, D, ...); none = integer time")] = None,
    model: Annotated[str | None, Query(description="Take the column roles from this model's spec")] = None,
) -> DatasetInfo:
    body = await request.body()
    roles = {"time": time, "targets": _csv(targets), "keys": _csv(keys), "exogenous": _csv(exogenous), "freq": freq}
    doc = await runtime.run_ingest(
        uploads.upload, runtime, name, body, request.headers.get("content-type"), roles, model
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
async def append_observations(name: DatasetName, request: Request, runtime: RuntimeDep) -> DatasetInfo:
    body = await request.body()
    doc = await runtime.run_ingest(uploads.append, runtime, name, body, request.headers.get("content-type"))
    return DatasetInfo(**doc)


@router.get("", response_model=DatasetList, summary="Datasets with their versions")
async def list_datasets(runtime: RuntimeDep) -> DatasetList:
    store = runtime.datasets
    return DatasetList(datasets=[DatasetInfo(**store.describe(n)) for n in store.names()])


@router.get(
    "/{name}",
    response_model=DatasetInfo,
    summary="Versions, series count, time range, columns",
    responses={404: PROBLEM},
)
async def get_dataset(name: DatasetName, runtime: RuntimeDep) -> DatasetInfo:
    return DatasetInfo(**runtime.datasets.describe(name))
