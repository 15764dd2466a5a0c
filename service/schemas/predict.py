"""Wire models of the predict endpoint (strict; documented in OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from service.errors import InvalidInput, LimitExceeded
from service.forecasting.served import PredictQuery
from service.tables import TableLimits, check_columns, json_containers, wire_to_frame


def _unit_levels(value: list[float]) -> list[float]:
    for v in value:
        if not 0.0 < v < 1.0:
            raise ValueError(f"{v} is not strictly between 0 and 1")
    return sorted(set(value))


# every list stops at its first bad item (pydantic's fail_fast): a body of a million bad items
# is one error, not a million (2M errors: 1.2 s to validate, 17 s to list, 2 GB)
FailFast = Field(fail_fast=True)
Levels = Annotated[list[StrictFloat], FailFast, AfterValidator(_unit_levels)]
"""Interval coverages or quantile levels: each strictly between 0 and 1 (sorted, unique)."""
Cell = StrictStr | StrictInt | StrictFloat | bool | None
WireTable = dict[str, Annotated[list[Cell], FailFast]]
SeriesKey = Annotated[list[StrictStr | StrictInt], FailFast] | dict[str, StrictStr | StrictInt] | StrictStr


class PredictRequest(BaseModel):
    """Everything is optional except exogenous values for models fitted with them."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"horizon": 12, "coverage": [0.8, 0.95]},
                {"fh": [1, 6, 12], "quantiles": [0.1, 0.5, 0.9]},
                {"series": [["Food preparation", "__total"]], "horizon": 6},
                {
                    "horizon": 2,
                    "observations": {"month": ["1961-01-01"], "passengers": [417.0]},
                },
                {
                    "horizon": 2,
                    "exogenous": {
                        "quarter": [187, 188],
                        "income": [0.5, 0.6],
                        "production": [0.1, 0.2],
                        "savings": [1.0, 1.5],
                        "unemployment": [0.0, 0.1],
                    },
                },
            ]
        },
    )

    horizon: StrictInt | None = Field(default=None, description="Steps ahead: 1..horizon. Default: the model's horizon")
    fh: Annotated[list[StrictInt], FailFast] | None = Field(
        default=None, description="Relative steps ahead, e.g. [1, 3, 12]"
    )
    timestamps: Annotated[list[StrictStr | StrictInt], FailFast] | None = Field(
        default=None, description="Absolute times (ISO 8601, or integers for integer-indexed models)"
    )
    series: Annotated[list[SeriesKey], FailFast] | None = Field(
        default=None,
        description="Subset of series: key lists top level first, objects by key column, or a string for "
        "one-key panels. Hierarchies accept aggregate nodes ('__total').",
    )
    coverage: Levels = Field(default_factory=list, description="Interval coverages in (0, 1)")
    quantiles: Levels = Field(default_factory=list, description="Quantile levels in (0, 1)")
    exogenous: WireTable | None = Field(default=None, description="Future exogenous values, column-oriented")
    observations: WireTable | None = Field(
        default=None, description="New actuals after the cutoff; the forecast starts from them (no refit)"
    )
    version: StrictInt | None = Field(default=None, ge=1, description="A version number")
    alias: StrictStr | None = Field(default=None, description="An alias; default 'production'")
    record: StrictBool = Field(
        default=False,
        description="Record this forecast for monitoring (live accuracy, anomalies); the spec's "
        "monitoring.record_live records every live one",
    )

    @property
    def has_tables(self) -> bool:
        return self.exogenous is not None or self.observations is not None

    def to_query(self, keys: tuple[str, ...], max_columns: int = TableLimits.max_columns) -> PredictQuery:
        """The domain query; tables are turned into DataFrames by `service.tables` (their
        columns counted first). Linear in the body: off the event loop for tables."""
        return PredictQuery(
            horizon=self.horizon,
            fh=tuple(self.fh) if self.fh is not None else None,
            timestamps=tuple(self.timestamps) if self.timestamps is not None else None,
            series=tuple(normalize_series(s, keys) for s in self.series) if self.series is not None else None,
            coverage=tuple(self.coverage),
            quantiles=tuple(self.quantiles),
            exogenous=wire_to_frame(self.exogenous, "exogenous", max_columns) if self.exogenous is not None else None,
            observations=(
                wire_to_frame(self.observations, "observations", max_columns) if self.observations is not None else None
            ),
        )


TABLES = ("observations", "exogenous")


def parse_body(body: bytes, *, max_columns: int, max_series: int) -> PredictRequest:
    """A JSON body to a `PredictRequest` with the budgets checked before each step's work:
    the count of JSON arrays and objects on the bytes (a 4.5 MB body of 300k one-row columns
    must never become 300k lists), then each table's columns and the series on the parsed
    object, then validation. Raises `LimitExceeded`, ``orjson.JSONDecodeError`` or pydantic's
    ``ValidationError``. Linear in the body: run it off the event loop."""
    # the most a valid body holds: the body, two tables of columns, five lists, the series
    ceiling = 2 * (max_columns + 1) + max_series + 8
    containers = json_containers(body, ceiling)
    if containers > ceiling:
        raise LimitExceeded(
            f"the body holds {containers} JSON arrays and objects; at most {ceiling}: a table has at most "
            f"{max_columns} columns (setting FORECAST_MAX_COLUMNS_PER_TABLE), 'series' at most {max_series} "
            "entries and cells are scalars",
            field="body",
            maximum=ceiling,
        )
    raw = orjson.loads(body)
    if isinstance(raw, dict):
        for name in TABLES:
            if isinstance(raw.get(name), dict):
                check_columns(len(raw[name]), name, max_columns)
        if isinstance(raw.get("series"), list) and len(raw["series"]) > max_series:
            raise LimitExceeded(
                f"{len(raw['series'])} series requested; at most {max_series}", field="series", maximum=max_series
            )
    return PredictRequest.model_validate(raw)


def normalize_series(raw: Any, keys: tuple[str, ...]) -> tuple[str, ...]:
    """A series key from the wire (list, object by key column, or string) as a tuple."""
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - set(keys))
        missing = [k for k in keys if k not in raw]
        if unknown or missing:
            raise InvalidInput(
                f"series {raw}: expected keys {list(keys)}"
                + (f", unknown {unknown}" if unknown else "")
                + (f", missing {missing}" if missing else ""),
                field="series",
            )
        return tuple(str(raw[k]) for k in keys)
    if isinstance(raw, list):
        return tuple(str(v) for v in raw)
    return (str(raw),)


class PredictResponse(BaseModel):
    """The forecast table is column-oriented: keys, time, targets, then intervals and quantiles."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "airline",
                    "version": 1,
                    "cutoff": "1960-12-01",
                    "freq": "M",
                    "forecast": {
                        "month": ["1961-01-01", "1961-02-01"],
                        "passengers": [441.3, 429.6],
                        "passengers_lower_80": [427.3, 413.6],
                        "passengers_upper_80": [455.3, 445.6],
                    },
                }
            ]
        }
    )

    model: str
    version: int
    cutoff: str | int
    freq: str | None
    forecast: dict[str, list[Any]]
    observations_mode: Literal["state", "refit"] | None = Field(
        default=None,
        description="present when the request sent 'observations': how this version took them, 'state' "
        "(fixed parameters, new data) or 'refit' (refitted on a private copy); header X-Observations-Mode",
    )
