"""A published version as an MLflow model directory, in sktime's own mlflow flavour
(``sktime.utils.mlflow_sktime``), so ``mlflow models serve`` serves the numbers we serve.

The flavour's pyfunc ``predict(X)`` forecasts the horizon the forecaster was fitted with, by
the methods of the forecaster's ``pyfunc_predict_conf`` (sktime's documented attribute): here
``predict``, and ``predict_interval`` / ``predict_quantiles`` at the version's default coverages
and quantile levels when it has intervals. `pyfunc_columns` names its output columns as the
flavour does, so the scoring endpoint (`service.api.protocols.mlflow`) answers the same table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from service.errors import Conflict, InvalidInput
from service.forecasting.shards import load_fitted
from service.registry.store import Registry
from service.tables import Schema, interval_columns, quantile_column

FLAVOUR_PACKAGE = "mlflow-skinny"


def default_levels(manifest: Mapping[str, Any]) -> tuple[int, list[float], list[float]]:
    """A version's default horizon, coverages and quantile levels: those of its precomputed
    forecast, or (a model that needs exogenous values has none) its spec's, when it has intervals."""
    pre = manifest.get("precomputed") or {}
    if pre.get("horizon"):
        return (
            int(pre["horizon"]),
            [float(c) for c in pre.get("coverage") or []],
            [float(q) for q in pre.get("quantiles") or []],
        )
    spec, capabilities = manifest.get("spec") or {}, manifest.get("capabilities") or {}
    intervals = (capabilities.get("pred_int") or {}).get("available", False)
    quantiles = (capabilities.get("quantiles") or {}).get("available", False)
    return (
        int(manifest["horizon"]),
        [float(c) for c in spec.get("coverage") or []] if intervals else [],
        [float(q) for q in spec.get("quantiles") or []] if quantiles else [],
    )


def predict_methods(coverage: Sequence[float], quantiles: Sequence[float]) -> dict[str, dict[str, Any]]:
    """The flavour's ``predict_method`` configuration."""
    methods: dict[str, dict[str, Any]] = {"predict": {}}
    if coverage:
        methods["predict_interval"] = {"coverage": list(coverage)}
    if quantiles:
        methods["predict_quantiles"] = {"alpha": list(quantiles)}
    return methods


def pyfunc_columns(schema: Schema, coverage: Sequence[float], quantiles: Sequence[float]) -> list[tuple[str, str]]:
    """(the flavour's column name, our wire column name), in the flavour's order: every target's
    point forecast, then intervals per target and coverage (lower, upper), then quantiles. With
    the point forecast alone the flavour keeps sktime's own column names (the targets)."""
    if not coverage and not quantiles:
        return [(t, t) for t in schema.targets]
    named = [(f"predict__{t}", t) for t in schema.targets]
    for t in schema.targets:
        for c in coverage:
            lower, upper = interval_columns(t, c)
            named += [(f"predict_interval__{t}__{c}__lower", lower), (f"predict_interval__{t}__{c}__upper", upper)]
    named += [(f"predict_quantiles__{t}__{q}", quantile_column(t, q)) for t in schema.targets for q in quantiles]
    return named


def export_mlflow(registry: Registry, name: str, version: int, target: Path) -> dict[str, Any]:
    """Write version ``version`` of ``name`` to ``target`` (a new or empty folder) as an MLflow
    model; returns what was written. Needs the ``mlflow`` extra."""
    try:
        import mlflow.models
        from sktime.utils import mlflow_sktime
    except ImportError as exc:
        raise InvalidInput(
            f"exporting to MLflow needs mlflow: pip install 'forecast-service[mlflow]' ({exc})", field="mlflow"
        ) from None
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise Conflict(f"{target} exists and is not an empty folder: give a new folder", field="dir")
    loaded = load_fitted(registry, name, version)
    manifest = loaded.manifest
    forecaster = loaded.forecaster  # unpickled for this export only: nothing else holds it
    try:
        forecaster.fh  # noqa: B018 - sktime raises when none was set at fit
    except ValueError:
        raise InvalidInput(
            f"{name} v{version} was fitted without a horizon, which MLflow's sktime flavour needs", field="version"
        ) from None
    methods = predict_methods(*default_levels(manifest)[1:])
    forecaster.pyfunc_predict_conf = {"predict_method": methods}
    metadata = {
        "forecast_service": {
            "model": name,
            "version": version,
            "cutoff": manifest.get("cutoff"),
            "horizon": manifest.get("horizon"),
            "schema": manifest.get("schema"),
            "predict_method": methods,
        }
    }
    if target.exists():
        target.rmdir()  # save_model makes the folder itself
    mlflow_sktime.save_model(forecaster, str(target), mlflow_model=mlflow.models.Model(metadata=metadata))
    (target / "forecast-service.json").write_text(json.dumps(metadata["forecast_service"], indent=2) + "\n")
    return {"model": name, "version": version, "path": str(target), "predict_method": methods}
