"""A loaded version ready to answer forecasts: the fast path from precomputed tables,
the live path through sktime (serialised per version, or on a private copy)."""

from __future__ import annotations

import functools
import pickle
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from service.errors import CapabilityUnavailable, ForecastFailed, InvalidInput, LimitExceeded, SeriesNotFound
from service.forecasting.capabilities import one_series
from service.forecasting.observations import probe_observations
from service.forecasting.predict import cutoff_of, future_times, private_copy, run_forecast, steps_of
from service.forecasting.shards import (
    ShardCache,
    ShardedModel,
    is_sharded,
    open_sharded,
    series_keys,
    series_subset,
    shard_rows,
    shardable,
)
from service.registry.store import Registry
from service.tables import (
    TOTAL,
    Schema,
    canonical_table,
    format_time,
    interval_columns,
    parse_times,
    quantile_column,
    to_sktime,
    wire_columns,
)


@dataclass(frozen=True)
class PredictQuery:
    """A validated-by-shape forecast request; `ServedVersion.answer` checks its content."""

    horizon: int | None = None
    fh: tuple[int, ...] | None = None
    timestamps: tuple[Any, ...] | None = None
    series: tuple[tuple[str, ...], ...] | None = None
    coverage: tuple[float, ...] = ()
    quantiles: tuple[float, ...] = ()
    exogenous: pd.DataFrame | None = field(default=None, compare=False, hash=False)
    observations: pd.DataFrame | None = field(default=None, compare=False, hash=False)

    @property
    def needs_live(self) -> bool:
        return self.exogenous is not None or self.observations is not None


KEEP_PICKLE_BYTES = 16 * 2**20  # larger models are pickled per live request, not kept twice


@dataclass(frozen=True)
class Limits:
    max_horizon: int = 500
    max_series: int = 5000
    max_rows: int = 200_000


@dataclass
class Answer:
    columns: dict[str, np.ndarray]
    cutoff: Any
    fast: bool
    observations_mode: str | None = None  # how new actuals were taken: state | refit


class FastTable:
    """The precomputed default forecast of a version, sliceable by step, series, columns."""

    def __init__(
        self, table: pd.DataFrame, schema: Schema, cutoff: Any, coverage: Sequence[float], quantiles: Sequence[float]
    ) -> None:
        self.schema = schema
        self.coverage = tuple(coverage)
        self.quantiles = tuple(quantiles)
        times = pd.Index(table[schema.time])
        self.steps = np.asarray(steps_of(times, cutoff), dtype="int64")
        self.horizon = int(self.steps.max()) if len(self.steps) else 0
        self.columns = wire_columns(table, schema)
        if schema.keys:
            keys = list(zip(*(self.columns[k] for k in schema.keys), strict=True))
            codes, uniques = pd.factorize(pd.Series(keys, dtype=object))
            self.series_codes = np.asarray(codes)
            self.series_ids = {tuple(u): i for i, u in enumerate(uniques)}
        else:
            self.series_codes = np.zeros(len(self.steps), dtype="int64")
            self.series_ids = {(): 0}
        # Series index: row numbers grouped by series (stable, so table order within a series),
        # and each series' [start, stop) in that grouping: picking a few series is slices.
        self._by_series = np.argsort(self.series_codes, kind="stable")
        bounds = np.searchsorted(self.series_codes[self._by_series], np.arange(len(self.series_ids) + 1))
        self._starts, self._stops = bounds[:-1], bounds[1:]
        # A table laid out as published (each series' steps 1..horizon in consecutive rows): a
        # series' rows are its first row plus step - 1, no search needed.
        self._first_rows: np.ndarray | None = None
        if len(self.steps) and len(self.steps) == len(self.series_ids) * self.horizon:
            first_rows = self._by_series[self._starts]
            if np.array_equal(first_rows[self.series_codes] + self.steps - 1, np.arange(len(self.steps))):
                self._first_rows = first_rows

    def covers(self, steps: Sequence[int], coverage: Sequence[float], quantiles: Sequence[float]) -> bool:
        return (
            all(1 <= s <= self.horizon for s in steps)
            and set(coverage) <= set(self.coverage)
            and set(quantiles) <= set(self.quantiles)
        )

    def select(
        self, steps: Sequence[int], series: Sequence[tuple[str, ...]] | None, names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if list(steps) == list(range(1, self.horizon + 1)) and series is None:
            mask = None
        else:
            wanted_steps = np.asarray(steps, dtype="int64")
            if series is None:
                rows = np.flatnonzero(np.isin(self.steps, wanted_steps))
            elif self._first_rows is not None:  # table order: series by first row, steps ascending
                firsts = np.sort(self._first_rows[[self.series_ids[s] for s in series]])
                rows = (firsts[:, None] + (np.unique(wanted_steps) - 1)[None, :]).ravel()
            else:
                codes = [self.series_ids[s] for s in series]
                parts = [self._by_series[self._starts[c] : self._stops[c]] for c in codes]
                rows = np.concatenate(parts) if parts else np.empty(0, dtype="int64")
                rows = np.unique(rows[np.isin(self.steps[rows], wanted_steps)])  # the table's row order
            mask = rows
        return {n: (self.columns[n] if mask is None else self.columns[n][mask]) for n in names}


class ServedVersion:
    """One loaded version. ``forecaster`` is shared: live calls hold ``lock`` or copy it."""

    def __init__(
        self,
        name: str,
        version: int,
        manifest: Mapping[str, Any],
        forecaster: Any,
        precomputed: pd.DataFrame | None,
        sharded: ShardedModel | None = None,
    ) -> None:
        """``forecaster`` is the fitted model, or None for a sharded version (``sharded``
        assembles forecasters for the series a live request names)."""
        self.name = name
        self.version = version
        self.manifest = dict(manifest)
        self.schema = Schema.from_dict(manifest["schema"])
        self.forecaster = forecaster
        self.sharded = sharded
        self.lock = threading.Lock()
        self._pickled: bytes | None = None
        self.cutoff = cutoff_of(forecaster) if sharded is None else self._manifest_cutoff()
        self.cutoff_text = format_time(self.cutoff)
        self.capabilities = manifest.get("capabilities", {})
        self._observations: dict[str, Any] | None = manifest.get("observations")
        self.series = self._series_ids()
        self._known_series = frozenset(self.series)
        kind = self.schema.kind
        self._leaves = [s for s in self.series if TOTAL not in s] if kind == "hierarchical" else self.series
        self._leaf_set = frozenset(self._leaves) if kind == "hierarchical" else self._known_series
        pre = manifest.get("precomputed") or {}
        if precomputed is None and not self.schema.exogenous:
            precomputed = run_forecast(
                private_copy(forecaster) if sharded is None else sharded.forecaster_for(None),  # rare: an old publish
                self.schema,
                list(range(1, int(manifest.get("horizon", 1)) + 1)),
                pre.get("coverage", []),
                pre.get("quantiles", []),
            )
        self.fast = (
            FastTable(precomputed, self.schema, self.cutoff, pre.get("coverage", []), pre.get("quantiles", []))
            if precomputed is not None
            else None
        )

    def _manifest_cutoff(self) -> Any:
        (cutoff,) = parse_times([self.manifest["cutoff"]], self.schema.freq, "cutoff")
        return cutoff

    def _private_forecaster(self, series: Sequence[tuple[str, ...]] | None = None) -> Any:
        """A copy a live request may update. Small models keep their pickle after the first
        copy, so later copies only unpickle (the served model never mutates). A sharded
        version's copy holds ``series`` only (all when None)."""
        if self.sharded is not None:
            return self.sharded.forecaster_for(series)
        if series is not None and self._per_series:  # copies of those series' models only
            with self.lock:
                return series_subset(self.forecaster, series, copy=True)
        pickled = self._pickled
        if pickled is None:
            with self.lock:  # copy while no live predict is writing to it
                pickled = pickle.dumps(self.forecaster, protocol=pickle.HIGHEST_PROTOCOL)
            if len(pickled) <= KEEP_PICKLE_BYTES:
                self._pickled = pickled
        return pickle.loads(pickled)

    @functools.cached_property
    def _per_series(self) -> bool:
        """One model per series (sktime's vectorisation), sharded or whole: a live request with
        new actuals updates copies of the models of the series it names, never all of them."""
        return self.sharded is not None or shardable(self.forecaster)

    @functools.cached_property
    def _position(self) -> dict[tuple[str, ...], int]:
        """Each series' place in the version's order (built once, when first needed)."""
        return {s: i for i, s in enumerate(self.series)}

    # ------------------------------------------------------------------ facts
    @property
    def observations(self) -> dict[str, Any]:
        """How this version takes new actuals (the manifest's probe; a version published before
        the probe existed is probed once, on a private copy, when first asked)."""
        found = self._observations
        if found is None:  # probed on a private copy: live predicts on this version go on meanwhile
            found = probe_observations(
                self._private_forecaster(self.series[:1]),
                self.schema,
                "auto",
                max(len(self.series), 1),
                self.default_horizon,
            )
            self._observations = found
        return found

    def _series_ids(self) -> list[tuple[str, ...]]:
        if not self.schema.keys:
            return [()]
        leaves = [tuple(s) for s in self.manifest.get("series", {}).get("ids", [])]
        if self.schema.kind != "hierarchical":
            return leaves
        nodes = set(leaves)
        depth = len(self.schema.keys)
        for leaf in leaves:
            for level in range(depth):
                nodes.add(tuple(leaf[:level]) + (TOTAL,) * (depth - level))
        return sorted(nodes)

    @property
    def freq(self) -> str | None:
        return self.schema.freq

    @property
    def default_horizon(self) -> int:
        return int(self.manifest.get("horizon", 1))

    def output_columns(self, coverage: Sequence[float], quantiles: Sequence[float]) -> list[str]:
        names = [*self.schema.keys, self.schema.time, *self.schema.targets]
        for target in self.schema.targets:
            for c in coverage:
                names.extend(interval_columns(target, c))
        for target in self.schema.targets:
            names.extend(quantile_column(target, q) for q in quantiles)
        return names

    # ------------------------------------------------------------------ checks
    def check(self, query: PredictQuery, limits: Limits) -> list[int]:
        """The relative steps ``query`` asks for, checked as an answer checks them (horizon
        bounds, intervals and quantiles the version can give), without answering it."""
        self._check_probabilistic(query)
        return self._steps(query, self.cutoff, limits)

    def _check_probabilistic(self, query: PredictQuery) -> None:
        for asked, capability in ((query.coverage, "pred_int"), (query.quantiles, "quantiles")):
            if not asked:
                continue
            status = self.capabilities.get(capability) or {}
            if not status.get("available"):
                raise CapabilityUnavailable(
                    f"{self.name} v{self.version} cannot give "
                    f"{'intervals' if capability == 'pred_int' else 'quantiles'}: "
                    f"{status.get('reason') or 'not supported'}",
                    capability="capability:pred_int",
                    field="coverage" if capability == "pred_int" else "quantiles",
                )

    def _check_series(self, query: PredictQuery, limits: Limits) -> tuple[tuple[str, ...], ...] | None:
        if query.series is None:
            return None
        if not query.series:
            raise InvalidInput("'series' must name at least one series (leave it out for all)", field="series")
        if len(query.series) > limits.max_series:
            raise LimitExceeded(f"{len(query.series)} series requested; at most {limits.max_series}", field="series")
        if not self.schema.keys:
            raise InvalidInput(f"{self.name} forecasts a single series; drop 'series'", field="series")
        known = self._known_series
        depth = len(self.schema.keys)
        for s in query.series:
            if len(s) != depth:
                raise InvalidInput(
                    f"series {list(s)} must have {depth} key value(s): {list(self.schema.keys)}", field="series"
                )
            if s not in known:
                raise SeriesNotFound(f"{self.name} has no series {list(s)}", series=list(s), field="series")
        return tuple(dict.fromkeys(query.series))

    def _steps(self, query: PredictQuery, cutoff: Any, limits: Limits) -> list[int]:
        given = [x is not None for x in (query.horizon, query.fh, query.timestamps)]
        if sum(given) > 1:
            raise InvalidInput("give one of 'horizon', 'fh' or 'timestamps'", field="horizon")
        if query.fh is not None:
            steps = sorted(set(query.fh))
            if not steps:
                raise InvalidInput("'fh' must list at least one step", field="fh")
            field_name = "fh"
        elif query.timestamps is not None:
            if not query.timestamps:
                raise InvalidInput("'timestamps' must list at least one time", field="timestamps")
            times = parse_times(list(query.timestamps), self.freq, "timestamps")
            raw_steps = steps_of(times, cutoff)
            if len(set(raw_steps)) != len(raw_steps):
                raise InvalidInput(
                    f"'timestamps' name the same {self.freq or 'integer'} period more than once; "
                    "give one time per period of the model's frequency",
                    field="timestamps",
                )
            steps = sorted(raw_steps)
            field_name = "timestamps"
        else:
            horizon = query.horizon if query.horizon is not None else self.default_horizon
            # never build a range larger than the limit allows
            steps = list(range(1, min(horizon, limits.max_horizon + 1) + 1)) if horizon >= 1 else [horizon]
            if horizon > limits.max_horizon:
                steps.append(horizon)
            field_name = "horizon"
        if steps[0] < 1:
            raise InvalidInput(f"'{field_name}' must point after the cutoff {cutoff} (steps >= 1)", field=field_name)
        if steps[-1] > limits.max_horizon:
            raise LimitExceeded(
                f"'{field_name}' reaches {steps[-1]} steps ahead; the maximum is {limits.max_horizon}",
                field=field_name,
                maximum=limits.max_horizon,
            )
        return steps

    # ------------------------------------------------------------------ answer
    def try_fast(self, query: PredictQuery, limits: Limits) -> Answer | None:
        """Validate and answer from the precomputed table, or None when sktime is needed.
        Cheap: safe to call on the event loop."""
        if query.needs_live or self.schema.exogenous or self.fast is None:
            return None
        self._check_probabilistic(query)
        series = self._check_series(query, limits)
        steps = self._steps(query, self.cutoff, limits)
        coverage, quantiles = list(query.coverage), list(query.quantiles)
        if not self.fast.covers(steps, coverage, quantiles):
            return None
        return Answer(self.fast.select(steps, series, self.output_columns(coverage, quantiles)), self.cutoff, fast=True)

    def answer(self, query: PredictQuery, limits: Limits) -> Answer:
        """Validate ``query`` against this version and forecast (fast path when possible).
        May call sktime: run it off the event loop."""
        self._check_probabilistic(query)
        series = self._check_series(query, limits)
        if query.observations is not None:
            return self._answer_with_observations(query, series, limits)
        steps = self._steps(query, self.cutoff, limits)
        coverage, quantiles = list(query.coverage), list(query.quantiles)
        names = self.output_columns(coverage, quantiles)
        if self.schema.exogenous:
            x = self._future_exogenous(query.exogenous, self.cutoff, steps, limits, series)
            return Answer(
                self._finish(self._live(steps, coverage, quantiles, series, x), series, names), self.cutoff, fast=False
            )
        if self.fast is not None and self.fast.covers(steps, coverage, quantiles):
            return Answer(self.fast.select(steps, series, names), self.cutoff, fast=True)
        return Answer(
            self._finish(self._live(steps, coverage, quantiles, series), series, names), self.cutoff, fast=False
        )

    def _live(
        self,
        steps: list[int],
        coverage: list[float],
        quantiles: list[float],
        series: tuple[tuple[str, ...], ...] | None,
        x: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """A forecast by sktime: on the shared model under its lock, or, for a sharded version,
        on a forecaster of the asked series alone (assembled from their shards)."""
        if self.sharded is None:
            with self.lock:
                forecaster = self.forecaster
                if series is not None and self._per_series:  # those series' models only (their exogenous rows)
                    forecaster = series_subset(forecaster, series)
                return run_forecast(forecaster, self.schema, steps, coverage, quantiles, x)
        if series is None:  # every series: shard by shard on the shared shards, never a copy of all
            with self.lock:
                tables = [
                    run_forecast(shard, self.schema, steps, coverage, quantiles, shard_rows(x, shard))
                    for shard in self.sharded.each_shard()
                ]
            return pd.concat(tables, ignore_index=True)
        private = self.sharded.forecaster_for(series)
        return run_forecast(private, self.schema, steps, coverage, quantiles, x)

    def _answer_with_observations(
        self, query: PredictQuery, series: tuple[tuple[str, ...], ...] | None, limits: Limits
    ) -> Answer:
        assert query.observations is not None
        mode = self._observation_mode()
        if len(query.observations) > limits.max_rows:
            raise LimitExceeded(
                f"'observations' has {len(query.observations)} rows; at most {limits.max_rows}", field="observations"
            )
        table = canonical_table(query.observations, self.schema, what="observations", in_order=True)
        first = (
            table.groupby(list(self.schema.keys), sort=False)[self.schema.time].min()
            if self.schema.keys
            else table[self.schema.time].iloc[:1]
        )
        expected = self.cutoff + 1
        late = [t for t in first if t != expected]
        if late:
            raise InvalidInput(
                f"'observations' must continue right after the cutoff {self.cutoff}: "
                f"every series starts at {expected}, "
                f"found {late[0]}",
                field="observations",
            )
        leaves = self._leaves
        unobserved: list[tuple[str, ...]] = []
        if self.schema.keys:
            observed = {tuple(k) for k in table[list(self.schema.keys)].drop_duplicates().itertuples(index=False)}
            unknown = observed - self._leaf_set
            if unknown:
                raise SeriesNotFound(f"'observations' name unknown series {sorted(unknown)[:5]}", field="observations")
            ends = table.groupby(list(self.schema.keys), sort=False)[self.schema.time].max()
            if ends.nunique() > 1:
                raise InvalidInput(
                    "'observations' must bring the same new times for every series they name (ends differ)",
                    field="observations",
                )
            partial = len(observed) < len(leaves)
            # the series left out are listed only where they are used (filled in, or named in a 422):
            # a sharded panel's request pays for the series it names, not for all of them
            if partial and (not self._per_series or self.schema.kind == "hierarchical" or self.schema.exogenous):
                unobserved = [s for s in leaves if s not in observed]
            series = self._observed_series(series, observed, unobserved, partial)
        new_cutoff = table[self.schema.time].max()
        steps = self._steps(query, new_cutoff, limits)
        x_future = self._future_exogenous(query.exogenous, new_cutoff, steps, limits) if self.schema.exogenous else None
        coverage, quantiles = list(query.coverage), list(query.quantiles)
        if not self._per_series:
            private = self._private_forecaster()
            if unobserved:
                table = self._with_own_forecasts(private, table, unobserved)
            y_new, x_new = to_sktime(table, self.schema)
        else:  # a forecaster of the observed series alone (with a hierarchy's aggregates, all nodes)
            y_new, x_new = to_sktime(table, self.schema)
            observed_nodes = series_keys(y_new.index.droplevel(-1).unique())
            private = self._private_forecaster(observed_nodes)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                private.update(y_new, X=x_new, update_params=mode == "refit")
        except Exception as exc:
            raise ForecastFailed(f"update with the observations failed: {type(exc).__name__}: {exc}"[:1000]) from exc
        result = run_forecast(private, self.schema, steps, coverage, quantiles, x_future)
        names = self.output_columns(coverage, quantiles)
        return Answer(self._finish(result, series, names), cutoff_of(private), fast=False, observations_mode=mode)

    def _observation_mode(self) -> str:
        """``state`` or ``refit``; a version that takes no new actuals refuses them (422)."""
        entry = self.observations
        mode = str(entry.get("mode"))
        if mode not in ("state", "refit"):
            raise CapabilityUnavailable(
                f"{self.name} v{self.version} does not take new actuals ('observations'): "
                f"{entry.get('reason') or 'not supported'}. Retrain on data with the new actuals to move "
                "its cutoff",
                capability="observations",
                field="observations",
            )
        return mode

    def _observed_series(
        self,
        asked: tuple[tuple[str, ...], ...] | None,
        observed: set[tuple[str, ...]],
        unobserved: list[tuple[str, ...]],
        partial: bool,
    ) -> tuple[tuple[str, ...], ...] | None:
        """The series a forecast after new actuals returns. A panel's observations may name some
        of its series: the answer covers those only. A hierarchy's must cover every bottom series
        (its reconciled numbers tie all nodes together)."""
        if not partial:
            return asked
        if self.schema.kind == "hierarchical":
            raise InvalidInput(
                "'observations' of a hierarchy must bring the same new times for every bottom series "
                f"(missing {len(unobserved)} series, first {list(unobserved[0])})",
                field="observations",
                missing_series=[list(m) for m in unobserved[:20]],
            )
        if self.schema.exogenous:
            raise InvalidInput(
                f"{self.name} takes exogenous data: 'observations' must bring new times for every series, with "
                f"their exogenous values (missing {len(unobserved)} series, first {list(unobserved[0])})",
                field="observations",
                missing_series=[list(m) for m in unobserved[:20]],
            )
        if (
            self._observation_mode() == "refit"
            and self.sharded is None
            and one_series(self.forecaster) is self.forecaster
        ):
            raise InvalidInput(
                f"{self.name} is one model over all its series and is refitted with new actuals: 'observations' "
                f"must bring the same new times for every series (missing {len(unobserved)} series, first "
                f"{list(unobserved[0])}), or the refit would learn from made-up values",
                field="observations",
                missing_series=[list(m) for m in unobserved[:20]],
            )
        if asked is None:
            return tuple(sorted(observed, key=self._position.__getitem__))
        without = [s for s in asked if s not in observed]
        if without:
            raise InvalidInput(
                f"series {list(without[0])} has no rows in 'observations': a forecast after new actuals is given "
                "for the series they name; send its new actuals too, or ask for it in a request without them",
                field="series",
                series=list(without[0]),
            )
        return asked

    def _with_own_forecasts(self, private: Any, table: pd.DataFrame, unobserved: list[tuple[str, ...]]) -> pd.DataFrame:
        """The observations with the series they do not name continued by the version's own point
        forecasts for the same new times: sktime moves the cutoff of every series at once, and with
        fixed parameters a series' forecast depends on its own history, so the answer for the named
        series is what a full update gives. Those filled series are not returned."""
        new_times = pd.Index(table[self.schema.time].drop_duplicates()).sort_values()
        steps = steps_of(new_times, self.cutoff)
        own = run_forecast(private, self.schema, steps)
        keys = pd.MultiIndex.from_frame(own[list(self.schema.keys)].astype(str))
        own = own[keys.isin(pd.MultiIndex.from_tuples(unobserved))]
        filled = pd.concat([table, own[list(table.columns)]], ignore_index=True)
        return filled.sort_values([*self.schema.keys, self.schema.time], kind="stable").reset_index(drop=True)

    def _future_exogenous(
        self,
        frame: pd.DataFrame | None,
        cutoff: Any,
        steps: list[int],
        limits: Limits,
        series: tuple[tuple[str, ...], ...] | None = None,
    ) -> pd.DataFrame:
        """The future exogenous rows the forecast needs: every forecast time of the ``series``
        asked for (all leaves when None; a panel's forecast for some series needs theirs only)."""
        columns = list(self.schema.exogenous)
        if frame is None:
            raise CapabilityUnavailable(
                f"{self.name} was fitted with exogenous data: send 'exogenous' with columns {columns} "
                f"for the forecast times",
                field="exogenous",
                missing_columns=columns,
            )
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise InvalidInput(f"'exogenous' lacks column(s) {missing}", field="exogenous", missing_columns=missing)
        if len(frame) > limits.max_rows:
            raise LimitExceeded(f"'exogenous' has {len(frame)} rows; at most {limits.max_rows}", field="exogenous")
        table = canonical_table(frame, self.schema, what="exogenous", columns=columns, contiguous=False)
        needed_times = future_times(cutoff, list(range(1, max(steps) + 1)))
        if self.schema.keys:
            leaves = [s for s in (self.series if series is None else series) if TOTAL not in s]
            index = pd.MultiIndex.from_tuples(
                [(*s, t) for s in leaves for t in needed_times], names=[*self.schema.keys, self.schema.time]
            )
            given = pd.MultiIndex.from_arrays(
                [table[k] for k in self.schema.keys] + [pd.Index(table[self.schema.time])],
                names=[*self.schema.keys, self.schema.time],
            )
        else:
            index = needed_times.rename(self.schema.time)
            given = pd.Index(table[self.schema.time], name=self.schema.time)
        x = pd.DataFrame(table[columns].to_numpy(), index=given, columns=columns)
        absent = index.difference(x.index)
        if len(absent):
            raise InvalidInput(
                f"'exogenous' must cover every forecast time from step 1 to {max(steps)}; "
                f"missing {len(absent)} row(s), first {absent[0]}",
                field="exogenous",
            )
        return x.reindex(index)

    def _finish(
        self, table: pd.DataFrame, series: tuple[tuple[str, ...], ...] | None, names: list[str]
    ) -> dict[str, np.ndarray]:
        if series is not None:
            keys = pd.MultiIndex.from_frame(table[list(self.schema.keys)].astype(str))
            table = table[keys.isin(pd.MultiIndex.from_tuples(series))]
        return wire_columns(table[names].reset_index(drop=True), self.schema)


def load_served(registry: Registry, name: str, version: int, shard_cache: ShardCache) -> ServedVersion:
    """A version ready to serve. A sharded one reads its manifest, shard index and precomputed
    forecast and checks every shard's sha256, but unpickles no shard until a live request
    needs it (into ``shard_cache``)."""
    manifest = registry.verified_manifest(name, version)
    if not is_sharded(manifest):
        artifact = registry.load(name, version)
        precomputed = registry.read_precomputed(name, version, artifact.manifest)
        return ServedVersion(name, version, artifact.manifest, artifact.forecaster, precomputed)
    sharded = open_sharded(registry, name, version, manifest, shard_cache)
    registry.verify_files(name, version, manifest, "shards/")  # one bad shard refuses the version now
    precomputed = registry.read_precomputed(name, version, manifest)
    return ServedVersion(name, version, manifest, None, precomputed, sharded=sharded)
