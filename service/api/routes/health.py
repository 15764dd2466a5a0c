from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.api.deps import CacheDep
from service.tables import encode_json

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: registry scanned and every production version loaded",
    responses={503: {"description": "Not ready yet, with the reason per model"}},
)
async def readyz(cache: CacheDep) -> Response:
    ready, problems = cache.is_ready()
    body = {"status": "ready" if ready else "not ready", "models": cache.names(), "problems": problems}
    return Response(encode_json(body), status_code=200 if ready else 503, media_type="application/json")
