"""Batch exports: a whole panel's forecast written to a file by a job, then downloaded."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Path
from starlette.responses import FileResponse, Response

from service.api.deps import CallerDep, ReadAccess, RuntimeDep
from service.api.job_answers import WaitQuery, WaitTimeout, started_job
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.errors import Conflict, NotFound
from service.forecasting.served import PredictQuery
from service.jobs.submit import export_file, submit_export
from service.schemas.jobs import ExportBody, JobOut

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
    wait: WaitQuery = False,
    timeout: WaitTimeout = 30.0,
) -> Response:
    served = await runtime.served(name, body.version, body.alias)
    settings = runtime.settings
    query = PredictQuery(horizon=body.horizon, coverage=tuple(body.coverage), quantiles=tuple(body.quantiles))
    target = str(settings.export_dir.resolve()) if settings.export_dir else None
    submit = functools.partial(submit_export, submitter=caller, max_active=settings.max_active_jobs_per_key)
    job = await runtime.run_blocking(submit, runtime.jobs, served, query, runtime.limits, body.format, target)
    runtime.runner.wake()
    return await started_job(runtime, job, wait, timeout)


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
