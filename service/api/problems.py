"""The one error table: domain exception -> RFC 9457 problem+json response."""

from __future__ import annotations

import errno
import logging
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from service import errors
from service.tables import encode_json

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "additionalProperties": True,
}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}}}


# every protected router documents these (RFC 9457 problem+json); 422 replaces FastAPI's default
PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
"""An operation's own problem response in OpenAPI (description from the shared table)."""

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _problem_response("A body that cannot be parsed at all (not UTF-8, not JSON)"),
    401: _problem_response("Missing or invalid API key"),
    403: _problem_response("The key's role may not do this"),
    404: _problem_response("Unknown model, version, alias, series, job or dataset"),
    408: _problem_response("The request body paused longer than FORECAST_BODY_TIMEOUT"),
    409: _problem_response("Conflict with the current state (a version that cannot load, a finished job)"),
    413: _problem_response("Body over the size limit"),
    429: _problem_response("Too many queued or running jobs for this key (Retry-After)"),
    422: _problem_response("Invalid request: the detail names the field"),
    503: _problem_response("Not ready, storage not writable, or a live forecast over its time limit (Retry-After)"),
    507: _problem_response("The disk is full; nothing was stored"),
}

# most specific first: the first matching class wins
STATUS_BY_ERROR: list[tuple[type[errors.ServiceError], int]] = [
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.PayloadTooLarge, 413),
    (errors.InvalidInput, 422),
    (errors.ForecastFailed, 422),
    (errors.TooManyJobs, 429),
    (errors.InsufficientStorage, 507),
    (errors.StorageUnavailable, 503),
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


_INT64 = 2**63


def _json_safe(value: Any, depth: int = 0) -> Any:
    """Extras as JSON can carry them: integers beyond 64 bits (a version number of 2**64
    echoed back) become strings, deep or odd values their short text."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if depth < 8 and isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in list(value.items())[:100]}
    if depth < 8 and isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in list(value)[:100]]
    return str(value)[:200]


def problem_body(status: int, title: str, detail: str, **extra: Any) -> bytes:
    """The RFC 9457 body every problem answer carries (routes and raw ASGI middleware alike)."""
    body: dict[str, Any] = {"type": f"/problems/{_slug(title)}", "title": title, "status": status, "detail": detail}
    body.update({k: _json_safe(v) for k, v in extra.items() if v is not None and k not in body})
    return encode_json(body)


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    return Response(
        problem_body(status, title, detail, **extra), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


async def send_problem(
    send: Any, status: int, title: str, detail: str, headers: tuple[tuple[bytes, bytes], ...] = (), **extra: Any
) -> None:
    """A problem answer from pure ASGI middleware (before or without FastAPI)."""
    body = problem_body(status, title, detail, **extra)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    titles = {
        400: "Malformed request",
        404: "Not found",
        405: "Method not allowed",
        408: "Request timeout",
        413: "Payload too large",
    }
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; list every method
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem(exc.status_code, titles.get(exc.status_code, "HTTP error"), str(exc.detail), headers=headers or None)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(exc: BaseException) -> errors.ServiceError | None:
    """A full disk (507) or a read-only / not writable folder or database (503), from an
    OSError or SQLite's own words; the cause without the path. None for anything else."""
    text = str(getattr(exc, "orig", "") or "").lower()
    if (isinstance(exc, OSError) and exc.errno in _DISK_FULL) or "disk is full" in text:
        return errors.InsufficientStorage("the disk is full: nothing was stored; free space and retry")
    if (isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE) or any(
        words in text for words in ("readonly database", "read-only file system", "unable to open database")
    ):
        return errors.StorageUnavailable(
            "storage is read-only or not writable (the registry, data folder or job store): nothing was "
            "stored; reads keep working",
            retry_after=30,
        )
    return None


async def _unexpected(request: Request, exc: Exception) -> Response:
    translated = storage_error(exc)
    if translated is not None:
        log.error("%s: %s", translated.title, exc)
        return await _service_error(request, translated)
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "Internal error", "the server failed; the error is logged with this request's id")


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OSError, _unexpected)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _unexpected)
    app.add_exception_handler(Exception, _unexpected)
