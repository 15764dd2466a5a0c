"""Wire models of the model-registry endpoints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class ModelSummary(BaseModel):
    name: str
    description: str
    kind: str | None
    freq: str | None
    series_count: int | None
    production_version: int | None
    last_trained: str | None
    headline_metric: dict[str, Any] | None = None


class ModelList(BaseModel):
    models: list[ModelSummary]


class VersionSummary(BaseModel):
    version: int
    created_at: str | None
    cutoff: str | int | None
    forecaster: str | None
    job_id: str | None = None


class ModelDetail(BaseModel):
    name: str
    spec: dict[str, Any] | None
    versions: list[VersionSummary]
    aliases: dict[str, int] = Field(description="Aliases as written in aliases.json")
    serving: dict[str, int] = Field(description="Alias -> version this server answers with right now")
    loaded_versions: list[int]
    load_errors: dict[str, str] = Field(description="Versions that were refused, with the reason")
    aliases_error: str | None = Field(
        default=None,
        description="Why aliases.json cannot be used right now; `aliases` are then the last good ones",
    )


class AliasUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 3}]})

    version: StrictInt = Field(ge=1, description="The version the alias should point at")


class AliasResult(BaseModel):
    model: str
    alias: str
    version: int
    aliases: dict[str, int]
