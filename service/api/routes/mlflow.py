"""MLflow's scoring protocol per model: ``/mlflow/{name}/invocations``, ``/ping``, ``/version``.

``mlflow``'s own ``ScoringServerClient(host, f"{port}/mlflow/{name}")`` talks to it as to
``mlflow models serve``. Errors answer in MLflow's form (`service.api.protocols.mlflow`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import PlainTextResponse
from starlette.responses import Response

from service import __version__
from service.api.deps import ReadAccess
from service.api.protocols import mlflow
from service.runtime import Runtime
from service.schemas.mlflow import ScoringError, ScoringRequest, ScoringResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ScoringError, "description": "Unknown model, version or alias"},
    409: {"model": ScoringError, "description": "The version cannot be loaded"},
    422: {"model": ScoringError, "description": "Invalid frame: the message says what to fix"},
}

router = APIRouter(prefix="/mlflow/{name}", tags=["mlflow"], dependencies=[ReadAccess], responses=ERRORS)

Name = Annotated[str, Path(examples=["airline"])]
Version = Annotated[int | None, Query(ge=1, description="A version number; default: alias production")]
Alias = Annotated[str | None, Query(description="An alias; default production")]


@router.post("/invocations", summary="MLflow scoring: the version's default forecast", response_model=ScoringResponse)
async def mlflow_invocations(
    name: Name, body: ScoringRequest, request: Request, version: Version = None, alias: Alias = None
) -> Response:
    runtime: Runtime = request.app.state.runtime
    served = await runtime.served(name, version, alias)
    request.state.model, request.state.version = name, served.version
    query = mlflow.query(served, mlflow.input_table(body), runtime.settings.max_columns_per_table)
    answer = await runtime.answer(served, query)
    return Response(mlflow.predictions(served, query, answer), media_type="application/json")


@router.get("/ping", summary="MLflow health: 200 when the version is loaded", response_class=PlainTextResponse)
async def mlflow_ping(name: Name, request: Request, version: Version = None, alias: Alias = None) -> Response:
    runtime: Runtime = request.app.state.runtime
    await runtime.served(name, version, alias)
    return PlainTextResponse("\n")


@router.get(
    "/version",
    summary="The server's version (as MLflow's scoring server answers its own)",
    response_class=PlainTextResponse,
)
async def mlflow_version(name: Name) -> Response:
    return PlainTextResponse(__version__)
