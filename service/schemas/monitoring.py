"""Wire models of the monitoring endpoints (actuals in, live accuracy, anomalies)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Metrics(BaseModel):
    MAE: float | None = None
    RMSE: float | None = None
    MAPE: float | None = None
    sMAPE: float | None = None
    MASE: float | None = None
    WAPE: float | None = None
    coverage: dict[str, float | None] | None = Field(default=None, description="Share of actuals inside each interval")
    pinball: float | None = Field(default=None, description="Mean pinball loss over the recorded quantiles")


class Unmatched(BaseModel):
    rows: int = Field(description="Rows no recorded forecast covers")
    unknown_series: int
    uncovered_times: int
    unknown_series_examples: list[list[str]]


class DriftState(BaseModel):
    model_config = ConfigDict(extra="allow")

    declared: bool = Field(description="The spec declares a monitoring policy")
    state: str = Field(description="none | ok | insufficient | no_promise | breach")
    action: str


class ActualsReport(BaseModel):
    model: str
    source: str
    rows: int
    matched: int = Field(description="Rows met by at least one recorded forecast")
    forecasts_met: int = Field(description="Forecast-actual pairs made (several versions may have forecast a point)")
    unmatched: Unmatched
    anomalies: int = Field(description="Of these actuals, those outside the served interval at `coverage`")
    coverage: float
    drift: DriftState


class StepMetrics(BaseModel):
    step: int
    points: int
    metrics: Metrics


class SeriesMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    series: list[str]
    points: int
    metrics: Metrics


class Window(BaseModel):
    times: int
    start: str | int | None
    end: str | int | None
    points: int


class VersionMonitoring(BaseModel):
    version: int
    production: bool
    points: int = Field(description="Forecast-actual pairs of this version, all times")
    window: Window
    promised: dict[str, float] | None = Field(description="What the version's backtest promised at publish")
    overall: Metrics | None
    drift: dict[str, float | None] | None = Field(description="live / promised per metric")
    by_step: list[StepMetrics]
    per_series: list[SeriesMetrics]


class MonitoringReport(BaseModel):
    model: str
    production_version: int | None
    window: int
    since: str | int | None
    actuals: int
    versions: list[VersionMonitoring]
    policy: DriftState


class Anomaly(BaseModel):
    model_config = ConfigDict(extra="allow")

    series: list[str]
    time: str | int
    actual: float
    forecast: float
    lower: float
    upper: float
    side: str
    score: float | None = Field(description="|actual - forecast| in interval half-widths")
    level: float | None = Field(description="The quantile level the actual falls at (recorded quantiles)")
    version: int
    cutoff: str | int
    step: int
    kind: str


class AnomalyList(BaseModel):
    model: str
    coverage: float
    since: Any = None
    scored: int
    count: int
    anomalies: list[Anomaly]
