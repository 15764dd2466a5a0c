from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from service.api.deps import ReadAccess, RuntimeDep
from service.api.fastlane import ARROW, CSV, JSON, negotiate
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.forecasting import plots
from service.forecasting.served import PredictQuery, ServedVersion
from service.runtime import CachedAnswer, Runtime
from service.schemas.predict import PredictRequest, PredictResponse, normalize_series
from service.tables import encode_arrow, encode_csv, encode_json, format_time, json_columns

router = APIRouter(prefix="/v1/models", tags=["predict"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES)


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
    query = body.to_query(served.schema.keys)
    answer = served.try_fast(query, runtime.limits) or await runtime.run_blocking(
        served.answer, query, runtime.limits, timeout=runtime.settings.live_predict_timeout
    )
    runtime.metrics.fast_path.labels(name, "fast" if answer.fast else "live").inc()
    cutoff = served.cutoff_text if answer.cutoff is served.cutoff else format_time(answer.cutoff)
    if media == JSON:
        payload = encode_json(
            {
                "model": name,
                "version": served.version,
                "cutoff": cutoff,
                "freq": served.freq,
                "forecast": json_columns(answer.columns),
            }
        )
    else:
        payload = encode_arrow(answer.columns) if media == ARROW else encode_csv(answer.columns)
    response = Response(payload, media_type=media, headers=_headers(served, cutoff))
    if answer.fast and body.alias is None:
        # the fast lane answers the same bytes next time without FastAPI (service.api.fastlane)
        entry = CachedAnswer(
            version=served.version,
            follows_production=body.version is None,
            payload=payload,
            headers=tuple(h for h in response.raw_headers if h[0] != b"content-length"),
        )
        runtime.responses.put((name, await request.body(), media), entry)
    return response


def _headers(served: ServedVersion, cutoff: str | int) -> dict[str, str]:
    return {"X-Model": served.name, "X-Model-Version": str(served.version), "X-Cutoff": str(cutoff)}


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
