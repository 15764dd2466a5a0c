"""The monitoring loop of one model: record what the service stands behind (every version's
precomputed forecast, live answers when asked), take actuals from any of the three paths,
score them, report live accuracy against the backtest's promise, and trigger one retrain
per drift breach (the breach is the idempotency key, so replicas trigger it once)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from service.datasets.store import DatasetStore
from service.errors import CapabilityUnavailable, InvalidInput, NotFound, ServiceError
from service.forecasting import monitoring as mon
from service.forecasting.specs import ModelSpec, MonitoringSpec, read_spec
from service.jobs.store import Job, JobStore
from service.jobs.submit import submit_retrain
from service.records.store import RecordStore
from service.registry.store import Registry
from service.tables import Schema, format_time, parse_times

log = logging.getLogger(__name__)

SOURCES = ("actuals", "dataset", "observations")
PLOT_SERIES = 4


@dataclass
class MonitorHooks:
    """What a process does with the figures (Prometheus gauges and counters), if anything."""

    live_metric: Callable[[str, int, str, float | None], None] = lambda model, version, metric, value: None
    anomalies: Callable[[str, int], None] = lambda model, count: None
    drift: Callable[[str, str], None] = lambda model, state: None


class Monitor:
    """Ties the record store, the registry and the job store for the monitoring endpoints."""

    def __init__(
        self,
        registry: Registry,
        records: RecordStore,
        jobs: JobStore | None,
        datasets: DatasetStore | None = None,
        *,
        max_rows: int = 5_000_000,
        max_age_days: float = 730.0,
        hooks: MonitorHooks | None = None,
    ) -> None:
        self.registry = registry
        self.records = records
        self.jobs = jobs
        self.datasets = datasets
        self.max_rows = max_rows
        self.max_age_days = max_age_days
        self.hooks = hooks or MonitorHooks()
        self._synced: dict[str, tuple[int, ...]] = {}
        self._specs: dict[str, tuple[tuple[int, int], ModelSpec | None]] = {}
        self._guard = threading.Lock()

    # ------------------------------------------------------------------ what a model is
    def _spec(self, name: str) -> ModelSpec | None:
        """The model's spec, re-read only when its file changed (the live predict path asks)."""
        try:
            stat = self.registry.spec_path(name).stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except (OSError, ServiceError):
            return None
        known = self._specs.get(name)
        if known is not None and known[0] == stamp:
            return known[1]
        try:
            spec = read_spec(self.registry, name, self.datasets)
        except ServiceError:
            spec = None
        self._specs[name] = (stamp, spec)
        return spec

    def policy(self, name: str) -> MonitoringSpec:
        spec = self._spec(name)
        return (spec.monitoring if spec is not None else None) or MonitoringSpec()

    def schema(self, name: str) -> Schema:
        """The columns of the model's forecasts: its production (else newest) version's, else its spec's."""
        self.registry.require_model(name)
        version = self.registry.read_aliases(name).get("production")
        versions = self.registry.list_versions(name)
        if version is None and versions:
            version = versions[-1]
        if version is not None:
            return Schema.from_dict(self.registry.read_manifest(name, version)["schema"])
        spec = self._spec(name)
        if spec is None:
            raise InvalidInput(f"model '{name}' has no version and no spec: nothing to monitor", model=name)
        return spec.table_schema()

    # ------------------------------------------------------------------ the forecast record
    def sync(self, name: str) -> list[int]:
        """Record every version's precomputed forecast not recorded yet, and note the version
        production points at as served; returns the versions recorded now."""
        versions = tuple(self.registry.list_versions(name))
        production = self.registry.read_aliases(name).get("production")
        state = (*versions, -1 if production is None else production)
        if self._synced.get(name) == state:
            return []
        recorded = []
        for version in versions:
            if self.records.has_forecast(name, f"v{version}"):
                continue
            try:
                if self.record_version(name, version):
                    recorded.append(version)
            except ServiceError as exc:  # a version that cannot be read is not recorded (and not served)
                log.warning("monitoring: v%s of %s not recorded: %s", version, name, exc.detail)
        if production is not None:
            served = self.records.facts(name).get("served", {})
            if str(production) not in served:
                self.records.update_facts(name, {"served": {str(production): _now()}})
        if recorded:
            self.prune(name)
        self._synced[name] = state
        return recorded

    def record_version(self, name: str, version: int) -> bool:
        manifest = self.registry.verified_manifest(name, version)
        precomputed = self.registry.read_precomputed(name, version, manifest)
        if precomputed is None:
            return False
        schema = Schema.from_dict(manifest["schema"])
        training = self.registry.read_training(name, version, manifest)
        table = mon.version_record(precomputed, schema, training)
        pre = manifest.get("precomputed") or {}
        meta = _meta(
            "published",
            version,
            _cutoff_tick(manifest["cutoff"], schema),
            len(table),
            pre.get("coverage", []),
            pre.get("quantiles", []),
        )
        self.records.put_forecast(name, f"v{version}", table, meta)
        return True

    def record_live(
        self,
        name: str,
        version: int,
        schema: Schema,
        cutoff: Any,
        columns: Mapping[str, np.ndarray],
        coverage: Sequence[float],
        quantiles: Sequence[float],
    ) -> str:
        """Record one live answer (``record: true`` or the spec's ``record_live``)."""
        table = mon.live_record(columns, schema)
        record_id = f"live-{time.time_ns():020d}-{version}"
        meta = _meta("live", version, _cutoff_tick(format_time(cutoff), schema), len(table), coverage, quantiles)
        self.records.put_forecast(name, record_id, table, meta)
        self.prune(name)
        return record_id

    def prune(self, name: str) -> list[str]:
        """Retention: the oldest records go while the record holds more than ``max_rows``
        rows, and every record (and actual) older than ``max_age_days``."""
        metas = sorted(
            self.records.forecast_metas(name),
            key=lambda m: (m[1].get("kind") == "published", m[1].get("recorded_at", 0), m[0]),
        )  # live records go first, oldest first
        total = sum(int(m[1].get("rows", 0)) for m in metas)
        oldest = time.time() - self.max_age_days * 86400 if self.max_age_days else None
        doomed = []
        for record_id, meta, _ in metas:
            too_old = oldest is not None and meta.get("recorded_at", 0) < oldest
            if total > self.max_rows or too_old:
                doomed.append(record_id)
                total -= int(meta.get("rows", 0))
        if doomed:
            self.records.delete_forecasts(name, doomed)
        if oldest is not None:
            self.records.delete_actuals_before(name, int(oldest * 1e9))
        return doomed

    def _forecasts(self, name: str, schema: Schema) -> pd.DataFrame:
        stored = self.records.read_forecasts(name)
        records = [
            mon.RecordedForecast(
                table=s.table,
                version=int(s.meta["version"]),
                cutoff=int(s.meta["cutoff"]),
                kind=str(s.meta["kind"]),
                recorded_at=float(s.meta["recorded_at"]),
                coverage=tuple(s.meta.get("coverage") or ()),
                quantiles=tuple(s.meta.get("quantiles") or ()),
                record_id=s.record_id,
            )
            for s in stored
        ]
        return mon.long_forecasts(records, schema)

    # ------------------------------------------------------------------ actuals in
    def ingest(self, name: str, frame: pd.DataFrame, source: str = "actuals") -> dict[str, Any]:
        """Validate and store an upload of actuals (any bad row: a 422, nothing stored), then
        report how many met a recorded forecast, the anomalies among them, and the policy."""
        if source not in SOURCES:
            raise InvalidInput(f"unknown source of actuals {source!r}")
        self.sync(name)
        schema = self.schema(name)
        table = mon.check_actuals(frame, schema)
        received = time.time_ns()
        stored = mon.stored_actuals(table, schema, source, received)
        self.records.append_actuals(name, stored)
        forecasts = self._forecasts(name, schema)
        upload = mon.long_actuals(stored, schema)
        known = self._known_series(name, forecasts, schema)
        missed = mon.unmatched(stored, forecasts, schema, known)
        pairs = mon.join(forecasts, upload, schema)
        policy = self.policy(name)
        anomalies = self._anomalies(name, pairs, schema, policy.coverage, strict=False)
        if anomalies:
            self.hooks.anomalies(name, anomalies)
        drift = self.check_drift(name, schema=schema, forecasts=forecasts)
        return {
            "model": name,
            "source": source,
            "rows": len(table),
            "matched": int(len(stored) - missed["rows"]),
            "forecasts_met": len(pairs),
            "unmatched": missed,
            "anomalies": anomalies,
            "coverage": policy.coverage,
            "drift": drift,
        }

    def _known_series(self, name: str, forecasts: pd.DataFrame, schema: Schema) -> set[tuple[str, ...]]:
        if not schema.keys:
            return {()}
        known = set(forecasts[list(schema.keys)].drop_duplicates().astype(str).itertuples(index=False, name=None))
        return known

    def _anomalies(self, name: str, pairs: pd.DataFrame, schema: Schema, coverage: float, strict: bool) -> int:
        served = self._served_versions(name)
        points = mon.served_points(pairs, schema, served)
        if points.empty:
            return 0
        try:
            return len(mon.score_anomalies(points, schema, coverage, name))
        except ServiceError:
            if strict:
                raise
            return 0  # a model without intervals: no anomaly flags, the upload still counts

    def _served_versions(self, name: str) -> set[int]:
        served = {int(v) for v in self.records.facts(name).get("served", {})}
        production = self.registry.read_aliases(name).get("production")
        return served | ({production} if production is not None else set())

    def _all_actuals(self, name: str, schema: Schema) -> pd.DataFrame:
        return mon.long_actuals(self.records.read_actuals(name), schema)

    # ------------------------------------------------------------------ reports
    def report(
        self,
        name: str,
        *,
        version: int | None = None,
        series: Sequence[tuple[str, ...]] | None = None,
        since: Any = None,
        window: int | None = None,
    ) -> dict[str, Any]:
        """Live accuracy per version (overall, per series, per horizon step) over the rolling
        window, next to what each version's backtest promised, and the drift policy's state."""
        self.sync(name)
        schema = self.schema(name)
        policy = self.policy(name)
        window = window or policy.window
        pairs = self.pairs(name, schema, series, since)
        production = self.registry.read_aliases(name).get("production")
        versions = sorted(int(v) for v in pairs["version"].unique()) if len(pairs) else []
        if version is not None:
            if version not in self.registry.list_versions(name) and version not in versions:
                raise NotFound(f"model '{name}' has no version {version}", model=name, version=version)
            versions = [version]
        reports = []
        for number in versions:
            part = pairs[pairs["version"] == number]
            in_window = mon.window_of(part, window)
            promised = self._promise(name, number)
            metrics = mon.metrics_report(in_window, schema) if len(in_window) else None
            entry: dict[str, Any] = {
                "version": number,
                "production": number == production,
                "points": len(part),
                "window": {
                    "times": window,
                    "start": _first_time(in_window, schema, min),
                    "end": _first_time(in_window, schema, max),
                    "points": metrics["points"] if metrics else 0,
                },
                "promised": promised or None,
                "overall": metrics["overall"] if metrics else None,
                "drift": mon.drift_figures(metrics["overall"], promised) if metrics else None,
                "by_step": metrics["by_step"] if metrics else [],
                "per_series": metrics["per_series"] if metrics else [],
            }
            for metric, value in (metrics["overall"] if metrics else {}).items():
                if metric in mon.POINT_METRICS:
                    self.hooks.live_metric(name, number, metric, value)
            reports.append(entry)
        actuals = self.records.read_actuals(name)
        return {
            "model": name,
            "production_version": production,
            "window": window,
            "since": since,
            "actuals": 0 if actuals is None else len(actuals),
            "versions": reports,
            "policy": self._policy_state(name, policy, schema, pairs),
        }

    def pairs(
        self, name: str, schema: Schema, series: Sequence[tuple[str, ...]] | None = None, since: Any = None
    ) -> pd.DataFrame:
        """Every recorded forecast joined with its actuals (of ``series``, at or after ``since``)."""
        forecasts = self._forecasts(name, schema)
        actuals = self._all_actuals(name, schema)
        pairs = mon.join(forecasts, actuals, schema)
        if series:
            chosen = pd.MultiIndex.from_tuples([tuple(s) for s in series])
            index = pd.MultiIndex.from_frame(pairs[list(schema.keys)].astype(str)) if schema.keys else None
            if index is not None:
                pairs = pairs[index.isin(chosen)]
        if since is not None:
            (start,) = parse_times([since], schema.freq, "since")
            pairs = pairs[pairs[mon.TICK] >= int(mon.ticks(pd.Index([start]), schema.freq)[0])]
        return pairs

    def _promise(self, name: str, version: int) -> dict[str, float]:
        try:
            return mon.promise(self.registry.read_manifest(name, version))
        except ServiceError:
            return {}

    def _policy_state(self, name: str, policy: MonitoringSpec, schema: Schema, pairs: pd.DataFrame) -> dict[str, Any]:
        production = self.registry.read_aliases(name).get("production")
        spec = self._spec(name)
        declared = spec is not None and spec.monitoring is not None and policy.action != "none"
        if production is None or not declared:
            return {"declared": declared, "state": "none", "action": policy.action}
        part = pairs[pairs["version"] == production]
        in_window = mon.window_of(part, policy.window)
        report = mon.metrics_report(in_window, schema) if len(in_window) else {"overall": {}, "points": 0}
        rule = mon.DriftPolicy(policy.metric, policy.window, policy.degrade, policy.min_actuals, policy.action)
        judged = mon.judge(rule, report, self._promise(name, production))
        judged["declared"] = True
        judged["version"] = production
        if judged["state"] == "breach" and self.jobs is not None:
            job = self.jobs.by_key(breach_key(name, production))
            judged["job"] = job.id if job is not None else None
        self.hooks.drift(name, judged["state"])
        return judged

    def check_drift(
        self, name: str, *, schema: Schema | None = None, forecasts: pd.DataFrame | None = None
    ) -> dict[str, Any]:
        """Judge the production version's live metric; on a breach with ``action: retrain``,
        the retrain (once per breach)."""
        schema = schema or self.schema(name)
        policy = self.policy(name)
        if forecasts is None:
            forecasts = self._forecasts(name, schema)
        pairs = mon.join(forecasts, self._all_actuals(name, schema), schema)
        judged = self._policy_state(name, policy, schema, pairs)
        if judged.get("state") == "breach" and policy.action == "retrain" and self.jobs is not None:
            job, created = self.trigger_retrain(name, judged)
            judged["job"] = job.id
            judged["triggered"] = created
        return judged

    def trigger_retrain(self, name: str, judged: Mapping[str, Any]) -> tuple[Job, bool]:
        """The retrain of this breach: its key names the model and the production version that
        breached, so each breach triggers once (across processes)."""
        assert self.jobs is not None
        key = breach_key(name, int(judged["version"]))
        known = self.jobs.by_key(key)
        if known is not None:
            return known, False
        why = {
            "trigger": "drift",
            "breach": {
                k: judged[k] for k in ("version", "metric", "live", "promised", "limit", "ratio", "points", "window")
            },
        }
        try:
            job, created = submit_retrain(self.jobs, self.registry, name, why, key, check_source=False)
        except InvalidInput as exc:  # another process won with its own figures
            known = self.jobs.by_key(key)
            if known is None:
                raise
            log.debug("drift retrain of %s already triggered: %s", name, exc.detail)
            return known, False
        if created:
            log.info("drift: %s v%s breached (%s), retrain job %s", name, judged["version"], judged["metric"], job.id)
        return job, created

    def anomalies(
        self,
        name: str,
        *,
        since: Any = None,
        series: Sequence[tuple[str, ...]] | None = None,
        coverage: float | None = None,
    ) -> dict[str, Any]:
        """The actuals outside the interval of the forecast served for them."""
        self.sync(name)
        schema = self.schema(name)
        coverage = mon.check_coverage(coverage if coverage is not None else self.policy(name).coverage)
        self._require_intervals(name)
        pairs = self.pairs(name, schema, series, since)
        points = mon.served_points(pairs, schema, self._served_versions(name))
        flagged = mon.score_anomalies(points, schema, coverage, name)
        flagged = flagged.sort_values([mon.TICK, *schema.keys], kind="mergesort")
        return {
            "model": name,
            "coverage": coverage,
            "since": since,
            "scored": len(points),
            "count": len(flagged),
            "anomalies": mon.anomaly_rows(flagged, schema),
        }

    def plot_data(
        self,
        name: str,
        *,
        series: Sequence[tuple[str, ...]] | None = None,
        version: int | None = None,
        metric: str | None = None,
    ) -> dict[str, Any]:
        """What `plots.monitoring_png` draws: per chosen series (default: the first with actuals,
        at most `PLOT_SERIES`) the actuals and the served forecasts with their band, and the
        rolling live metric of one version (default: production)."""
        self.sync(name)
        schema = self.schema(name)
        policy = self.policy(name)
        metric = metric or policy.metric
        if metric not in mon.POINT_METRICS:
            raise InvalidInput(f"metric must be one of {list(mon.POINT_METRICS)}", field="metric")
        pairs = self.pairs(name, schema, series, None)
        if pairs.empty:
            raise NotFound(f"no actuals of {name} met a recorded forecast yet (POST its actuals)", model=name)
        version = version or self.registry.read_aliases(name).get("production") or int(pairs["version"].max())
        served = mon.served_points(pairs, schema, self._served_versions(name))
        keys = list(schema.keys)
        chosen = list(series or [])
        if not chosen:
            chosen = list(served[keys].drop_duplicates().astype(str).itertuples(index=False, name=None))[:1] or [()]
        panels = []
        for key in chosen[:PLOT_SERIES]:
            rows = served
            for column, value in zip(keys, key, strict=True):
                rows = rows[rows[column].astype(str) == value]
            rows = rows[rows["target"] == schema.targets[0]].sort_values(mon.TICK)
            bounds = mon.anomaly_bounds(rows, policy.coverage) if len(rows) else None
            panels.append(
                {
                    "series": list(key),
                    "times": mon.times_of(rows[mon.TICK].to_numpy(), schema.freq),
                    "actual": rows["actual"].to_numpy(),
                    "forecast": rows["point"].to_numpy(),
                    "lower": bounds[0].to_numpy() if bounds else None,
                    "upper": bounds[1].to_numpy() if bounds else None,
                }
            )
        part = pairs[pairs["version"] == version]
        return {
            "model": name,
            "freq": schema.freq,
            "target": schema.targets[0],
            "coverage": policy.coverage,
            "version": version,
            "metric": metric,
            "panels": panels,
            "rolling": mon.rolling(part, schema, policy.window, metric) if len(part) else [],
            "promised": self._promise(name, version).get(metric),
        }

    def _require_intervals(self, name: str) -> None:
        """A model whose production version serves no intervals: a 422 naming the capability."""
        production = self.registry.read_aliases(name).get("production")
        if production is None:
            return
        capabilities = self.registry.read_manifest(name, production).get("capabilities") or {}
        found = capabilities.get("pred_int") or {}
        if not found.get("available"):
            raise CapabilityUnavailable(
                f"{name} v{production} gives no prediction intervals, so actuals cannot be scored against one "
                f"({found.get('reason') or 'pred_int unavailable'}); wrap it: intervals: conformal in the spec",
                capability="pred_int",
            )


def breach_key(name: str, version: int) -> str:
    return f"drift:{name}:v{version}"


def _meta(
    kind: str, version: int, cutoff: int, rows: int, coverage: Sequence[float], quantiles: Sequence[float]
) -> dict[str, Any]:
    return {
        "kind": kind,
        "version": int(version),
        "cutoff": int(cutoff),
        "rows": int(rows),
        "coverage": [float(c) for c in coverage],
        "quantiles": [float(q) for q in quantiles],
        "recorded_at": time.time(),
    }


def _cutoff_tick(cutoff: Any, schema: Schema) -> int:
    (value,) = parse_times([cutoff], schema.freq, "cutoff")
    return int(mon.ticks(pd.Index([value]), schema.freq)[0])


def _first_time(points: pd.DataFrame, schema: Schema, pick: Callable[..., Any]) -> Any:
    if points.empty:
        return None
    return mon.times_of(np.array([pick(points[mon.TICK])]), schema.freq)[0]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
