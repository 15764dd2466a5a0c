"""KServe's time-series protocol: ``POST /v1/timeseries/forecast``, ``GET /v1/timeseries/models``.

Errors answer in the protocol's form (`service.api.protocols.kserve.error_response`, chosen by
path in the one error table)."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.deps import ReadAccess, RuntimeDep
from service.api.protocols import kserve
from service.errors import ServiceError
from service.runtime import Runtime
from service.schemas.kserve import ErrorResponse, ForecastRequest, ForecastResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown model, version, alias or series"},
    409: {"model": ErrorResponse, "description": "The version cannot be loaded"},
    422: {"model": ErrorResponse, "description": "Invalid request: 'param' names the field"},
}
"""Besides what every operation answers (`service.api.openapi`); all in KServe's error form."""

router = APIRouter(prefix="/v1/timeseries", tags=["kserve"], dependencies=[ReadAccess])


@router.post("/forecast", summary="KServe time-series forecast", response_model=ForecastResponse, responses=ERRORS)
async def kserve_forecast(body: ForecastRequest, request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    name, version, alias = kserve.model_ref(body.model)
    served = await runtime.served(name, version, alias)
    request.state.model, request.state.version = name, served.version
    plan = kserve.plan(body, served)
    answers = [await runtime.answer(served, query) for query in plan.queries]
    return Response(kserve.response(body, served, plan, answers), media_type="application/json")


@router.get("/models", summary="Models this protocol can forecast (their production versions)")
async def kserve_models(runtime: RuntimeDep) -> list[str]:
    return await runtime.run_blocking(_servable_models, runtime)


def _servable_models(runtime: Runtime) -> list[str]:
    names = []
    for name in runtime.registry.list_models():
        with contextlib.suppress(ServiceError):
            production = runtime.registry.read_aliases(name).get("production")
            if production is None:
                continue
            schema = runtime.registry.read_manifest(name, production)["schema"]
            if kserve.servable(name, schema.get("freq"), schema.get("exogenous") or ()) is None:
                names.append(name)
    return names
