from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.responses import Response

from service.api.deps import ReadAccess, RuntimeDep
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.forecasting import plots
from service.forecasting.served import Answer, Limits, PredictQuery, ServedVersion
from service.runtime import Runtime
from service.schemas.predict import PredictRequest, PredictResponse, normalize_series, parse_body
from service.serving.fastlane import ARROW, CSV, answer_headers, encode_forecast, negotiate
from service.serving.responses import CachedAnswer

OBSERVATIONS_HEADER = "X-Observations-Mode"
"""How a forecast with ``observations`` took them: ``state`` (fixed parameters, new data) or
``refit`` (refitted on a private copy); also the body's ``observations_mode``."""

INLINE_BODY_BYTES = 16 * 1024
"""Bodies up to this size are parsed by FastAPI on the event loop (well under a millisecond
for a normal one, a few ms at worst); larger ones on a worker thread (`OffLoopBody`)."""


class _ParsedRequest(Request):
    """A request whose body was parsed and validated before FastAPI asks for its JSON."""

    parsed: PredictRequest | None = None

    async def json(self) -> Any:
        return self.parsed if self.parsed is not None else await super().json()


class OffLoopBody(APIRoute):
    """FastAPI parses and validates a body on the event loop (stdlib json + pydantic: 1.7 s
    for an 8.6 MB body of 620k one-row columns, the loop stalled all that time). A JSON body
    over `INLINE_BODY_BYTES` is parsed with its budgets checked and validated on a worker
    thread instead (`parse_body`); FastAPI gets the validated model, which it does not
    validate again."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            wrapped = _ParsedRequest(request.scope, request.receive)
            body = await wrapped.body()
            if len(body) > INLINE_BODY_BYTES and _is_json(wrapped.headers.get("content-type")):
                runtime: Runtime = wrapped.app.state.runtime
                # the key first (as `ReadAccess` will): no work on a large body for a stranger
                runtime.keys.authorize(wrapped.headers.get("authorization"), "read")
                wrapped.parsed = await runtime.run_blocking(_parse, body, runtime)
            return await handler(wrapped)

        return route


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI would parse a body of this type as JSON."""
    kind = (content_type or "").split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _parse(body: bytes, runtime: Runtime) -> PredictRequest:
    """`parse_body`, its errors as FastAPI reports them (422, each naming its field)."""
    settings = runtime.settings
    try:
        return parse_body(body, max_columns=settings.max_columns_per_table, max_series=settings.max_series_per_request)
    except orjson.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}], body=None) from None
    except ValidationError as exc:
        errors = exc.errors(include_url=False)[:50]
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors], body=None) from None


router = APIRouter(
    prefix="/v1/models",
    tags=["predict"],
    dependencies=[ReadAccess],
    responses=PROBLEM_RESPONSES,
    route_class=OffLoopBody,
)


@router.post(
    "/{name}/predict",
    summary="Forecasts of a version (default: alias production)",
    response_model=PredictResponse,
    responses={
        200: {"content": {CSV: {}, ARROW: {}}, "description": "The forecast table (JSON, CSV or Arrow IPC stream)"},
        404: {"description": "Unknown model, version, alias or series", **PROBLEM},
        413: {"description": "Body over the size limit", **PROBLEM},
        422: {"description": "Invalid request: the detail names the field", **PROBLEM},
    },
)
async def predict(name: Annotated[str, Path(examples=["airline"])], body: PredictRequest, request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime  # not a dependency: this is the hot path
    served = await runtime.served(name, body.version, body.alias)
    request.state.model, request.state.version = name, served.version
    runtime.metrics.predictions.labels(name, str(served.version)).inc()
    media = negotiate(request.headers.get("accept"))
    answer, query = await _answer(runtime, served, body, len(await request.body()))
    runtime.metrics.fast_path.labels(name, "fast" if answer.fast else "live").inc()
    if body.record or not answer.fast:
        await runtime.run_blocking(
            runtime.monitor_answer, served, answer, query, body.record, body.coverage, body.quantiles
        )
    payload, cutoff = encode_forecast(name, served, answer, media)
    headers = answer_headers(served, cutoff)
    if answer.observations_mode:
        headers[OBSERVATIONS_HEADER] = answer.observations_mode
    response = Response(payload, media_type=media, headers=headers)
    if answer.fast and body.alias is None and not body.record:
        # the fast lane answers the same bytes next time without FastAPI (service.serving.fastlane)
        entry = CachedAnswer(
            version=served.version,
            follows_production=body.version is None,
            payload=payload,
            headers=tuple(h for h in response.raw_headers if h[0] != b"content-length"),
        )
        runtime.responses.put((name, await request.body(), media), entry)
    return response


async def _answer(
    runtime: Runtime, served: ServedVersion, body: PredictRequest, size: int
) -> tuple[Answer, PredictQuery | None]:
    """A small body without tables is answered on the loop when the precomputed table covers
    it; tables (and anything in a large body) are converted and answered on a worker thread.
    Returns the answer and, when tables were converted, the query they became."""
    limits, max_columns = runtime.limits, runtime.settings.max_columns_per_table
    timeout = runtime.settings.live_predict_timeout
    if body.has_tables or size > INLINE_BODY_BYTES:
        return await runtime.run_blocking(_convert_and_answer, served, body, limits, max_columns, timeout=timeout)
    query = body.to_query(served.schema.keys, max_columns)
    fast = served.try_fast(query, limits)
    if fast is not None:
        return fast, None
    return await runtime.run_blocking(served.answer, query, limits, timeout=timeout), None


def _convert_and_answer(
    served: ServedVersion, body: PredictRequest, limits: Limits, max_columns: int
) -> tuple[Answer, PredictQuery]:
    query = body.to_query(served.schema.keys, max_columns)
    return served.answer(query, limits), query


@router.get(
    "/{name}/forecast.png",
    summary="Plot: history, forecast and interval band",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: PROBLEM, 422: PROBLEM},
)
async def forecast_png(
    name: Annotated[str, Path(examples=["airline"])],
    runtime: RuntimeDep,
    series: Annotated[
        list[str] | None,
        Query(description="Series to draw, key values joined by '/', e.g. 'Food preparation/Hobs'; repeatable"),
    ] = None,
    horizon: Annotated[int | None, Query(ge=1)] = None,
    coverage: Annotated[float | None, Query(gt=0, lt=1)] = None,
    version: Annotated[int | None, Query(ge=1)] = None,
    alias: str | None = None,
) -> Response:
    served = await runtime.served(name, version, alias)
    keys = served.schema.keys
    chosen = tuple(normalize_series(s.split("/"), keys) for s in series) if series else None
    query = PredictQuery(horizon=horizon, series=chosen, coverage=(coverage,) if coverage else ())
    png = await runtime.run_blocking(plots.forecast_png, runtime.registry, served, query, runtime.limits)
    return Response(png, media_type="image/png")
