"""The one error table: domain exception -> RFC 9457 problem+json response."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service import errors
from service.tables import encode_json

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# most specific first: the first matching class wins
STATUS_BY_ERROR: list[tuple[type[errors.ServiceError], int]] = [
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.PayloadTooLarge, 413),
    (errors.InvalidInput, 422),
    (errors.ForecastFailed, 422),
    (errors.Conflict, 409),
    (errors.VersionLoadError, 409),
    (errors.IntegrityError, 409),
    (errors.NotReady, 503),
]


def status_for(exc: errors.ServiceError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def _slug(title: str) -> str:
    return title.lower().replace(" ", "-")


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body = {"type": f"/problems/{_slug(title)}", "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None and k not in body})
    return Response(encode_json(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def _service_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ServiceError)
    status = status_for(exc)
    if status >= 500:
        log.error("%s: %s", exc.title, exc.detail)
    retry_after = exc.extra.get("retry_after")
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="forecast-service"'}
    extra = {k: v for k, v in exc.extra.items() if k not in ("type", "title", "status", "detail", "headers")}
    return problem(status, exc.title, exc.detail, headers=headers, **extra)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = [
        {"field": _location(tuple(err.get("loc", ()))), "message": err.get("msg", "invalid")} for err in exc.errors()
    ]
    detail = "; ".join(f"{i['field']}: {i['message']}" for i in issues[:10])
    return problem(422, "Invalid request", detail, field=issues[0]["field"] if issues else None, errors=issues)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large", 401: "Unauthorized"}
    return problem(
        exc.status_code,
        titles.get(exc.status_code, "HTTP error"),
        str(exc.detail),
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "Internal error", "the server failed; the error is logged with this request's id")


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
