"""Forecasts meet their actuals: actuals in, live accuracy, anomalies, the monitoring plot."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from service.api import uploads
from service.api.deps import AdminAccess, ReadAccess, RuntimeDep
from service.api.problems import PROBLEM, PROBLEM_RESPONSES
from service.api.routes.datasets import TABLE_BODY, spooled_body
from service.forecasting import plots
from service.schemas.monitoring import ActualsReport, AnomalyList, MonitoringReport
from service.schemas.predict import normalize_series

router = APIRouter(prefix="/v1/models", tags=["monitoring"], dependencies=[ReadAccess], responses=PROBLEM_RESPONSES)
ModelName = Annotated[str, Path(examples=["tourism-monthly"])]
SeriesQuery = Annotated[
    list[str] | None,
    Query(description="Series, key values joined by '/', e.g. 'T1'; repeatable (default: all)"),
]
Since = Annotated[
    str | None, Query(max_length=64, description="Only actuals at or after this time (ISO 8601 or an integer)")
]


def _series(runtime: RuntimeDep, name: str, series: list[str] | None) -> tuple[tuple[str, ...], ...] | None:
    if not series:
        return None
    keys = runtime.monitor.schema(name).keys
    return tuple(normalize_series(s.split("/"), keys) for s in series)


@router.post(
    "/{name}/actuals",
    response_model=ActualsReport,
    summary="Actuals of a model (CSV, JSON table or Parquet): joined to every recorded forecast and scored (admin)",
    dependencies=[AdminAccess],
    openapi_extra={"requestBody": TABLE_BODY},
    responses={404: PROBLEM, 413: PROBLEM, 422: PROBLEM, 503: PROBLEM},
)
async def post_actuals(name: ModelName, request: Request, runtime: RuntimeDep) -> ActualsReport:
    async with spooled_body(request, runtime) as body:
        report = await runtime.run_ingest(uploads.actuals, runtime, name, body, request.headers.get("content-type"))
    return ActualsReport(**report)


@router.get(
    "/{name}/monitoring",
    response_model=MonitoringReport,
    summary="Live accuracy per version over the rolling window, against what its backtest promised",
    responses={404: PROBLEM, 422: PROBLEM},
)
async def get_monitoring(
    name: ModelName,
    runtime: RuntimeDep,
    version: Annotated[int | None, Query(ge=1)] = None,
    series: SeriesQuery = None,
    since: Since = None,
    window: Annotated[
        int | None, Query(ge=1, le=10_000, description="Times in the window (default: the spec's)")
    ] = None,
) -> MonitoringReport:
    def report() -> dict:
        chosen = _series(runtime, name, series)
        return runtime.monitor.report(name, version=version, series=chosen, since=_time(since), window=window)

    return MonitoringReport(**await runtime.run_blocking(report))


@router.get(
    "/{name}/anomalies",
    response_model=AnomalyList,
    summary="Actuals outside the interval of the forecast served for them",
    responses={404: PROBLEM, 422: PROBLEM},
)
async def get_anomalies(
    name: ModelName,
    runtime: RuntimeDep,
    since: Since = None,
    series: SeriesQuery = None,
    coverage: Annotated[
        float | None, Query(gt=0, lt=1, description="Interval coverage (default: the spec's, 0.95)")
    ] = None,
) -> AnomalyList:
    def found() -> dict:
        chosen = _series(runtime, name, series)
        return runtime.monitor.anomalies(name, since=_time(since), series=chosen, coverage=coverage)

    return AnomalyList(**await runtime.run_blocking(found))


@router.get(
    "/{name}/monitoring.png",
    summary="Plot: actuals against the recorded forecasts and band, and the rolling live metric",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: PROBLEM, 422: PROBLEM},
)
async def monitoring_png(
    name: ModelName,
    runtime: RuntimeDep,
    series: SeriesQuery = None,
    version: Annotated[int | None, Query(ge=1)] = None,
    metric: Annotated[str | None, Query(description="The rolling metric drawn (default: the spec's, MASE)")] = None,
) -> Response:
    def draw() -> bytes:
        chosen = _series(runtime, name, series)
        return plots.monitoring_png(runtime.monitor.plot_data(name, series=chosen, version=version, metric=metric))

    return Response(await runtime.run_blocking(draw), media_type="image/png")


def _time(value: str | None) -> str | int | None:
    """An integer-indexed model's times come as digits in a query string."""
    if value is not None and value.lstrip("-").isdigit():
        return int(value)
    return value
