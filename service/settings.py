"""Settings: environment variables with the ``FORECAST_`` prefix (and CLI flags).

Built in `create_app()` and the CLI, never at import time. Every field is documented
in the README's settings table.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.security import parse_keys


class Settings(BaseSettings):
    # an empty variable counts as unset: FORECAST_API_KEYS= must not mean "no keys, open"
    model_config = SettingsConfigDict(env_prefix="FORECAST_", extra="ignore", env_ignore_empty=True)

    registry: Path = Field(default=Path("models"), description="Model registry folder")
    host: str = Field(default="127.0.0.1", description="Address `serve` binds to")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `serve` listens on")
    poll_interval: float = Field(
        default=1.0, gt=0, description="Seconds between registry scans for new versions and alias moves"
    )
    train_missing: bool = Field(
        default=False, description="On start, train every model that has a spec but no version (demo registry)"
    )
    train_background: bool = Field(
        default=True,
        description="With train_missing: also train, once the server is ready, the models whose spec says "
        "first_start: background (off: they wait for a retrain)",
    )
    max_horizon: int = Field(default=500, ge=1, description="Largest forecast horizon a request may ask for")
    max_series_per_request: int = Field(default=5000, ge=1, description="Most series a request may name")
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Largest request body, in bytes")
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024,
        description="Largest dataset upload or append body, in bytes (streamed to disk; other routes: max_body_bytes)",
    )
    max_upload_rows: int = Field(
        default=12_000_000, ge=1, description="Most rows in a dataset upload or append (100k series x 120 periods)"
    )
    shard_series: int = Field(
        default=1000,  # measured: see README "Panels at scale"
        ge=0,
        description="Series per shard of a panel of per-series models (0: one artifact); a live request "
        "unpickles only the shards of its series",
    )
    shard_cache_bytes: int = Field(
        default=256 * 2**20,
        ge=1,
        description="Loaded shards kept in memory, by their artifact bytes (least recently used out first)",
    )
    max_rows_per_request: int = Field(
        default=200_000, ge=1, description="Most rows in a request table (observations, exogenous)"
    )
    max_columns_per_table: int = Field(
        default=1000, ge=1, description="Most columns in a request or upload table (checked before parsing)"
    )
    max_decoded_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024,
        description="Largest decoded size of an uploaded Parquet file, from its metadata before reading",
    )
    ingest_threads: int = Field(
        default=2, ge=1, description="Threads that parse uploads and specs (apart from the live-predict threads)"
    )
    max_active_jobs_per_key: int = Field(
        default=4, ge=1, description="Queued + running jobs one API key (or the open server) may have (429 beyond)"
    )
    sources_root: Path | None = Field(
        default=None,
        description="Folder that a spec's `path` source may read besides its model folder (none = model folder only)",
    )
    header_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a client has to send a request's headers before the connection closes"
    )
    body_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a request body may pause between chunks before a 408"
    )
    keep_alive_timeout: float = Field(default=5.0, gt=0, description="Seconds an idle keep-alive connection is kept")
    max_connections: int = Field(
        default=256, ge=1, description="Concurrent connections + requests before new ones get 503 (uvicorn)"
    )
    live_predict_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a live (sktime) predict may take before 503"
    )
    live_predict_threads: int = Field(default=4, ge=1, description="Threads for live sktime calls")
    version_cache_size: int = Field(
        default=8, ge=0, description="Loaded versions kept per model besides those an alias points at"
    )
    response_cache_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="Memory for serialised fast-path answers, overhead included (LRU, bytes; 0 = off)",
    )
    log_level: str = Field(default="info", description="Log level: debug, info, warning, error")
    log_json: bool = Field(default=True, description="Structured JSON log lines (false: plain text)")
    access_log: bool = Field(default=True, description="One JSON log line per request")
    data_dir: Path = Field(default=Path("data"), description="Folder for datasets, job files and the SQLite job store")
    export_dir: Path | None = Field(
        default=None,
        description="Folder batch exports are written to (<export_dir>/<model>/...); default: the export job's "
        "folder under the data dir, removed with the job. Must be shared with Dask workers",
    )
    jobs_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the job store; default sqlite:///<data_dir>/jobs.sqlite"
    )
    dask_scheduler: str | None = Field(
        default=None, description="Dask distributed scheduler address (tcp://host:8786): jobs run on its workers"
    )
    max_concurrent_jobs: int = Field(default=2, ge=1, description="Jobs this process runs at once (one process each)")
    job_stale_seconds: float = Field(
        default=30.0, gt=0, description="A running job whose owner has not beaten for this long is failed (interrupted)"
    )
    job_retention_days: float = Field(
        default=30.0,
        ge=0,
        description="Finished jobs (row, result and files) are deleted this many days after they finished (0 = kept)",
    )
    record_max_rows: int = Field(
        default=5_000_000,
        ge=1,
        description="Monitoring: forecast rows recorded per model (published and live); the oldest records go first",
    )
    record_max_age_days: float = Field(
        default=730.0,
        ge=0,
        description="Monitoring: recorded forecasts and actuals older than this many days are deleted (0 = kept)",
    )
    max_wait_seconds: float = Field(
        default=60.0, ge=0, description="Longest `?wait=true` a backtest request may block for"
    )

    sql_url: str | None = Field(default=None, description="SQLAlchemy URL that `sql:` data sources of specs query")
    schedule_poll_seconds: float = Field(
        default=15.0, gt=0, description="Seconds between checks of the specs' retrain schedules"
    )
    scheduler: bool = Field(default=True, description="Run the retrain scheduler in this process")

    api_keys: SecretStr | None = Field(
        default=None, description="API keys: 'read:KEY,admin:KEY' (keys of 16+ characters); none = open on loopback"
    )
    api_keys_file: Path | None = Field(default=None, description="A secrets file of 'role:KEY' lines (same format)")
    insecure: bool = Field(
        default=False, description="Allow serving without keys on a non-loopback address (never in production)"
    )
    signing_key: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key: manifests are signed on publish and checked on load"
    )
    metrics_public: bool = Field(default=True, description="/metrics without a key (false: needs a read key)")
    shutdown_timeout: float = Field(
        default=20.0, gt=0, description="Seconds in-flight requests get to finish after SIGTERM"
    )

    @model_validator(mode="after")
    def _no_open_server_off_loopback(self) -> Settings:
        if self.api_keys is not None and not self.api_keys.get_secret_value().strip():
            self.api_keys = None  # blank keys are no keys
        if self.api_keys is not None:
            parse_keys(self.api_keys.get_secret_value(), "FORECAST_API_KEYS")
        if self.api_keys_file is not None:
            try:
                parse_keys(
                    Path(self.api_keys_file).read_text(encoding="utf-8"), f"FORECAST_API_KEYS_FILE {self.api_keys_file}"
                )
            except OSError as exc:
                raise ValueError(f"FORECAST_API_KEYS_FILE {self.api_keys_file}: {exc.strerror}") from None
        if self.api_keys is None and self.api_keys_file is None and not self.insecure and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve on {self.host} without API keys: set FORECAST_API_KEYS='admin:<key>,read:<key>' "
                "or FORECAST_API_KEYS_FILE, or bind 127.0.0.1; --insecure overrides (never in production)"
            )
        return self

    @property
    def signing_key_bytes(self) -> bytes | None:
        return self.signing_key.get_secret_value().encode() if self.signing_key is not None else None

    @property
    def resolved_jobs_url(self) -> str:
        return self.jobs_url or f"sqlite:///{(self.data_dir / 'jobs.sqlite').resolve()}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
