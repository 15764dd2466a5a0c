"""The OpenAPI document: stable operation ids, and every problem answer documented.

Operation ids are the camelCase of the route function's name (``list_models`` ->
``listModels``), but for the few in `OPERATION_IDS`: client generators and schemathesis
links name operations by them, so they change only on purpose (a test pins the list).

Problem responses: every 4xx/5xx answer is RFC 9457 problem+json with the `Problem`
schema component. Which statuses an operation documents follows from what it takes and
does (`problem_statuses`), plus whatever its route declares itself; the router-wide
`PROBLEM_RESPONSES` are narrowed to those, and FastAPI's own 422 schema is replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI

from service.api.deps import BearerRole
from service.api.problems import (
    PROBLEM_DESCRIPTIONS,
    PROBLEM_JSON,
    PROBLEM_RESPONSES,
    PROBLEM_SCHEMA,
    iter_routes,
    problem_response,
    protocol_error_schema,
)

OPERATION_IDS: dict[str, str] = {
    "forecast_png": "forecastPlot",
    "post_actuals": "sendActuals",
    "monitoring_png": "monitoringPlot",
}
"""Route function name -> operation id, where the camelCase of the name is not the API's word."""


def operation_id(route: Any) -> str:
    """FastAPI's ``generate_unique_id_function``: one id per route, the same in every build."""
    name = str(route.name)
    if name in OPERATION_IDS:
        return OPERATION_IDS[name]
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def problem_statuses(path: str, operation: dict[str, Any], *, admin: bool) -> set[int]:
    """The problem statuses an operation can answer, from what it takes and does."""
    statuses = {500}
    versioned = path.startswith("/v1/")
    has_body = "requestBody" in operation
    parameters = [p for p in operation.get("parameters", ()) if p.get("in") in ("path", "query")]
    if operation.get("security"):
        statuses.add(401)
    if admin:
        statuses.add(403)
    if any(p.get("in") == "path" for p in parameters):
        statuses.add(404)
    if has_body:
        statuses |= {400, 408, 413}
    if has_body or parameters:
        statuses.add(422)
    if path.startswith("/v1/models"):
        statuses.add(409)  # a version that cannot load, an unreadable spec or alias file
    starts_job = "202" in operation.get("responses", {})
    if starts_job:
        statuses.add(429)
    if versioned:
        statuses.add(503)
        if admin or starts_job:
            statuses.add(507)
    return statuses


def _is_admin(route: Any) -> bool:
    return any(
        isinstance(dep.dependency, BearerRole) and dep.dependency.role == "admin"
        for dep in getattr(route, "dependencies", ()) or ()
    )


def _declared(route: Any) -> dict[int, dict[str, Any]]:
    """The statuses a route declares itself (not the router-wide `PROBLEM_RESPONSES`)."""
    declared = {}
    for status, response in (getattr(route, "responses", None) or {}).items():
        code = int(status) if str(status).isdigit() else None
        if code is not None and code >= 400 and response is not PROBLEM_RESPONSES.get(code):
            declared[code] = response
    return declared


def _operations(app: FastAPI) -> Iterable[tuple[str, str, Any]]:
    for route in iter_routes(app.routes):
        methods = getattr(route, "methods", None)
        if not getattr(route, "include_in_schema", False) or not methods or not hasattr(route, "dependant"):
            continue
        for method in methods:
            yield route.path_format, method.lower(), route


def document_problems(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """Narrow and complete each operation's problem responses; add the `Problem` component."""
    for path, method, route in _operations(app):
        operation = schema.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            continue
        declared = _declared(route)
        responses = operation.setdefault("responses", {})
        kept = {code: value for code, value in responses.items() if not code.isdigit() or int(code) < 400}
        for code, response in declared.items():
            content = response.get("content") or {}
            if content and PROBLEM_JSON not in content:  # a declared non-problem answer (readyz' 503)
                kept[str(code)] = responses[str(code)]
        wanted = problem_statuses(path, operation, admin=_is_admin(route))
        protocol = protocol_error_schema(path)
        for code in sorted(wanted | set(declared)):
            description = declared[code].get("description") if code in declared else None
            if protocol is not None:  # a protocol adapter answers every error in its own form
                text = description or PROBLEM_DESCRIPTIONS.get(code, "Error")
                kept[str(code)] = {"description": text, "content": {"application/json": {"schema": protocol}}}
                continue
            if str(code) in kept:
                continue
            if code not in PROBLEM_DESCRIPTIONS and not description:
                description = "Problem"
            kept[str(code)] = problem_response(code, description)
        operation["responses"] = dict(sorted(kept.items(), key=lambda item: item[0]))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, replaced
        others = {name: value for name, value in components.items() if name != unused}
        if f"#/components/schemas/{unused}'" not in repr((schema["paths"], others)):
            components.pop(unused, None)
    schema["components"]["schemas"] = dict(sorted(components.items()))
    return schema


def install(app: FastAPI) -> None:
    """`app.openapi()` returns the document with its problems documented (built once)."""
    build: Callable[[], dict[str, Any]] = app.openapi
    documented: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI's own, cached until the routes change
        if not documented or documented[0] is not schema:
            document_problems(app, schema)
            documented[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
