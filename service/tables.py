"""The one place where tables change shape: wire (column-oriented JSON, CSV, Arrow,
Parquet) <-> canonical long pandas tables <-> sktime's (Multi)Index frames.

Canonical long table: key columns (``str``), one time column (``period[freq]`` or
``int64``), target and exogenous columns (``float64``), sorted by keys then time.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import hashlib
import io
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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


SEASON_LENGTHS = {"M": 12, "Q": 4, "W": 52, "D": 7, "B": 5, "h": 24, "H": 24, "min": 60}
"""The usual season of a period frequency, by its base (``Q-DEC`` counts as ``Q``)."""


def season_length(freq: str | None) -> int:
    """The season length of a period frequency (M: 12, Q: 4, W: 52, D: 7, B: 5, h: 24,
    min: 60); 1 for years, other frequencies and integer indices (None)."""
    return SEASON_LENGTHS.get((freq or "").split("-")[0], 1)


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
    max_rows: int = 12_000_000  # FORECAST_MAX_UPLOAD_ROWS
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
REPORTED_ROWS = 10  # bad rows named in a problem (all are counted)
BadRows = list[tuple[int, str]]  # (row, what is wrong with it)


def parse_times(values: Sequence[Any] | pd.Series, freq: str | None, column: str) -> pd.Index:
    """Parse wire times: ISO 8601 strings (or pandas period strings like 1959Q1) to a
    PeriodIndex of ``freq``; integers when the model has an integer time index. The first
    bad value is refused naming its row (`canonical_table` reports all of them)."""
    index, bad = _parse_times(values, freq)
    if bad:
        row, text = bad[0]
        raise InvalidTable(f"column '{column}' row {row}: {text}", column=column, row=row)
    return index


def _dates_as_stamps(series: pd.Series) -> pd.Series:
    """A column of ``datetime.date`` or ``datetime.datetime`` objects (Parquet date32, pandas
    ``.dt.date``) as pandas timestamps; any other column as it is."""
    if series.dtype != object:
        return series
    present = series.dropna()
    if present.empty or not all(isinstance(v, datetime.date) for v in present):
        return series
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stamps = pd.to_datetime(series)
    except (ValueError, TypeError, OverflowError):
        return series  # out of pandas' range, or mixed UTC offsets: refused value by value
    return stamps if pd.api.types.is_datetime64_any_dtype(stamps.dtype) else series


def _parse_times(values: Sequence[Any] | pd.Series, freq: str | None) -> tuple[pd.Index, BadRows]:
    """Times of every row, and every row whose time cannot be used (its place in the index
    holds a placeholder then)."""
    series = pd.Series(values, dtype="object") if not isinstance(values, pd.Series) else values.reset_index(drop=True)
    series = _dates_as_stamps(series)
    missing = series.isna().to_numpy()
    bad: BadRows = [(int(i), "the time is missing") for i in np.flatnonzero(missing)]
    if freq is None:
        if pd.api.types.is_integer_dtype(series.dtype) and (series.abs() < INT_TIME_LIMIT).all():
            return pd.Index(series.to_numpy(dtype="int64")), bad
        whole = np.asarray([_is_integer(v) for v in series], dtype=bool)
        bad += [
            (int(i), f"{series.iloc[i]!r} is not an integer time step (the times here are integers)")
            for i in np.flatnonzero(~whole & ~missing)
        ]
        steps = np.asarray([int(v) if ok else 0 for v, ok in zip(series, whole, strict=True)], dtype="int64")
        return pd.Index(steps), sorted(bad)
    index, unparsed = _parse_periods(series, freq, missing)
    bad += unparsed
    known = missing.copy()
    known[[row for row, _ in unparsed]] = True
    bad += _unstorable(index, series, freq, known)
    return index, sorted(bad)


def _parse_periods(series: pd.Series, freq: str, missing: np.ndarray) -> tuple[pd.PeriodIndex, BadRows]:
    if isinstance(series.dtype, pd.PeriodDtype):
        return pd.PeriodIndex(series).asfreq(freq), []
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return pd.PeriodIndex(pd.DatetimeIndex(series).tz_localize(None), freq=freq), []
    if pd.api.types.is_integer_dtype(series.dtype):  # years read from a CSV: 1821, 1822, ...
        series = series.astype(str)
    strings = np.asarray([isinstance(v, str) for v in series], dtype=bool)
    if strings.all():
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
                return pd.PeriodIndex(stamps, freq=freq), []
        except (ValueError, TypeError, OverflowError, AttributeError, FutureWarning):
            pass
        try:
            return pd.PeriodIndex(series.tolist(), freq=freq), []
        except (ValueError, TypeError, OverflowError):
            pass
    # some value is not a time: find them all, value by value only where pandas' vectorized
    # ISO 8601 parse gives up (the times past 2262, period strings like 1959Q1, the bad ones)
    values = series.to_numpy(dtype=object)
    periods = np.full(len(values), pd.NaT, dtype=object)
    todo = strings.copy()
    rows = np.flatnonzero(strings)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            stamps = pd.to_datetime(pd.Series(values[rows]), format="ISO8601", errors="coerce", utc=False)
        if getattr(stamps.dt, "tz", None) is not None:
            stamps = stamps.dt.tz_localize(None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.PeriodIndex(stamps, freq=freq)
        good = ~np.asarray(parsed.isna())
        periods[rows[good]] = list(parsed[good])
        todo[rows[good]] = False
    except (ValueError, TypeError, OverflowError, AttributeError, FutureWarning):
        pass
    bad: BadRows = []
    for i in np.flatnonzero(todo):
        try:
            periods[i] = pd.Period(values[i], freq=freq)
        except (ValueError, TypeError, OverflowError):
            bad.append((int(i), f"{values[i]!r} is not an ISO 8601 time"))
    bad += [(int(i), f"{values[i]!r} is not a time string (ISO 8601)") for i in np.flatnonzero(~strings & ~missing)]
    return pd.PeriodIndex(list(periods), freq=freq), bad


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


def _unstorable(index: pd.PeriodIndex, values: pd.Series, freq: str, known: np.ndarray) -> BadRows:
    """Rows (not already ``known`` bad) whose time is ``NaT`` or beyond pandas' Timestamp range."""
    first, last = storable_periods(freq)
    nat = np.asarray(index.isna())
    ordinals = index.asi8
    outside = ~nat & ((ordinals < first.ordinal) | (ordinals > last.ordinal))
    bad: BadRows = [(int(i), f"{values.iloc[i]!r} is not a time") for i in np.flatnonzero(nat & ~known)]
    bad += [
        (
            int(i),
            f"{values.iloc[i]!r} is outside the times that can be stored at frequency {freq} ({first} .. {last}; "
            "pandas timestamps span 1677-09-21 .. 2262-04-11)",
        )
        for i in np.flatnonzero(outside & ~known)
    ]
    return bad


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


def _numeric_values(raw: pd.Series) -> tuple[np.ndarray, BadRows, np.ndarray]:
    """A value column as float64, the rows that are not numbers (text, booleans, infinities)
    and the mask of missing values (empty, null, NaN)."""
    if pd.api.types.is_bool_dtype(raw.dtype):
        return np.zeros(len(raw)), [(i, f"{v!r} is not numeric") for i, v in enumerate(raw)], np.zeros(len(raw), bool)
    try:
        values = pd.to_numeric(raw, errors="coerce")
    except (OverflowError, ValueError):  # ints beyond float range are not coerced, they raise
        values = pd.to_numeric(raw.map(_float_or_nan), errors="coerce")
    text = (values.isna() & raw.notna()).to_numpy()
    if raw.dtype == object:
        text |= np.asarray([isinstance(v, bool) for v in raw], dtype=bool)
    array = values.to_numpy(dtype="float64", na_value=np.nan)
    infinite = np.isinf(array)
    bad: BadRows = [(int(i), f"{raw.iloc[i]!r} is not numeric") for i in np.flatnonzero(text)]
    bad += [(int(i), f"{raw.iloc[i]!r} is infinite") for i in np.flatnonzero(infinite)]
    missing = np.isnan(array) & ~text
    array[text | infinite] = np.nan
    return array, bad, missing


MISSING_POLICIES = ("error", "drop", "ffill", "interpolate")


@dataclass
class _Problems:
    """Bad rows found while validating a table: all are counted, the first ones named."""

    what: str
    columns: list[str]
    found: list[tuple[int, str, str]] = field(default_factory=list)  # (row, column, problem)

    def add(self, column: str, bad: Iterable[tuple[int, str]]) -> None:
        self.found.extend((int(row), column, text) for row, text in bad)

    def raise_any(self, intro: str = "bad row", **extra: Any) -> None:
        if not self.found:
            return
        rank = {c: i for i, c in enumerate(self.columns)}
        found = sorted(self.found, key=lambda p: (p[0], rank.get(p[1], len(rank))))
        rows = sorted({row for row, _, _ in found})
        shown = found[:REPORTED_ROWS]
        listed = "; ".join(f"row {row} '{column}': {text}" for row, column, text in shown)
        more = f", the first {len(shown)} of {len(found)} problems" if len(found) > len(shown) else ""
        raise InvalidTable(
            f"{self.what}: {len(rows)} {intro}{'s' if len(rows) != 1 else ''}{more}: {listed}"[:4000],
            column=shown[0][1],
            row=shown[0][0],
            count=len(rows),
            rows=rows[:REPORTED_ROWS],
            columns=[c for c in self.columns if any(p[1] == c for p in found)],
            errors=[{"row": row, "column": column, "problem": text} for row, column, text in shown],
            **extra,
        )


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
    columns required (default: targets and exogenous). Every bad row is counted in one
    `InvalidTable`, the first `REPORTED_ROWS` named."""
    return canonical_upload(frame, schema, what=what, columns=columns, contiguous=contiguous, in_order=in_order)[0]


def canonical_upload(
    frame: pd.DataFrame,
    schema: Schema,
    *,
    what: str,
    missing: str = "error",
    columns: Iterable[str] | None = None,
    contiguous: bool = True,
    in_order: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """`canonical_table` with a policy for missing values, and what the policy did.

    Parameters
    ----------
    missing
        ``error``: a missing value (empty, null, NaN) is a bad row; ``drop``: rows with one
        are dropped (a hole left in a series' times is then refused as a gap); ``ffill``:
        each series carries its last value forward (pandas ``ffill``); ``interpolate``:
        linear between a series' neighbouring values (pandas ``interpolate(limit_area=
        "inside")``). Values that ``ffill`` or ``interpolate`` cannot fill (at the start,
        or the end, of a series) are bad rows. ``keep`` leaves them as NaN (for a later
        policy on a merged table).
    """
    if missing not in (*MISSING_POLICIES, "keep"):
        raise InvalidInput(f"missing must be one of {list(MISSING_POLICIES)}, not {missing!r}", field="missing")
    needed_values = list(columns) if columns is not None else [*schema.targets, *schema.exogenous]
    needed = [*schema.keys, schema.time, *needed_values]
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise InvalidTable(f"{what}: missing column(s) {absent}", columns=absent)
    if len(frame) == 0:
        raise InvalidTable(f"{what}: the table has no rows")
    frame = frame.reset_index(drop=True)
    problems = _Problems(what, needed)
    hint = None
    usable = np.ones(len(frame), dtype=bool)  # rows whose keys and time can be compared
    out: dict[str, Any] = {}
    for key in schema.keys:
        raw = frame[key]
        absent_key = raw.isna().to_numpy()
        problems.add(key, ((int(i), "the key is missing") for i in np.flatnonzero(absent_key)))
        usable &= ~absent_key
        out[key] = raw.astype(str).to_numpy(dtype=object)
    times, bad_times = _parse_times(frame[schema.time], schema.freq)
    problems.add(schema.time, bad_times)
    usable[[row for row, _ in bad_times]] = False
    out[schema.time] = times
    for column in needed_values:
        values, bad, absent_value = _numeric_values(frame[column])
        problems.add(column, bad)
        if missing == "error" and absent_value.any():
            problems.add(column, ((int(i), "is missing (empty, null or NaN)") for i in np.flatnonzero(absent_value)))
            hint = "missing=drop, missing=ffill or missing=interpolate handles missing values"
        out[column] = values
    table = pd.DataFrame(out)
    order = [*schema.keys, schema.time]
    duplicated = np.zeros(len(table), dtype=bool)
    duplicated[usable] = table[usable].duplicated(subset=order, keep=False).to_numpy()
    label = "+".join(order)
    problems.add(
        schema.time,
        ((int(i), f"duplicated {label} {_row_label(table, order, int(i))}") for i in np.flatnonzero(duplicated)),
    )
    problems.raise_any(hint=hint)
    if in_order:
        _check_in_order(table, schema, what)
    table["__row"] = np.arange(len(table))
    table = table.sort_values(order, kind="mergesort").reset_index(drop=True)
    report = None
    if missing in ("drop", "ffill", "interpolate"):
        table, report = _fill_missing(table, schema, needed_values, missing, what)
    if contiguous:
        hint = ""
        if report is not None and report.get("rows_dropped"):
            hint = "; missing=drop left holes where it dropped rows: missing=ffill or missing=interpolate fills them"
        _check_contiguous(table, schema, what, hint)
    return table.drop(columns="__row"), report


def _row_label(table: pd.DataFrame, order: list[str], row: int) -> str:
    return " ".join(str(format_time(table[c].iloc[row])) for c in order)


def _fill_missing(
    table: pd.DataFrame, schema: Schema, columns: list[str], policy: str, what: str
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A sorted table's missing values dropped or filled within each series, and how many."""
    report: dict[str, Any] = {"policy": policy}
    if policy == "drop":
        keep = table[columns].notna().all(axis=1).to_numpy()
        report["rows_dropped"] = int((~keep).sum())
        report["rows"] = sorted(table["__row"].to_numpy()[~keep].tolist())[:REPORTED_ROWS]
        table = table[keep].reset_index(drop=True)
        if table.empty:
            raise InvalidTable(f"{what}: every row has a missing value; nothing is left after missing=drop")
        return table, report
    before = table[columns].isna().to_numpy()
    if schema.keys:
        groups = table.groupby(list(schema.keys), sort=False)[columns]
        if policy == "ffill":
            filled = groups.ffill()
        else:
            filled = groups.transform(lambda s: s.interpolate(method="linear", limit_area="inside"))
    elif policy == "ffill":
        filled = table[columns].ffill()
    else:
        filled = table[columns].interpolate(method="linear", limit_area="inside")
    table[columns] = filled.to_numpy(dtype="float64")
    after = table[columns].isna().to_numpy()
    report["values_filled"] = int((before & ~after).sum())
    report["rows"] = sorted(table["__row"].to_numpy()[(before & ~after).any(axis=1)].tolist())[:REPORTED_ROWS]
    if after.any():
        why = (
            "is missing with no earlier value in its series to carry forward"
            if policy == "ffill"
            else "is missing at the start or end of its series, with nothing to interpolate between"
        )
        problems = _Problems(what, columns)
        for j, column in enumerate(columns):
            problems.add(column, ((int(table["__row"].iloc[i]), why) for i in np.flatnonzero(after[:, j])))
        problems.raise_any("row left missing by missing=" + policy, hint="missing=drop drops rows with a missing value")
    return table, report


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


def _check_contiguous(table: pd.DataFrame, schema: Schema, what: str, hint: str = "") -> None:
    """Each series steps by one period (or integer) from row to row; every gap is counted."""
    steps = _time_steps(table[schema.time])
    if schema.keys:
        series_id = table.groupby(list(schema.keys), sort=False).ngroup().to_numpy()
        same_series = series_id[1:] == series_id[:-1]
    else:
        same_series = np.ones(len(steps) - 1, dtype=bool)
    gaps = (np.diff(steps) != 1) & same_series
    if not gaps.any():
        return
    at = np.flatnonzero(gaps) + 1
    origin = table["__row"].to_numpy() if "__row" in table.columns else np.arange(len(table))
    times = table[schema.time]
    shown = ", ".join(
        f"row {int(origin[i])} ({format_time(times.iloc[i])} after {format_time(times.iloc[i - 1])})"
        for i in at[:REPORTED_ROWS]
    )
    first = int(at[0])
    series = {k: table[k].iloc[first] for k in schema.keys}
    raise InvalidTable(
        f"{what}: the time column '{schema.time}' is not regular at {len(at)} place{'s' if len(at) > 1 else ''}: "
        f"{shown} (expected one step of frequency {schema.freq or 'integer'} after the previous row{hint})",
        column=schema.time,
        row=int(origin[first]),
        count=len(at),
        rows=sorted(int(origin[i]) for i in at)[:REPORTED_ROWS],
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


def offset_period_freq(offset: pd.DateOffset) -> str:
    """The period frequency whose periods start at the times of a pandas timestamp offset:
    MS -> M, QS-JAN -> Q-DEC, YS-JAN -> Y-DEC, W-SAT (Saturdays) -> W-FRI (weeks
    Saturday..Friday); D, h, min, s, B as they are. Month, quarter and year *ends* (ME, QE,
    YE) map to their periods too, whose starts are not those times (callers check)."""
    if isinstance(offset, pd.offsets.MonthBegin | pd.offsets.MonthEnd):
        return "M"
    if isinstance(offset, pd.offsets.QuarterBegin):
        return f"Q-{_MONTHS[(offset.startingMonth - 2) % 12]}"
    if isinstance(offset, pd.offsets.QuarterEnd):
        return f"Q-{_MONTHS[offset.startingMonth - 1]}"
    if isinstance(offset, pd.offsets.YearBegin):
        return f"Y-{_MONTHS[(offset.month - 2) % 12]}"
    if isinstance(offset, pd.offsets.YearEnd):
        return f"Y-{_MONTHS[offset.month - 1]}"
    if isinstance(offset, pd.offsets.Week) and offset.weekday is not None:
        return f"W-{_WEEKDAYS[(offset.weekday - 1) % 7]}"
    return str(offset.freqstr)


def period_freq(stamps: pd.DatetimeIndex) -> str:
    """The period frequency whose periods start at ``stamps``, so that the wire (which shows a
    period by its start, `format_times`) shows the user's own times (`offset_period_freq`).
    Times that are not period starts (month ends: ME, QE, YE) are refused."""
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
    freq = offset_period_freq(offset)
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


@dataclass(frozen=True)
class TimeFreq:
    """How a table's time column is stored: ``freq`` (a pandas period frequency, None for
    integer steps), the pandas ``alias`` it was given or inferred as, and in words."""

    freq: str | None
    alias: str | None
    inferred: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _period_meaning(alias: str) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return str(pd.PeriodIndex([], freq=alias).freqstr)
    except (TypeError, ValueError, AttributeError):
        return None


def _timestamp_meaning(alias: str) -> tuple[pd.DateOffset | None, str | None]:
    """The offset of a pandas timestamp alias and the period frequency starting at its times."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'M' for month ends is deprecated (ME)
            offset = pd.tseries.frequencies.to_offset(alias)
    except (TypeError, ValueError, AttributeError):
        return None, None
    if offset is None or offset.n != 1:
        return offset, None
    return offset, _period_meaning(offset_period_freq(offset))


def _sample_stamps(values: pd.Series) -> pd.DatetimeIndex | None:
    """The distinct wall-clock times of a column that parse as ISO 8601 timestamps, sorted
    (None when it holds no timestamps, e.g. integers or period strings like 1959Q1)."""
    values = _dates_as_stamps(values)
    if isinstance(values.dtype, pd.PeriodDtype) or pd.api.types.is_integer_dtype(values.dtype):
        return None
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        stamps = pd.Series(values)
    else:
        strings = values[[isinstance(v, str) for v in values]]
        if strings.empty:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stamps = pd.to_datetime(strings, format="ISO8601", errors="coerce", utc=False)
        except (ValueError, TypeError, OverflowError, AttributeError):
            return None
        if stamps.dtype == object:  # mixed UTC offsets
            return None
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_localize(None)
    index = pd.DatetimeIndex(stamps.dropna().unique()).sort_values()
    return index if len(index) else None


def _keeps_labels(stamps: pd.DatetimeIndex | None, freq: str | None) -> bool:
    if stamps is None or freq is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool((pd.PeriodIndex(stamps, freq=freq).start_time == stamps).all())


def _periods_detail(alias: str, freq: str, stamps: pd.DatetimeIndex | None) -> str:
    text = f"pandas alias {alias}: stored as {freq} periods, each labelled by its start"
    if stamps is not None and freq.startswith("W-"):
        text += f" ({stamps[0].day_name()}s, as in the data)"
    return text


def resolve_freq(values: pd.Series, given: str | None, column: str) -> TimeFreq:
    """The period frequency a time column is stored at, from ``given`` (a pandas period
    frequency or timestamp alias) or, when None, inferred from the times with
    `pandas.infer_freq`.

    A timestamp alias maps to the periods that start at the user's times (MS -> M, W-SAT ->
    W-FRI: weeks Saturday..Friday), so the times read back are the ones sent. Where a name
    means one thing for periods and another for timestamps (W-SAT: weeks *ending* Saturday,
    or Saturdays), the meaning that keeps the data's times wins. Integer times are integer
    steps. Anything that cannot be stored without moving the times is an `InvalidInput`
    that says which ``freq`` to give."""
    if given is not None:
        return _given_freq(values, given, column)
    if isinstance(values.dtype, pd.PeriodDtype):
        own = str(pd.PeriodIndex(values).freqstr)
        return TimeFreq(own, own, True, f"the times are {own} periods")
    if pd.api.types.is_integer_dtype(values.dtype) or (
        len(values) and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values.dropna())
    ):
        return TimeFreq(None, None, True, "integer time steps (give freq, e.g. freq=Y, to read them as periods)")
    stamps = _sample_stamps(values)
    if stamps is None:
        first = next((v for v in values if isinstance(v, str)), None)
        named: str | None = None
        with contextlib.suppress(ValueError, TypeError, OverflowError):
            named = str(pd.Period(first).freqstr) if first is not None else None
        if named is None:
            raise InvalidInput(
                f"column '{column}': no frequency can be inferred (its values are not ISO 8601 times); "
                "give freq (M, Q, W-SAT, D, h, ...)",
                field="freq",
                column=column,
            )
        return TimeFreq(named, named, True, f"the times are {named} period strings (e.g. {first!r})")
    alias = _infer_alias(stamps)
    if alias is None:
        raise InvalidInput(
            f"column '{column}': pandas cannot infer a frequency from its times (first: "
            f"{', '.join(t.isoformat() for t in stamps[:3])}); give freq (M, Q, W-SAT, D, h, ...)",
            field="freq",
            column=column,
        )
    _, freq = _timestamp_meaning(alias)
    if freq is None:
        raise InvalidInput(
            f"column '{column}': the times step by {alias}; only single steps with a pandas period "
            "equivalent are stored: give freq",
            field="freq",
            column=column,
        )
    if not _keeps_labels(stamps, freq):
        raise InvalidInput(
            f"column '{column}': the times are {alias} (e.g. {stamps[0].date()}), not the starts of {freq} "
            f"periods; the service labels a period by its start. Give freq={freq} to store them as {freq} "
            "periods (read back by their first day)",
            field="freq",
            column=column,
            inferred=alias,
        )
    return TimeFreq(freq, alias, True, "inferred with pandas.infer_freq, " + _periods_detail(alias, freq, stamps))


def _infer_alias(stamps: pd.DatetimeIndex) -> str | None:
    """`pandas.infer_freq` of the times, or (when a gap makes them irregular) of their first,
    middle or last 50: the gap is then reported as such, with the frequency it breaks."""
    if len(stamps) < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sample in (stamps, stamps[:50], stamps[len(stamps) // 2 :][:50], stamps[-50:]):
            try:
                alias = pd.infer_freq(sample) if len(sample) >= 3 else None
            except (ValueError, TypeError):
                alias = None
            if alias is not None:
                return str(alias)
    return None


def check_single_step(freq: str) -> None:
    """Refuse a frequency with a multiple (2M, 3Q): the service stores single steps only; a
    name that is no pandas frequency is left to the caller's own check."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'M' for month ends is deprecated (ME)
            offset = pd.tseries.frequencies.to_offset(freq)
    except (TypeError, ValueError, AttributeError):
        return
    if offset is not None and offset.n != 1:
        raise InvalidInput(
            f"freq '{freq}' steps by {offset.n}: give single steps, e.g. M, not 2M", field="freq", freq=freq
        )


def _given_freq(values: pd.Series, given: str, column: str) -> TimeFreq:
    check_single_step(given)
    as_period = _period_meaning(given)
    _, as_stamps = _timestamp_meaning(given)
    if as_stamps is None or as_stamps == as_period:
        if as_period is None:
            raise InvalidInput(
                f"'{given}' is not a pandas frequency with single steps (periods: M, Q, Y, W-SUN, D, h, ...; "
                "timestamps: MS, QS, YS, W-SAT, ...)",
                field="freq",
            )
        return TimeFreq(as_period, given, False, f"given: {as_period} periods")
    stamps = _sample_stamps(values)
    if as_period is not None and not _keeps_labels(stamps, as_stamps):
        # a name of both kinds (W-SAT: weeks ending Saturday, or Saturdays): periods, unless
        # the times are the timestamps'
        return TimeFreq(as_period, given, False, f"given: {as_period} periods")
    if stamps is not None and not _keeps_labels(stamps, as_stamps):
        raise InvalidInput(
            f"column '{column}': the times (e.g. {stamps[0].date()}) are not the starts of {as_stamps} periods, "
            f"which is what {given} is stored as (a period is labelled by its start); give freq={as_stamps} to "
            f"store them as {as_stamps} periods, read back by their first day",
            field="freq",
            column=column,
        )
    return TimeFreq(as_stamps, given, False, "given, " + _periods_detail(given, as_stamps, stamps))


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
def _as_stored(table: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """A long table as Parquet files keep it: period times as their start timestamps."""
    stored = table.copy()
    if isinstance(stored[schema.time].dtype, pd.PeriodDtype):
        stored[schema.time] = pd.PeriodIndex(stored[schema.time]).start_time
    return stored


def write_parquet(table: pd.DataFrame, schema: Schema, path: Path) -> None:
    _as_stored(table, schema).to_parquet(path, index=False)


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
                f"the {what} has {meta.num_rows} rows; at most {limits.max_rows} (setting FORECAST_MAX_UPLOAD_ROWS)",
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


class TableFileWriter:
    """A long forecast table written chunk by chunk to Parquet (times as period-start
    timestamps, as the registry stores them) or CSV (times as the wire spells them)."""

    def __init__(self, path: Path, fmt: str, schema: Schema) -> None:
        self.path, self.fmt, self.schema = Path(path), fmt, schema
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._csv: io.TextIOWrapper | None = None

    def write(self, table: pd.DataFrame) -> None:
        if self.fmt == "parquet":
            arrow = pa.Table.from_pandas(_as_stored(table, self.schema), preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, arrow.schema)
            self._parquet.write_table(arrow.cast(self._parquet.schema))
        else:
            first = self._csv is None
            if self._csv is None:
                self._csv = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
            frame = pd.DataFrame(wire_columns(table, self.schema))
            frame.to_csv(self._csv, index=False, header=first, lineterminator="\n")
        self.rows += len(table)

    def close(self) -> None:
        """Finish the file (an empty table still gets one: a header, or a Parquet footer)."""
        if self._parquet is not None:
            self._parquet.close()
        elif self._csv is not None:
            self._csv.close()
        elif self.fmt == "csv":
            self.path.write_text(",".join(self.schema.columns) + "\n", encoding="utf-8")
        else:
            pq.write_table(pa.table({c: pa.array([], pa.string()) for c in self.schema.columns}), self.path)
