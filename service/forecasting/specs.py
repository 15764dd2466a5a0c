"""Model specs (``model.yaml``) and the allow-listed resolution of forecaster specs.

A forecaster spec is a nested ``{class, params}`` object. Class names are resolved
only against the reviewed allow-list of `service.forecasting.allowlist`; parameters
that can carry code, modules, files or weights are refused. Nothing is imported from a
user-given module path and nothing is evaluated.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.documents import load_document
from service.errors import SpecError, SpecFileInvalid
from service.forecasting.allowlist import ALLOWED, allowed_classes, refused_param
from service.registry.store import SPEC_FILE, Registry
from service.tables import Schema

Kind = Literal["single", "panel", "hierarchical"]


# ----------------------------------------------------------------------------- allow-list
def allow_list() -> dict[str, Callable[..., Any]]:
    """Every class or factory a spec may name, by bare name (`service.forecasting.allowlist`)."""
    return allowed_classes()


def qualified_name(obj: Any) -> str:
    target = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    return f"{target.__module__}.{target.__qualname__}"


def resolve_class(name: Any) -> Callable[..., Any]:
    """Look a class name up in the allow-list; a dotted name must be the entry's public
    import path or its real path."""
    if not isinstance(name, str) or not name:
        raise SpecError(f"'class' must be a non-empty string, got {name!r}", field="class")
    allowed = allow_list()
    bare = name.rsplit(".", 1)[-1]
    found = allowed.get(bare)
    if found is not None and "." in name:
        public = ALLOWED[bare].replace(":", ".")
        if name not in (public, qualified_name(found)):
            found = None
    if found is None:
        raise SpecError(
            f"class '{name[:200]}' is not in the allow-list (the reviewed sktime forecasters, reductions, "
            "compositions, reconcilers and transformers, scikit-learn regressors, XGBRegressor, LGBMRegressor, "
            "make_reduction: see the README)",
            field="class",
            value=name[:200],
        )
    return found


# ----------------------------------------------------------------------------- build
def _is_estimator_node(value: Any) -> bool:
    return isinstance(value, Mapping) and "class" in value


def _build_value(value: Any, where: str) -> Any:
    if _is_estimator_node(value):
        return build_estimator(value, where)
    if isinstance(value, list):
        built = []
        for i, item in enumerate(value):
            # pipeline steps may be written as [name, {class, params}] pairs
            if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and _is_estimator_node(item[1]):
                built.append((item[0], build_estimator(item[1], f"{where}[{i}]")))
            else:
                built.append(_build_value(item, f"{where}[{i}]"))
        return built
    if isinstance(value, Mapping):
        return {k: _build_value(v, f"{where}.{k}") for k, v in value.items()}
    return value


def _accepted_params(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    signature = inspect.signature(factory)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    names = {
        n
        for n, p in signature.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return names, accepts_any


def build_estimator(node: Any, where: str = "forecaster") -> Any:
    """Turn a ``{class, params}`` spec into an (unfitted) estimator, or raise `SpecError`."""
    if not _is_estimator_node(node):
        raise SpecError(f"{where}: expected an object with 'class' and optional 'params'", field=where)
    unknown_keys = set(node) - {"class", "params"}
    if unknown_keys:
        raise SpecError(f"{where}: unknown keys {sorted(unknown_keys)} (only 'class', 'params')", field=where)
    factory = resolve_class(node["class"])
    params = node.get("params") or {}
    if not isinstance(params, Mapping):
        raise SpecError(f"{where}: 'params' must be an object", field=f"{where}.params")
    accepted, accepts_any = _accepted_params(factory)
    class_name = getattr(factory, "__name__", str(node["class"]))
    refused = sorted(str(p) for p in params if refused_param(class_name, str(p)))
    if refused:
        raise SpecError(
            f"{where}: {node['class']} parameter(s) {', '.join(map(repr, refused))} may carry code, a module, "
            "a file or weights and are refused in specs",
            field=f"{where}.params",
            value=refused,
        )
    bad = sorted(set(params) - accepted)
    if bad and not accepts_any:
        raise SpecError(
            f"{where}: {node['class']} has no parameter {', '.join(map(repr, bad))}; "
            f"valid parameters: {', '.join(sorted(accepted))}",
            field=f"{where}.params",
            value=bad,
        )
    kwargs = {k: _build_value(v, f"{where}.params.{k}") for k, v in params.items()}
    try:
        with warnings.catch_warnings():
            # sktime 1.2 warns that remember_data's default changes in 1.3; we set it below
            warnings.filterwarnings("ignore", message=".*remember_data.*", category=FutureWarning)
            estimator = factory(**kwargs)
    except SpecError:
        raise
    except Exception as exc:  # a bad value: sktime/sklearn validate in __init__
        raise SpecError(f"{where}: {node['class']} rejected its parameters: {exc}", field=where) from exc
    if hasattr(estimator, "set_config") and "remember_data" in getattr(estimator, "get_config", dict)():
        # remember_data explicit, so that `update` keeps working after sktime 1.3 flips the
        # default; warnings off: its 1.3 notice fires for every clone (once per series)
        estimator.set_config(remember_data=True, warnings="off")
    return estimator


# ----------------------------------------------------------------------------- describe
def jsonable(value: Any) -> Any:
    """A JSON-safe rendering of parameters: estimators become ``{class, params}``."""
    if hasattr(value, "get_params") and not inspect.isclass(value):
        return {"class": qualified_name(value), "params": jsonable(value.get_params(deep=False))}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    if inspect.isclass(value) or callable(value):
        return qualified_name(value)
    return repr(value)


# ----------------------------------------------------------------------------- model spec
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """Where a model's training data comes from and which columns play which role."""

    source: dict[str, Any] = Field(
        description="Allow-listed source: {builtin: NAME, ...params} or {path: FILE.csv|FILE.parquet}"
    )
    keys: list[str] = Field(default_factory=list, description="Series key columns; top level first")
    time: str = Field(description="Time column")
    targets: list[str] = Field(min_length=1, description="Target columns")
    exogenous: list[str] = Field(default_factory=list, description="Exogenous columns")

    @model_validator(mode="after")
    def _distinct_columns(self) -> DataSpec:
        columns = [*self.keys, self.time, *self.targets, *self.exogenous]
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise ValueError(f"columns used in more than one role: {duplicated}")
        return self


class PromotionSpec(_Strict):
    policy: Literal["auto", "always", "never"] = "auto"
    metric: str = "MASE"
    tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)


class ModelSpec(_Strict):
    """The content of ``models/<name>/model.yaml``."""

    description: str = ""
    kind: Kind | None = Field(
        default=None, description="single | panel | hierarchical; derived from the keys if omitted"
    )
    data: DataSpec
    freq: str | None = Field(
        default=None, description="pandas period frequency (M, Q, D, h, ...); none = integer index"
    )
    horizon: int = Field(default=12, ge=1, description="default forecast horizon in steps")
    forecaster: dict[str, Any]
    coverage: list[float] = Field(default_factory=list, description="interval coverages served precomputed")
    quantiles: list[float] = Field(default_factory=list, description="quantile levels served precomputed")
    schedule: str | None = Field(default=None, description="cron expression for scheduled retrains")
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)

    @field_validator("freq")
    @classmethod
    def _valid_freq(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return pd.PeriodIndex([], freq=value).freqstr
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"'{value}' is not a pandas period frequency") from exc

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"'{value}' is not a cron expression (5 fields, or 6 with seconds last)")
        return value

    @field_validator("coverage")
    @classmethod
    def _valid_coverage(cls, value: list[float]) -> list[float]:
        if any(not 0 < c < 1 for c in value):
            raise ValueError("coverages must lie strictly between 0 and 1")
        return sorted(set(value))

    @field_validator("quantiles")
    @classmethod
    def _valid_quantiles(cls, value: list[float]) -> list[float]:
        if any(not 0 < q < 1 for q in value):
            raise ValueError("quantile levels must lie strictly between 0 and 1")
        return sorted(set(value))

    @model_validator(mode="after")
    def _kind_matches_keys(self) -> ModelSpec:
        if self.kind is None:
            self.kind = "panel" if self.data.keys else "single"
        if self.kind == "single" and self.data.keys:
            raise ValueError("a single-series model has no key columns")
        if self.kind in ("panel", "hierarchical") and not self.data.keys:
            raise ValueError(f"a {self.kind} model needs key columns in data.keys")
        if self.kind == "hierarchical" and self.data.exogenous:
            raise ValueError("hierarchical models do not take exogenous columns")
        return self

    def table_schema(self) -> Schema:
        """The table schema this spec's data has (column roles, kind, frequency)."""
        assert self.kind is not None
        return Schema(
            kind=self.kind,
            keys=tuple(self.data.keys),
            time=self.data.time,
            targets=tuple(self.data.targets),
            exogenous=tuple(self.data.exogenous),
            freq=self.freq,
        )

    def build_forecaster(self) -> Any:
        return build_estimator(self.forecaster)


def parse_model_spec(raw: Any, origin: str = "spec") -> ModelSpec:
    """Validate a spec document (already parsed) and check its forecaster resolves."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"{origin}: a model spec must be an object")
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise SpecError(
            f"{origin}: {problems}"[:2000], errors=jsonable(exc.errors(include_url=False, include_input=False)[:20])
        ) from None
    spec.build_forecaster()  # resolves every class now, so a bad spec fails before it is stored
    return spec


def load_model_spec(path: Path) -> ModelSpec:
    """A ``model.yaml`` file; an invalid one is a `SpecFileInvalid` (409) naming the file."""
    origin = f"{path.parent.name}/{path.name}"
    try:
        return parse_model_spec(load_document(path.read_bytes(), "yaml", origin), origin=origin)
    except SpecError as exc:
        raise SpecFileInvalid.about(origin, exc.detail) from None


def read_spec(registry: Registry, name: str) -> ModelSpec | None:
    """A model's validated spec from the registry (None: it has none); an invalid file on
    disk is a `SpecFileInvalid` (409) naming it."""
    raw = registry.read_spec_raw(name)
    if raw is None:
        return None
    origin = f"{name}/{SPEC_FILE}"
    try:
        return parse_model_spec(raw, origin=origin)
    except SpecError as exc:
        raise SpecFileInvalid.about(origin, exc.detail) from None


def write_spec(registry: Registry, name: str, raw: Mapping[str, Any]) -> ModelSpec:
    """Validate (allow-list included) before anything is written; the store replaces the
    file atomically."""
    spec = parse_model_spec(dict(raw), origin=f"{name}/{SPEC_FILE}")
    registry.write_spec_document(name, raw)
    return spec
