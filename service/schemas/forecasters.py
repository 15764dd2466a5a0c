"""Wire models of `GET /v1/forecasters`: the allow-list with each class's parameters and tags."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ParameterInfo(BaseModel):
    name: str
    required: bool = Field(description="No default: a spec must set it")
    default: Any = Field(default=None, description="The constructor's default, as JSON (estimators as {class, params})")
    refused: bool = Field(
        default=False, description="May carry code, a module, a file or weights: a spec setting it is refused"
    )


class ForecasterInfo(BaseModel):
    name: str = Field(description="What a spec writes as `class`", examples=["AutoETS"])
    family: str = Field(description="statistical, reduction, composition, model selection, reconciliation, ...")
    import_path: str = Field(examples=["sktime.forecasting.ets.AutoETS"])
    kind: str = Field(description="sktime's object_type (forecaster, transformer, ...), regressor, or factory")
    summary: str
    parameters: list[ParameterInfo] = Field(description="In sktime's get_param_names order")
    tags: dict[str, Any] = Field(description="sktime's get_class_tags() (empty for scikit-learn style regressors)")


class ForecasterList(BaseModel):
    count: int
    forecasters: list[ForecasterInfo]
