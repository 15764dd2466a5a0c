"""The reviewed allow-list: what a spec's `class` may name, with parameters and tags."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from service.api.deps import ReadAccess, RuntimeDep
from service.api.problems import PROBLEM_RESPONSES
from service.forecasting.forecasters import allow_list_catalog, describe_forecaster
from service.schemas.forecasters import ForecasterInfo, ForecasterList

router = APIRouter(
    prefix="/v1/forecasters", tags=["forecasters"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES
)


@functools.lru_cache(maxsize=16)
def _listing(family: str | None) -> bytes:
    entries = [e for e in allow_list_catalog() if family is None or e["family"] == family]
    return (
        ForecasterList(count=len(entries), forecasters=[ForecasterInfo.model_validate(e) for e in entries])
        .model_dump_json()
        .encode()
    )


@router.get("", response_model=ForecasterList, summary="The allow-list: every class a spec may name")
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
