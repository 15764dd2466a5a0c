"""Batch exports: a whole panel's forecast written to a file by a job, then downloaded."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.responses import FileResponse, Response

from service.api.deps import CallerDep, ReadAccess, RuntimeDep
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.errors import Conflict, NotFound
from service.jobs.submit import export_file, submit_export
from service.schemas.jobs import ExportBody, JobOut
from service.tables import encode_json

router = APIRouter(prefix="/v1/models", tags=["exports"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES)

MEDIA = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv"}


@router.post(
    "/{name}/exports",
    status_code=202,
    response_model=JobOut,
    summary="Start a batch export of every series' forecast to Parquet or CSV; 202 + Location",
    responses={200: {"description": "Finished within ?wait"}, 404: PROBLEM, 422: PROBLEM, 429: PROBLEM},
)
async def start_export(
    name: Annotated[str, Path(examples=["tourism-monthly"])],
    body: ExportBody,
    runtime: RuntimeDep,
    caller: CallerDep,
    wait: Annotated[bool, Query(description="Block until the job finishes (bounded by `timeout`)")] = False,
    timeout: Annotated[float, Query(ge=0, le=600, description="Seconds to wait at most with ?wait=true")] = 30.0,
) -> Response:
    served = await runtime.served(name, body.version, body.alias)
    settings = runtime.settings
    submit = functools.partial(
        submit_export, max_active=settings.max_active_jobs_per_key, max_horizon=settings.max_horizon
    )
    target = str(settings.export_dir.resolve()) if settings.export_dir else None
    job = await runtime.run_blocking(
        submit,
        runtime.jobs,
        served,
        body.horizon,
        tuple(body.coverage),
        tuple(body.quantiles),
        body.format,
        target,
        caller,
    )
    runtime.runner.wake()
    if wait:
        job = await runtime.wait_finished(job, min(timeout, settings.max_wait_seconds), interval=0.2)
    return Response(
        encode_json(job.public()),
        status_code=200 if job.finished else 202,
        media_type="application/json",
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


@router.get(
    "/{name}/exports/{job_id}",
    summary="Download a finished export's file",
    response_class=Response,
    responses={
        200: {"content": {MEDIA["parquet"]: {}, MEDIA["csv"]: {}}, "description": "The forecast file"},
        404: PROBLEM,
        409: PROBLEM,
    },
)
async def download_export(
    name: Annotated[str, Path(examples=["tourism-monthly"])],
    job_id: Annotated[str, Path(max_length=64)],
    runtime: RuntimeDep,
) -> Response:
    job = await runtime.run_blocking(runtime.jobs.get, job_id)
    if job.kind != "export" or job.model != name:
        raise NotFound(f"model '{name}' has no export job {job_id!r}", job=job_id)
    if job.status != "succeeded":
        raise Conflict(
            f"export {job_id} is {job.status}"
            + ("" if job.finished else ": wait until it succeeds (GET /v1/jobs/{id})"),
            job=job_id,
            status=job.status,
        )
    path = export_file(job, runtime.settings.data_dir)
    if not path.is_file():
        raise NotFound(f"the file of export {job_id} is gone (removed with old jobs)", job=job_id)
    return FileResponse(path, media_type=MEDIA[job.params["format"]], filename=path.name)
