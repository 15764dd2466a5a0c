"""FastTable's series index: selecting series by row ranges gives the old np.isin selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from service.forecasting.served import FastTable
from service.tables import Schema


def _isin_select(table: FastTable, steps: list[int], series: list[tuple[str, ...]], names: list[str]) -> dict:
    mask = np.isin(table.steps, np.asarray(steps, dtype="int64"))
    wanted = [table.series_ids[s] for s in series]
    mask &= np.isin(table.series_codes, np.asarray(wanted, dtype="int64"))
    return {n: table.columns[n][mask] for n in names}


@pytest.mark.parametrize("shuffled", [True, False])
def test_series_selection_equals_isin_on_1000_series_panel(shuffled: bool) -> None:
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(1000)]
    periods = pd.period_range("2020-01", periods=6, freq="M")
    frame = pd.DataFrame({"id": np.repeat(ids, 6), "t": np.tile(periods, 1000), "y": rng.normal(size=6000)})
    if shuffled:  # rows not grouped by series: order must still be the table's
        frame = frame.sample(frac=1.0, random_state=1)
    schema = Schema(kind="panel", keys=("id",), time="t", targets=("y",), freq="M")
    table = FastTable(frame, schema, pd.Period("2019-12", freq="M"), [], [])
    assert (table._first_rows is None) is shuffled  # the published layout takes the direct path
    for _ in range(30):
        series = [(ids[i],) for i in rng.choice(1000, size=int(rng.integers(1, 50)), replace=False)]
        steps = sorted(rng.choice(np.arange(1, 7), size=int(rng.integers(1, 7)), replace=False).tolist())
        got = table.select(steps, series, ["id", "t", "y"])
        want = _isin_select(table, steps, series, ["id", "t", "y"])
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
