"""Wire models of MLflow's scoring protocol (``/invocations``: pandas split or records frames)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.predict import Cell, FailFast


class SplitFrame(BaseModel):
    """A frame as pandas' ``to_dict(orient="split")`` writes it."""

    model_config = ConfigDict(extra="forbid")

    columns: Annotated[list[str | int], FailFast] = Field(default_factory=list)
    data: Annotated[list[Annotated[list[Cell], FailFast]], FailFast] = Field(default_factory=list)
    index: Annotated[list[Cell], FailFast] | None = None


class ScoringRequest(BaseModel):
    """One of ``dataframe_split`` and ``dataframe_records``: the future exogenous rows of a model
    fitted with them, an empty frame for any other model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"dataframe_split": {"columns": [], "data": []}}]},
    )

    dataframe_split: SplitFrame | None = None
    dataframe_records: Annotated[list[dict[str, Cell]], FailFast] | None = None


class ScoringResponse(BaseModel):
    """One record per forecast row, in the columns of sktime's mlflow flavour."""

    predictions: list[dict[str, float | None]]


class ScoringError(BaseModel):
    error_code: str
    message: str
