from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.api.deps import CacheDep, RuntimeDep
from service.tables import encode_json

router = APIRouter(tags=["health"])

READINESS = {
    "type": "object",
    "required": ["status", "models", "problems", "warnings"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "not ready"]},
        "models": {"type": "array", "items": {"type": "string"}},
        "problems": {"type": "object", "additionalProperties": {"type": "string"}},
        "warnings": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    },
}
"""The readiness report (200 and 503 alike: a 503 here is a report, not a problem)."""


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: registry scanned and every production version loaded",
    description="Open (no key): reasons are short categories; details are in `GET /v1/models/{name}`.",
    responses={
        200: {"content": {"application/json": {"schema": READINESS}}},
        503: {
            "description": "Not ready yet, with the reason per model",
            "content": {"application/json": {"schema": READINESS}},
        },
    },
)
async def readyz(cache: CacheDep, runtime: RuntimeDep) -> Response:
    report = cache.readiness()
    ready, problems = report.ready, report.problems
    if runtime.training:
        ready, problems = False, {**problems, "training": "training models that have no version yet"}
    body = {
        "status": "ready" if ready else "not ready",
        "models": cache.names(),
        "problems": problems,
        "warnings": report.warnings,
    }
    return Response(encode_json(body), status_code=200 if ready else 503, media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 401: {"content": {"application/problem+json": {}}}},
)
async def metrics(
    request: Request, runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None
) -> Response:
    if not runtime.settings.metrics_public:
        runtime.keys.authorize(authorization, "read")
    for name in runtime.cache.names():
        runtime.metrics.loaded_versions.labels(name).set(len(runtime.cache.state(name).loaded))
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
