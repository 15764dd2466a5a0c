"""The answer of a route that starts a job: 202 + Location, or 200 when it finished within
``?wait=true`` (bounded by ``timeout`` and the server's FORECAST_MAX_WAIT_SECONDS)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from starlette.responses import Response

from service.jobs.store import Job
from service.runtime import Runtime
from service.tables import encode_json

WaitQuery = Annotated[bool, Query(description="Block until the job finishes (bounded by `timeout`)")]
WaitTimeout = Annotated[float, Query(ge=0, le=600, description="Seconds to wait at most with ?wait=true")]


async def started_job(runtime: Runtime, job: Job, wait: bool, timeout: float) -> Response:
    if wait:
        job = await runtime.wait_finished(job, min(timeout, runtime.settings.max_wait_seconds), interval=0.2)
    return Response(
        encode_json(job.public()),
        status_code=200 if job.finished else 202,
        media_type="application/json",
        headers={"Location": f"/v1/jobs/{job.id}"},
    )
