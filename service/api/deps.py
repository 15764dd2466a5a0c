"""Named dependencies read from ``app.state`` (built in `create_app`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from service.jobs.store import JobStore
from service.registry.cache import ModelCache
from service.registry.store import Registry
from service.runtime import Runtime
from service.settings import Settings


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_settings(request: Request) -> Settings:
    return request.app.state.runtime.settings


async def get_registry(request: Request) -> Registry:
    return request.app.state.runtime.registry


async def get_cache(request: Request) -> ModelCache:
    return request.app.state.runtime.cache


async def get_jobs(request: Request) -> JobStore:
    return request.app.state.runtime.jobs


JobsDep = Annotated[JobStore, Depends(get_jobs)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
CacheDep = Annotated[ModelCache, Depends(get_cache)]


async def require_read(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """Reads (predict, list, backtest) need a read or admin key."""
    return request.app.state.runtime.keys.authorize(authorization, "read")


async def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """Writes (datasets, specs, aliases, retrain, cancel) need an admin key."""
    return request.app.state.runtime.keys.authorize(authorization, "admin")


ReadAccess = Depends(require_read)
AdminAccess = Depends(require_admin)
