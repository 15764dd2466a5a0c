"""What a job's worker process needs to reach the same stores as the runner (picklable)."""

from __future__ import annotations

from dataclasses import dataclass

from service.registry.store import SHARD_SERIES, Registry


@dataclass(frozen=True)
class WorkerContext:
    """What a worker process needs; picklable."""

    jobs_url: str
    registry_path: str
    data_dir: str
    owner: str
    sql_url: str | None = None
    signing_key: str | None = None
    sources_root: str | None = None
    shard_series: int = SHARD_SERIES

    def registry(self) -> Registry:
        return Registry(
            self.registry_path,
            signing_key=self.signing_key.encode() if self.signing_key else None,
            shard_series=self.shard_series,
        )
