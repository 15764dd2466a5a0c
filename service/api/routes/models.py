from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import CacheDep, RegistryDep, RuntimeDep
from service.registry import catalog
from service.schemas.models import AliasResult, AliasUpdate, ModelDetail, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelName = Annotated[str, Path(description="Model name", examples=["airline"])]


@router.get("", response_model=ModelList, summary="List models")
async def list_models(runtime: RuntimeDep) -> ModelList:
    return await runtime.run_blocking(catalog.list_models, runtime.registry, runtime.cache)


@router.get("/{name}", response_model=ModelDetail, summary="Spec, versions and aliases of a model")
async def get_model(name: ModelName, runtime: RuntimeDep) -> ModelDetail:
    return await runtime.run_blocking(catalog.model_detail, runtime.registry, runtime.cache, name)


@router.get("/{name}/versions/{version}", summary="Manifest of one version")
async def get_version(name: ModelName, version: Annotated[int, Path(ge=1)], registry: RegistryDep) -> dict:
    return registry.read_manifest(name, version)


@router.put("/{name}/aliases/{alias}", response_model=AliasResult, summary="Point an alias at a version")
async def put_alias(
    name: ModelName, alias: str, body: AliasUpdate, runtime: RuntimeDep, cache: CacheDep
) -> AliasResult:
    aliases = await runtime.run_blocking(catalog.move_alias, runtime.registry, cache, name, alias, body.version)
    return AliasResult(model=name, alias=alias, version=body.version, aliases=aliases)
