"""Wire models of datasets, specs and retrains."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr


class DatasetVersion(BaseModel):
    version: str
    created_at: str
    rows: int
    series: int
    start: str | int
    end: str | int
    columns: list[str]


class DatasetInfo(BaseModel):
    name: str
    roles: dict[str, Any]
    latest: str
    versions: list[DatasetVersion]


class DatasetList(BaseModel):
    datasets: list[DatasetInfo]


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
