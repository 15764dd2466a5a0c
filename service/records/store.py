"""The monitoring record: the forecasts the service stood behind and the actuals that
arrived, per model, as Parquet files under ``<data_dir>/monitoring/<model>/``. Content
blind: tables with a little metadata, written atomically, read back, bounded by rows and
age. What the columns mean is `service.forecasting.monitoring`'s business."""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from service.errors import InvalidName
from service.fileio import atomic_write

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
RECORD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
META_KEY = b"forecast_service.record"
FORECASTS, ACTUALS, FACTS = "forecasts", "actuals", "facts.json"
COMPACT_AFTER = 32
"""Actual uploads are one file each; beyond this many files they are merged into one."""


@dataclass(frozen=True)
class StoredForecast:
    record_id: str
    meta: dict[str, Any]
    table: pd.DataFrame


class RecordStore:
    """``forecasts/<id>.parquet`` (one recorded forecast, its metadata in the file),
    ``actuals/<ns>-<uuid>.parquet`` (one upload each, in arrival order) and ``facts.json``
    (small named facts, read-modify-written under the model's lock)."""

    def __init__(self, data_dir: Path | str, cached_tables: int = 256) -> None:
        self.root = Path(data_dir).resolve() / "monitoring"
        self._tables: OrderedDict[tuple[str, int, int], pd.DataFrame] = OrderedDict()
        self._cached = cached_tables
        self._guard = threading.Lock()

    def _dir(self, model: str) -> Path:
        if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
            raise InvalidName(f"invalid model name {str(model)[:100]!r}", field="name")
        return self.root / model

    @contextlib.contextmanager
    def locked(self, model: str) -> Iterator[None]:
        """The model's record lock, across processes (compaction, facts, retention)."""
        directory = self._dir(model)
        directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory / ".lock")):
            yield

    # ------------------------------------------------------------------ forecasts
    def has_forecast(self, model: str, record_id: str) -> bool:
        return (self._dir(model) / FORECASTS / f"{_record_id(record_id)}.parquet").is_file()

    def put_forecast(self, model: str, record_id: str, table: pd.DataFrame, meta: Mapping[str, Any]) -> int:
        """Write one forecast (idempotent: an id already stored is kept); returns its bytes."""
        path = self._dir(model) / FORECASTS / f"{_record_id(record_id)}.parquet"
        if path.is_file():
            return path.stat().st_size
        path.parent.mkdir(parents=True, exist_ok=True)
        arrow = pa.Table.from_pandas(table, preserve_index=False)
        arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), META_KEY: json.dumps(dict(meta))})
        buffer = io.BytesIO()
        pq.write_table(arrow, buffer, compression="zstd")
        atomic_write(path, buffer.getvalue())
        return len(buffer.getvalue())

    def forecast_metas(self, model: str) -> list[tuple[str, dict[str, Any], int]]:
        """(id, metadata, bytes) of every stored forecast, read from the files' footers."""
        found = []
        for path in self._files(model, FORECASTS):
            with contextlib.suppress(FileNotFoundError):
                meta = pq.read_schema(path).metadata or {}
                found.append((path.stem, json.loads(meta.get(META_KEY, b"{}")), path.stat().st_size))
        return found

    def read_forecasts(self, model: str) -> list[StoredForecast]:
        forecasts = []
        for path in self._files(model, FORECASTS):
            with contextlib.suppress(FileNotFoundError):
                table = self._read(path)
                meta = pq.read_schema(path).metadata or {}
                forecasts.append(StoredForecast(path.stem, json.loads(meta.get(META_KEY, b"{}")), table))
        return forecasts

    def delete_forecasts(self, model: str, record_ids: list[str]) -> None:
        for record_id in record_ids:
            with contextlib.suppress(FileNotFoundError):
                (self._dir(model) / FORECASTS / f"{_record_id(record_id)}.parquet").unlink()

    # ------------------------------------------------------------------ actuals
    def append_actuals(self, model: str, table: pd.DataFrame) -> str:
        """One upload, named by its arrival time (files sort in arrival order)."""
        directory = self._dir(model) / ACTUALS
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        atomic_write(directory / name, buffer.getvalue())
        if len(self._files(model, ACTUALS)) > COMPACT_AFTER:
            self._compact(model)
        return name

    def read_actuals(self, model: str) -> pd.DataFrame | None:
        """Every upload, oldest first, as one table (None: none arrived)."""
        for _ in range(3):  # a compaction may remove files between listing and reading
            try:
                parts = [self._read(path) for path in self._files(model, ACTUALS)]
            except FileNotFoundError:
                continue
            return pd.concat(parts, ignore_index=True) if parts else None
        raise RuntimeError(f"actuals of {model} kept changing while read")

    def delete_actuals_before(self, model: str, before_ns: int) -> int:
        """Remove the uploads that arrived before ``before_ns`` (age retention)."""
        removed = 0
        with self.locked(model):
            for path in self._files(model, ACTUALS):
                if int(path.name.split("-")[0]) < before_ns:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def _compact(self, model: str) -> None:
        """Merge the uploads into one file named after the newest merged (so it sorts where they did)."""
        with self.locked(model):
            paths = self._files(model, ACTUALS)
            if len(paths) <= COMPACT_AFTER:
                return
            merged = pd.concat([self._read(p) for p in paths], ignore_index=True)
            buffer = io.BytesIO()
            merged.to_parquet(buffer, index=False)
            target = paths[-1].with_name(f"{paths[-1].stem}~c.parquet")
            atomic_write(target, buffer.getvalue())
            for path in paths:
                if path != target:
                    path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ facts
    def facts(self, model: str) -> dict[str, Any]:
        path = self._dir(model) / FACTS
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}

    def update_facts(self, model: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` (one level deep for dict values) into the facts, under the lock."""
        with self.locked(model):
            facts = self.facts(model)
            for key, value in changes.items():
                facts[key] = {**facts.get(key, {}), **value} if isinstance(value, dict) else value
            atomic_write(self._dir(model) / FACTS, json.dumps(facts, sort_keys=True).encode())
        return facts

    def size(self, model: str) -> dict[str, int]:
        """Files and bytes of the model's record."""
        files = [*self._files(model, FORECASTS), *self._files(model, ACTUALS)]
        total = 0
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return {"files": len(files), "bytes": total}

    # ------------------------------------------------------------------ helpers
    def _files(self, model: str, part: str) -> list[Path]:
        directory = self._dir(model) / part
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))

    def _read(self, path: Path) -> pd.DataFrame:
        """A stored table; unchanged files come from memory (files are never rewritten in place)."""
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._guard:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
        table = pd.read_parquet(path)
        with self._guard:
            self._tables[key] = table
            while len(self._tables) > self._cached:
                self._tables.popitem(last=False)
        return table


def _record_id(record_id: str) -> str:
    if not RECORD_ID.fullmatch(record_id):
        raise InvalidName(f"invalid record id {record_id[:100]!r}")
    return record_id
