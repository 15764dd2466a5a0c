"""Versioned datasets: every upload or append is a new immutable Parquet version named by
the content hash of its canonical table.

Layout under the data folder::

    datasets/<name>/dataset.json          roles (keys, time, targets, exogenous, freq) and versions
    datasets/<name>/versions/<hash>.parquet
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from service.errors import InvalidInput, InvalidName, NotFound
from service.fileio import atomic_write
from service.tables import (
    Schema,
    canonical_upload,
    check_single_step,
    fingerprint,
    format_time,
    read_parquet,
    write_parquet,
)

# model names are 1-64 characters; a declared source is snapshotted as "<model>.source"
DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")


@dataclass(frozen=True)
class Roles:
    """Which columns of a dataset play which role."""

    keys: tuple[str, ...]
    time: str
    targets: tuple[str, ...]
    exogenous: tuple[str, ...] = ()
    freq: str | None = None

    @classmethod
    def from_schema(cls, schema: Schema) -> Roles:
        return cls(schema.keys, schema.time, schema.targets, schema.exogenous, schema.freq)

    def schema(self) -> Schema:
        kind = "panel" if self.keys else "single"
        return Schema(kind, self.keys, self.time, self.targets, self.exogenous, self.freq)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": list(self.keys),
            "time": self.time,
            "targets": list(self.targets),
            "exogenous": list(self.exogenous),
            "freq": self.freq,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Roles:
        if not raw.get("time") or not raw.get("targets"):
            raise InvalidInput("dataset roles need 'time' and at least one 'targets' column", field="roles")
        freq = raw.get("freq")
        if freq is not None:
            check_single_step(str(freq))
            try:
                freq = pd.PeriodIndex([], freq=freq).freqstr
            except (TypeError, ValueError, AttributeError):
                raise InvalidInput(f"'{freq}' is not a pandas period frequency", field="freq") from None
        roles = cls(
            keys=tuple(raw.get("keys") or ()),
            time=str(raw["time"]),
            targets=tuple(raw["targets"]),
            exogenous=tuple(raw.get("exogenous") or ()),
            freq=freq,
        )
        columns = [*roles.keys, roles.time, *roles.targets, *roles.exogenous]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise InvalidInput(
                f"column(s) {repeated} named twice in the roles (keys, time, targets, exogenous)", field="roles"
            )
        return roles


class DatasetStore:
    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir).resolve() / "datasets"

    def _dir(self, name: str) -> Path:
        if not isinstance(name, str) or not DATASET_NAME.fullmatch(name) or ".." in name:
            raise InvalidName(
                f"invalid dataset name {str(name)[:100]!r}: use 1-80 characters a-z 0-9 . _ - "
                "starting with a letter or digit",
                field="name",
            )
        return self.root / name

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        directory = self._dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory / ".lock")):
            yield

    # ------------------------------------------------------------------ read
    def names(self, after: str | None = None, limit: int | None = None) -> list[str]:
        """Dataset names in order; with ``after``, those after it; at most ``limit``."""
        if not self.root.is_dir():
            return []
        names = sorted(
            p.name for p in self.root.iterdir() if DATASET_NAME.fullmatch(p.name) and (p / "dataset.json").is_file()
        )
        if after is not None:
            names = [n for n in names if n > after]
        return names if limit is None else names[:limit]

    def describe(self, name: str) -> dict[str, Any]:
        path = self._dir(name) / "dataset.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFound(f"no dataset named '{name}'", dataset=name) from None

    def roles(self, name: str) -> Roles:
        return Roles.from_dict(self.describe(name)["roles"])

    def read(self, name: str, version: str | None = None) -> tuple[pd.DataFrame, str, Roles]:
        """A version's canonical table (default: the latest)."""
        doc = self.describe(name)
        version = version or doc["latest"]
        if version not in {v["version"] for v in doc["versions"]}:
            raise NotFound(f"dataset '{name}' has no version {version!r}", dataset=name, version=version)
        roles = Roles.from_dict(doc["roles"])
        try:
            table = read_parquet(self._dir(name) / "versions" / f"{version}.parquet", roles.schema())
        except FileNotFoundError:  # deleted since the describe
            raise NotFound(f"no dataset named '{name}'", dataset=name) from None
        return table, version, roles

    # ------------------------------------------------------------------ write
    def put(
        self,
        name: str,
        frame: pd.DataFrame,
        roles: Roles,
        *,
        missing: str = "error",
        frequency: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Validate a whole table and store it as a new version (same content, same version).

        ``missing`` is the policy for missing values (`canonical_upload`); ``frequency`` how the
        time column's frequency was found (`service.tables.TimeFreq`), kept with the roles."""
        table, report = canonical_upload(frame, roles.schema(), what=f"dataset '{name}'", missing=missing)
        with self._lock(name):
            return self._store(name, table, roles, report, frequency)

    def append(self, name: str, frame: pd.DataFrame, *, missing: str = "error") -> dict[str, Any]:
        """Upsert rows by key+time into the latest version; the result is a new version.
        Missing values are dropped from the new rows (``drop``) or filled on the merged table."""
        with self._lock(name):
            current, _, roles = self.read(name)
            new, report = canonical_upload(
                frame,
                roles.schema(),
                what=f"observations for '{name}'",
                contiguous=False,
                missing=missing if missing in ("error", "drop") else "keep",
            )
            key = [*roles.keys, roles.time]
            if missing in ("ffill", "interpolate"):
                # a missing cell in a new row at a stored key+time is "not known": the stored value
                # stays (it must not be replaced, then filled from the previous row)
                stored = current.set_index(key)
                merged = new.set_index(key).combine_first(stored).reset_index()[list(current.columns)]
            else:
                merged = pd.concat([current, new], ignore_index=True).drop_duplicates(subset=key, keep="last")
            table, filled = canonical_upload(
                merged,
                roles.schema(),
                what=f"dataset '{name}' after the append",
                missing=missing if missing != "drop" else "error",
            )
            return self._store(name, table, roles, filled or report)

    def delete(self, name: str) -> None:
        """Remove a dataset and all its versions (NotFound when there is none).

        The directory stays with its ``.lock``: unlinking the lock file would let a writer
        waiting on the old file and one on a new file write at once (a lost version). A
        directory without dataset.json is no dataset (`names`, `describe`)."""
        self.describe(name)
        directory = self._dir(name)
        with self._lock(name):
            try:
                (directory / "dataset.json").unlink()  # from here on, readers find no dataset
            except FileNotFoundError:
                raise NotFound(f"no dataset named '{name}'", dataset=name) from None
            shutil.rmtree(directory / "versions", ignore_errors=True)

    def _store(
        self,
        name: str,
        table: pd.DataFrame,
        roles: Roles,
        missing: Mapping[str, Any] | None = None,
        frequency: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        schema = roles.schema()
        version = fingerprint(table, schema)[:16]
        directory = self._dir(name)
        (directory / "versions").mkdir(parents=True, exist_ok=True)
        path = directory / "versions" / f"{version}.parquet"
        if not path.exists():
            buffer = io.BytesIO()
            write_parquet(table, schema, buffer)  # type: ignore[arg-type]
            atomic_write(path, buffer.getvalue())
        try:
            doc = self.describe(name)
        except NotFound:
            doc = {"name": name, "roles": roles.to_dict(), "versions": []}
        if doc["roles"] != roles.to_dict():
            doc["roles"] = roles.to_dict()
            doc.pop("frequency", None)  # said of the old roles
        if frequency is not None:
            doc["frequency"] = dict(frequency)
        times = table[roles.time]
        entry = {
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows": len(table),
            "series": int(table[list(roles.keys)].drop_duplicates().shape[0]) if roles.keys else 1,
            "start": format_time(times.min()),
            "end": format_time(times.max()),
            "columns": list(table.columns),
        }
        if missing is not None:
            entry["missing"] = dict(missing)
        if version not in {v["version"] for v in doc["versions"]}:
            doc["versions"].append(entry)
        doc["latest"] = version
        atomic_write(directory / "dataset.json", json.dumps(doc, indent=2).encode())
        return {**entry, "name": name, "roles": roles.to_dict()}
