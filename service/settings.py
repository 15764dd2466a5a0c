"""Settings: environment variables with the ``FORECAST_`` prefix (and CLI flags).

Built in `create_app()` and the CLI, never at import time. Every field is documented
in the README's settings table.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORECAST_", extra="ignore")

    registry: Path = Field(default=Path("models"), description="Model registry folder")
    host: str = Field(default="127.0.0.1", description="Address `serve` binds to")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `serve` listens on")
    poll_interval: float = Field(
        default=1.0, gt=0, description="Seconds between registry scans for new versions and alias moves"
    )
    train_missing: bool = Field(
        default=False, description="On start, train every model that has a spec but no version (demo registry)"
    )
    max_horizon: int = Field(default=500, ge=1, description="Largest forecast horizon a request may ask for")
    max_series_per_request: int = Field(default=5000, ge=1, description="Most series a request may name")
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Largest request body, in bytes")
    max_rows_per_request: int = Field(
        default=200_000, ge=1, description="Most rows in a request table (observations, exogenous)"
    )
    live_predict_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a live (sktime) predict may take before 503"
    )
    live_predict_threads: int = Field(default=4, ge=1, description="Threads for live sktime calls")
    version_cache_size: int = Field(
        default=8, ge=0, description="Loaded versions kept per model besides those an alias points at"
    )
    response_cache_size: int = Field(
        default=1024, ge=0, description="Serialised fast-path responses kept in memory (LRU)"
    )
    log_level: str = Field(default="info", description="Log level: debug, info, warning, error")
    data_dir: Path = Field(default=Path("data"), description="Folder for datasets, job files and the SQLite job store")
    jobs_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the job store; default sqlite:///<data_dir>/jobs.sqlite"
    )
    max_concurrent_jobs: int = Field(default=2, ge=1, description="Jobs this process runs at once (one process each)")
    job_stale_seconds: float = Field(
        default=30.0, gt=0, description="A running job whose owner has not beaten for this long is failed (interrupted)"
    )
    max_wait_seconds: float = Field(
        default=60.0, ge=0, description="Longest `?wait=true` a backtest request may block for"
    )

    sql_url: str | None = Field(default=None, description="SQLAlchemy URL that `sql:` data sources of specs query")
    schedule_poll_seconds: float = Field(
        default=15.0, gt=0, description="Seconds between checks of the specs' retrain schedules"
    )
    scheduler: bool = Field(default=True, description="Run the retrain scheduler in this process")

    @property
    def resolved_jobs_url(self) -> str:
        return self.jobs_url or f"sqlite:///{(self.data_dir / 'jobs.sqlite').resolve()}"
