"""Forecasts meet their actuals: the recorded forecast tables, the actuals joined to every
forecast for their key and time, live metrics (the backtests' metrics, as sktime computes
them), anomaly flags against the served interval, and the drift figure against what the
version's backtest promised. Pure functions over tables; storage is `service.records`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from service.errors import CapabilityUnavailable, InvalidInput
from service.forecasting.backtest import POINT_METRICS
from service.tables import (
    Schema,
    canonical_table,
    format_times,
    interval_columns,
    parse_times,
    quantile_column,
)

EPS = float(np.finfo(np.float64).eps)  # sktime's denominator floor (MAPE, sMAPE, MASE)
TICK = "_t"  # the time as an integer: a period's ordinal, or the integer index itself
LIVE_METRICS = (*POINT_METRICS, "coverage", "pinball")
DEFAULT_ANOMALY_COVERAGE = 0.95


# ----------------------------------------------------------------------------- records
def ticks(times: pd.Series | pd.Index | np.ndarray, freq: str | None) -> np.ndarray:
    """Times as integers: periods of ``freq`` by ordinal (stored as their start stamps or as
    periods), integer indices as they are."""
    if freq is None:
        return np.asarray(times, dtype="int64")
    values = pd.Index(times)
    if not isinstance(values, pd.PeriodIndex):
        values = pd.PeriodIndex(pd.DatetimeIndex(values), freq=freq)
    return values.asi8.astype("int64")


def times_of(tick_values: np.ndarray, freq: str | None) -> np.ndarray:
    """`ticks` back to wire times (ISO strings or integers)."""
    if freq is None:
        return np.asarray(tick_values, dtype="int64")
    return format_times(pd.PeriodIndex.from_ordinals(np.asarray(tick_values, dtype="int64"), freq=freq))


def training_scales(training: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """MASE's denominator per series and target: the mean absolute one-step change of the
    version's training data (sktime ``MeanAbsoluteScaledError`` with its default sp=1)."""
    keys = list(schema.keys)
    rows = []
    for target in schema.targets:
        values = training[[*keys, target]]
        change = values.groupby(keys, sort=False)[target].diff().abs() if keys else values[target].diff().abs()
        scale = change.groupby([values[k] for k in keys], sort=False).mean() if keys else pd.Series([change.mean()])
        frame = scale.reset_index(name="scale") if keys else pd.DataFrame({"scale": scale.to_numpy()})
        frame["target"] = target
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def version_record(precomputed: pd.DataFrame, schema: Schema, training: pd.DataFrame | None) -> pd.DataFrame:
    """A version's precomputed forecast as the record keeps it: key columns, `TICK`, the
    forecast columns, and ``scale__<target>`` (MASE's denominator of each series)."""
    keys = list(schema.keys)
    record = precomputed.drop(columns=[schema.time]).copy()
    record.insert(len(keys), TICK, ticks(precomputed[schema.time], schema.freq))
    if training is not None:
        scales = training_scales(training, schema)
        for target in schema.targets:
            part = scales[scales["target"] == target].drop(columns="target")
            if keys:
                merged = record[keys].merge(part, on=keys, how="left")["scale"].to_numpy()
            else:
                merged = np.full(len(record), float(part["scale"].iloc[0]))
            record[f"scale__{target}"] = merged
    return record


def live_record(columns: Mapping[str, np.ndarray], schema: Schema) -> pd.DataFrame:
    """A served answer's wire columns as a record table (see `version_record`)."""
    frame = pd.DataFrame({k: v for k, v in columns.items() if k != schema.time})
    times = parse_times(list(columns[schema.time]), schema.freq, schema.time)
    frame.insert(len(schema.keys), TICK, ticks(times, schema.freq))
    for key in schema.keys:
        frame[key] = frame[key].astype(str)
    return frame


@dataclass(frozen=True)
class RecordedForecast:
    """One stored forecast: its table (`version_record`) and what it is."""

    table: pd.DataFrame
    version: int
    cutoff: int  # as a tick
    kind: str  # published | live
    recorded_at: float  # unix seconds
    coverage: tuple[float, ...]
    quantiles: tuple[float, ...]
    record_id: str


def long_forecasts(records: Sequence[RecordedForecast], schema: Schema) -> pd.DataFrame:
    """Every record as rows of (keys, target, tick, version, cutoff, step, kind, point, lower_<c>,
    upper_<c>, q_<level>, scale); one forecast per version, cutoff, series and time (a
    published record wins over a live one with the same numbers)."""
    keys = list(schema.keys)
    parts = []
    scales: dict[tuple[int, str], pd.DataFrame] = {}
    for record in records:
        table = record.table
        for target in schema.targets:
            part = table[[*keys, TICK]].copy()
            part["target"] = target
            part["point"] = table[target].to_numpy(dtype="float64")
            for c in record.coverage:
                lower, upper = interval_columns(target, c)
                if lower in table.columns:
                    part[f"lower_{c:g}"] = table[lower].to_numpy(dtype="float64")
                    part[f"upper_{c:g}"] = table[upper].to_numpy(dtype="float64")
            for q in record.quantiles:
                column = quantile_column(target, q)
                if column in table.columns:
                    part[f"q_{q:g}"] = table[column].to_numpy(dtype="float64")
            scale_column = f"scale__{target}"
            if scale_column in table.columns:
                part["scale"] = table[scale_column].to_numpy(dtype="float64")
                if keys:
                    scales[(record.version, target)] = part[[*keys, "scale"]].drop_duplicates(keys)
            part["version"] = record.version
            part["cutoff"] = record.cutoff
            part["kind"] = record.kind
            part["recorded_at"] = record.recorded_at
            part["record"] = record.record_id
            parts.append(part)
    if not parts:
        columns = ["target", "point", "scale", "version", "cutoff", "kind", "recorded_at", "record", "step"]
        return pd.DataFrame(columns=[*keys, TICK, *columns])
    frame = pd.concat(parts, ignore_index=True)
    if "scale" not in frame.columns:
        frame["scale"] = np.nan
    missing_scale = frame["scale"].isna() & (frame["kind"] == "live")
    if missing_scale.any() and keys and scales:  # a live record takes its version's scales
        for (version, target), known in scales.items():
            rows = missing_scale & (frame["version"] == version) & (frame["target"] == target)
            if rows.any():
                filled = frame.loc[rows, keys].merge(known, on=keys, how="left")["scale"].to_numpy()
                frame.loc[rows, "scale"] = filled
    frame["step"] = frame[TICK] - frame["cutoff"]
    frame = frame.sort_values(["kind", "recorded_at"], kind="mergesort", key=_published_first)
    frame = frame.drop_duplicates([*keys, "target", TICK, "version", "cutoff"], keep="first")
    return frame.reset_index(drop=True)


def _published_first(column: pd.Series) -> pd.Series:
    return (column != "published").astype(int) if column.name == "kind" else column


# ----------------------------------------------------------------------------- actuals
def check_actuals(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """An upload of actuals, validated: every target numeric and present, each key+time once,
    times that parse in the model's frequency. Any bad row is a 422 naming rows and columns
    (`canonical_table`); gaps between times are fine."""
    return canonical_table(frame, schema, what="actuals", columns=list(schema.targets), contiguous=False)


def stored_actuals(table: pd.DataFrame, schema: Schema, source: str, received_ns: int) -> pd.DataFrame:
    """The columns an upload of actuals is stored with: keys, `TICK`, targets, source and arrival."""
    stored = table[[*schema.keys, *schema.targets]].copy()
    stored.insert(len(schema.keys), TICK, ticks(table[schema.time], schema.freq))
    stored["_source"] = source
    stored["_received"] = np.int64(received_ns)
    return stored


def long_actuals(stored: pd.DataFrame | None, schema: Schema) -> pd.DataFrame:
    """Every upload, the newest value of each key, target and time winning, as rows of (keys,
    target, tick, actual, received)."""
    keys = list(schema.keys)
    if stored is None or stored.empty:
        return pd.DataFrame(columns=[*keys, "target", TICK, "actual", "_received"])
    latest = stored.drop_duplicates([*keys, TICK], keep="last")
    parts = []
    for target in schema.targets:
        part = latest[[*keys, TICK, "_received"]].copy()
        part["target"] = target
        part["actual"] = latest[target].to_numpy(dtype="float64")
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    for key in keys:
        frame[key] = frame[key].astype(str)
    return frame


def join(forecasts: pd.DataFrame, actuals: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Each actual with every recorded forecast of its key, target and time."""
    on = [*schema.keys, "target", TICK]
    return forecasts.merge(actuals, on=on, how="inner")


def unmatched(
    upload: pd.DataFrame, forecasts: pd.DataFrame, schema: Schema, known_series: set[tuple[str, ...]]
) -> dict[str, Any]:
    """An upload's rows no recorded forecast covers: for series the model does not know, and
    for times no forecast of a known series reaches."""
    keys = list(schema.keys)
    rows = upload[[*keys, TICK]].drop_duplicates()
    covered = forecasts[[*keys, TICK]].drop_duplicates()
    hit = (rows.merge(covered, on=[*keys, TICK], how="left", indicator=True)["_merge"] == "both").to_numpy(bool)
    if keys:
        ids = list(rows[keys].astype(str).itertuples(index=False, name=None))
        unknown = np.array([tuple(i) not in known_series for i in ids], dtype=bool)
    else:
        unknown = np.zeros(len(rows), dtype=bool)
    examples = rows[unknown][keys].drop_duplicates().head(5).astype(str).to_numpy().tolist() if keys else []
    return {
        "rows": int((~hit).sum()),
        "unknown_series": int(unknown.sum()),
        "uncovered_times": int((~hit & ~unknown).sum()),
        "unknown_series_examples": examples,
    }


# ----------------------------------------------------------------------------- metrics
def _with_errors(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per-point parts of every metric, so each metric is a group mean (or a ratio of sums)."""
    out = pairs.copy()
    error = out["actual"] - out["point"]
    out["_abs"] = error.abs()
    out["_sq"] = error**2
    out["_ape"] = out["_abs"] / np.maximum(out["actual"].abs(), EPS)
    out["_sape"] = out["_abs"] / (np.maximum(out["actual"].abs() + out["point"].abs(), EPS) / 2)
    out["_absy"] = out["actual"].abs()
    for column in [c for c in pairs.columns if c.startswith("lower_")]:
        level = column[len("lower_") :]
        upper = out[f"upper_{level}"]
        inside = (out[column] <= out["actual"]) & (out["actual"] <= upper)
        out[f"_cov_{level}"] = inside.astype(float).where(out[column].notna())
    quantiles = [c for c in pairs.columns if c.startswith("q_")]
    if quantiles:
        losses = []
        for column in quantiles:
            alpha = float(column[2:])
            diff = out["actual"] - out[column]
            losses.append(np.where(diff >= 0, alpha * diff, (alpha - 1) * diff))
        out["_pinball"] = np.mean(np.vstack(losses), axis=0)
    return out


def _series_metrics(points: pd.DataFrame, by: list[str], series: list[str]) -> pd.DataFrame:
    """Each metric per group of ``by`` + series, as sktime computes it for one series."""
    grouped = points.groupby([*by, *series], sort=False, dropna=False)
    table = pd.DataFrame(
        {
            "points": grouped.size(),
            "MAE": grouped["_abs"].mean(),
            "RMSE": np.sqrt(grouped["_sq"].mean()),
            "MAPE": grouped["_ape"].mean(),
            "sMAPE": grouped["_sape"].mean(),
            "MASE": grouped["_abs"].mean() / np.maximum(grouped["scale"].first(), EPS),
            "WAPE": grouped["_abs"].sum() / grouped["_absy"].sum(),
        }
    )
    coverage = [c for c in points.columns if c.startswith("_cov_")]
    for column in coverage:
        table[column] = grouped[column].mean()
    if "_pinball" in points.columns:
        table["pinball"] = grouped["_pinball"].mean()
    return table.reset_index()


def _metric_dict(row: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    metrics: dict[str, Any] = {m: _number(row.get(m)) for m in POINT_METRICS}
    levels = {c[len("_cov_") :]: _number(row.get(c)) for c in columns if c.startswith("_cov_")}
    metrics["coverage"] = levels or None
    metrics["pinball"] = _number(row.get("pinball")) if "pinball" in columns else None
    return metrics


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def metrics_report(pairs: pd.DataFrame, schema: Schema) -> dict[str, Any]:
    """Metrics of one version's joined points: overall (the mean over series of each series'
    metric, like sktime on a panel), per series, and per horizon step."""
    series = [*schema.keys, "target"]
    points = _with_errors(pairs)
    per_series = _series_metrics(points, [], series)
    value_columns = [c for c in per_series.columns if c not in series and c != "points"]
    overall = per_series[value_columns].mean(numeric_only=True)
    by_step = _series_metrics(points, ["step"], series)
    steps = by_step.groupby("step")[value_columns].mean(numeric_only=True)
    step_points = by_step.groupby("step")["points"].sum()
    several_targets = len(schema.targets) > 1
    return {
        "points": len(points),
        "series": len(per_series),
        "overall": _metric_dict(overall.to_dict(), value_columns),
        "by_step": [
            {"step": int(step), "points": int(step_points[step]), "metrics": _metric_dict(row, value_columns)}
            for step, row in steps.iterrows()
        ],
        "per_series": [
            {
                "series": [str(row[k]) for k in schema.keys],
                **({"target": row["target"]} if several_targets else {}),
                "points": int(row["points"]),
                "metrics": _metric_dict(row, value_columns),
            }
            for row in per_series.to_dict("records")
        ],
    }


def window_of(pairs: pd.DataFrame, window: int) -> pd.DataFrame:
    """The points of the latest ``window`` times that have actuals (per version)."""
    if pairs.empty:
        return pairs
    latest = np.sort(pairs[TICK].unique())[-window:]
    return pairs[pairs[TICK].isin(latest)]


def promise(manifest: Mapping[str, Any]) -> dict[str, float]:
    """What the version's own backtest promised at publish, per point metric."""
    metrics = manifest.get("metrics") or {}
    found = dict(metrics.get("backtest") or {})
    for name, value in (metrics.get("headline") or {}).items():
        found.setdefault(name, value)
    return {k: float(v) for k, v in found.items() if k in POINT_METRICS and v is not None and np.isfinite(v)}


def drift_figures(live: Mapping[str, Any], promised: Mapping[str, float]) -> dict[str, float | None]:
    """live / backtest per point metric (the drift figure; > 1 is worse than promised)."""
    out: dict[str, float | None] = {}
    for name in POINT_METRICS:
        value, base = live.get(name), promised.get(name)
        out[name] = float(value) / base if value is not None and base else None
    return out


@dataclass(frozen=True)
class DriftPolicy:
    metric: str
    window: int
    degrade: float
    min_actuals: int
    action: str


def judge(policy: DriftPolicy, window_report: Mapping[str, Any], promised: Mapping[str, float]) -> dict[str, Any]:
    """``ok``, ``breach`` (the live metric over the window exceeds the promise by more than
    ``degrade``), ``insufficient`` (fewer than ``min_actuals`` points) or ``no_promise``."""
    live = (window_report.get("overall") or {}).get(policy.metric)
    points = int(window_report.get("points") or 0)
    base = promised.get(policy.metric)
    state = "ok"
    limit = base * (1 + policy.degrade) if base is not None else None
    if base is None:
        state = "no_promise"
    elif points < policy.min_actuals:
        state = "insufficient"
    elif live is not None and live > limit:  # type: ignore[operator]
        state = "breach"
    return {
        "state": state,
        "metric": policy.metric,
        "live": live,
        "promised": base,
        "limit": limit,
        "ratio": (live / base) if live is not None and base else None,
        "points": points,
        "min_actuals": policy.min_actuals,
        "window": policy.window,
        "degrade": policy.degrade,
        "action": policy.action,
    }


def rolling(pairs: pd.DataFrame, schema: Schema, window: int, metric: str) -> list[dict[str, Any]]:
    """The metric over the trailing ``window`` times, at each time that has actuals."""
    out = []
    times = np.sort(pairs[TICK].unique())
    for position, tick in enumerate(times):
        chosen = times[max(0, position - window + 1) : position + 1]
        part = pairs[pairs[TICK].isin(chosen)]
        report = metrics_report(part, schema) if len(part) else None
        value = report["overall"].get(metric) if report else None
        out.append({"time": times_of(np.array([tick]), schema.freq)[0], "value": value, "points": len(part)})
    return out


# ----------------------------------------------------------------------------- anomalies
def served_points(pairs: pd.DataFrame, schema: Schema, served_versions: set[int]) -> pd.DataFrame:
    """For each actual, the forecast the service stood behind for it: among the forecasts of
    versions that served (were production) and live answers, the one made last (latest
    cutoff, then the newest version)."""
    eligible = pairs[pairs["version"].isin(served_versions) | (pairs["kind"] == "live")]
    ordered = eligible.sort_values(["cutoff", "version", "recorded_at"], kind="mergesort")
    return ordered.drop_duplicates([*schema.keys, "target", TICK], keep="last")


def anomaly_bounds(points: pd.DataFrame, coverage: float) -> tuple[pd.Series, pd.Series] | None:
    """The served interval at ``coverage``: its interval columns, or the quantiles that bound it."""
    lower, upper = f"lower_{coverage:g}", f"upper_{coverage:g}"
    if lower in points.columns and points[lower].notna().all():
        return points[lower], points[upper]
    low_q, high_q = f"q_{(1 - coverage) / 2:g}", f"q_{(1 + coverage) / 2:g}"
    if low_q in points.columns and high_q in points.columns and points[low_q].notna().all():
        return points[low_q], points[high_q]
    return None


def available_coverages(points: pd.DataFrame) -> list[float]:
    found = {float(c[len("lower_") :]) for c in points.columns if c.startswith("lower_")}
    quantiles = sorted(float(c[2:]) for c in points.columns if c.startswith("q_"))
    for q in quantiles:
        partner = round(1 - q, 10)
        if q < 0.5 and any(abs(p - partner) < 1e-9 for p in quantiles):
            found.add(round(1 - 2 * q, 10))
    return sorted(found)


def score_anomalies(points: pd.DataFrame, schema: Schema, coverage: float, model: str) -> pd.DataFrame:
    """The served points whose actual falls outside the interval at ``coverage``, with a
    score (the distance from the point forecast in interval half-widths) and, when the
    forecast has quantiles, the quantile level the actual falls at."""
    bounds = anomaly_bounds(points, coverage) if len(points) else None
    if bounds is None:
        if points.empty:
            return points.assign(score=[], level=[], side=[])
        raise CapabilityUnavailable(
            f"the forecasts of {model} that met these actuals have no interval at coverage {coverage:g}; "
            f"recorded: {available_coverages(points) or 'none'} (add it to the spec's coverage, or wrap the "
            "forecaster: intervals: conformal)",
            capability="pred_int",
            field="coverage",
        )
    lower, upper = bounds
    outside = (points["actual"] < lower) | (points["actual"] > upper)
    half = ((upper - lower) / 2).where(lambda h: h > 0)
    flagged = points[outside].copy()
    flagged["lower"] = lower[outside]
    flagged["upper"] = upper[outside]
    flagged["score"] = ((flagged["actual"] - flagged["point"]).abs() / half[outside]).to_numpy()
    flagged["side"] = np.where(flagged["actual"] > flagged["upper"], "above", "below")
    flagged["level"] = _quantile_level(flagged)
    return flagged


def _quantile_level(points: pd.DataFrame) -> np.ndarray:
    """Where each actual falls among its forecast's quantiles (interpolated; clipped to the
    outermost levels); NaN without quantiles."""
    columns = sorted((float(c[2:]), c) for c in points.columns if c.startswith("q_"))
    if not columns or points.empty:
        return np.full(len(points), np.nan)
    levels = np.array([level for level, _ in columns])
    values = points[[c for _, c in columns]].to_numpy(dtype="float64")
    actual = points["actual"].to_numpy(dtype="float64")
    return np.array([np.interp(a, row, levels) for a, row in zip(actual, values, strict=True)])


def anomaly_rows(flagged: pd.DataFrame, schema: Schema) -> list[dict[str, Any]]:
    if flagged.empty:
        return []
    times = times_of(flagged[TICK].to_numpy(), schema.freq)
    cutoffs = times_of(flagged["cutoff"].to_numpy(), schema.freq)
    several_targets = len(schema.targets) > 1
    rows = []
    for (_, row), time, cutoff in zip(flagged.iterrows(), times, cutoffs, strict=True):
        rows.append(
            {
                "series": [str(row[k]) for k in schema.keys],
                **({"target": row["target"]} if several_targets else {}),
                "time": time,
                "actual": float(row["actual"]),
                "forecast": float(row["point"]),
                "lower": float(row["lower"]),
                "upper": float(row["upper"]),
                "side": row["side"],
                "score": _number(row["score"]),
                "level": _number(row["level"]),
                "version": int(row["version"]),
                "cutoff": cutoff,
                "step": int(row["step"]),
                "kind": row["kind"],
            }
        )
    return rows


def check_coverage(coverage: float) -> float:
    if not 0 < coverage < 1:
        raise InvalidInput("coverage must lie strictly between 0 and 1", field="coverage")
    return coverage
