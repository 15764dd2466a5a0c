"""Wire models of backtests and jobs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from service.forecasting.backtest import DEFAULT_METRICS, BacktestRequest, SplitterSpec
from service.forecasting.leaderboard import MAX_CANDIDATES, Candidate, LeaderboardRequest
from service.schemas.predict import Levels, SeriesKey, normalize_series


class SplitterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["expanding", "sliding", "folds"] = Field(
        default="folds", description="expanding window, sliding window, or the last `folds` windows (greedy)"
    )
    horizon: StrictInt = Field(default=12, ge=1, le=1000, description="Steps forecast in each fold")
    initial_window: StrictInt | None = Field(default=None, ge=2, description="expanding: first training window")
    window_length: StrictInt | None = Field(default=None, ge=2, description="sliding: training window")
    step: StrictInt | None = Field(default=None, ge=1, description="Steps between cutoffs (default: horizon)")
    folds: StrictInt | None = Field(default=None, ge=1, le=100, description="folds: how many last windows")


class BacktestBody(BaseModel):
    """A backtest of a version's forecaster on its training data (sktime `evaluate`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"splitter": {"type": "folds", "folds": 3, "horizon": 12}, "strategy": "refit"},
                {
                    "splitter": {"type": "expanding", "initial_window": 96, "step": 12, "horizon": 12},
                    "metrics": ["MAE", "MASE", "pinball", "coverage"],
                    "quantiles": [0.1, 0.9],
                    "coverage": [0.8],
                },
            ]
        },
    )

    version: StrictInt | None = Field(default=None, ge=1)
    alias: StrictStr | None = None
    splitter: SplitterBody = Field(default_factory=SplitterBody)
    strategy: Literal["refit", "update", "no-update_params"] = "refit"
    metrics: list[StrictStr] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        description="MAE, RMSE, MAPE, sMAPE, MASE, WAPE, pinball (needs quantiles), coverage (needs coverage)",
    )
    coverage: Levels = Field(default_factory=list)
    quantiles: Levels = Field(default_factory=list)
    series: list[SeriesKey] | None = Field(default=None, description="Report per-series metrics for these only")
    dataset: StrictStr | None = Field(
        default=None, description="Backtest on this uploaded dataset instead of the version's training table"
    )
    dataset_version: StrictStr | None = Field(default=None, description="A version of `dataset` (default: latest)")

    def to_request(self, keys: tuple[str, ...]) -> BacktestRequest:
        return BacktestRequest(
            splitter=SplitterSpec(**self.splitter.model_dump()),
            strategy=self.strategy,
            metrics=tuple(dict.fromkeys(self.metrics)),
            coverage=tuple(self.coverage),
            quantiles=tuple(self.quantiles),
            series=tuple(normalize_series(s, keys) for s in self.series) if self.series is not None else None,
        )


class CandidateBody(BaseModel):
    """One forecaster to compare: what it sets of the model's spec."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr | None = Field(
        default=None, min_length=1, max_length=64, description="Its name in the table (default: its class)"
    )
    forecaster: dict[str, Any] = Field(
        description="{class, params} of the allow-list (GET /v1/forecasters), as in a model spec",
        examples=[{"class": "ThetaForecaster", "params": {"sp": 12}}],
    )
    intervals: Literal["native", "conformal"] | None = None
    engine: Literal["auto", "sktime", "statsforecast"] | None = None

    def to_candidate(self, position: int) -> Candidate:
        default = str(self.forecaster.get("class") or self.forecaster.get("preset") or f"candidate{position}")
        fields = {"forecaster": self.forecaster, "intervals": self.intervals, "engine": self.engine}
        return Candidate(self.name or default, {k: v for k, v in fields.items() if v is not None})


class LeaderboardBody(BaseModel):
    """Candidate forecaster specs backtested on the model's data, ranked (sktime `evaluate`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "candidates": [
                        {"name": "theta", "forecaster": {"class": "ThetaForecaster", "params": {"sp": 12}}},
                        {
                            "name": "ets",
                            "forecaster": {"class": "StatsForecastAutoETS", "params": {"season_length": 12}},
                        },
                    ],
                    "splitter": {"type": "folds", "folds": 2, "horizon": 12},
                    "rank_by": "MASE",
                }
            ]
        },
    )

    candidates: list[CandidateBody] = Field(
        max_length=MAX_CANDIDATES, description="The forecasters to compare (the seasonal-naive baseline is added)"
    )
    splitter: SplitterBody = Field(default_factory=SplitterBody)
    strategy: Literal["refit", "update", "no-update_params"] = "refit"
    metrics: list[StrictStr] = Field(
        default_factory=lambda: list(DEFAULT_METRICS), description="Point metrics: MAE, RMSE, MAPE, sMAPE, MASE, WAPE"
    )
    rank_by: StrictStr | None = Field(
        default=None, description="The metric that ranks (default: the spec's gate metric)"
    )
    series: list[SeriesKey] | None = Field(default=None, description="Report per-series rows for these only")
    dataset_version: StrictStr | None = Field(default=None, description="Of the spec's dataset (default: latest)")
    promote: Literal["auto", "always", "never"] | None = Field(
        default=None, description="With ?publish=best: the gate's policy for the winner (default: the spec's)"
    )

    def to_request(self, keys: tuple[str, ...], default_rank_by: str) -> LeaderboardRequest:
        backtest = BacktestRequest(
            splitter=SplitterSpec(**self.splitter.model_dump()),
            strategy=self.strategy,
            metrics=tuple(dict.fromkeys(self.metrics)),
            series=tuple(normalize_series(s, keys) for s in self.series) if self.series is not None else None,
        )
        fallback = (
            backtest.metrics[0] if backtest.metrics and default_rank_by not in backtest.metrics else default_rank_by
        )
        rank_by = self.rank_by or fallback
        candidates = tuple(c.to_candidate(i) for i, c in enumerate(self.candidates))
        return LeaderboardRequest(candidates=candidates, backtest=backtest, rank_by=rank_by)


class ExportBody(BaseModel):
    """A whole panel's forecast written to a file by a job (for panels too big for one answer)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"horizon": 12, "coverage": [0.9], "quantiles": [0.1, 0.5, 0.9], "format": "parquet"}]
        },
    )

    version: StrictInt | None = Field(default=None, ge=1)
    alias: StrictStr | None = None
    horizon: StrictInt | None = Field(default=None, ge=1, description="Steps ahead (default: the version's horizon)")
    coverage: Levels = Field(default_factory=list, description="Interval coverages in (0, 1)")
    quantiles: Levels = Field(default_factory=list, description="Quantile levels in (0, 1)")
    format: Literal["parquet", "csv"] = "parquet"


class JobOut(BaseModel):
    id: str
    kind: str
    model: str
    status: str
    progress: dict[str, Any]
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class JobList(BaseModel):
    jobs: list[JobOut]
    next_page_token: str | None = Field(
        default=None, description="Send as `page_token` for the next page; null on the last page"
    )
