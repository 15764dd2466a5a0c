"""The one place where tables change shape: wire (column-oriented JSON, CSV, Arrow,
Parquet) <-> canonical long pandas tables <-> sktime's (Multi)Index frames.

Canonical long table: key columns (``str``), one time column (``period[freq]`` or
``int64``), target and exogenous columns (``float64``), sorted by keys then time.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from service.errors import ForecastFailed, InvalidInput, InvalidTable, LimitExceeded

TOTAL = "__total"  # sktime's name for an aggregate node of a hierarchy


@dataclass(frozen=True)
class Schema:
    """Which columns of a long table play which role, and the time frequency."""

    kind: str  # single | panel | hierarchical
    keys: tuple[str, ...]
    time: str
    targets: tuple[str, ...]
    exogenous: tuple[str, ...] = ()
    freq: str | None = None  # pandas period frequency; None = integer time index

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Schema:
        return cls(
            kind=raw["kind"],
            keys=tuple(raw.get("keys") or ()),
            time=raw["time"],
            targets=tuple(raw["targets"]),
            exogenous=tuple(raw.get("exogenous") or ()),
            freq=raw.get("freq"),
        )

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in raw.items()}

    @property
    def columns(self) -> list[str]:
        return [*self.keys, self.time, *self.targets, *self.exogenous]


@dataclass(frozen=True)
class TableLimits:
    """Budgets a wire table is checked against before it is parsed (defaults: the settings')."""

    max_columns: int = 1000  # FORECAST_MAX_COLUMNS_PER_TABLE
    max_rows: int = 200_000  # FORECAST_MAX_ROWS_PER_REQUEST
    max_decoded_bytes: int = 512 * 2**20  # FORECAST_MAX_DECODED_BYTES


def check_columns(count: int, what: str, limit: int) -> None:
    """A table with more than ``limit`` columns is refused before any work on it."""
    if count > limit:
        raise LimitExceeded(
            f"'{what}' has {count} columns; at most {limit} (setting FORECAST_MAX_COLUMNS_PER_TABLE)",
            field=what,
            maximum=limit,
        )


def json_containers(body: bytes, up_to: int) -> int:
    """How many arrays and objects a JSON text holds, counted on its bytes without parsing it:
    brackets outside strings (numpy; ~25 ms for 10 MB, where parsing 300k one-row columns
    holds the GIL for 400 ms and builds 150 MB). Up to ``up_to`` the cheap count of all
    brackets is returned, an upper bound. Exact for valid JSON; a parser stops at the first
    error of an invalid one, before any container this count missed."""
    brackets = body.count(b"[") + body.count(b"{")
    if brackets <= up_to:
        return brackets
    # drop escaped backslashes, then escaped quotes: what is left quotes strings exactly
    clean = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    raw = np.frombuffer(clean, dtype=np.uint8)
    outside = (np.cumsum(raw == ord('"'), dtype=np.uint8) & 1) == 0
    return int(np.count_nonzero(((raw == ord("[")) | (raw == ord("{"))) & outside))


def csv_header_width(body: bytes) -> int:
    """Fields in a CSV body's header record as pandas will read it, counted before pandas
    parses anything (its header parsing is quadratic in the columns). A first line without
    quotes is the record: its commas are counted on the bytes. With quotes, the csv module
    reads the first record only (pandas' quoting rules: a quoted field may hold commas and
    newlines, a quote inside an unquoted field is data). Blank lines before it are skipped."""
    start = len(body) - len(body.lstrip(b"\r\n"))
    ends = [i for i in (body.find(b"\n", start), body.find(b"\r", start)) if i >= 0]
    line = body[start : min(ends)] if ends else body[start:]
    if b'"' not in line:
        return line.count(b",") + 1
    text = io.TextIOWrapper(io.BytesIO(body[start:]), encoding="utf-8", errors="replace", newline="")
    try:
        return len(next(csv.reader(text), []))
    except csv.Error as exc:  # a field over the csv module's 128 KiB
        raise InvalidTable(f"the CSV header cannot be read: {exc}", field="body") from None


# ----------------------------------------------------------------------------- times
def parse_times(values: Sequence[Any] | pd.Series, freq: str | None, column: str) -> pd.Index:
    """Parse wire times: ISO 8601 strings (or pandas period strings like 1959Q1) to a
    PeriodIndex of ``freq``; integers when the model has an integer time index."""
    series = pd.Series(values, dtype="object") if not isinstance(values, pd.Series) else values
    if series.isna().any():
        row = int(np.flatnonzero(series.isna().to_numpy())[0])
        raise InvalidTable(f"column '{column}' has a missing time at row {row}", column=column, row=row)
    if freq is None:
        if pd.api.types.is_integer_dtype(series.dtype) and (series.abs() < INT_TIME_LIMIT).all():
            return pd.Index(series.to_numpy(dtype="int64"))
        bad = [i for i, v in enumerate(series) if not _is_integer(v)]
        if bad:
            raise InvalidTable(
                f"column '{column}' must hold integer time steps for this model; "
                f"row {bad[0]} has {series.iloc[bad[0]]!r}",
                column=column,
                row=bad[0],
            )
        return pd.Index(np.asarray([int(v) for v in series], dtype="int64"))
    index = _parse_periods(series, freq, column)
    _check_storable(index, series, freq, column)
    return index


def _parse_periods(series: pd.Series, freq: str, column: str) -> pd.PeriodIndex:
    if isinstance(series.dtype, pd.PeriodDtype):
        return pd.PeriodIndex(series).asfreq(freq)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return pd.PeriodIndex(pd.DatetimeIndex(series).tz_localize(None), freq=freq)
    if not all(isinstance(v, str) for v in series):
        first = next(i for i, v in enumerate(series) if not isinstance(v, str))
        raise InvalidTable(
            f"column '{column}' must hold ISO 8601 time strings; row {first} has {series.iloc[first]!r}",
            column=column,
            row=first,
        )
    try:
        with warnings.catch_warnings():
            # pandas warns (and will raise) on mixed UTC offsets; those take the per-value
            # path below, which keeps each time's wall clock like a single offset does
            warnings.simplefilter("error", FutureWarning)
            stamps = pd.to_datetime(series, format="ISO8601", utc=False)
        if getattr(stamps.dt, "tz", None) is not None:
            stamps = stamps.dt.tz_localize(None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pd.PeriodIndex(stamps, freq=freq)
    except (ValueError, TypeError, OverflowError, AttributeError, FutureWarning):
        pass
    try:
        return pd.PeriodIndex(series.tolist(), freq=freq)
    except (ValueError, TypeError, OverflowError):
        for i, v in enumerate(series):
            try:
                pd.Period(v, freq=freq)
            except (ValueError, TypeError, OverflowError):
                raise InvalidTable(
                    f"column '{column}' row {i}: {v!r} is not an ISO 8601 time", column=column, row=i
                ) from None
        raise InvalidTable(f"column '{column}' has unparseable times", column=column) from None


@functools.lru_cache(maxsize=64)
def storable_periods(freq: str) -> tuple[pd.Period, pd.Period]:
    """The first and last period of ``freq`` that lie wholly inside pandas' Timestamp range
    (1677-09-21 .. 2262-04-11): only those can be stored (Parquet) and written as times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Period with BDay freq is deprecated
        first, last = pd.Period(pd.Timestamp.min, freq=freq), pd.Period(pd.Timestamp.max, freq=freq)
        return (first if _storable(first) else first + 1), (last if _storable(last) else last - 1)


def _storable(period: pd.Period) -> bool:
    try:
        period.start_time, period.end_time  # noqa: B018 - the properties raise when out of range
    except (ValueError, OverflowError):
        return False
    return True


def _check_storable(index: pd.PeriodIndex, values: pd.Series, freq: str, column: str) -> None:
    """Refuse missing (``NaT``) times and periods beyond pandas' Timestamp range, naming the row."""
    missing = np.asarray(index.isna())
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise InvalidTable(f"column '{column}' row {row}: {values.iloc[row]!r} is not a time", column=column, row=row)
    first, last = storable_periods(freq)
    ordinals = index.asi8
    outside = (ordinals < first.ordinal) | (ordinals > last.ordinal)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise InvalidTable(
            f"column '{column}' row {row}: {values.iloc[row]!r} is outside the times that can be stored at "
            f"frequency {freq} ({first} .. {last}; pandas timestamps span 1677-09-21 .. 2262-04-11)",
            column=column,
            row=row,
        )


INT_TIME_LIMIT = 2**62  # integer time steps beyond this do not fit pandas' int64 arithmetic


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | np.integer):
        return abs(int(value)) < INT_TIME_LIMIT
    return isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < INT_TIME_LIMIT


def format_times(index: pd.Index) -> np.ndarray:
    """Times for the wire: ISO 8601 (period start), integers for integer indices."""
    if isinstance(index, pd.PeriodIndex):
        try:
            starts = index.start_time.values  # numpy formats ~50x faster than strftime
        except (ValueError, OverflowError):  # OutOfBoundsDatetime: a forecast reaching past 2262-04-11
            first, last = storable_periods(index.freqstr)
            beyond = index[(index.asi8 < first.ordinal) | (index.asi8 > last.ordinal)]
            raise InvalidInput(
                f"the forecast reaches {beyond[0] if len(beyond) else index[-1]}, outside the times that can be "
                f"written at frequency {index.freqstr} ({first} .. {last}); ask for fewer steps",
                field="horizon",
            ) from None
        whole_days = (starts == starts.astype("datetime64[D]")).all()
        return np.datetime_as_string(starts, unit="D" if whole_days else "s").astype(object)
    if isinstance(index, pd.DatetimeIndex):
        return np.asarray([t.isoformat() for t in index], dtype=object)
    return np.asarray(index, dtype="int64")


def format_time(value: Any) -> Any:
    """One time value (e.g. a cutoff) for the wire."""
    if isinstance(value, pd.Period):
        return format_times(pd.PeriodIndex([value]))[0]
    if isinstance(value, pd.Index) and len(value) == 1:
        return format_time(value[0])
    if isinstance(value, np.integer | int):
        return int(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


# ----------------------------------------------------------------------------- wire -> pandas
def wire_to_frame(table: Any, what: str, max_columns: int = TableLimits.max_columns) -> pd.DataFrame:
    """A column-oriented JSON table ``{"col": [...], ...}`` to a DataFrame; the column count is
    checked before anything else, then the shape."""
    if not isinstance(table, Mapping) or not table:
        raise InvalidTable(f"'{what}' must be a non-empty object of columns", field=what)
    check_columns(len(table), what, max_columns)
    lengths = {}
    for name, column in table.items():
        if not isinstance(column, list):
            raise InvalidTable(f"'{what}.{name}' must be a list of values", field=what, column=name)
        lengths[name] = len(column)
    if len(set(lengths.values())) > 1:
        raise InvalidTable(f"'{what}' columns differ in length: {lengths}", field=what)
    if next(iter(lengths.values())) == 0:
        raise InvalidTable(f"'{what}' has no rows", field=what)
    for name, column in table.items():
        for row, value in enumerate(column):
            if isinstance(value, list | dict):
                raise InvalidTable(
                    f"'{what}.{name}' row {row} is a {type(value).__name__}; cells must be scalars",
                    field=what,
                    column=name,
                    row=row,
                )
    return pd.DataFrame({name: pd.Series(column, dtype="object") for name, column in table.items()})


def _float_or_nan(value: Any) -> float:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else np.nan
    except (OverflowError, ValueError, TypeError):
        return np.nan


def _numeric_column(frame: pd.DataFrame, column: str, what: str, allow_missing: bool) -> np.ndarray:
    raw = frame[column]
    if pd.api.types.is_bool_dtype(raw.dtype):
        raise InvalidTable(f"{what}: column '{column}' must be numeric, not boolean", column=column)
    try:
        values = pd.to_numeric(raw, errors="coerce")
    except (OverflowError, ValueError):  # ints beyond float range are not coerced, they raise
        values = pd.to_numeric(raw.map(_float_or_nan), errors="coerce")
    bad = values.isna() & raw.notna()
    bad_bool = raw.map(lambda v: isinstance(v, bool))
    bad = bad | bad_bool
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InvalidTable(
            f"{what}: column '{column}' must be numeric; row {row} has {raw.iloc[row]!r}",
            column=column,
            row=row,
        )
    array = values.to_numpy(dtype="float64", na_value=np.nan)
    nonfinite = ~np.isfinite(array)
    if not allow_missing and nonfinite.any():
        row = int(np.flatnonzero(nonfinite)[0])
        raise InvalidTable(
            f"{what}: column '{column}' row {row} is missing, NaN or infinite",
            column=column,
            row=row,
        )
    if np.isinf(array).any():
        row = int(np.flatnonzero(np.isinf(array))[0])
        raise InvalidTable(f"{what}: column '{column}' row {row} is infinite", column=column, row=row)
    return array


def canonical_table(
    frame: pd.DataFrame,
    schema: Schema,
    *,
    what: str,
    columns: Iterable[str] | None = None,
    contiguous: bool = True,
    in_order: bool = False,
) -> pd.DataFrame:
    """Validate and normalise a long table: typed columns, sorted, no duplicated
    key+time, no gaps within a series (``contiguous``). ``columns`` are the value
    columns required (default: targets and exogenous)."""
    needed_values = list(columns) if columns is not None else [*schema.targets, *schema.exogenous]
    needed = [*schema.keys, schema.time, *needed_values]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InvalidTable(f"{what}: missing column(s) {missing}", columns=missing)
    if len(frame) == 0:
        raise InvalidTable(f"{what}: the table has no rows")
    out: dict[str, Any] = {}
    for key in schema.keys:
        raw = frame[key]
        if raw.isna().any():
            row = int(np.flatnonzero(raw.isna().to_numpy())[0])
            raise InvalidTable(f"{what}: key column '{key}' row {row} is missing", column=key, row=row)
        out[key] = raw.astype(str).to_numpy(dtype=object)
    times = parse_times(frame[schema.time].reset_index(drop=True), schema.freq, schema.time)
    out[schema.time] = times
    for column in needed_values:
        out[column] = _numeric_column(frame.reset_index(drop=True), column, what, allow_missing=False)
    table = pd.DataFrame(out)
    order = [*schema.keys, schema.time]
    duplicated = table.duplicated(subset=order, keep=False).to_numpy()
    if duplicated.any():
        rows = np.flatnonzero(duplicated)[:10].tolist()
        raise InvalidTable(f"{what}: duplicated {'+'.join(order)} at rows {rows}", rows=rows, columns=order)
    if in_order:
        _check_in_order(table, schema, what)
    table = table.sort_values(order, kind="mergesort").reset_index(drop=True)
    if contiguous:
        _check_contiguous(table, schema, what)
    return table


def _time_steps(times: pd.Series) -> np.ndarray:
    if isinstance(times.dtype, pd.PeriodDtype):
        return pd.PeriodIndex(times).asi8
    return times.to_numpy(dtype="int64")


def _check_in_order(table: pd.DataFrame, schema: Schema, what: str) -> None:
    """Times must increase within each series in the order given (no silent re-sorting)."""
    steps = _time_steps(table[schema.time])
    if schema.keys:
        series_id = table.groupby(list(schema.keys), sort=False).ngroup().to_numpy()
        order = np.lexsort((np.arange(len(steps)), series_id))
        steps, same = steps[order], series_id[order][1:] == series_id[order][:-1]
    else:
        order, same = np.arange(len(steps)), np.ones(max(len(steps) - 1, 0), dtype=bool)
    backwards = (np.diff(steps) <= 0) & same
    if backwards.any():
        row = int(order[int(np.flatnonzero(backwards)[0]) + 1])
        raise InvalidTable(
            f"{what}: times in '{schema.time}' must increase within each series; row {row} goes back in time",
            column=schema.time,
            row=row,
        )


def _check_contiguous(table: pd.DataFrame, schema: Schema, what: str) -> None:
    steps = _time_steps(table[schema.time])
    if schema.keys:
        series_id = table.groupby(list(schema.keys), sort=False).ngroup().to_numpy()
        same_series = series_id[1:] == series_id[:-1]
    else:
        same_series = np.ones(len(steps) - 1, dtype=bool)
    gaps = (np.diff(steps) != 1) & same_series
    if gaps.any():
        row = int(np.flatnonzero(gaps)[0]) + 1
        series = {k: table[k].iloc[row] for k in schema.keys}
        raise InvalidTable(
            f"{what}: the time column '{schema.time}' is not regular at row {row} "
            f"(expected one step of frequency {schema.freq or 'integer'} after the previous row)",
            column=schema.time,
            row=row,
            series=series or None,
        )


# ----------------------------------------------------------------------------- pandas <-> sktime
def to_sktime(table: pd.DataFrame, schema: Schema) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Canonical long table -> (y, X) in sktime's pandas mtypes; hierarchies get their
    aggregate ``__total`` nodes from sktime's `Aggregator`."""
    if schema.keys:
        index = pd.MultiIndex.from_arrays(
            [table[k].to_numpy() for k in schema.keys] + [pd.Index(table[schema.time])],
            names=[*schema.keys, schema.time],
        )
    else:
        index = pd.Index(table[schema.time], name=schema.time)
    y = pd.DataFrame({t: table[t].to_numpy() for t in schema.targets}, index=index)
    x = None
    if schema.exogenous:
        x = pd.DataFrame({c: table[c].to_numpy() for c in schema.exogenous}, index=index)
    if schema.kind == "hierarchical":
        y = aggregate_hierarchy(y)
    return y, x


def aggregate_hierarchy(y: pd.DataFrame) -> pd.DataFrame:
    from sktime.transformations.hierarchical.aggregate import Aggregator

    if y.index.nlevels < 2:
        return y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Aggregator(flatten_single_levels=False).fit_transform(y)


_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


def period_freq(stamps: pd.DatetimeIndex) -> str:
    """The period frequency whose periods start at ``stamps``, so that the wire (which shows a
    period by its start, `format_times`) shows the user's own times: MS -> M, QS-JAN -> Q-DEC,
    YS-JAN -> Y-DEC, W-SAT (Saturdays) -> W-FRI (weeks Saturday..Friday), D, h, min, s, B as
    they are. Times that are not period starts (month ends: ME, QE, YE) are refused."""
    if stamps.tz is not None:
        raise InvalidInput(
            f"the training times carry a time zone ({stamps.tz}): the service keeps wall-clock times; "
            "fit on y.tz_localize(None)"
        )
    alias = stamps.freqstr if stamps.freq is not None else pd.infer_freq(stamps.unique()[:50])
    if alias is None:
        raise InvalidInput("the training times have no regular frequency (pandas cannot infer one)")
    offset = pd.tseries.frequencies.to_offset(alias)
    if offset.n != 1:
        raise InvalidInput(f"the training times step by {alias}: only single steps (M, not 2M) are served")
    if isinstance(offset, pd.offsets.MonthBegin | pd.offsets.MonthEnd):
        freq = "M"
    elif isinstance(offset, pd.offsets.QuarterBegin):
        freq = f"Q-{_MONTHS[(offset.startingMonth - 2) % 12]}"
    elif isinstance(offset, pd.offsets.QuarterEnd):
        freq = f"Q-{_MONTHS[offset.startingMonth - 1]}"
    elif isinstance(offset, pd.offsets.YearBegin):
        freq = f"Y-{_MONTHS[(offset.month - 2) % 12]}"
    elif isinstance(offset, pd.offsets.YearEnd):
        freq = f"Y-{_MONTHS[offset.month - 1]}"
    elif isinstance(offset, pd.offsets.Week) and offset.weekday is not None:
        freq = f"W-{_WEEKDAYS[(offset.weekday - 1) % 7]}"
    else:
        freq = offset.freqstr
    try:
        periods = pd.PeriodIndex(stamps, freq=freq)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"the training times' frequency {alias} has no pandas period equivalent ({exc})") from None
    if not (periods.start_time == stamps).all():
        raise InvalidInput(
            f"the training times ({alias}) are not the starts of their {freq} periods "
            f"(e.g. {stamps[0].date()}): the service labels a period by its start; "
            f"fit on y.to_period('{freq}') or on period-start times (e.g. MS for months)"
        )
    return periods.freqstr


def from_sktime(
    y: pd.DataFrame | pd.Series,
    x: pd.DataFrame | None = None,
    *,
    keys: Sequence[str] | None = None,
    time: str | None = None,
    targets: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A forecaster's remembered (y, X) back to a long table and the schema facts it implies.

    Parameters
    ----------
    y, x
        sktime's pandas mtypes (Series, DataFrame, MultiIndex panels and hierarchies), time
        as a PeriodIndex, a DatetimeIndex with a regular frequency (stored as the periods
        that start at those times, `period_freq`) or integers.
    keys, time, targets
        Column names (a model spec's, or the user's); by default the data's own names, and
        ``level_<i>``, ``time`` and ``y`` where it has none. sktime keeps a univariate
        forecaster's data as an unnamed Series even when it was fitted on a named column.
    """
    frame = y.to_frame() if isinstance(y, pd.Series) else y.copy()
    own_targets = [str(c) for c in frame.columns]
    if isinstance(y, pd.Series) and y.name is None:
        own_targets = ["y"]
    if targets is not None and len(targets) != len(own_targets):
        raise InvalidInput(
            f"the forecaster was fitted on {len(own_targets)} target column(s), "
            f"the names given are {len(targets)}: {list(targets)}"
        )
    frame.columns = list(targets) if targets is not None else own_targets
    exogenous: list[str] = []
    if x is not None and len(x.columns):
        x = x.copy()
        x.columns = [str(c) for c in x.columns]
        exogenous = list(x.columns)
        frame = frame.join(x, how="left")
    levels = frame.index.nlevels
    own_keys = [str(n) if n is not None else f"level_{i}" for i, n in enumerate(frame.index.names[:-1])]
    if keys is not None and len(keys) != len(own_keys):
        raise InvalidInput(
            f"the forecaster's data has {len(own_keys)} key level(s) {own_keys}, the names given are {list(keys)}"
        )
    key_names = list(keys) if keys is not None else own_keys
    time_name = time or (str(frame.index.names[-1]) if frame.index.names[-1] is not None else "time")
    names = [*key_names, time_name]
    clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & {*frame.columns}))
    if clash:
        raise InvalidInput(f"the names {clash} are used for more than one column; name them with the spec or flags")
    frame.index = frame.index.set_names(names if levels > 1 else names[-1])
    time_index = frame.index.get_level_values(-1)
    freq = None
    periods: pd.PeriodIndex | None = None
    if isinstance(time_index, pd.PeriodIndex):
        freq = time_index.freqstr
    elif isinstance(time_index, pd.DatetimeIndex):
        # a panel's times repeat per series: the frequency comes from one series' times
        freq = period_freq(time_index.unique().sort_values() if levels > 1 else time_index)
        periods = pd.PeriodIndex(time_index, freq=freq)
    elif not pd.api.types.is_integer_dtype(time_index.dtype):
        raise InvalidInput(
            f"the forecaster's time index is {type(time_index).__name__} ({time_index.dtype}): "
            "the service serves periods, timestamps with a frequency and integer steps"
        )
    long = frame.reset_index()
    if periods is not None:
        long[time_name] = periods
    kind = "single" if not key_names else "panel"
    if key_names:
        # sktime's Aggregator output: leaves only are training data
        leaf = np.ones(len(long), dtype=bool)
        for k in key_names:
            leaf &= long[k].astype(str).to_numpy() != TOTAL
        if not leaf.all():
            kind = "hierarchical"
            long = long[leaf].reset_index(drop=True)
    facts = {
        "kind": kind,
        "keys": key_names,
        "time": time_name,
        "targets": list(frame.columns[: len(own_targets)]),
        "exogenous": exogenous,
        "freq": freq,
    }
    return long, facts


# ----------------------------------------------------------------------------- storage
def write_parquet(table: pd.DataFrame, schema: Schema, path: Path) -> None:
    stored = table.copy()
    if isinstance(stored[schema.time].dtype, pd.PeriodDtype):
        stored[schema.time] = pd.PeriodIndex(stored[schema.time]).start_time
    stored.to_parquet(path, index=False)


def read_parquet(path: Path | io.BytesIO, schema: Schema) -> pd.DataFrame:
    table = pd.read_parquet(path)
    if schema.freq is not None:
        table[schema.time] = pd.PeriodIndex(pd.DatetimeIndex(table[schema.time]), freq=schema.freq)
    for key in schema.keys:
        table[key] = table[key].astype(str).astype(object)
    return table


def fingerprint(table: pd.DataFrame, schema: Schema) -> str:
    """sha256 of the canonical CSV rendering (sorted, fixed float format)."""
    ordered = table[schema.columns].sort_values([*schema.keys, schema.time], kind="mergesort")
    text = ordered.to_csv(index=False, float_format="%.17g", lineterminator="\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- sktime -> wire
def _pct(coverage: float) -> str:
    return f"{coverage * 100:g}"


def interval_columns(target: str, coverage: float) -> tuple[str, str]:
    return f"{target}_lower_{_pct(coverage)}", f"{target}_upper_{_pct(coverage)}"


def quantile_column(target: str, level: float) -> str:
    return f"{target}_q{level:g}"


def forecast_table(
    point: pd.DataFrame,
    schema: Schema,
    intervals: pd.DataFrame | None = None,
    quantiles: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """sktime prediction frames -> one long table with the documented column names,
    times still as pandas values (see `wire_columns`): periods of ``schema.freq`` also for a
    forecaster fitted on timestamps (the periods that start at them, `period_freq`).

    sktime names a univariate forecaster's output after the data it was fitted on (an unnamed
    Series: ``0``), not always the names the schema gives them: columns are taken by name, or
    by position when the names differ."""
    index = point.index
    columns: dict[str, Any] = {}
    if index.nlevels > 1:
        for level, key in enumerate(schema.keys):
            columns[key] = index.get_level_values(level).astype(str).to_numpy(dtype=object)
    times = index.get_level_values(-1)
    if isinstance(times, pd.DatetimeIndex) and schema.freq is not None:
        times = pd.PeriodIndex(times, freq=schema.freq)
    columns[schema.time] = times
    variables = _variables(list(point.columns), schema.targets)
    for target in schema.targets:
        columns[target] = point[variables[target]].to_numpy(dtype="float64")
    if intervals is not None:
        intervals = intervals.reindex(index)
        variables = _variables(list(dict.fromkeys(intervals.columns.get_level_values(0))), schema.targets)
        for target in schema.targets:
            for coverage in sorted({c for (_, c, _) in intervals.columns}):
                lower, upper = interval_columns(target, coverage)
                columns[lower] = intervals[(variables[target], coverage, "lower")].to_numpy(dtype="float64")
                columns[upper] = intervals[(variables[target], coverage, "upper")].to_numpy(dtype="float64")
    if quantiles is not None:
        quantiles = quantiles.reindex(index)
        variables = _variables(list(dict.fromkeys(quantiles.columns.get_level_values(0))), schema.targets)
        for target in schema.targets:
            for level in sorted({q for (_, q) in quantiles.columns}):
                columns[quantile_column(target, level)] = quantiles[(variables[target], level)].to_numpy(
                    dtype="float64"
                )
    table = pd.DataFrame(columns)
    return table


def _variables(names: list[Any], targets: Sequence[str]) -> dict[str, Any]:
    """Each target's column in a sktime output: the one of its name, else the one in its place."""
    if all(t in names for t in targets):
        return {t: t for t in targets}
    if len(names) != len(targets):
        raise ForecastFailed(f"the forecaster predicts the variables {names}, the model's targets are {list(targets)}")
    return dict(zip(targets, names, strict=True))


def wire_columns(table: pd.DataFrame, schema: Schema) -> dict[str, np.ndarray]:
    """A long table as column arrays ready for JSON/CSV/Arrow encoding."""
    columns: dict[str, np.ndarray] = {}
    for name in table.columns:
        values = table[name]
        if name == schema.time:
            columns[name] = format_times(pd.Index(values))
        elif values.dtype == object:
            columns[name] = values.to_numpy(dtype=object)
        else:
            columns[name] = values.to_numpy()
    return columns


def encode_json(payload: Any) -> bytes:
    """orjson with numpy support: NaN and infinities become ``null``."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def _object_to_list(array: np.ndarray) -> Any:
    return array.tolist() if array.dtype == object else array


def json_columns(columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Columns orjson can take as they are (object arrays become lists)."""
    return {k: _object_to_list(v) for k, v in columns.items()}


def frame_to_wire(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """A client-side DataFrame (columns or index levels) to a column-oriented JSON table."""
    if frame.index.nlevels > 1 or frame.index.name is not None:
        frame = frame.reset_index()
    out: dict[str, list[Any]] = {}
    for name in frame.columns:
        values = frame[name]
        missing = values.isna().to_numpy()
        if isinstance(values.dtype, pd.PeriodDtype):
            cells = [None if m else format_time(p) for p, m in zip(values, missing, strict=True)]
        elif pd.api.types.is_datetime64_any_dtype(values.dtype):
            cells = [None if m else t.isoformat() for t, m in zip(values, missing, strict=True)]
        elif pd.api.types.is_float_dtype(values.dtype):
            cells = [None if m else float(v) for v, m in zip(values.astype("float64"), missing, strict=True)]
        else:
            cells = [v.item() if hasattr(v, "item") else v for v in values.astype(object)]
        out[str(name)] = [
            None if m or (isinstance(c, float) and not math.isfinite(c)) else c
            for c, m in zip(cells, missing, strict=True)
        ]
    return out


def encode_csv(columns: Mapping[str, np.ndarray]) -> bytes:
    return pd.DataFrame(dict(columns)).to_csv(index=False, lineterminator="\n").encode("utf-8")


def encode_arrow(columns: Mapping[str, np.ndarray]) -> bytes:
    batch = pa.RecordBatch.from_pydict({k: pa.array(v) for k, v in columns.items()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode_arrow(data: bytes) -> pd.DataFrame:
    return pa.ipc.open_stream(data).read_pandas()


PARQUET_TYPES = ("application/vnd.apache.parquet", "application/x-parquet", "application/parquet")


def read_upload(
    body: bytes, content_type: str | None, what: str = "body", limits: TableLimits = TableLimits()
) -> pd.DataFrame:
    """An uploaded table: CSV, a column-oriented JSON table, or Parquet. Columns (and for
    Parquet rows and decoded size) are checked against ``limits`` before the body is parsed."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not body:
        raise InvalidTable(f"the {what} is empty: send a CSV, JSON table or Parquet file", field=what)
    try:
        if kind in ("text/csv", "application/csv"):
            # pandas' header parsing is quadratic in the columns (100k: 74 s): count them first
            check_columns(csv_header_width(body), what, limits.max_columns)
            return pd.read_csv(io.BytesIO(body))
        if kind in PARQUET_TYPES:
            return _read_parquet_upload(body, what, limits)
        if kind in ("application/json", ""):
            containers = json_containers(body, limits.max_columns + 1)
            if containers > limits.max_columns + 1:
                raise LimitExceeded(
                    f"the {what} holds {containers} JSON arrays and objects: a table is one object of at most "
                    f"{limits.max_columns} column arrays (setting FORECAST_MAX_COLUMNS_PER_TABLE) with scalar cells",
                    field=what,
                    maximum=limits.max_columns,
                )
            return wire_to_frame(orjson.loads(body), what, limits.max_columns)
    except InvalidInput:
        raise
    except (ValueError, TypeError, pa.ArrowException, pd.errors.ParserError, orjson.JSONDecodeError) as exc:
        raise InvalidTable(f"the {what} cannot be read as {kind or 'JSON'}: {exc}"[:500], field=what) from None
    raise InvalidTable(
        f"unsupported content type {kind!r}: use text/csv, application/json or application/vnd.apache.parquet",
        field="content-type",
    )


# what pyarrow raises on a malformed file: ArrowException subclasses, and plain OSError
# ("Couldn't deserialize thrift") among others
_PARQUET_ERRORS = (
    pa.ArrowException,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    NotImplementedError,
    EOFError,
)
PARQUET_BATCH_ROWS = 65_536  # decoded bytes are counted after each batch of this many rows


def _read_parquet_upload(body: bytes, what: str, limits: TableLimits) -> pd.DataFrame:
    """Parquet, its footer checked before any page is decoded (a 341 KB file can hold 40M
    rows), then decoded a batch at a time with the decoded bytes counted: the footer is the
    client's word, and its sizes are of encoded pages (4M zeros: 32 KB "uncompressed", 64 MB
    decoded). Read with pyarrow, without the pandas metadata a client may have written wrong."""
    try:
        file = pq.ParquetFile(pa.BufferReader(body))
        meta, schema = file.metadata, file.schema_arrow
        check_columns(meta.num_columns, what, limits.max_columns)
        if meta.num_rows > limits.max_rows:
            raise LimitExceeded(
                f"the {what} has {meta.num_rows} rows; at most {limits.max_rows} "
                "(setting FORECAST_MAX_ROWS_PER_REQUEST)",
                field=what,
                maximum=limits.max_rows,
            )
        encoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        fixed = meta.num_rows * sum(_decoded_width(field.type) for field in schema)
        _check_decoded(max(encoded, fixed), what, limits.max_decoded_bytes)
        batches, decoded = [], 0
        for batch in file.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            decoded += batch.nbytes
            _check_decoded(decoded, what, limits.max_decoded_bytes)
            batches.append(batch)
        table = pa.Table.from_batches(batches) if batches else schema.empty_table()
        # without the schema's metadata: pandas' (JSON a client wrote) is never parsed
        return table.replace_schema_metadata(None).to_pandas()
    except InvalidInput:
        raise
    except _PARQUET_ERRORS as exc:
        raise InvalidTable(f"the {what} cannot be read as Parquet: {str(exc).strip()}"[:500], field=what) from None


def _decoded_width(kind: pa.DataType) -> int:
    """Bytes a value of ``kind`` takes decoded; for variable widths only its offset (the
    content is counted while decoding)."""
    try:
        return max(kind.bit_width // 8, 1)
    except ValueError:
        return 4


def _check_decoded(size: int, what: str, limit: int) -> None:
    if size > limit:
        raise LimitExceeded(
            f"the {what} decodes to {size} bytes; at most {limit} (setting FORECAST_MAX_DECODED_BYTES)",
            field=what,
            maximum=limit,
        )
