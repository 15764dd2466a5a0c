"""The dashboard at ``/ui``: one static page and its script, served by the app (no Node server,
no framework), calling the same API as every other client. Read-only without an admin key;
the key is kept in the page's memory only."""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header
from starlette.responses import RedirectResponse, Response

from service.api.deps import RuntimeDep
from service.errors import NotFound, ServiceError

router = APIRouter(prefix="/ui", include_in_schema=False)

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_FILES = ("app.js", "style.css")
HEADERS = {
    # the page runs only its own script, talks only to this server, shows images it fetched
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    body = resources.files("service.api").joinpath("ui", name).read_bytes()
    return Response(body, media_type=ASSETS[name], headers=HEADERS)


@router.get("")
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/")
async def ui_page() -> Response:
    return _asset("index.html")


@router.get("/session")
async def ui_session(runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> dict[str, object]:
    """The role the page's key has (None: no key, or not a valid one) and whether keys are required."""
    try:
        role: str | None = runtime.keys.authorize(authorization, "read")
    except ServiceError:
        role = None
    return {"role": role, "keys_required": not runtime.keys.open}


@router.get("/{asset}")
async def ui_asset(asset: str) -> Response:
    """The page's script and stylesheet: nothing else is served from the folder."""
    if asset not in PAGE_FILES:
        raise NotFound(f"the dashboard has no file {asset[:100]!r}: open /ui/")
    return _asset(asset)
