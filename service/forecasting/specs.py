"""Model specs (``model.yaml``) and the allow-listed resolution of forecaster specs.

A forecaster spec is a nested ``{class, params}`` object. Class names are resolved
only against the reviewed allow-list of `service.forecasting.allowlist`; parameters
that can carry code, modules, files or weights are refused. Nothing is imported from a
user-given module path and nothing is evaluated.
"""

from __future__ import annotations

import difflib
import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from service.datasets.store import DatasetStore, Roles
from service.documents import load_document
from service.errors import InvalidName, NotFound, SpecError, SpecFileInvalid
from service.forecasting.allowlist import ALLOWED, allowed_classes, refused_param
from service.registry.store import SPEC_FILE, Registry
from service.tables import Schema, season_length

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
        suggestion = did_you_mean(bare)
        hint = f"; did you mean {suggestion}?" if suggestion else ""
        raise SpecError(
            f"class '{name[:200]}' is not in the allow-list{hint} (the reviewed sktime forecasters, reductions, "
            "compositions, reconcilers and transformers, scikit-learn regressors, XGBRegressor, LGBMRegressor, "
            "make_reduction: GET /v1/forecasters lists them)",
            field="class",
            value=name[:200],
            **({"suggestion": suggestion} if suggestion else {}),
        )
    return found


def did_you_mean(name: str) -> str | None:
    """The allow-listed name closest to ``name`` (case first: ``AutoEts`` -> ``AutoETS``), if any is close."""
    if not isinstance(name, str) or not name:
        return None
    by_lower = {n.lower(): n for n in allow_list()}  # installed entries only
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(name.lower()[:200], list(by_lower), n=1, cutoff=0.8)
    return by_lower[close[0]] if close else None


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


# ----------------------------------------------------------------------------- presets
PRESETS: dict[str, dict[str, str]] = {
    "auto": {
        "class": "AutoStatistical",
        "summary": "per series the median of StatsForecast AutoETS, AutoTheta, AutoARIMA and AutoCES "
        "(sktime's adapters), seasonal naive for short series; sp from the model's freq",
    },
}
"""One-line forecasters: ``forecaster: {preset: NAME}`` (optional ``params``) stands for
``{class: PRESETS[NAME]["class"], params: ...}``, with ``sp`` from the model's freq."""


def resolve_preset(node: Mapping[str, Any], freq: str | None, where: str = "forecaster") -> dict[str, Any]:
    """``{preset: NAME, params: {...}}`` as the ``{class, params}`` node it stands for: the
    preset's class with ``params``, and ``sp`` from ``freq`` unless ``params`` gives one.
    An unknown preset or key is a `SpecError` naming ``forecaster.preset``."""
    unknown_keys = set(node) - {"preset", "params"}
    if unknown_keys:
        raise SpecError(
            f"{where}: unknown keys {sorted(map(str, unknown_keys))} beside 'preset' (only 'preset', 'params')",
            field=where,
        )
    name = node["preset"]
    if not isinstance(name, str) or name not in PRESETS:
        raise SpecError(
            f"{where}.preset: unknown preset {str(name)[:200]!r}; known presets: {', '.join(sorted(PRESETS))} "
            "(GET /v1/forecasters lists them under presets)",
            field=f"{where}.preset",
            value=str(name)[:200],
            presets=sorted(PRESETS),
        )
    params = node.get("params") or {}
    if not isinstance(params, Mapping):
        raise SpecError(f"{where}: 'params' must be an object", field=f"{where}.params")
    return {"class": PRESETS[name]["class"], "params": {"sp": season_length(freq), **params}}


def build_estimator(node: Any, where: str = "forecaster") -> Any:
    """Turn a ``{class, params}`` spec (or a ``{preset, params}`` one, see `resolve_preset`:
    without a model's freq, ``sp`` is 1) into an (unfitted) estimator, or raise `SpecError`."""
    if isinstance(node, Mapping) and "preset" in node and "class" not in node:
        node = resolve_preset(node, None, where)
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


ROLE_FIELDS = ("keys", "time", "targets", "exogenous")


class DataSpec(_Strict):
    """Where a model's training data comes from and which columns play which role. A spec
    that reads an uploaded dataset (``source: {dataset: NAME}``) takes every role it does
    not name from the dataset (`ModelSpec.with_dataset_roles`)."""

    source: dict[str, Any] = Field(
        description="Allow-listed source: {dataset: NAME} (an uploaded dataset), {builtin: NAME, ...params}, "
        "{path: FILE.csv|FILE.parquet} or {sql: QUERY}"
    )
    keys: list[str] = Field(default_factory=list, description="Series key columns; top level first")
    time: str | None = Field(default=None, description="Time column (default for a dataset source: the dataset's)")
    targets: list[str] | None = Field(
        default=None, min_length=1, description="Target columns (default for a dataset source: the dataset's)"
    )
    exogenous: list[str] = Field(default_factory=list, description="Exogenous columns")

    @property
    def dataset(self) -> str | None:
        """The uploaded dataset this spec reads, if any."""
        name = self.source.get("dataset")
        return name if isinstance(name, str) else None

    @property
    def inherited_roles(self) -> list[str]:
        """The roles this spec leaves to its dataset (empty for other sources)."""
        if self.dataset is None:
            return []
        return [f for f in ROLE_FIELDS if f not in self.model_fields_set or getattr(self, f) is None]

    @model_validator(mode="after")
    def _distinct_columns(self) -> DataSpec:
        if self.dataset is None:
            missing = [f for f in ("time", "targets") if getattr(self, f) is None]
            if missing:
                raise ValueError(
                    f"data.{' and data.'.join(missing)} required: only a spec that reads an uploaded dataset "
                    "({dataset: NAME}) takes its columns from it"
                )
        columns = [*self.keys, *([self.time] if self.time else []), *(self.targets or []), *self.exogenous]
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise ValueError(f"columns used in more than one role: {duplicated}")
        return self


class PromotionSpec(_Strict):
    policy: Literal["auto", "always", "never"] = "auto"
    metric: str = "MASE"
    tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    gate_series: int = Field(
        default=1000,
        ge=0,
        description="a panel with more series is gated on this many of them, a fixed random sample "
        "(the same for candidate and production); 0: every series. Hierarchies are gated whole",
    )


class MonitoringSpec(_Strict):
    """How the service watches a model's forecasts meet their actuals (`service.jobs.monitor`)."""

    metric: Literal["MAE", "RMSE", "MAPE", "sMAPE", "MASE", "WAPE"] = Field(
        default="MASE", description="the live metric the drift policy compares with the version's backtest"
    )
    window: int = Field(
        default=6, ge=1, le=10_000, description="the latest N times with actuals that the live metric covers"
    )
    degrade: float = Field(
        default=0.25,
        ge=0.0,
        allow_inf_nan=False,
        description="a breach: the live metric over the window is above the backtest's by more than this fraction",
    )
    min_actuals: int = Field(
        default=12, ge=1, description="forecast-actual pairs the window needs before the policy judges"
    )
    action: Literal["retrain", "alert", "none"] = Field(
        default="alert",
        description="on a breach: retrain (one retrain per breach, the gate decides), alert (flagged in "
        "/monitoring and the metrics only), none (no policy)",
    )
    coverage: float = Field(
        default=0.95, gt=0.0, lt=1.0, description="anomalies: actuals outside the served interval at this coverage"
    )
    record_live: bool = Field(
        default=False, description="record every live forecast (a request's record: true records that one)"
    )
    observations_are_actuals: bool = Field(
        default=False, description="the observations sent with predict requests are taken as actuals too"
    )


class ModelSpec(_Strict):
    """The content of ``models/<name>/model.yaml``."""

    _preset: dict[str, Any] | None = PrivateAttr(default=None)  # forecaster as written, if a preset
    description: str = ""
    kind: Kind | None = Field(
        default=None, description="single | panel | hierarchical; derived from the keys if omitted"
    )
    data: DataSpec
    freq: str | None = Field(
        default=None, description="pandas period frequency (M, Q, D, h, ...); none = integer index"
    )
    horizon: int = Field(default=12, ge=1, description="default forecast horizon in steps")
    forecaster: dict[str, Any] = Field(
        description="{class, params}: a class of the allow-list (GET /v1/forecasters) and its parameters; "
        "nested estimators are {class, params} objects too. Or {preset: auto} (optional params): "
        "AutoStatistical with sp from freq (M 12, Q 4, W 52, D 7, h 24, else 1)",
        examples=[{"class": "ThetaForecaster", "params": {"sp": 12}}, {"preset": "auto"}],
    )
    coverage: list[float] = Field(default_factory=list, description="interval coverages served precomputed")
    quantiles: list[float] = Field(default_factory=list, description="quantile levels served precomputed")
    schedule: str | None = Field(default=None, description="cron expression for scheduled retrains")
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    keep_versions: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="retention: after each publish keep the newest N versions; older ones are deleted "
        "unless an alias points at them (none: keep every version)",
    )
    observations: Literal["auto", "state", "refit", "none"] = Field(
        default="auto",
        description="how a version takes new actuals sent with a predict: state (fixed parameters, new "
        "data), refit (refit on a private copy), none (refused); auto: probed at publish, state if it moves "
        "the forecast, else refit if it moves it within the refit budget, else none",
    )
    intervals: Literal["native", "conformal"] = Field(
        default="native",
        description="native: the forecaster's own prediction intervals, if it has any (sktime tag "
        "capability:pred_int); conformal: the forecaster wrapped in sktime's ConformalIntervals (method "
        "conformal, calibrated on the last quarter of each series' history), or for a global forecaster on a "
        "panel in GlobalConformalIntervals (whole-panel refits, residuals pooled over scaled series), so "
        "point-only forecasters such as reductions serve coverages and quantiles (see conformal_node)",
    )
    engine: Literal["auto", "sktime", "statsforecast"] = Field(
        default="sktime",
        description="panels only: statsforecast fits the forecaster's statsforecast twin natively on the "
        "whole panel (forecasting/engines.py); auto does so when the twin's numbers equal sktime's "
        "(the StatsForecast* adapters) and predicts a global recursive reduction for the whole panel at "
        "once (forecasting/reduction.py, identical numbers); sktime vectorises per series",
    )
    monitoring: MonitoringSpec | None = Field(
        default=None,
        description="the drift policy and what is recorded (none: forecasts and actuals are recorded and "
        "scored all the same, with no policy)",
    )
    first_start: Literal["wait", "background"] = Field(
        default="wait",
        description="serve --train-missing, while the model has no version: wait (trained before the "
        "server turns ready) or background (trained once it is ready, after the others; /readyz does not "
        "wait for it): for fits longer than the first start's minute, e.g. the tourism-auto demo",
    )

    @field_validator("freq")
    @classmethod
    def _valid_freq(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            periods = pd.PeriodIndex([], freq=value)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"'{value}' is not a pandas period frequency") from exc
        if periods.freq.n != 1:
            raise ValueError(f"freq '{value}' steps by more than one period: give single steps, e.g. M, not 2M")
        return periods.freqstr

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
    def _resolve_preset(self) -> ModelSpec:
        """``{preset: NAME}`` becomes the ``{class, params}`` it stands for, so ``forecaster``
        is always a class node; dumps give back what was written (`_written_forecaster`), so a
        spec re-read with its dataset's freq resolves ``sp`` again."""
        if "preset" in self.forecaster and "class" not in self.forecaster:
            self._preset = dict(self.forecaster)
            self.forecaster = resolve_preset(self.forecaster, self.freq)
        return self

    @field_serializer("forecaster")
    def _written_forecaster(self, value: dict[str, Any]) -> dict[str, Any]:
        return dict(self._preset) if self._preset is not None else value

    @property
    def preset(self) -> str | None:
        """The preset the spec names (``forecaster: {preset: ...}``), if any."""
        return str(self._preset["preset"]) if self._preset is not None else None

    @model_validator(mode="after")
    def _kind_matches_keys(self) -> ModelSpec:
        if "keys" in self.data.inherited_roles:  # checked once the dataset's roles are in
            return self
        if self.kind is None:
            self.kind = "panel" if self.data.keys else "single"
        if self.kind == "single" and self.data.keys:
            raise ValueError("a single-series model has no key columns")
        if self.kind in ("panel", "hierarchical") and not self.data.keys:
            raise ValueError(f"a {self.kind} model needs key columns in data.keys")
        if self.kind == "hierarchical" and self.data.exogenous:
            raise ValueError("hierarchical models do not take exogenous columns")
        return self

    @property
    def declares_roles(self) -> bool:
        """Whether the spec names its time and target columns itself: it can then describe a
        table before its dataset exists (key and exogenous columns it leaves out are none
        until the dataset's roles fill them in)."""
        return self.data.time is not None and self.data.targets is not None

    @property
    def inherited_settings(self) -> list[str]:
        """Besides the column roles: ``freq`` when a dataset spec leaves it to the dataset."""
        return ["freq"] if self.data.dataset is not None and "freq" not in self.model_fields_set else []

    def with_dataset_roles(self, roles: Any) -> ModelSpec:
        """This spec with the column roles (and ``freq``) it leaves out taken from its
        dataset's ``roles`` (`service.datasets.store.Roles`); what it names wins."""
        if not self.data.inherited_roles and not self.inherited_settings:
            return self
        raw = self.model_dump(exclude_unset=True)
        data = raw.setdefault("data", {})
        for role in self.data.inherited_roles:
            value = getattr(roles, role)
            data[role] = list(value) if isinstance(value, tuple) else value
        if "freq" in self.inherited_settings:
            raw["freq"] = roles.freq
        return parse_model_spec(raw, origin=f"spec with the roles of dataset '{self.data.dataset}'")

    def table_schema(self) -> Schema:
        """The table schema this spec's data has (column roles, kind, frequency)."""
        if not self.declares_roles:
            raise SpecError(
                f"the spec leaves {', '.join(self.data.inherited_roles)} to dataset "
                f"'{self.data.dataset}', which has not been uploaded: upload it, or name them in the spec",
                field="data",
            )
        assert self.data.time is not None and self.data.targets is not None
        return Schema(
            kind=self.kind or ("panel" if self.data.keys else "single"),
            keys=tuple(self.data.keys),
            time=self.data.time,
            targets=tuple(self.data.targets),
            exogenous=tuple(self.data.exogenous),
            freq=self.freq,
        )

    def build_forecaster(self) -> Any:
        """The spec's unfitted forecaster; with ``intervals: conformal``, wrapped in sktime's
        `ConformalIntervals` or `GlobalConformalIntervals` (`conformal_node`), or a `SpecError` naming ``intervals``
        when the wrapper would change the model."""
        if self.intervals == "native":
            return build_estimator(self.forecaster)
        check_conformal(self, build_estimator(self.forecaster))
        return build_estimator(conformal_node(self.forecaster))


# ----------------------------------------------------------------------------- conformal intervals
CONFORMAL_METHOD = "conformal"
CONFORMAL_INITIAL_WINDOW = 0.75
CONFORMAL_MIN_RESIDUALS = 10
"""``intervals: conformal`` needs this many calibration residuals at the farthest step of the
horizon for every series (`conformal_history`); on a panel with a global forecaster, this many
pooled over the series at every step (`service.forecasting.conformal.residual_counts`)."""
CONFORMAL_PANEL_WINDOWS = 3
"""A global forecaster on a panel is calibrated on this many whole-panel refits
(`GlobalConformalIntervals`): 3 windows x the panel's series residuals at every step, for
about 4 times the fit of the forecaster alone."""


def conformal_node(forecaster: Mapping[str, Any]) -> dict[str, Any]:
    """``intervals: conformal``: the spec's forecaster wrapped in sktime's `ConformalIntervals`.

    sktime refits a clone of the forecaster on every expanding window of each series that
    ends after ``initial_window`` and records the signed residuals of the forecast of the
    rest of the series (``residuals_matrix_``). For step h of the horizon the interval is
    the point forecast plus/minus the ``coverage`` empirical quantile of the absolute
    residuals at that step. Choices, and why:

    - ``method="conformal"``: symmetric intervals from absolute residuals, per step (no
      Bonferroni correction over the horizon: each step is covered at ``coverage``, as the
      native intervals of sktime's statistical forecasters are). It uses every residual for
      both bounds, which matters with the few dozen residuals a step has here; sktime's
      default ``"empirical"`` estimates each tail from signed residuals, i.e. from half of them.
    - ``initial_window=0.75``: calibration windows start after the first 75% of each series,
      so a series of n points costs about n/4 refits of the forecaster (120 months: 30). The
      default (10% or 10 points) would refit ~0.9 n times per series, which hundreds of
      series cannot afford, and its earliest residuals come from models fitted on a few
      points, which overstates the error of the model served.
    - ``sample_frac=None``: every calibration window is used. sktime samples the windows
      with numpy's global random state, unseeded, so the same data would give different
      intervals on every retrain; the cost is bounded by ``initial_window`` instead.
    - Known sktime 1.2 defects, left to sktime: step h is calibrated on the residuals of
      h + 1 steps ahead (sktime#10766: intervals lean wide, most at step 1), and the
      ``coverage`` quantile has no finite-sample (m + 1)/m correction (sktime#10758: with m
      residuals coverage leans low by about 1/m). ``method="empirical_residual"`` is not
      used: sktime 1.2 takes the wrong quantile level of it (sktime#10757).
    - Quantiles are sktime's, derived from the intervals: level a < 0.5 is the lower bound
      of the interval of coverage 1 - 2a, a > 0.5 the upper bound of coverage 2a - 1. The
      bounds grow with coverage, so intervals nest and quantiles never cross; the 0.5
      quantile is the point forecast plus the smallest absolute residual.

    On a panel, sktime fits `ConformalIntervals` per series (it takes single series only),
    so each series is calibrated on its own residuals. That is exact for per-series models
    (``pooling: local`` reductions, statistical forecasters). A natively panel forecaster
    (a ``pooling: global`` reduction) would be fitted once per series and no longer be
    global, so it is wrapped in our `GlobalConformalIntervals` instead
    (`service.forecasting.conformal`): `CONFORMAL_PANEL_WINDOWS` whole-panel refits on
    expanding windows, residuals pooled over the series after scaling each by its mean
    absolute seasonal difference (lag from the data's frequency); on a single series it
    delegates to the `ConformalIntervals` above. A hierarchy with a natively panel forecaster (a reconciler) is refused
    (`check_conformal`). Other settings: write the wrapper yourself,
    ``{class: ConformalIntervals, params: {forecaster: ..., ...}}``.
    """
    if natively_panel(build_estimator(forecaster)):
        return {
            "class": "GlobalConformalIntervals",
            "params": {"forecaster": dict(forecaster), "windows": CONFORMAL_PANEL_WINDOWS},
        }
    return {
        "class": "ConformalIntervals",
        "params": {
            "forecaster": dict(forecaster),
            "method": CONFORMAL_METHOD,
            "initial_window": CONFORMAL_INITIAL_WINDOW,
            "sample_frac": None,
        },
    }


def natively_panel(estimator: Any) -> bool:
    """Whether sktime fits ``estimator`` on a whole panel at once (its inner y types include a
    Panel or Hierarchical mtype), rather than one clone per series."""
    from sktime.datatypes import mtype_to_scitype

    get_tag = getattr(estimator, "get_tag", None)
    if get_tag is None:
        return False
    mtypes = get_tag("y_inner_mtype", "pd.Series", raise_error=False)
    mtypes = [mtypes] if isinstance(mtypes, str) else list(mtypes or [])
    return any(mtype_to_scitype(m) in ("Panel", "Hierarchical") for m in mtypes)


def check_conformal(spec: ModelSpec, estimator: Any) -> None:
    """Refuse ``intervals: conformal`` where the wrapper would change the model: a natively
    panel forecaster on a hierarchy (on a panel it gets `GlobalConformalIntervals`), a
    multivariate one on several targets (sktime's `ConformalIntervals` takes one target at a
    time), the statsforecast engine."""
    name = type(estimator).__name__
    if spec.kind == "hierarchical" and natively_panel(estimator):  # a panel: GlobalConformalIntervals
        pooled = " (pooling: global)" if getattr(estimator, "pooling", None) == "global" else ""
        raise SpecError(
            f"intervals: conformal cannot wrap {name}{pooled} on a hierarchy: sktime's ConformalIntervals "
            "takes one series at a time, so the forecaster would be fitted once per series and no longer be "
            "one model over all series, and the whole-panel calibration (GlobalConformalIntervals) serves "
            "panels, not hierarchies; use a per-series forecaster, or intervals: native",
            field="intervals",
            forecaster=name,
        )
    targets = spec.data.targets or []
    if len(targets) > 1 and estimator.get_tags().get("capability:multivariate"):
        raise SpecError(
            f"intervals: conformal cannot wrap {name} on {len(targets)} targets: sktime's ConformalIntervals "
            "takes one target at a time, so a multivariate forecaster would be fitted once per target; "
            "use intervals: native",
            field="intervals",
            forecaster=name,
        )
    if spec.engine == "statsforecast":
        raise SpecError(
            "intervals: conformal runs on the sktime engine only (engine: statsforecast fits the forecaster's "
            "statsforecast twin, which has native intervals): use engine sktime or auto, or intervals: native",
            field="intervals",
        )


def conformal_history(horizon: int) -> int:
    """The shortest series ``intervals: conformal`` can calibrate for ``horizon`` steps: its
    last quarter of cutoffs (k of them) must hold `CONFORMAL_MIN_RESIDUALS` residuals at the
    farthest step: k - horizon (sktime 1.2 reads the diagonal at offset h of its k x k
    residuals matrix for step h)."""
    n = horizon + 1
    while n - math.floor(CONFORMAL_INITIAL_WINDOW * n) - horizon < CONFORMAL_MIN_RESIDUALS:
        n += 1
    return n


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


def read_spec(registry: Registry, name: str, datasets: DatasetStore | None = None) -> ModelSpec | None:
    """A model's validated spec from the registry (None: it has none); an invalid file on
    disk is a `SpecFileInvalid` (409) naming it. With ``datasets``, the roles a dataset
    spec leaves out are taken from its dataset (left out while it is not uploaded)."""
    raw = registry.read_spec_raw(name)
    if raw is None:
        return None
    origin = f"{name}/{SPEC_FILE}"
    try:
        spec = parse_model_spec(raw, origin=origin)
    except SpecError as exc:
        raise SpecFileInvalid.about(origin, exc.detail) from None
    if datasets is None or spec.data.dataset is None or (not spec.data.inherited_roles and not spec.inherited_settings):
        return spec
    try:
        roles = datasets.roles(spec.data.dataset)
    except (NotFound, InvalidName):
        return spec
    return spec.with_dataset_roles(roles)


# ----------------------------------------------------------------------------- checks against the data
MIN_HISTORY_HORIZONS = 2
"""A series needs this many horizons of history: the promotion gate holds the last horizon out."""


def check_against_dataset(spec: ModelSpec, datasets: DatasetStore) -> tuple[ModelSpec, dict[str, Any]]:
    """Check a spec that reads an uploaded dataset against it (its columns exist, ``freq``
    matches, every series has enough history for the horizon); returns the spec with the
    dataset's roles filled in, and what was checked. A failed check is a `SpecError` (422)."""
    name = spec.data.dataset
    if name is None:
        return spec, {"checked": False, "reason": "the source is not an uploaded dataset: it is read at training"}
    try:
        doc = datasets.describe(name)
    except (NotFound, InvalidName):
        if not spec.declares_roles:
            raise SpecError(
                f"dataset '{name}' does not exist, and the spec leaves {', '.join(spec.data.inherited_roles)} to "
                "it: upload the dataset first, or name the columns (data.time, data.targets, ...) in the spec",
                field="data.source",
                dataset=name,
            ) from None
        return spec, {"checked": False, "dataset": name, "reason": f"dataset '{name}' is not uploaded yet"}
    roles = Roles.from_dict(doc["roles"])
    version = spec.data.source.get("version") or doc["latest"]
    entry = next((v for v in doc["versions"] if v["version"] == version), None)
    if entry is None:
        raise SpecError(f"dataset '{name}' has no version {str(version)[:40]!r}", field="data.source", dataset=name)
    resolved = spec.with_dataset_roles(roles)
    columns = list(entry.get("columns") or roles.schema().columns)
    for role in ROLE_FIELDS:
        value = getattr(resolved.data, role)
        named = [value] if isinstance(value, str) else list(value or [])
        missing = [c for c in named if c not in columns]
        if missing:
            raise SpecError(
                f"dataset '{name}' has no column {', '.join(map(repr, missing))} (data.{role}); "
                f"its columns are {columns}",
                field=f"data.{role}",
                missing=missing,
                columns=columns,
            )
    dropped = [k for k in roles.keys if k not in resolved.data.keys]
    if dropped:
        raise SpecError(
            f"dataset '{name}' is keyed by {list(roles.keys)}; data.keys leaves out {dropped}, so its series "
            "would mix: keep every key column (or leave data.keys out to take the dataset's)",
            field="data.keys",
            missing=dropped,
        )
    if resolved.freq != roles.freq:
        raise SpecError(
            f"freq {resolved.freq or 'none (integer steps)'} does not match dataset '{name}', whose freq is "
            f"{roles.freq or 'none (integer steps)'}: leave freq out to take the dataset's",
            field="freq",
            freq=resolved.freq,
            dataset_freq=roles.freq,
        )
    keys = list(resolved.data.keys)
    if keys:  # per-series lengths: the table itself (read off the event loop by the caller)
        table, _, _ = datasets.read(name, version)
        lengths = table.groupby(keys, sort=True).size()
    else:
        lengths = pd.Series([int(entry.get("rows") or 0)])
    shortest = int(lengths.min()) if len(lengths) else 0
    needed = MIN_HISTORY_HORIZONS * resolved.horizon
    if shortest < needed:
        which = which_series(keys, lengths)
        raise SpecError(
            f"horizon {resolved.horizon} needs at least {needed} observations per series ({MIN_HISTORY_HORIZONS} "
            f"horizons: the promotion gate holds the last one out); the shortest series of dataset '{name}'"
            f"{which} has {shortest}: lower the horizon or upload more history",
            field="horizon",
            shortest_history=shortest,
            required_history=needed,
        )
    if resolved.intervals == "conformal" and shortest < conformal_history(resolved.horizon):
        raise conformal_too_short(resolved.horizon, shortest, f"dataset '{name}'" + which_series(keys, lengths))
    return resolved, {
        "checked": True,
        "dataset": name,
        "version": version,
        "roles": {r: getattr(resolved.data, r) for r in ROLE_FIELDS},
        "from_dataset": resolved_from(spec),
        "freq": resolved.freq,
        "kind": resolved.kind,
        "series": len(lengths),
        "shortest_history": shortest,
        "required_history": needed,
        "warnings": capability_warnings(resolved),
    }


def which_series(keys: list[str], lengths: pd.Series) -> str:
    """`` (series A/B)``: the shortest series of a panel, for a message; empty for one series."""
    return "" if not keys else f" (series {'/'.join(map(str, _as_tuple(lengths.idxmin())))})"


def conformal_too_short(horizon: int, shortest: int, where: str) -> SpecError:
    """The 422 for ``intervals: conformal`` on series too short to calibrate ``horizon`` steps."""
    needed = conformal_history(horizon)
    return SpecError(
        f"intervals: conformal calibrates on the last {1 - CONFORMAL_INITIAL_WINDOW:.0%} of each series and needs "
        f"{CONFORMAL_MIN_RESIDUALS} residuals at step {horizon}, so at least {needed} observations per series; "
        f"the shortest series of {where} has {shortest}: lower the horizon, add history, or wrap the forecaster "
        "yourself ({class: ConformalIntervals, params: {forecaster: ..., initial_window: ...}})",
        field="intervals",
        shortest_history=shortest,
        required_history=needed,
    )


def resolved_from(spec: ModelSpec) -> list[str]:
    """What a dataset spec takes from its dataset: data.keys, data.time, ..., freq."""
    return [f"data.{r}" for r in spec.data.inherited_roles] + spec.inherited_settings


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def capability_warnings(spec: ModelSpec) -> list[str]:
    """What the forecaster's sktime tags say it cannot serve of what the spec asks for."""
    wanted = [w for w, levels in (("coverage", spec.coverage), ("quantiles", spec.quantiles)) if levels]
    if not wanted:
        return []
    estimator = spec.build_forecaster()
    get_tag = getattr(estimator, "get_tag", None)
    if get_tag is None:
        return []
    if get_tag("capability:pred_int", False):
        inner = getattr(estimator, "forecaster", None)
        if type(estimator).__name__ == "ConformalIntervals" and spec.kind != "single" and natively_panel(inner):
            return [  # written by hand: intervals: conformal refuses this (check_conformal)
                f"ConformalIntervals takes one series at a time: on a {spec.kind} it fits "
                f"{type(inner).__name__} once per series, which is then no longer one model over all series"
            ]
        return []
    return [
        f"the spec asks for {' and '.join(wanted)}, but {type(estimator).__name__} gives no prediction intervals "
        "(sktime tag capability:pred_int is False): a version would serve point forecasts only, and a retrain "
        "does not promote it (set intervals: conformal, which wraps it in sktime's ConformalIntervals)"
    ]


def write_spec(registry: Registry, name: str, raw: Mapping[str, Any]) -> ModelSpec:
    """Validate (allow-list included) before anything is written; the store replaces the
    file atomically."""
    spec = parse_model_spec(dict(raw), origin=f"{name}/{SPEC_FILE}")
    registry.write_spec_document(name, raw)
    return spec
