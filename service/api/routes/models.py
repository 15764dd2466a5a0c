from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.responses import Response

from service.api import catalog
from service.api.deps import AdminAccess, CacheDep, ReadAccess, RegistryDep, RuntimeDep
from service.api.paging import PAGE_TOKEN_MAX
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.forecasting.specs import ModelSpec
from service.jobs.submit import submit_retrain
from service.registry.store import ALIAS_PATTERN, NAME_PATTERN
from service.schemas.datasets import RetrainBody
from service.schemas.jobs import JobOut
from service.schemas.models import (
    SPEC_EXAMPLES,
    SPEC_YAML_EXAMPLE,
    AliasResult,
    AliasUpdate,
    ModelDetail,
    ModelList,
    SpecWritten,
    spec_body_schema,
)
from service.tables import encode_json

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES)

ModelName = Annotated[str, Path(description="Model name", examples=["airline"], pattern=NAME_PATTERN.pattern)]
AliasName = Annotated[str, Path(description="Alias name", examples=["production"], pattern=ALIAS_PATTERN.pattern)]


@router.get("", response_model=ModelList, summary="List models, a page at a time, in name order")
async def list_models(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=catalog.MAX_PAGE, description="Models per page")] = 100,
    page_token: Annotated[
        str | None, Query(max_length=PAGE_TOKEN_MAX, description="`next_page_token` of the previous page (opaque)")
    ] = None,
) -> ModelList:
    return await runtime.run_blocking(catalog.list_models, runtime.registry, runtime.cache, limit, page_token)


@router.get("/{name}", response_model=ModelDetail, summary="Spec, versions and aliases of a model")
async def get_model(name: ModelName, runtime: RuntimeDep) -> ModelDetail:
    return await runtime.run_blocking(catalog.model_detail, runtime.registry, runtime.cache, name)


@router.get("/{name}/versions/{version}", summary="Manifest of one version")
async def get_version(name: ModelName, version: Annotated[int, Path(ge=1)], registry: RegistryDep) -> dict:
    return registry.read_manifest(name, version)


@router.delete(
    "/{name}/versions/{version}",
    status_code=204,
    summary="Delete a version no alias points at (admin)",
    dependencies=[AdminAccess],
    responses={204: {"description": "Deleted"}, 404: PROBLEM, 409: PROBLEM},
)
async def delete_version(name: ModelName, version: Annotated[int, Path(ge=1)], runtime: RuntimeDep) -> Response:
    await runtime.run_blocking(catalog.delete_version, runtime.registry, runtime.cache, name, version)
    return Response(status_code=204)


@router.put(
    "/{name}/aliases/{alias}",
    response_model=AliasResult,
    summary="Point an alias at a version (admin)",
    dependencies=[AdminAccess],
)
async def put_alias(
    name: ModelName, alias: AliasName, body: AliasUpdate, runtime: RuntimeDep, cache: CacheDep
) -> AliasResult:
    aliases = await runtime.run_blocking(catalog.move_alias, runtime.registry, cache, name, alias, body.version)
    return AliasResult(model=name, alias=alias, version=body.version, aliases=aliases)


SPEC_BODY = {
    "content": {
        "application/json": {"schema": spec_body_schema(ModelSpec), "examples": SPEC_EXAMPLES},
        "application/yaml": {
            "schema": {"type": "string", "description": "The same document as YAML (model.yaml)"},
            "example": SPEC_YAML_EXAMPLE,
        },
    },
    "required": True,
}


@router.put(
    "/{name}",
    response_model=SpecWritten,
    summary="Create or replace a model spec (model.yaml), validated against the allow-list and checked "
    "against its dataset first; ?dry_run=true checks only (admin)",
    dependencies=[AdminAccess],
    openapi_extra={"requestBody": SPEC_BODY},
    responses={201: {"description": "Created", "model": SpecWritten}, 413: PROBLEM, 422: PROBLEM},
)
async def put_model(
    name: ModelName,
    request: Request,
    runtime: RuntimeDep,
    dry_run: Annotated[bool, Query(description="Validate and check against the dataset; write nothing")] = False,
) -> Response:
    body = await request.body()
    created, spec, check = await runtime.run_blocking(
        catalog.put_spec,
        runtime.registry,
        runtime.datasets,
        name,
        body,
        request.headers.get("content-type"),
        dry_run,
    )
    if not dry_run:
        await runtime.run_blocking(runtime.cache.refresh, name)
    return Response(
        encode_json({"name": name, "spec": spec, "check": check, "dry_run": dry_run}),
        status_code=201 if created and not dry_run else 200,
        media_type="application/json",
    )


@router.post(
    "/{name}/retrain",
    status_code=202,
    response_model=JobOut,
    summary="Start a retrain job; the same Idempotency-Key returns the same job (admin)",
    dependencies=[AdminAccess],
    responses={
        200: {"description": "An existing job (same key, or a retrain already queued/running)"},
        404: PROBLEM,
        422: PROBLEM,
    },
)
async def retrain(
    name: ModelName,
    runtime: RuntimeDep,
    body: RetrainBody | None = None,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    payload = body.model_dump(exclude_none=True) if body is not None else {}
    job, created = await runtime.run_blocking(
        functools.partial(submit_retrain, sources_root=runtime.settings.sources_root, wake=runtime.runner.wake),
        runtime.jobs,
        runtime.registry,
        name,
        payload,
        idempotency_key,
    )
    await runtime.settled(job)  # the same key may answer a retrain that finished: as `GET /v1/jobs/{id}` does
    return Response(
        encode_json(job.public()),
        status_code=202 if created else 200,
        media_type="application/json",
        headers={"Location": f"/v1/jobs/{job.id}"},
    )
