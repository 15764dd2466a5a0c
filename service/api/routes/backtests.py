from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Path
from starlette.responses import Response

from service.api.deps import CallerDep, ReadAccess, RuntimeDep
from service.api.job_answers import WaitQuery, WaitTimeout, started_job
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.jobs.submit import submit_backtest
from service.schemas.jobs import BacktestBody, JobOut

router = APIRouter(prefix="/v1/models", tags=["backtests"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES)


@router.post(
    "/{name}/backtests",
    status_code=202,
    response_model=JobOut,
    summary="Start a backtest job (sktime evaluate); 202 + Location",
    responses={200: {"description": "Finished within ?wait"}, 404: PROBLEM, 422: PROBLEM, 429: PROBLEM},
)
async def start_backtest(
    name: Annotated[str, Path(examples=["airline"])],
    body: BacktestBody,
    runtime: RuntimeDep,
    caller: CallerDep,
    wait: WaitQuery = False,
    timeout: WaitTimeout = 30.0,
) -> Response:
    served = await runtime.served(name, body.version, body.alias)
    request = body.to_request(served.schema.keys)
    job = await runtime.run_blocking(
        functools.partial(submit_backtest, wake=runtime.runner.wake),
        runtime.jobs,
        runtime.registry,
        runtime.datasets,
        served,
        request,
        body.dataset,
        body.dataset_version,
        caller,
        runtime.settings.max_active_jobs_per_key,
    )
    return await started_job(runtime, job, wait, timeout)
