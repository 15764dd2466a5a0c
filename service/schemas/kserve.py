"""Wire models of KServe's time-series protocol (``kserve.protocol.rest.timeseries.types``).

Field names, enums and optionality follow KServe's types, so its clients' bodies validate here
and our answers validate with its ``ForecastResponse``; like KServe's, unknown members are
allowed. The tests check both directions with KServe's own types (dev extra).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from service.schemas.predict import FailFast

Values = Annotated[list[StrictFloat | StrictInt], FailFast]
TimeSeries = Values | Annotated[list[Values], FailFast]
"""One series' values: a list of numbers (univariate) or one list per time step (multivariate)."""


class Frequency(StrEnum):
    SECOND = "second"
    SECOND_SHORT = "S"
    MINUTE = "minute"
    MINUTE_SHORT = "T"
    HOUR = "hour"
    HOUR_SHORT = "H"
    DAY = "day"
    DAY_SHORT = "D"
    WEEK = "week"
    WEEK_SHORT = "W"
    MONTH = "month"
    MONTH_SHORT = "M"
    QUARTER = "quarter"
    QUARTER_SHORT = "Q"
    YEAR = "year"
    YEAR_SHORT = "Y"


class TimeSeriesType(StrEnum):
    UNIVARIATE = "univariate_time_series"
    MULTIVARIATE = "multivariate_time_series"


class Status(StrEnum):
    COMPLETED = "completed"
    ERROR = "error"
    PENDING = "pending"
    PARTIAL = "partial"


class TimeSeriesInput(BaseModel):
    """One series: its name (a panel's key values joined by '/'), and its actuals after the
    version's cutoff (the forecast starts after them; empty: from the cutoff)."""

    model_config = ConfigDict(extra="allow")

    type: TimeSeriesType
    name: StrictStr
    series: TimeSeries
    frequency: Frequency
    start_timestamp: StrictStr | None = Field(
        default=None,
        description="ISO 8601 time of the first value; default: the step after the version's cutoff",
    )


class ForecastOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    horizon: StrictInt = Field(description="Steps to forecast after the last input value")
    quantiles: Annotated[list[StrictFloat], FailFast] | None = Field(
        default=None, description="Quantile levels in (0, 1), e.g. [0.1, 0.5, 0.9]"
    )


class ForecastRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "airline",
                    "inputs": [
                        {
                            "type": "univariate_time_series",
                            "name": "passengers",
                            "series": [417.0, 391.0],
                            "frequency": "M",
                            "start_timestamp": "1961-01-01",
                        }
                    ],
                    "options": {"horizon": 6, "quantiles": [0.1, 0.5, 0.9]},
                }
            ]
        },
    )

    model: StrictStr = Field(description="'name', 'name:version' or 'name@alias' (default alias production)")
    inputs: Annotated[list[TimeSeriesInput], FailFast]
    options: ForecastOptions
    metadata: dict[str, object] | None = None


class Error(BaseModel):
    code: str | None = None
    message: str
    param: str | None = None
    type: str


class ErrorResponse(BaseModel):
    error: Error


class TimeSeriesForecast(BaseModel):
    type: TimeSeriesType
    name: str
    mean_forecast: list[float | None] | list[list[float | None]]
    frequency: Frequency
    start_timestamp: str
    quantiles: dict[str, list[float | None] | list[list[float | None]]] | None = None


class ForecastOutput(BaseModel):
    type: str
    id: str
    status: Status
    content: list[TimeSeriesForecast]
    error: Error | None = None


class ForecastResponse(BaseModel):
    id: str
    created_at: int
    status: Status
    error: Error | None = None
    model: str
    outputs: list[ForecastOutput]
