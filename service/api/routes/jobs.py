from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.responses import Response

from service.api.deps import AdminAccess, JobsDep, ReadAccess, RuntimeDep
from service.api.paging import PAGE_TOKEN_MAX, decode_page_token, encode_page_token
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.forecasting import plots
from service.jobs import retention
from service.schemas.jobs import JobList, JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES)


@router.get("", response_model=JobList, summary="Jobs, newest first")
async def list_jobs(
    runtime: RuntimeDep,
    model: str | None = None,
    kind: Literal["backtest", "export", "leaderboard", "retrain"] | None = None,
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Jobs per page")] = 100,
    page_token: Annotated[
        str | None, Query(max_length=PAGE_TOKEN_MAX, description="`next_page_token` of the previous page")
    ] = None,
) -> JobList:
    """Newest first; page on with `next_page_token`: jobs created meanwhile never repeat or hide one."""
    after = decode_page_token(page_token)
    jobs, cursor = await runtime.run_blocking(runtime.jobs.page, model, kind, status, limit, after)
    await runtime.settled(*jobs)  # a finished retrain is reported once this process serves what it did
    return JobList(jobs=[JobOut(**j.public()) for j in jobs], next_page_token=encode_page_token(cursor))


@router.get("/{job_id}", response_model=JobOut, summary="One job with progress and result", responses={404: PROBLEM})
async def get_job(job_id: str, jobs: JobsDep, runtime: RuntimeDep) -> JobOut:
    """A finished retrain is reported once this process serves what it published and promoted."""
    job = jobs.get(job_id)
    await runtime.settled(job)
    return JobOut(**job.public())


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a queued or running job (admin)",
    dependencies=[AdminAccess],
    responses={404: PROBLEM, 409: PROBLEM},
)
async def cancel_job(job_id: str, runtime: RuntimeDep) -> JobOut:
    """A queued job is cancelled at once; a running one once its worker is stopped (waited for up to 5 s)."""
    job = await runtime.run_blocking(runtime.jobs.request_cancel, job_id)
    runtime.runner.wake()
    return JobOut(**(await runtime.wait_finished(job, 5.0)).public())


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a finished job, its result and its files (admin)",
    dependencies=[AdminAccess],
    responses={204: {"description": "Deleted"}, 404: PROBLEM, 409: PROBLEM},
)
async def delete_job(job_id: str, runtime: RuntimeDep) -> Response:
    """A queued or running job is a 409 naming its state (cancel it first). Finished jobs are
    also deleted FORECAST_JOB_RETENTION_DAYS after they finished."""
    await runtime.run_blocking(retention.delete_job, runtime.jobs, runtime.settings.data_dir, job_id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/plot.png",
    summary="Backtest plot: actuals vs forecasts per fold, for one series",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: PROBLEM, 409: PROBLEM},
)
async def backtest_plot(
    job_id: str,
    runtime: RuntimeDep,
    series: Annotated[str | None, Query(description="Key values joined by '/', e.g. 'T001'")] = None,
) -> Response:
    png = await runtime.run_blocking(plots.backtest_png, runtime.jobs, str(runtime.settings.data_dir), job_id, series)
    return Response(png, media_type="image/png")
