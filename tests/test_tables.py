"""Wire time parsing: offsets keep each time's wall clock, whether one offset or several."""

from __future__ import annotations

import warnings

import pandas as pd

from service.tables import parse_times


def test_mixed_utc_offsets_keep_wall_clock_without_pandas_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monthly = parse_times(["1961-01-01T00:00:00+05:00", "1961-02-01"], "M", "month")
        daily = parse_times(["1961-01-31T23:00:00+05:00", "1961-02-01T00:00:00-03:00"], "D", "day")
    assert list(monthly) == [pd.Period("1961-01", "M"), pd.Period("1961-02", "M")]
    assert list(daily) == [pd.Period("1961-01-31", "D"), pd.Period("1961-02-01", "D")]


def test_single_offset_keeps_wall_clock() -> None:
    daily = parse_times(["1961-01-31T23:00:00+05:00", "1961-02-01T23:00:00+05:00"], "D", "day")
    assert list(daily) == [pd.Period("1961-01-31", "D"), pd.Period("1961-02-01", "D")]
