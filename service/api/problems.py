"""The one error table: domain exception -> RFC 9457 problem+json response."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

import fastapi.routing
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from service import errors
from service.api.protocols import kserve, mlflow
from service.tables import encode_json

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem: every 4xx and 5xx answer of the service (media type "
    "application/problem+json). Members besides the four required ones help to fix the request.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {
            "type": "string",
            "description": "A URI reference naming the kind of problem",
            "examples": ["/problems/not-found"],
        },
        "title": {"type": "string", "description": "Short summary of the kind of problem", "examples": ["Not found"]},
        "status": {"type": "integer", "minimum": 400, "maximum": 599, "description": "The HTTP status code"},
        "detail": {"type": "string", "description": "What went wrong with this request, and what to change"},
        "field": {"type": "string", "description": "The request field, parameter or header at fault"},
        "errors": {
            "type": "array",
            "items": {"type": "object"},
            "description": "Every validation issue (422): each with its field and message",
        },
        "retry_after": {
            "type": "integer",
            "description": "Seconds to wait before retrying (also the Retry-After header)",
        },
    },
    "additionalProperties": True,
}
"""The `Problem` component of the OpenAPI document (`service.api.openapi` adds it)."""

PROBLEM_DESCRIPTIONS: dict[int, str] = {
    400: "The body is not JSON where JSON is required (malformed, not UTF-8, or another Content-Type)",
    401: "Missing or invalid API key",
    403: "The key's role may not do this (an admin key is needed)",
    404: "Unknown model, version, alias, series, job or dataset",
    408: "The request body paused longer than FORECAST_BODY_TIMEOUT",
    409: "Conflict with the current state (a version that cannot load, an unreadable spec, a job's state)",
    413: "Body over the size limit (FORECAST_MAX_BODY_BYTES)",
    422: "Invalid request: the detail names the field",
    429: "Too many queued or running jobs for this key (Retry-After)",
    500: "The server failed; the error is logged with the request's id",
    503: "Not ready, storage not readable or writable, or a live forecast over its time limit (Retry-After)",
    507: "The disk is full; nothing was stored",
}
"""Every status a problem answer can have, with what it means in this service. Which of them
an operation documents is decided in `service.api.openapi` from what the operation takes."""


def problem_response(status: int, description: str | None = None) -> dict[str, Any]:
    """An OpenAPI response object: problem+json with the shared `Problem` schema."""
    return {
        "description": description or PROBLEM_DESCRIPTIONS[status],
        "content": {PROBLEM_JSON: {"schema": dict(PROBLEM_REF)}},
    }


PROBLEM: dict[str, Any] = {"content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}
"""An operation's own problem response: ``responses={409: PROBLEM}`` documents that status for
that operation (description from `PROBLEM_DESCRIPTIONS` unless given)."""

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: problem_response(status) for status in PROBLEM_DESCRIPTIONS
}
"""What a router passes as ``responses=``: the problem statuses its operations may document;
`service.api.openapi` keeps, per operation, only those that operation can answer."""

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


ProtocolError = Callable[[int, str, str, "dict[str, str] | None", dict[str, Any]], Response]
PROTOCOL_ERRORS: list[tuple[str, ProtocolError, str]] = [
    (kserve.PREFIX, kserve.error_response, "ErrorResponse"),
    (mlflow.PREFIX, mlflow.error_response, "ScoringError"),
]
"""Paths whose protocol has an error form of its own: (path prefix, renderer, the OpenAPI
component of its body). Everything else answers RFC 9457 problem+json."""


def _protocol(path: str) -> tuple[str, ProtocolError, str] | None:
    return next((entry for entry in PROTOCOL_ERRORS if path.startswith(entry[0])), None)


def protocol_error_schema(path: str) -> dict[str, str] | None:
    """The OpenAPI schema of an error answer on ``path`` when a protocol owns it."""
    owner = _protocol(path)
    return {"$ref": f"#/components/schemas/{owner[2]}"} if owner else None


def respond(
    path: str, status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """An error answer in the form of the protocol that owns ``path``."""
    owner = _protocol(path)
    if owner is not None:
        return owner[1](status, title, detail, headers, extra)
    return problem(status, title, detail, headers=headers, **extra)


async def send_problem(
    send: Any,
    status: int,
    title: str,
    detail: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    path: str = "",
    **extra: Any,
) -> None:
    """A problem answer from pure ASGI middleware (before or without FastAPI), in the form of
    the protocol that owns ``path``."""
    if _protocol(path) is not None:
        answer = respond(path, status, title, detail, {k.decode(): v.decode() for k, v in headers}, **extra)
        await send({"type": "http.response.start", "status": status, "headers": answer.raw_headers})
        await send({"type": "http.response.body", "body": answer.body})
        return
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


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ServiceError)
    status = status_for(exc)
    if status >= 500:
        log.error("%s: %s", exc.title, exc.detail)
    retry_after = exc.extra.get("retry_after")
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="forecast-service"'}
    extra = {k: v for k, v in exc.extra.items() if k not in ("type", "title", "status", "detail", "headers")}
    return respond(request.url.path, status, exc.title, exc.detail, headers=headers, **extra)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def _not_json(request: Request, exc: RequestValidationError) -> Response | None:
    """A 400 for a body that is not JSON where the operation takes JSON: malformed JSON, or a
    body FastAPI left as bytes because its Content-Type is not JSON. None for JSON bodies
    whose content is invalid (they stay 422, each issue naming its field)."""
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            position = next((p for p in err.get("loc", ())[1:] if isinstance(p, int)), None)
            reason = (err.get("ctx") or {}).get("error") or err.get("msg", "JSON decode error")
            where = f" at character {position}" if position is not None else ""
            return respond(
                request.url.path,
                400,
                "Malformed JSON",
                f"the request body is not valid JSON ({reason}{where}): send one JSON object",
                field="body",
            )
    if isinstance(exc.body, bytes | bytearray) and exc.body:
        sent = request.headers.get("content-type") or "none"
        return respond(
            request.url.path,
            400,
            "Unsupported body",
            f"this operation takes a JSON body: send it with Content-Type: application/json (got {sent[:100]})",
            field="Content-Type",
        )
    return None


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    not_json = _not_json(request, exc)
    if not_json is not None:
        return not_json
    issues = [
        {"field": _location(tuple(err.get("loc", ()))), "message": err.get("msg", "invalid")} for err in exc.errors()
    ]
    detail = "; ".join(f"{i['field']}: {i['message']}" for i in issues[:10])
    return respond(
        request.url.path, 422, "Invalid request", detail, field=issues[0]["field"] if issues else None, errors=issues
    )


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
    detail = str(exc.detail)
    if exc.status_code == 400 and detail == "There was an error parsing the body":  # FastAPI's, for a JSON body
        detail = "the request body cannot be read as JSON (it is not UTF-8 text): send one UTF-8 JSON object"
        return respond(request.url.path, 400, "Malformed JSON", detail, field="body")
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; list every method
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method[:16]} is not allowed on this path; use {' or '.join(allowed)}"
        return respond(request.url.path, 405, titles[405], detail, headers=headers, allowed=allowed)
    return respond(
        request.url.path, exc.status_code, titles.get(exc.status_code, "HTTP error"), detail, headers=headers or None
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path (the routes of included routers too)."""
    methods: set[str] = set()
    scope = {**request.scope, "method": "GET"}
    for route in iter_routes(request.app.routes):
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ("GET", "HEAD"))
    return sorted(methods)


def iter_routes(routes: Any) -> list[Any]:
    """The app's routes with included routers opened up (FastAPI >= 0.160 keeps them nested:
    each is then a route context carrying the router's prefix, dependencies and responses)."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(iterate(routes)) if iterate is not None else list(routes)


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
    return respond(
        request.url.path, 500, "Internal error", "the server failed; the error is logged with this request's id"
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OSError, _unexpected)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _unexpected)
    app.add_exception_handler(Exception, _unexpected)
