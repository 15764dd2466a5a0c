"""The reviewed allow-list: what a spec's `class` may name, with parameters and tags, and the
presets a spec may name in one line (`forecaster: {preset: auto}`)."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field
from starlette.responses import Response

from service.api.catalog import preset_catalog
from service.api.deps import ReadAccess, RuntimeDep
from service.api.problems import PROBLEM_RESPONSES
from service.forecasting.forecasters import allow_list_catalog, describe_forecaster
from service.schemas.forecasters import ForecasterInfo, ForecasterList

router = APIRouter(
    prefix="/v1/forecasters", tags=["forecasters"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES
)


class PresetInfo(BaseModel):
    name: str = Field(description="What a spec writes as `forecaster: {preset: NAME}`", examples=["auto"])
    forecaster: str = Field(description="The allow-listed class it stands for", examples=["AutoStatistical"])
    summary: str
    defaults: dict[str, str] = Field(description="Parameters the preset sets unless its `params` give them")
    example: dict[str, Any] = Field(description="A spec's forecaster naming it", examples=[{"preset": "auto"}])


class ForecasterCatalog(ForecasterList):
    presets: list[PresetInfo] = Field(
        default_factory=list, description="One-line forecasters: {preset: NAME, params: {...}} in a spec"
    )


@functools.lru_cache(maxsize=16)
def _listing(family: str | None) -> bytes:
    entries = [e for e in allow_list_catalog() if family is None or e["family"] == family]
    return (
        ForecasterCatalog(
            count=len(entries),
            forecasters=[ForecasterInfo.model_validate(e) for e in entries],
            presets=[PresetInfo.model_validate(p) for p in preset_catalog()],
        )
        .model_dump_json()
        .encode()
    )


@router.get(
    "", response_model=ForecasterCatalog, summary="The allow-list: every class a spec may name, and the presets"
)
async def list_forecasters(
    runtime: RuntimeDep,
    family: Annotated[str | None, Query(max_length=64, description="Only this family, e.g. statistical")] = None,
) -> Response:
    # the first call reads every class's signature and tags: off the event loop
    return Response(await runtime.run_blocking(_listing, family), media_type="application/json")


@router.get("/{name}", response_model=ForecasterInfo, summary="One allow-listed class (404 with a did-you-mean)")
async def get_forecaster(
    name: Annotated[str, Path(max_length=200, examples=["AutoETS"])], runtime: RuntimeDep
) -> ForecasterInfo:
    return ForecasterInfo.model_validate(await runtime.run_blocking(describe_forecaster, name))
