"""Wire models of datasets, specs and retrains."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr


class MissingReport(BaseModel):
    policy: Literal["drop", "ffill", "interpolate"]
    rows_dropped: int | None = Field(default=None, description="missing=drop: rows left out")
    values_filled: int | None = Field(default=None, description="missing=ffill|interpolate: values filled")
    rows: list[int] = Field(default_factory=list, description="The first rows (of the upload) dropped or filled")


class DatasetVersion(BaseModel):
    version: str
    created_at: str
    rows: int
    series: int
    start: str | int
    end: str | int
    columns: list[str]
    missing: MissingReport | None = Field(default=None, description="What the upload's missing= policy did")


class Frequency(BaseModel):
    freq: str | None = Field(description="The pandas period frequency stored (roles.freq); null: integer steps")
    alias: str | None = Field(description="The pandas alias given or inferred (e.g. W-SAT, MS)")
    inferred: bool = Field(description="Inferred from the times (no freq was given)")
    detail: str


class DatasetInfo(BaseModel):
    name: str
    roles: dict[str, Any]
    latest: str
    versions: list[DatasetVersion]
    frequency: Frequency | None = Field(
        default=None, description="How the time frequency was found, from the upload that set the roles"
    )


class DatasetList(BaseModel):
    datasets: list[DatasetInfo]
    next_page_token: str | None = Field(default=None, description="Pass as page_token for the next page; null: last")


class GateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Literal["MAE", "RMSE", "MAPE", "sMAPE", "MASE", "WAPE"] | None = None
    tolerance: StrictFloat | StrictInt | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Relative slack, 0.05 = 5% (finite)"
    )
    folds: StrictInt | None = Field(default=None, ge=1, le=10, description="Recent windows compared (default 1)")


class RetrainBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{}, {"promote": "auto", "gate": {"metric": "MASE", "tolerance": 0.02}}]},
    )

    dataset_version: StrictStr | None = Field(default=None, description="Default: the latest version")
    promote: Literal["auto", "always", "never"] | None = Field(default=None, description="Default: the spec's policy")
    gate: GateBody | None = None
