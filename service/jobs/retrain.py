"""Retraining: snapshot data -> fit a clone of the spec's forecaster -> backtest candidate
and production on the same recent window -> publish -> promote only if the gate allows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from service.datasets.sources import read_source
from service.datasets.store import DatasetStore, Roles
from service.errors import InvalidInput, ServiceError
from service.forecasting.backtest import POINT_METRICS, BacktestRequest, SplitterSpec, promised_metrics, run_backtest
from service.forecasting.progress import Progress
from service.forecasting.publishing import PublishRequest, keep_newest, publish_version
from service.forecasting.shards import load_fitted
from service.forecasting.specs import ModelSpec, parse_model_spec, read_spec
from service.forecasting.training import fit_spec, with_quiet_workers
from service.registry.store import Registry

Promote = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class RetrainParams:
    dataset_version: str | None = None
    promote: Promote | None = None  # default: the spec's promotion policy
    gate_metric: str | None = None
    gate_tolerance: float | None = None
    gate_folds: int = 1

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RetrainParams:
        gate = raw.get("gate") or {}
        return cls(
            dataset_version=raw.get("dataset_version"),
            promote=raw.get("promote"),
            gate_metric=gate.get("metric"),
            gate_tolerance=gate.get("tolerance"),
            gate_folds=int(gate.get("folds") or 1),
        )


def check_gate_metric(metric: str) -> str:
    if metric not in POINT_METRICS:
        raise InvalidInput(f"gate metric {metric!r} is not one of {list(POINT_METRICS)}", field="gate.metric")
    return metric


def decide(policy: Promote, candidate: float | None, production: float | None, tolerance: float) -> tuple[bool, str]:
    """Lower is better for every gate metric; 'at least as good' within the tolerance."""
    if policy == "always":
        return True, "promote=always"
    if policy == "never":
        return False, "promote=never: published without moving production"
    if production is None:
        return True, "no production version to compare with"
    if candidate is None:
        return False, "the candidate's gate metric could not be computed"
    bound = production * (1 + tolerance) if production >= 0 else production * (1 - tolerance)
    if candidate <= bound:
        return True, f"candidate {candidate:.6g} <= production {production:.6g} (tolerance {tolerance:g})"
    return False, f"candidate {candidate:.6g} is worse than production {production:.6g} (tolerance {tolerance:g})"


def model_spec(registry: Registry, datasets: DatasetStore, name: str, what: str = "retrain") -> ModelSpec:
    """The model's spec (a dataset spec with the roles it leaves to its dataset); a 404 for
    an unknown model, a 422 for one without a spec."""
    registry.require_model(name)
    spec = read_spec(registry, name, datasets)
    if spec is None:
        raise InvalidInput(f"model '{name}' has no spec (model.yaml) to {what} from", model=name)
    return spec


def load_training_data(
    registry: Registry,
    datasets: DatasetStore,
    name: str,
    spec: ModelSpec,
    dataset_version: str | None = None,
    *,
    sql_url: str | None = None,
    sources_root: Path | None = None,
    snapshot: bool = True,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The spec's data and where it is kept: a declared source (builtin, path, SQL) is
    snapshotted as a dataset version ``{name}.source``, so what was trained on stays readable.
    Without ``snapshot`` (checks before a job exists) nothing is written, and a declared
    source's reference has no version."""
    raw, version_read = read_source(
        spec.data.source,
        base_dir=registry.model_dir(name),
        sources_root=sources_root,
        datasets=datasets,
        sql_url=sql_url,
        dataset_version=dataset_version,
    )
    if version_read is None and not snapshot:
        return raw, {"dataset": f"{name}.source", "version": ""}
    if version_read is None:  # a declared source: snapshot it as a dataset version
        stored = datasets.put(f"{name}.source", raw, Roles.from_schema(spec.table_schema()))
        return raw, {"dataset": f"{name}.source", "version": stored["version"]}
    return raw, {"dataset": spec.data.source["dataset"], "version": version_read}


def retrain(
    registry: Registry,
    datasets: DatasetStore,
    name: str,
    params: RetrainParams,
    *,
    job_id: str | None = None,
    sql_url: str | None = None,
    sources_root: Path | None = None,
    progress: Progress | None = None,
    spec_update: Mapping[str, Any] | None = None,
    data: tuple[pd.DataFrame, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """``spec_update``: fields of the spec replaced for this retrain (a leaderboard's winner:
    forecaster, intervals, engine); the published version's manifest records the spec it
    was fitted from. ``data``: the table and its reference when already read."""
    say = progress or (lambda stage, done, total: None)
    spec = model_spec(registry, datasets, name)
    raw_spec = registry.read_spec_raw(name)
    if spec_update:
        raw_spec = {**(raw_spec or {}), **spec_update}
        spec = parse_model_spec({**spec.model_dump(exclude_unset=True), **spec_update}, origin=f"{name} updated")
    schema = spec.table_schema()
    policy: Promote = params.promote or spec.promotion.policy
    metric = check_gate_metric(params.gate_metric or spec.promotion.metric)
    tolerance = spec.promotion.tolerance if params.gate_tolerance is None else params.gate_tolerance

    say("loading data", 0, None)
    raw, data_ref = data or load_training_data(
        registry, datasets, name, spec, params.dataset_version, sql_url=sql_url, sources_root=sources_root
    )
    say("fitting", 0, None)
    fitted = fit_spec(spec, raw, parallel=True, progress=lambda done, total: say("fitting", done, total))
    candidate, table, y, x = fitted.forecaster, fitted.training, fitted.y, fitted.x
    unfitted = with_quiet_workers(candidate.clone())
    fit_seconds, n_series = fitted.fit_seconds, fitted.series_count
    say("fitting", n_series, n_series)

    gate_y, gate_x, sampled = gate_sample(y, x, schema.kind, spec.promotion.gate_series)
    watched = promised_metrics(spec.monitoring.metric if spec.monitoring else None, metric)
    window = BacktestRequest(SplitterSpec("folds", horizon=spec.horizon, folds=params.gate_folds), "refit", watched)
    production_version = registry.read_aliases(name).get("production")
    scores: dict[str, Any] = {"metric": metric, "candidate": None, "production": None}
    promised: dict[str, Any] = {}
    say("comparing", 0, 2 if production_version else 1)
    try:
        candidate_result, _ = run_backtest(unfitted, gate_y, gate_x, window, schema, chunked=True)
        scores["candidate"] = candidate_result["aggregate"][metric]
        promised = {m: candidate_result["aggregate"].get(m) for m in watched}
    except (ServiceError, ValueError) as exc:
        scores["candidate_error"] = str(exc)[:500]
    if production_version is not None:
        try:
            production = load_fitted(registry, name, production_version, refit_only=True).forecaster  # refit below
            # the same parallel backend as the candidate, so the comparison costs the same
            production.set_config(**{k: v for k, v in unfitted.get_config().items() if k.startswith("backend:")})
            production_result, _ = run_backtest(production, gate_y, gate_x, window, schema, chunked=True)
            scores["production"] = production_result["aggregate"][metric]
        except ServiceError as exc:
            scores["production_error"] = exc.detail[:500]
        except Exception as exc:  # a production spec that no longer fits this data
            scores["production_error"] = f"{type(exc).__name__}: {exc}"[:500]
        say("comparing", 2, 2)

    say("publishing", 0, 1)
    version = publish_version(
        registry,
        name,
        candidate,
        PublishRequest(
            training=table,
            schema=schema,
            horizon=spec.horizon,
            coverage=spec.coverage,
            quantiles=spec.quantiles,
            spec=raw_spec,
            source=spec.data.source,
            dataset_version=f"{data_ref['dataset']}@{data_ref['version']}",
            job_id=job_id,
            fit_seconds=round(fit_seconds, 4),
            observations=spec.observations,
            metrics={"gate": scores, "headline": {metric: scores["candidate"]}, "backtest": promised},
        ),
    )
    promote, reason = decide(policy, scores["candidate"], scores["production"], tolerance)
    if (
        production_version is not None
        and scores["production"] is None
        and policy == "auto"
        and "production_error" in scores
    ):
        promote, reason = True, f"production could not be backtested ({scores['production_error']}); candidate promoted"
    missing = missing_capabilities(spec.coverage, spec.quantiles, registry.read_manifest(name, version))
    if missing and promote:
        asked = "; ".join(f"{what} {m['asked']}: {m['reason']}" for what, m in missing.items())
        if policy == "always":
            reason = f"{reason}; promoted although v{version} cannot serve what the spec asks for ({asked})"
        else:
            promote, reason = False, f"v{version} cannot serve what the spec asks for ({asked}); not promoted"
    if promote:
        registry.set_alias(name, "production", version)
    deleted, retention_error = keep_newest(registry, name, spec.keep_versions)  # published and decided
    say("publishing", 1, 1)
    return {
        "model": name,
        "version": version,
        "data": data_ref,
        "gate": {
            "policy": policy,
            "metric": metric,
            "tolerance": tolerance,
            "window_folds": params.gate_folds,
            "series": sampled or n_series,
            "sampled": sampled is not None,
        },
        "metrics": {"candidate": scores["candidate"], "production": scores["production"]},
        "production_version_before": production_version,
        "promoted": promote,
        "decision": "promoted" if promote else "not promoted",
        "reason": reason,
        "capabilities_missing": missing,
        "deleted_versions": deleted,
        **({"retention_error": retention_error} if retention_error else {}),
        "fit_seconds": fit_seconds,
        "series": n_series,
    }


def gate_sample(
    y: pd.DataFrame, x: pd.DataFrame | None, kind: str, limit: int
) -> tuple[pd.DataFrame, pd.DataFrame | None, int | None]:
    """The gate's data: a panel with more than ``limit`` series keeps a fixed random sample of
    them (seeded, in the panel's order), the same for candidate and production; the sample's
    size, or None when the gate sees every series."""
    if kind != "panel" or not limit or y.index.nlevels < 2:
        return y, x, None
    series = y.index.droplevel(-1).unique()
    if len(series) <= limit:
        return y, x, None
    chosen = series[np.sort(np.random.default_rng(0).choice(len(series), limit, replace=False))]
    keep = y.index.droplevel(-1).isin(chosen)
    x_kept = x[x.index.droplevel(-1).isin(chosen)] if x is not None else None
    return y[keep], x_kept, limit


def missing_capabilities(
    coverage: list[float], quantiles: list[float], manifest: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """What the spec asks for (coverages, quantiles) that the published version cannot serve, and why."""
    capabilities = manifest.get("capabilities") or {}
    missing = {}
    for what, levels, capability in (("coverage", coverage, "pred_int"), ("quantiles", quantiles, "quantiles")):
        found = capabilities.get(capability) or {}
        if levels and not found.get("available"):
            missing[what] = {"asked": list(levels), "reason": found.get("reason") or f"{capability} unavailable"}
    return missing
