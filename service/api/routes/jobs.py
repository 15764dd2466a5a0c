from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.responses import Response

from service.api.deps import AdminAccess, JobsDep, ReadAccess, RuntimeDep
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.forecasting import plots
from service.schemas.jobs import JobList, JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES)


@router.get("", response_model=JobList, summary="Jobs, newest first")
async def list_jobs(
    runtime: RuntimeDep,
    model: str | None = None,
    kind: Literal["backtest", "retrain"] | None = None,
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    jobs = await runtime.run_blocking(runtime.jobs.list, model, kind, status, limit)
    await runtime.settled(*jobs)  # a finished retrain is reported once this process serves what it did
    return JobList(jobs=[JobOut(**j.public()) for j in jobs])


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
