"""Sharded panel versions: a panel of per-series models stored as shards of series.

sktime vectorises a forecaster that does not take panels natively: one fitted clone per
series (``forecasters_``) behind one object. Such a version is written as consecutive
groups of series, each an sktime forecaster fitted like the whole on its own series
(``shards/00000.pkl``, ...), with ``shards.parquet`` mapping every series to its shard and
row. A series' forecast depends only on its own model and history, so any subset of the
series can be served by a forecaster assembled from the rows it names, with exactly the
numbers of the whole (tests compare every output). Natively panel forecasters (a
reconciler, a global reduction, the statsforecast engine) stay one artifact.

Serving reads the manifest, the index and the precomputed forecast; a live request
unpickles only the shards of the series it names, kept in a byte-bounded LRU
(`ShardCache`) shared by the process's versions.
"""

from __future__ import annotations

import io
import pickle
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from service.errors import IntegrityError, InvalidInput, SeriesNotFound
from service.forecasting.chunked_fit import series_rows
from service.forecasting.sktime_internals import convert_inputs, finish_vectorized_fit, is_vectorized, remembered_x
from service.forecasting.sktime_internals import remembered_y as _remembered_y
from service.registry.store import LoadedArtifact, Registry, check_libraries
from service.tables import Schema

SHARDS_DIR = "shards"
SHARD_INDEX = "shards.parquet"
DEFAULT_SHARD_SERIES = 1000
SERIAL_BELOW = 64  # a live forecaster of fewer series predicts in-process (a pool costs more)
ASSEMBLED_CACHE_BYTES = 16 * 2**20  # per version: pickles of small assembled forecasters (`ShardedModel._remember`)

SeriesKey = tuple[str, ...]


def shard_file(number: int) -> str:
    return f"{SHARDS_DIR}/{number:05d}.pkl"


def shardable(forecaster: Any) -> bool:
    """A fitted forecaster sktime vectorised over the series of a panel (one model each)."""
    inner = getattr(forecaster, "forecasters_", None)
    return isinstance(inner, pd.DataFrame) and len(inner) > 1 and is_vectorized(forecaster)


def series_keys(labels: pd.Index) -> list[SeriesKey]:
    """Series labels (``forecasters_`` rows, a panel's instances) as the service names series:
    tuples of strings, spelled as the manifest's ids are (pandas ``astype(str)``)."""
    frame = labels.to_frame(index=False).astype(str)
    return list(frame.itertuples(index=False, name=None))


def split(forecaster: Any, series_per_shard: int) -> list[Any]:
    """The fitted vectorised ``forecaster`` as shards of consecutive series, each fitted like
    the whole on its own series (the per-series models are shared with it, not copied)."""
    inner = forecaster.forecasters_
    return [
        _assemble(forecaster, [(forecaster, inner.iloc[start : start + series_per_shard])], copy=False)
        for start in range(0, len(inner), series_per_shard)
    ]


def series_subset(forecaster: Any, series: Iterable[SeriesKey], copy: bool = False) -> Any:
    """The vectorised ``forecaster`` over ``series`` alone, in its own order. Its per-series
    models are the whole's (predict on it under the whole's lock), or with ``copy`` private
    copies of them (update it freely)."""
    inner = forecaster.forecasters_
    wanted = set(series)
    positions = [i for i, key in enumerate(series_keys(inner.index)) if key in wanted]
    return _assemble(forecaster, [(forecaster, inner.iloc[positions])], copy=copy)


def shard_rows(frame: pd.DataFrame | None, shard: Any) -> pd.DataFrame | None:
    """The rows of a (series..., time) frame, e.g. future exogenous data, of ``shard``'s series."""
    inner = shard.forecasters_
    return series_rows(frame, inner.index, inner.index.nlevels)


def _assemble(template: Any, parts: Sequence[tuple[Any, pd.DataFrame]], copy: bool) -> Any:
    """A vectorised forecaster fitted on exactly the series of ``parts`` — (shard, rows of its
    ``forecasters_``) in order — as `BaseForecaster.fit` leaves one; with ``copy`` its
    per-series models are private copies (updating it never touches the shards)."""
    inner = pd.concat([rows for _, rows in parts]) if len(parts) > 1 else parts[0][1]
    if copy:
        inner = pickle.loads(pickle.dumps(inner, protocol=pickle.HIGHEST_PROTOCOL))
    levels = inner.index.nlevels
    y = pd.concat([series_rows(_remembered_y(s), rows.index, levels) for s, rows in parts])
    xs = [series_rows(remembered_x(s), rows.index, levels) for s, rows in parts]
    x = None if any(part is None for part in xs) else pd.concat(xs)
    with warnings.catch_warnings():  # sktime's FutureWarnings, once per clone
        warnings.simplefilter("ignore")
        assembled = template.clone()
        x_inner, y_inner = convert_inputs(assembled, y, x)
        return finish_vectorized_fit(assembled, y_inner, x_inner, template.fh, inner)


def index_table(shards: Sequence[Any], keys: Sequence[str]) -> bytes:
    """``shards.parquet``: every series (its key columns, as strings) with its shard and row."""
    columns: dict[str, list[Any]] = {k: [] for k in keys}
    numbers: list[int] = []
    rows: list[int] = []
    seen: set[SeriesKey] = set()
    for number, shard in enumerate(shards):
        for row, key in enumerate(series_keys(shard.forecasters_.index)):
            if key in seen:
                raise InvalidInput(f"two series are both named {list(key)} as text: name the series apart")
            seen.add(key)
            for k, value in zip(keys, key, strict=True):
                columns[k].append(value)
            numbers.append(number)
            rows.append(row)
    table = pa.table(
        {**{k: pa.array(v, pa.string()) for k, v in columns.items()}, "shard": numbers, "row": rows},
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def read_index(data: bytes, keys: Sequence[str]) -> dict[SeriesKey, tuple[int, int]]:
    table = pq.read_table(io.BytesIO(data))
    missing = [c for c in (*keys, "shard", "row") if c not in table.column_names]
    if missing:
        raise IntegrityError(f"{SHARD_INDEX} lacks column(s) {missing}")
    names = zip(*(table.column(k).to_pylist() for k in keys), strict=True)
    places = zip(table.column("shard").to_pylist(), table.column("row").to_pylist(), strict=True)
    return dict(zip(names, places, strict=True))


class ShardCache:
    """Loaded shards of every version in this process, least recently used out first, bounded
    by their artifact bytes (the pickled size the manifest lists). Thread-safe; one load per
    shard at a time. ``loads`` counts what was unpickled (tests, metrics)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple[str, int, int], tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int, int], threading.Lock] = {}
        self.loads: list[tuple[str, int, int]] = []

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, int, int], size: int, load: Callable[[], Any]) -> Any:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                found = self._entries.get(key)
                if found is not None:
                    return found[0]
            shard = load()
            with self._lock:
                self.loads.append(key)
                self._loading.pop(key, None)
                found = self._entries.get(key)
                if found is not None:  # loaded meanwhile by a caller that came after an eviction
                    return found[0]
                self._entries[key] = (shard, size)
                self._bytes += size
                while self._bytes > self.max_bytes and len(self._entries) > 1:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._bytes -= dropped
            return shard

    def forget(self, name: str, version: int) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[:2] == (name, version)]:
                self._bytes -= self._entries.pop(key)[1]


class ShardedModel:
    """A sharded version's forecaster: forecasters for any of its series, assembled from the
    shards that hold them, each shard unpickled (verified) when first needed."""

    def __init__(
        self,
        registry: Registry,
        name: str,
        version: int,
        manifest: dict[str, Any],
        cache: ShardCache,
        keys: Sequence[str],
    ) -> None:
        self.registry, self.name, self.version, self.manifest, self.cache = registry, name, version, manifest, cache
        section = manifest["shards"]
        self.files: list[str] = list(section["files"])
        self.index = read_index(registry.read_verified(name, version, section["index"], manifest), keys)
        self.order = {key: position for position, key in enumerate(self.index)}  # the whole panel's row order
        self._copies: OrderedDict[tuple[SeriesKey, ...], bytes] = OrderedDict()  # see `_remember`
        self._copies_bytes = 0
        self._copies_lock = threading.Lock()

    @property
    def series(self) -> list[SeriesKey]:
        return list(self.index)

    def shard(self, number: int) -> Any:
        filename = self.files[number]
        size = int(self.manifest["files"][filename]["size"])
        return self.cache.get(
            (self.name, self.version, number),
            size,
            lambda: self.registry.load_object(self.name, self.version, filename, self.manifest),
        )

    def forecaster_for(self, series: Iterable[SeriesKey] | None = None) -> Any:
        """A private fitted forecaster over ``series`` (all when None), in the panel's order."""
        if series is not None:
            series = set(series)
            unknown = [key for key in series if key not in self.index]
            if unknown:
                raise SeriesNotFound(
                    f"{self.name} has no series {list(unknown[0])}", series=list(unknown[0]), field="series"
                )
        wanted = self.series if series is None else sorted(series, key=self.order.__getitem__)
        remembered = len(wanted) < SERIAL_BELOW
        if remembered:
            with self._copies_lock:
                pickled = self._copies.get(tuple(wanted))
                if pickled is not None:
                    self._copies.move_to_end(tuple(wanted))
            if pickled is not None:
                return pickle.loads(pickled)
        assembled = self._assemble_for(wanted)
        if remembered:
            assembled.set_config(**{"backend:parallel": None})
            self._remember(tuple(wanted), pickle.dumps(assembled, protocol=pickle.HIGHEST_PROTOCOL))
        return assembled

    def _remember(self, wanted: tuple[SeriesKey, ...], pickled: bytes) -> None:
        """Keep a few small assembled forecasters as pickles: the next live request for the same
        series unpickles one (~0.7 ms for one Theta series) instead of assembling it (~6 ms)."""
        with self._copies_lock:
            if wanted not in self._copies:
                self._copies[wanted] = pickled
                self._copies_bytes += len(pickled)
            while self._copies_bytes > ASSEMBLED_CACHE_BYTES and len(self._copies) > 1:
                _, dropped = self._copies.popitem(last=False)
                self._copies_bytes -= len(dropped)

    def _assemble_for(self, wanted: list[SeriesKey]) -> Any:
        rows: dict[int, list[int]] = {}
        for key in wanted:
            number, row = self.index[key]
            rows.setdefault(number, []).append(row)
        shards = {n: self.shard(n) for n in sorted(rows)}
        parts = [(shards[n], shards[n].forecasters_.iloc[r]) for n, r in sorted(rows.items())]
        return _assemble(parts[0][0], parts, copy=True)

    def each_shard(self) -> list[Any]:
        """Every shard, in the panel's order (shared: predict on them under a lock)."""
        return [self.shard(n) for n in range(len(self.files))]

    def whole(self) -> Any:
        """Every shard joined into one forecaster (backtests, gate comparisons)."""
        shards = self.each_shard()
        return _assemble(shards[0], [(s, s.forecasters_) for s in shards], copy=False)


def is_sharded(manifest: dict[str, Any]) -> bool:
    return bool((manifest.get("shards") or {}).get("files"))


def open_sharded(
    registry: Registry, name: str, version: int, manifest: dict[str, Any], cache: ShardCache
) -> ShardedModel:
    """A sharded version's model over its verified ``manifest``; no shard is unpickled yet."""
    check_libraries(manifest)
    keys = Schema.from_dict(manifest["schema"]).keys
    return ShardedModel(registry, name, version, manifest, cache, keys)


def load_fitted(registry: Registry, name: str, version: int, refit_only: bool = False) -> LoadedArtifact:
    """The whole fitted forecaster of a version, sharded or not (backtests, the retrain gate).
    ``refit_only``: the caller refits it (clones it) and never uses its fitted state, so a
    sharded version gives its first shard, whose estimator and settings are the whole's."""
    manifest = registry.verified_manifest(name, version)
    if not is_sharded(manifest):
        return registry.load(name, version)
    model = open_sharded(registry, name, version, manifest, ShardCache(max_bytes=2**62))
    return LoadedArtifact(forecaster=model.shard(0) if refit_only else model.whole(), manifest=manifest)
