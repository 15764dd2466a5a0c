from __future__ import annotations

import functools
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from service.api.deps import CallerDep, ReadAccess, RuntimeDep
from service.api.job_answers import WaitQuery, WaitTimeout, started_job
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.jobs.retrain import model_spec
from service.jobs.submit import submit_leaderboard
from service.schemas.jobs import JobOut, LeaderboardBody

router = APIRouter(prefix="/v1/models", tags=["backtests"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES)


@router.post(
    "/{name}/leaderboard",
    status_code=202,
    response_model=JobOut,
    summary="Start a leaderboard job: candidates backtested and ranked; ?publish=best publishes the winner (admin)",
    responses={200: {"description": "Finished within ?wait"}, 403: PROBLEM, 404: PROBLEM, 422: PROBLEM, 429: PROBLEM},
)
async def start_leaderboard(
    name: Annotated[str, Path(examples=["tourism-monthly"])],
    body: LeaderboardBody,
    runtime: RuntimeDep,
    caller: CallerDep,
    request: Request,
    publish: Annotated[
        Literal["best"] | None,
        Query(description="best: retrain with the winner through the promotion gate (needs an admin key)"),
    ] = None,
    wait: WaitQuery = False,
    timeout: WaitTimeout = 30.0,
) -> Response:
    if publish is not None:  # publishing is a write: an admin key
        runtime.keys.authorize(request.headers.get("authorization"), "admin")
    settings = runtime.settings
    spec = await runtime.run_blocking(model_spec, runtime.registry, runtime.datasets, name, "run a leaderboard")
    leaderboard = body.to_request(spec.table_schema().keys, spec.promotion.metric)
    job = await runtime.run_blocking(
        functools.partial(
            submit_leaderboard,
            publish=publish,
            promote=body.promote,
            dataset_version=body.dataset_version,
            submitter=caller,
            max_active=settings.max_active_jobs_per_key,
            sql_url=settings.sql_url,
            sources_root=settings.sources_root,
            wake=runtime.runner.wake,
        ),
        runtime.jobs,
        runtime.registry,
        runtime.datasets,
        name,
        leaderboard,
    )
    return await started_job(runtime, job, wait, timeout)
