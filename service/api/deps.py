"""Named dependencies read from ``app.state`` (built in `create_app`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer

from service.jobs.store import JobStore
from service.registry.store import Registry
from service.runtime import Runtime
from service.serving.cache import ModelCache
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


async def get_caller(request: Request) -> str:
    """The caller's identity for per-key limits (the key itself was checked by the router)."""
    return request.app.state.runtime.keys.caller_id(request.headers.get("authorization"))


JobsDep = Annotated[JobStore, Depends(get_jobs)]
CallerDep = Annotated[str, Depends(get_caller)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
CacheDep = Annotated[ModelCache, Depends(get_cache)]


class BearerRole(HTTPBearer):
    """`Authorization: Bearer <key>` checked against the key ring for a role (shown in OpenAPI)."""

    def __init__(self, role: str) -> None:
        super().__init__(
            auto_error=False,
            scheme_name="apiKey",
            description="API key; reads need a read or admin key, writes an admin key",
        )
        self.role = role

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        return request.app.state.runtime.keys.authorize(request.headers.get("authorization"), self.role)


ReadAccess = Security(BearerRole("read"))
AdminAccess = Security(BearerRole("admin"))
