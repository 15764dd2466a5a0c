"""Wire models of the model-registry endpoints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class ModelSummary(BaseModel):
    name: str
    description: str = Field(description="The spec's description (else the production version's)")
    kind: str | None
    freq: str | None
    series_count: int | None
    production_version: int | None
    last_trained: str | None
    headline_metric: dict[str, Any] | None = None
    tags: list[str] = Field(default_factory=list, description="Tags of the production (else latest) version")


class ModelList(BaseModel):
    models: list[ModelSummary]
    next_page_token: str | None = Field(
        default=None, description="Pass as `page_token` for the next page; null on the last page"
    )


class VersionSummary(BaseModel):
    version: int
    created_at: str | None
    cutoff: str | int | None
    forecaster: str | None
    job_id: str | None = None
    description: str | None = Field(default=None, description="Given at publish (CLI --description)")
    tags: list[str] = Field(default_factory=list, description="Given at publish (CLI --tag)")


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


# --------------------------------------------------------------------------- PUT /v1/models/{name}
SPEC_EXAMPLES: dict[str, dict[str, Any]] = {
    "theta-builtin": {
        "summary": "Theta on a built-in dataset, with intervals and quantiles",
        "value": {
            "description": "Monthly airline passengers, Theta with prediction intervals",
            "kind": "single",
            "data": {"source": {"builtin": "airline"}, "time": "month", "targets": ["passengers"]},
            "freq": "M",
            "horizon": 12,
            "forecaster": {"class": "ThetaForecaster", "params": {"sp": 12, "deseasonalize": True}},
            "coverage": [0.8, 0.95],
            "quantiles": [0.1, 0.5, 0.9],
            "promotion": {"policy": "auto", "metric": "MASE", "tolerance": 0.0},
        },
    },
    "dataset-roles": {
        "summary": "An uploaded dataset: columns and freq come from it, retention keeps 5 versions",
        "value": {
            "description": "Sales per shop, one ETS per series",
            "data": {"source": {"dataset": "shops"}},
            "horizon": 6,
            "forecaster": {"class": "AutoETS", "params": {"auto": False, "trend": "add"}},
            "keep_versions": 5,
            "schedule": "0 3 * * *",
        },
    },
    "global-xgboost": {
        "summary": "One XGBoost model over all series of a panel, on lag and window features",
        "value": {
            "description": "Global XGBoost reduction over the uploaded 'shops' panel",
            "data": {"source": {"dataset": "shops"}, "keys": ["shop"], "time": "month", "targets": ["sales"]},
            "freq": "M",
            "horizon": 6,
            "forecaster": {
                "class": "make_reduction",
                "params": {
                    "estimator": {"class": "XGBRegressor", "params": {"n_estimators": 50, "max_depth": 3}},
                    "strategy": "recursive",
                    "pooling": "global",
                    "window_length": None,
                    "transformers": [
                        {"class": "WindowSummarizer", "params": {"lag_feature": {"lag": [1, 2, 3]}, "n_jobs": 1}}
                    ],
                },
            },
        },
    },
}
SPEC_YAML_EXAMPLE = """description: Monthly airline passengers, Theta with prediction intervals
data:
  source: {builtin: airline}
  time: month
  targets: [passengers]
freq: M
horizon: 12
forecaster:
  class: ThetaForecaster
  params: {sp: 12, deseasonalize: true}
coverage: [0.8, 0.95]
"""


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.rsplit("/", 1)[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def spec_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a spec model with its nested models inlined (an operation's body
    schema in OpenAPI cannot point into the model's own ``$defs``)."""
    schema = model.model_json_schema()
    return _inline_refs(schema, schema.get("$defs", {}))


class SpecCheck(BaseModel):
    """What `PUT /v1/models/{name}` checked against the spec's dataset."""

    checked: bool = Field(description="False: the source is not an uploaded dataset, or it is not uploaded yet")
    reason: str | None = None
    dataset: str | None = None
    version: str | None = None
    roles: dict[str, Any] | None = Field(default=None, description="keys, time, targets, exogenous as resolved")
    from_dataset: list[str] = Field(default_factory=list, description="What the spec takes from the dataset")
    freq: str | None = None
    kind: str | None = None
    series: int | None = None
    shortest_history: int | None = None
    required_history: int | None = None
    warnings: list[str] = Field(default_factory=list)


class SpecWritten(BaseModel):
    name: str
    spec: dict[str, Any] = Field(description="The document as stored in model.yaml")
    check: SpecCheck
    dry_run: bool = Field(description="True: checked only, nothing was written")
