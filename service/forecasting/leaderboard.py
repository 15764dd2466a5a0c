"""Leaderboards: several candidate forecaster specs backtested on the same data, splitter
and metrics (the backtest engine, sktime's `evaluate`), ranked overall and per series, each
with its forecast value added against the seasonal-naive baseline."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from service.errors import InvalidInput, ServiceError, SpecError
from service.forecasting.backtest import (
    BASELINE,
    POINT_METRICS,
    BacktestRequest,
    baseline_forecaster,
    baseline_node,
    forecast_value_added,
    run_backtest,
)
from service.forecasting.progress import Cancelled, Progress
from service.forecasting.specs import ModelSpec, parse_model_spec
from service.tables import Schema

MAX_CANDIDATES = 20
CANDIDATE_FIELDS = ("forecaster", "intervals", "engine")
"""What a candidate may set of a model spec; the rest (data, horizon, freq) is the model's."""


@dataclass(frozen=True)
class Candidate:
    name: str
    spec: dict[str, Any]  # the CANDIDATE_FIELDS it sets: forecaster, and optionally intervals, engine

    def to_params(self) -> dict[str, Any]:
        return {"name": self.name, **self.spec}

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> Candidate:
        return cls(str(raw["name"]), {k: raw[k] for k in CANDIDATE_FIELDS if raw.get(k) is not None})


@dataclass(frozen=True)
class LeaderboardRequest:
    candidates: tuple[Candidate, ...]
    backtest: BacktestRequest
    rank_by: str

    def to_params(self) -> dict[str, Any]:
        return {
            "candidates": [c.to_params() for c in self.candidates],
            "rank_by": self.rank_by,
            **self.backtest.to_params(),
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LeaderboardRequest:
        return cls(
            candidates=tuple(Candidate.from_params(c) for c in params["candidates"]),
            backtest=BacktestRequest.from_params(params),
            rank_by=params["rank_by"],
        )


def candidate_spec(spec: ModelSpec, candidate: Candidate) -> ModelSpec:
    """The model's spec with the candidate's forecaster (and intervals, engine)."""
    raw = {**spec.model_dump(exclude_unset=True), **candidate.spec}
    for setting in ("intervals", "engine"):  # a candidate that does not set them gets the defaults
        if setting not in candidate.spec:
            raw.pop(setting, None)
    return parse_model_spec(raw, origin=f"candidate '{candidate.name}'")


def check_request(spec: ModelSpec, request: LeaderboardRequest) -> list[ModelSpec]:
    """Everything about the candidates that can be checked before any job exists: their
    count, unique names, metrics and ``rank_by``; each candidate's spec resolves against the
    allow-list and builds (a `SpecError` names ``candidates[i]``). Returns their specs."""
    if not request.candidates:
        raise InvalidInput("'candidates' is empty: give at least one forecaster spec to compare", field="candidates")
    if len(request.candidates) > MAX_CANDIDATES:
        raise InvalidInput(
            f"{len(request.candidates)} candidates; a leaderboard compares at most {MAX_CANDIDATES}",
            field="candidates",
        )
    names = [c.name for c in request.candidates]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidInput(f"candidate names must be unique; repeated: {repeated}", field="candidates")
    if BASELINE in names:
        raise InvalidInput(
            f"'{BASELINE}' is the baseline every leaderboard runs; name the candidate otherwise", field="candidates"
        )
    other = [m for m in request.backtest.metrics if m not in POINT_METRICS]
    if other:
        raise InvalidInput(
            f"leaderboards rank on point metrics {list(POINT_METRICS)}; not {other}", field="metrics", metrics=other
        )
    if request.rank_by not in request.backtest.metrics:
        raise InvalidInput(
            f"rank_by {request.rank_by!r} must be one of the metrics {list(request.backtest.metrics)}",
            field="rank_by",
        )
    specs = []
    for i, candidate in enumerate(request.candidates):
        where = f"candidates[{i}]"
        try:
            built = candidate_spec(spec, candidate)
            built.build_forecaster()
        except SpecError as exc:
            field = exc.extra.get("field")
            raise SpecError(
                f"{where} ({candidate.name}): {exc.detail}",
                **{**exc.extra, "field": f"{where}.{field}" if field else where, "candidate": candidate.name},
            ) from None
        specs.append(built)
    return specs


def run_leaderboard(
    request: LeaderboardRequest,
    forecasters: Sequence[Any],
    y: pd.DataFrame,
    x: pd.DataFrame | None,
    schema: Schema,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Backtest each candidate (``forecasters``, unfitted, in candidate order) and the
    baseline on the same splitter; a candidate that fails is reported, on the series it
    failed on when it is a per-series model, and the leaderboard goes on."""
    say = progress or (lambda stage, done, total: None)
    n_folds = request.backtest.splitter.build().get_n_splits(y)
    contestants = [*zip(request.candidates, forecasters, strict=True), (None, None)]
    total = len(contestants) * n_folds
    rows = []
    for position, (candidate, forecaster) in enumerate(contestants):
        name = candidate.name if candidate is not None else BASELINE
        offset = position * n_folds

        def report(done: int, _total: int, stage: str = f"backtesting {name}", offset: int = offset) -> None:
            say(stage, offset + done, total)

        report(0, n_folds)
        if candidate is None:
            baseline = baseline_forecaster(schema.freq)
            row = _contest(BASELINE, baseline_node(schema.freq), baseline, y, None, request, schema, report)
            row["baseline"] = True
        else:
            row = _contest(name, candidate.spec, forecaster, y, x, request, schema, report)
        rows.append(row)
    say("ranking", total, total)
    return _rank(rows, request, n_folds)


def _contest(
    name: str,
    spec: Mapping[str, Any],
    forecaster: Any,
    y: pd.DataFrame,
    x: pd.DataFrame | None,
    request: LeaderboardRequest,
    schema: Schema,
    report: Callable[[int, int], None],
) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, **({"forecaster": spec} if "class" in spec else dict(spec))}
    try:
        result, _ = run_backtest(
            forecaster, y, x, request.backtest, schema, report, chunked=True, isolate_failures=True
        )
    except Cancelled:
        raise
    except ServiceError as exc:
        return {**row, "status": "failed", "error": exc.detail[:500]}
    except Exception as exc:  # a candidate that cannot fit this data: reported, the others go on
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]}
    failed = result.get("failed_series") or []
    return {
        **row,
        "status": "partial" if failed else "ok",
        "aggregate": result["aggregate"],
        "folds": [{"fold": f["fold"], "cutoff": f["cutoff"], "metrics": f["metrics"]} for f in result["folds"]],
        "timing": result["timing"],
        "per_series": {tuple(r["series"]): r["metrics"] for r in result["per_series"]},
        **({"failed_series": failed} if failed else {}),
    }


def _finite(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def _rank(rows: list[dict[str, Any]], request: LeaderboardRequest, n_folds: int) -> dict[str, Any]:
    """The ranked table: candidates that ran on every series by ``rank_by`` (lower first),
    then partial and failed ones unranked; per series every contestant's ``rank_by``, the
    winner (the argmin; the first in candidate order on a tie) and the FVA of each."""
    metric = request.rank_by
    baseline = next(r for r in rows if r.get("baseline"))
    base_series: dict[tuple[str, ...], dict[str, Any]] = baseline.get("per_series", {})
    for row in rows:
        own = row.get("per_series") or {}
        if row["status"] == "ok" and "aggregate" in baseline:
            row["fva"] = forecast_value_added(row["aggregate"], baseline["aggregate"])
        elif row["status"] == "partial" and base_series:  # against the baseline on the same series
            row["fva"] = forecast_value_added(_mean_of(own.values()), _mean_of(base_series[k] for k in own))
        else:
            row["fva"] = None
    ranked = sorted(
        (r for r in rows if r["status"] == "ok" and _finite(r["aggregate"].get(metric))),
        key=lambda r: r["aggregate"][metric],
    )
    for i, row in enumerate(ranked):
        row["rank"] = i + 1
    unranked = [r for r in rows if r not in ranked]
    for row in unranked:
        row["rank"] = None

    series = sorted({k for r in rows for k in (r.get("per_series") or {})})
    per_series, wins = [], {r["name"]: 0 for r in rows}
    for key in series:
        values = {r["name"]: (r.get("per_series") or {}).get(key, {}).get(metric) for r in rows}
        scored = [(v, n) for n, v in values.items() if _finite(v)]
        winner = min(scored, key=lambda pair: pair[0])[1] if scored else None
        if winner is not None:
            wins[winner] += 1
        base = values.get(BASELINE)
        per_series.append(
            {
                "series": list(key),
                "winner": winner,
                metric: values,
                "fva": {
                    n: forecast_value_added({metric: v}, {metric: base})[metric]
                    if _finite(v) and _finite(base)
                    else None
                    for n, v in values.items()
                    if n != BASELINE
                },
            }
        )
    table = [{k: v for k, v in r.items() if k != "per_series"} for r in [*ranked, *unranked]]
    return {
        "rank_by": metric,
        "metrics": list(request.backtest.metrics),
        "splitter": request.backtest.splitter.__dict__,
        "strategy": request.backtest.strategy,
        "n_folds": n_folds,
        "baseline": {"name": BASELINE, "forecaster": baseline.get("forecaster")},
        "winner": ranked[0]["name"] if ranked else None,
        "candidates": table,
        "wins": wins,
        "per_series": per_series,
    }


def _mean_of(rows: Any) -> dict[str, float]:
    """The mean of each metric over per-series rows (finite values only)."""
    collected: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            if _finite(value):
                collected.setdefault(name, []).append(float(value))
    return {name: sum(v) / len(v) for name, v in collected.items()}
