"""The predict API serves exactly what sktime computes on the same fitted object.

Every request form (horizon, fh, timestamps, series subsets, coverage, quantiles,
observations, exogenous) is compared column by column with a direct call of
``predict`` / ``predict_interval`` / ``predict_quantiles`` on the version loaded from the
registry. The expected tables are built here from sktime's outputs, without the
service's own conversion helpers, so a mistake there cannot hide itself.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.ipc
import pytest
from fastapi.testclient import TestClient
from sktime.transformations.hierarchical.aggregate import Aggregator

from service.app import create_app
from service.registry.store import Registry
from service.settings import Settings

TOTAL = "__total"
ARROW = "application/vnd.apache.arrow.stream"

# name -> (keys, time column, targets, exogenous), as declared in models/*/model.yaml
SCHEMAS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...], tuple[str, ...]]] = {
    "airline": ((), "month", ("passengers",), ()),
    "tourism-monthly": (("series",), "month", ("visitors",), ()),
    "sales-hierarchy": (("product_line", "product_group"), "month", ("sales",), ()),
    "macro-var": ((), "quarter", ("infl", "realint", "unemp"), ()),
    "uschange": ((), "quarter", ("consumption",), ("income", "production", "savings", "unemployment")),
}
CUTOFFS = {
    "airline": "1960-12-01",
    "tourism-monthly": "2007-12-01",
    "sales-hierarchy": "2004-12-01",
    "macro-var": "2009-07-01",
    "uschange": 186,
}
FREQS = {"airline": "M", "tourism-monthly": "M", "sales-hierarchy": "M", "macro-var": "Q-DEC", "uschange": None}
EXOG = SCHEMAS["uschange"][3]


# --------------------------------------------------------------------------- helpers
def _reject_constant(token: str) -> Any:
    raise AssertionError(f"the JSON response contains the non-standard constant {token}")


def strict_json(content: bytes) -> Any:
    """Parse like a strict client: NaN / Infinity in the bytes fail the test."""
    return json.loads(content, parse_constant=_reject_constant)


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/readyz').text}")


def copy_registry(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def predict(client: TestClient, name: str, body: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    r = client.post(f"/v1/models/{name}/predict", json=dict(body), **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    payload = strict_json(r.content)
    assert set(payload) == {"model", "version", "cutoff", "freq", "forecast"}
    assert payload["model"] == name
    keys, time_col, targets, _ = SCHEMAS[name]
    forecast = payload["forecast"]
    lengths = {len(v) for v in forecast.values()}
    assert len(lengths) == 1, f"columns differ in length: { {k: len(v) for k, v in forecast.items()} }"
    for column, values in forecast.items():
        if column in keys:
            assert all(isinstance(v, str) for v in values), column
        elif column == time_col:
            kind = int if FREQS[name] is None else str
            assert all(isinstance(v, kind) and not isinstance(v, bool) for v in values), (column, values[:3])
        else:  # numbers only: a forecast of a demo model has no missing values
            assert all(isinstance(v, float | int) and not isinstance(v, bool) for v in values), (column, values)
    return payload


def wire_times(index: pd.Index) -> list[Any]:
    """The documented wire form: ISO date of the period start, or the integer itself."""
    if isinstance(index, pd.PeriodIndex):
        return [p.start_time.strftime("%Y-%m-%d") for p in index]
    return [int(v) for v in index]


def pct(coverage: float) -> str:
    return f"{round(coverage * 100, 6):g}"


def sktime_table(
    forecaster: Any,
    name: str,
    steps: Sequence[int],
    coverage: Sequence[float] = (),
    quantiles: Sequence[float] = (),
    x: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """sktime called directly, laid out as the documented wire table."""
    keys, time_col, targets, _ = SCHEMAS[name]
    fh = np.asarray(sorted(set(steps)), dtype="int64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point = forecaster.predict(fh=fh, X=x)
        intervals = forecaster.predict_interval(fh=fh, X=x, coverage=list(coverage)) if coverage else None
        quants = forecaster.predict_quantiles(fh=fh, X=x, alpha=list(quantiles)) if quantiles else None
    if isinstance(point, pd.Series):
        point = point.to_frame(targets[0])
    index = point.index
    columns: dict[str, Any] = {}
    for level, key in enumerate(keys):
        columns[key] = [str(v) for v in index.get_level_values(level)]
    columns[time_col] = wire_times(index.get_level_values(-1))
    for target in targets:
        columns[target] = point[target].to_numpy(dtype=float)
    if intervals is not None:
        intervals = intervals.reindex(index)
        for target in targets:
            for c in coverage:
                columns[f"{target}_lower_{pct(c)}"] = intervals[(target, c, "lower")].to_numpy(dtype=float)
                columns[f"{target}_upper_{pct(c)}"] = intervals[(target, c, "upper")].to_numpy(dtype=float)
    if quants is not None:
        quants = quants.reindex(index)
        for target in targets:
            for q in quantiles:
                columns[f"{target}_q{q:g}"] = quants[(target, q)].to_numpy(dtype=float)
    return pd.DataFrame(columns)


def only_series(table: pd.DataFrame, name: str, series: Sequence[Sequence[str]]) -> pd.DataFrame:
    keys = list(SCHEMAS[name][0])
    wanted = {tuple(s) for s in series}
    mask = [tuple(row) in wanted for row in table[keys].itertuples(index=False)]
    return table[mask]


def assert_same_table(got: Mapping[str, list[Any]], expected: pd.DataFrame, name: str) -> None:
    keys, time_col, _, _ = SCHEMAS[name]
    assert list(got) == list(expected.columns), "columns (names and documented order) differ"
    frame = pd.DataFrame({k: list(v) for k, v in got.items()})
    order = [*keys, time_col]
    frame = frame.sort_values(order, kind="mergesort").reset_index(drop=True)
    expected = expected.sort_values(order, kind="mergesort").reset_index(drop=True)
    assert len(frame) == len(expected), f"{len(frame)} rows served, sktime gives {len(expected)}"
    for column in order:
        assert frame[column].tolist() == expected[column].tolist(), column
    for column in expected.columns:
        if column in order:
            continue
        np.testing.assert_allclose(
            frame[column].to_numpy(dtype=float),
            expected[column].to_numpy(dtype=float),
            rtol=1e-9,
            atol=1e-12,
            err_msg=f"{name}: column {column}",
        )


def exog_wire(start: int, stop: int, shuffle: bool = False) -> dict[str, list[Any]]:
    """Future exogenous values for uschange, quarters start..stop inclusive."""
    quarters = list(range(start, stop + 1))
    rows = [
        {"quarter": q, "income": 0.5 + 0.1 * i, "production": -0.3 + 0.2 * i, "savings": 2.0 - 0.5 * i, "unemployment": 0.05 * i}
        for i, q in enumerate(quarters)
    ]
    if shuffle:
        rows = rows[::-1][1:] + rows[-1:]  # any order but sorted
    return {c: [r[c] for r in rows] for c in ("quarter", *EXOG)}


def exog_frame(wire: Mapping[str, list[Any]], first: int, last: int) -> pd.DataFrame:
    """The rows of a wire exogenous table for quarters first..last, as sktime takes them."""
    frame = pd.DataFrame({c: wire[c] for c in ("quarter", *EXOG)}).set_index("quarter").sort_index()
    frame = frame.loc[first:last].astype(float)
    frame.index = pd.Index(frame.index.to_numpy(dtype="int64"))
    return frame


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def served_path(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module-private copy: the module's app never touches the session registry."""
    return copy_registry(trained_registry_path, tmp_path_factory.mktemp("parity") / "models")


@pytest.fixture(scope="module")
def api(served_path: Path) -> Iterator[TestClient]:
    """One app for the read-only tests of this module."""
    with TestClient(create_app(Settings(registry=served_path, poll_interval=0.2))) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def fitted(served_path: Path) -> Any:
    """A fresh unpickled forecaster of v1 each call (sktime's predict writes to it)."""

    def load(name: str) -> Any:
        return Registry(served_path).load(name, 1).forecaster

    return load


# --------------------------------------------------------------------------- parity cases
T = ["T001", "T017", "T060"]
FOOD_PREP = [["Food preparation", "Hobs"], ["Food preparation", "Ovens"], ["Food preparation", TOTAL]]

# (id, model, body, steps, coverage, quantiles, series subset)
CASES: list[tuple[str, str, dict[str, Any], list[int], list[float], list[float], list[list[str]] | None]] = [
    ("airline-default", "airline", {}, list(range(1, 13)), [], [], None),
    ("airline-horizon", "airline", {"horizon": 3}, [1, 2, 3], [], [], None),
    ("airline-horizon-live", "airline", {"horizon": 20}, list(range(1, 21)), [], [], None),
    ("airline-fh", "airline", {"fh": [12, 1, 6]}, [1, 6, 12], [], [], None),
    ("airline-fh-live", "airline", {"fh": [2, 15]}, [2, 15], [], [], None),
    ("airline-timestamps", "airline", {"timestamps": ["1961-12-01", "1961-03-01"]}, [3, 12], [], [], None),
    ("airline-timestamps-live", "airline", {"timestamps": ["1962-06-01"]}, [18], [], [], None),
    ("airline-coverage", "airline", {"coverage": [0.95, 0.8]}, list(range(1, 13)), [0.8, 0.95], [], None),
    ("airline-coverage-live", "airline", {"horizon": 4, "coverage": [0.5]}, [1, 2, 3, 4], [0.5], [], None),
    ("airline-quantiles", "airline", {"quantiles": [0.1, 0.5, 0.9]}, list(range(1, 13)), [], [0.1, 0.5, 0.9], None),
    ("airline-quantiles-live", "airline", {"fh": [1, 24], "quantiles": [0.25]}, [1, 24], [], [0.25], None),
    (
        "airline-both",
        "airline",
        {"fh": [1, 2, 14], "coverage": [0.8], "quantiles": [0.1, 0.9]},
        [1, 2, 14],
        [0.8],
        [0.1, 0.9],
        None,
    ),
    ("tourism-default", "tourism-monthly", {}, list(range(1, 13)), [], [], None),
    ("tourism-horizon", "tourism-monthly", {"horizon": 2}, [1, 2], [], [], None),
    ("tourism-horizon-live", "tourism-monthly", {"horizon": 14}, list(range(1, 15)), [], [], None),
    ("tourism-fh", "tourism-monthly", {"fh": [3, 12]}, [3, 12], [], [], None),
    ("tourism-timestamps", "tourism-monthly", {"timestamps": ["2008-05-01"]}, [5], [], [], None),
    ("tourism-series", "tourism-monthly", {"series": ["T060", "T001", "T017"]}, list(range(1, 13)), [], [], [[s] for s in T]),
    (
        "tourism-series-objects",
        "tourism-monthly",
        {"series": [{"series": "T017"}, ["T001"]], "fh": [1, 13]},
        [1, 13],
        [],
        [],
        [["T017"], ["T001"]],
    ),
    ("hierarchy-default", "sales-hierarchy", {}, list(range(1, 13)), [], [], None),
    ("hierarchy-horizon-live", "sales-hierarchy", {"horizon": 15}, list(range(1, 16)), [], [], None),
    ("hierarchy-fh", "sales-hierarchy", {"fh": [6, 1]}, [1, 6], [], [], None),
    ("hierarchy-timestamps", "sales-hierarchy", {"timestamps": ["2005-02-01", "2006-03-01"]}, [2, 15], [], [], None),
    ("hierarchy-series", "sales-hierarchy", {"series": FOOD_PREP, "horizon": 3}, [1, 2, 3], [], [], FOOD_PREP),
    (
        "hierarchy-series-total",
        "sales-hierarchy",
        {"series": [[TOTAL, TOTAL], {"product_line": "Food preservation", "product_group": "Fridges"}], "fh": [13]},
        [13],
        [],
        [],
        [[TOTAL, TOTAL], ["Food preservation", "Fridges"]],
    ),
    ("var-default", "macro-var", {}, list(range(1, 9)), [], [], None),
    ("var-horizon-live", "macro-var", {"horizon": 10}, list(range(1, 11)), [], [], None),
    ("var-fh", "macro-var", {"fh": [2, 8]}, [2, 8], [], [], None),
    ("var-timestamps", "macro-var", {"timestamps": ["2010-01-01", "2009-10-01"]}, [1, 2], [], [], None),
    ("var-coverage", "macro-var", {"coverage": [0.8, 0.95]}, list(range(1, 9)), [0.8, 0.95], [], None),
    ("var-coverage-live", "macro-var", {"horizon": 3, "coverage": [0.5, 0.99]}, [1, 2, 3], [0.5, 0.99], [], None),
]


@pytest.mark.parametrize(
    ("name", "body", "steps", "coverage", "quantiles", "series"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_served_numbers_equal_sktime(
    api: TestClient,
    fitted: Any,
    name: str,
    body: dict[str, Any],
    steps: list[int],
    coverage: list[float],
    quantiles: list[float],
    series: list[list[str]] | None,
) -> None:
    payload = predict(api, name, body)
    assert payload["version"] == 1
    assert payload["cutoff"] == CUTOFFS[name]
    assert payload["freq"] == FREQS[name]
    expected = sktime_table(fitted(name), name, steps, coverage, quantiles)
    if series is not None:
        expected = only_series(expected, name, series)
    assert_same_table(payload["forecast"], expected, name)


def test_documented_column_names_and_times(api: TestClient) -> None:
    """The names and time forms the spec gives as examples, spelled out."""
    forecast = predict(api, "airline", {"horizon": 2, "coverage": [0.8], "quantiles": [0.1]})["forecast"]
    assert list(forecast) == [
        "month",
        "passengers",
        "passengers_lower_80",
        "passengers_upper_80",
        "passengers_q0.1",
    ]
    assert forecast["month"] == ["1961-01-01", "1961-02-01"]
    quarters = predict(api, "macro-var", {"horizon": 2})["forecast"]["quarter"]
    assert quarters == ["2009-10-01", "2010-01-01"]


# --------------------------------------------------------------------------- exogenous (uschange)
USCHANGE_CASES = [
    ("horizon", {"horizon": 2}, exog_wire(187, 188), [1, 2], [], []),
    ("default-horizon", {}, exog_wire(187, 194), list(range(1, 9)), [], []),
    ("fh", {"fh": [3, 1]}, exog_wire(187, 189), [1, 3], [], []),
    ("timestamps", {"timestamps": [188, 190]}, exog_wire(187, 190), [2, 4], [], []),
    ("intervals", {"horizon": 3, "coverage": [0.8, 0.95]}, exog_wire(187, 189), [1, 2, 3], [0.8, 0.95], []),
    ("quantiles", {"horizon": 3, "quantiles": [0.1, 0.5, 0.9]}, exog_wire(187, 189), [1, 2, 3], [], [0.1, 0.5, 0.9]),
    ("shuffled-rows", {"horizon": 4}, exog_wire(187, 190, shuffle=True), [1, 2, 3, 4], [], []),
    ("extra-rows", {"horizon": 2, "coverage": [0.9]}, exog_wire(187, 192), [1, 2], [0.9], []),
]


@pytest.mark.parametrize(
    ("body", "exogenous", "steps", "coverage", "quantiles"),
    [pytest.param(*case[1:], id=case[0]) for case in USCHANGE_CASES],
)
def test_exogenous_forecasts_equal_sktime(
    api: TestClient,
    fitted: Any,
    body: dict[str, Any],
    exogenous: dict[str, list[Any]],
    steps: list[int],
    coverage: list[float],
    quantiles: list[float],
) -> None:
    payload = predict(api, "uschange", {**body, "exogenous": exogenous})
    assert payload["cutoff"] == 186
    assert payload["freq"] is None
    x = exog_frame(exogenous, 187, 186 + max(steps))
    expected = sktime_table(fitted("uschange"), "uschange", steps, coverage, quantiles, x)
    assert_same_table(payload["forecast"], expected, "uschange")
    assert payload["forecast"]["quarter"] == [186 + s for s in steps]


def test_exogenous_values_change_the_forecast(api: TestClient) -> None:
    """The exogenous table is really used (and used for the right rows)."""
    base = exog_wire(187, 188)
    moved = {**base, "income": [v + 5.0 for v in base["income"]]}
    a = predict(api, "uschange", {"horizon": 2, "exogenous": base})["forecast"]["consumption"]
    b = predict(api, "uschange", {"horizon": 2, "exogenous": moved})["forecast"]["consumption"]
    assert all(abs(x - y) > 1e-6 for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- observations
def _tourism_observations(forecaster: Any, months: int) -> tuple[dict[str, list[Any]], pd.DataFrame]:
    """New actuals for every series: last year's values for the same months, +10%."""
    y = forecaster._y
    rows = []
    for series in sorted(y.index.get_level_values(0).unique()):
        for m in range(months):
            when = pd.Period("2008-01", freq="M") + m
            rows.append((series, when, float(y.loc[(series, when - 12), "visitors"]) * 1.1))
    wire = {
        "series": [r[0] for r in rows],
        "month": [r[1].start_time.strftime("%Y-%m-%d") for r in rows],
        "visitors": [r[2] for r in rows],
    }
    index = pd.MultiIndex.from_arrays(
        [[r[0] for r in rows], pd.PeriodIndex([r[1] for r in rows], freq="M")], names=y.index.names
    )
    return wire, pd.DataFrame({"visitors": [r[2] for r in rows]}, index=index)


def _hierarchy_observations() -> tuple[dict[str, list[Any]], pd.DataFrame]:
    leaves = [("Food preparation", "Hobs"), ("Food preparation", "Ovens"), ("Food preservation", "Freezers"), ("Food preservation", "Fridges")]
    rows = []
    for i, (line, group) in enumerate(leaves):
        for m, month in enumerate(("2005-01", "2005-02")):
            rows.append((line, group, pd.Period(month, freq="M"), 120.0 + 17.0 * i + 9.5 * m))
    wire = {
        "product_line": [r[0] for r in rows],
        "product_group": [r[1] for r in rows],
        "month": [r[2].start_time.strftime("%Y-%m-%d") for r in rows],
        "sales": [r[3] for r in rows],
    }
    index = pd.MultiIndex.from_arrays(
        [[r[0] for r in rows], [r[1] for r in rows], pd.PeriodIndex([r[2] for r in rows], freq="M")],
        names=["product_line", "product_group", "month"],
    )
    leaves_y = pd.DataFrame({"sales": [r[3] for r in rows]}, index=index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y_new = Aggregator(flatten_single_levels=False).fit_transform(leaves_y)
    return wire, y_new


def _updated(forecaster: Any, y_new: Any, x_new: pd.DataFrame | None = None) -> Any:
    private = copy.deepcopy(forecaster)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private.update(y_new, X=x_new, update_params=False)
    return private


def test_observations_airline(api: TestClient, fitted: Any) -> None:
    wire = {"month": ["1961-01-01", "1961-02-01", "1961-03-01"], "passengers": [417.0, 391.0, 419.0]}
    body = {"observations": wire, "horizon": 4, "coverage": [0.8], "quantiles": [0.5]}
    payload = predict(api, "airline", body)
    assert payload["cutoff"] == "1961-03-01"
    y_new = pd.Series(wire["passengers"], index=pd.period_range("1961-01", periods=3, freq="M", name="month"))
    expected = sktime_table(_updated(fitted("airline"), y_new), "airline", [1, 2, 3, 4], [0.8], [0.5])
    assert_same_table(payload["forecast"], expected, "airline")
    assert payload["forecast"]["month"][0] == "1961-04-01"


def test_observations_airline_with_timestamps_and_fh(api: TestClient, fitted: Any) -> None:
    wire = {"month": ["1961-01-01"], "passengers": [430.0]}
    y_new = pd.Series(wire["passengers"], index=pd.period_range("1961-01", periods=1, freq="M", name="month"))
    updated = _updated(fitted("airline"), y_new)
    by_time = predict(api, "airline", {"observations": wire, "timestamps": ["1961-03-01", "1961-12-01"]})
    assert_same_table(by_time["forecast"], sktime_table(updated, "airline", [2, 11]), "airline")
    by_fh = predict(api, "airline", {"observations": wire, "fh": [2, 11]})
    assert by_fh["forecast"] == by_time["forecast"]
    assert by_fh["cutoff"] == by_time["cutoff"] == "1961-01-01"


def test_observations_tourism_every_series(api: TestClient, fitted: Any) -> None:
    forecaster = fitted("tourism-monthly")
    wire, y_new = _tourism_observations(forecaster, months=2)
    payload = predict(api, "tourism-monthly", {"observations": wire, "horizon": 3})
    assert payload["cutoff"] == "2008-02-01"
    expected = sktime_table(_updated(forecaster, y_new), "tourism-monthly", [1, 2, 3])
    assert_same_table(payload["forecast"], expected, "tourism-monthly")
    subset = predict(api, "tourism-monthly", {"observations": wire, "horizon": 3, "series": ["T017"]})
    assert_same_table(subset["forecast"], only_series(expected, "tourism-monthly", [["T017"]]), "tourism-monthly")


def test_observations_hierarchy(api: TestClient, fitted: Any) -> None:
    wire, y_new = _hierarchy_observations()
    payload = predict(api, "sales-hierarchy", {"observations": wire, "horizon": 5})
    assert payload["cutoff"] == "2005-02-01"
    expected = sktime_table(_updated(fitted("sales-hierarchy"), y_new), "sales-hierarchy", [1, 2, 3, 4, 5])
    assert_same_table(payload["forecast"], expected, "sales-hierarchy")


def test_observations_var(api: TestClient, fitted: Any) -> None:
    wire = {"quarter": ["2009-10-01"], "infl": [1.2], "realint": [-0.4], "unemp": [10.0]}
    payload = predict(api, "macro-var", {"observations": wire, "horizon": 3, "coverage": [0.9]})
    assert payload["cutoff"] == "2009-10-01"
    y_new = pd.DataFrame(
        {"infl": [1.2], "realint": [-0.4], "unemp": [10.0]},
        index=pd.period_range("2009Q4", periods=1, freq="Q-DEC", name="quarter"),
    )
    expected = sktime_table(_updated(fitted("macro-var"), y_new), "macro-var", [1, 2, 3], [0.9])
    assert_same_table(payload["forecast"], expected, "macro-var")


def test_observations_with_exogenous(api: TestClient, fitted: Any) -> None:
    observed = exog_wire(187, 188)
    observations = {**observed, "consumption": [0.2, 0.9]}
    future = exog_wire(189, 191)
    body = {"observations": observations, "exogenous": future, "horizon": 3, "coverage": [0.8]}
    payload = predict(api, "uschange", body)
    assert payload["cutoff"] == 188
    y_new = pd.Series([0.2, 0.9], index=pd.Index([187, 188]))
    x_new = exog_frame(observed, 187, 188)
    updated = _updated(fitted("uschange"), y_new, x_new)
    expected = sktime_table(updated, "uschange", [1, 2, 3], [0.8], [], exog_frame(future, 189, 191))
    assert_same_table(payload["forecast"], expected, "uschange")
    assert payload["forecast"]["quarter"] == [189, 190, 191]


def test_observations_never_mutate_the_served_model(client: TestClient, registry_path: Path) -> None:
    """A private copy is updated: later plain predicts (fast and live) are the original ones."""
    cases = {
        "airline": ({"month": ["1961-01-01", "1961-02-01"], "passengers": [500.0, 480.0]}, None),
        "macro-var": ({"quarter": ["2009-10-01"], "infl": [5.0], "realint": [1.0], "unemp": [11.0]}, None),
        "uschange": ({**exog_wire(187, 187), "consumption": [3.0]}, exog_wire(188, 200)),
    }
    for name, (observations, future) in cases.items():
        extra = {"exogenous": future} if future else {}
        live_body = {"horizon": 13, **extra} if future is None else {"horizon": 13, "exogenous": exog_wire(187, 199)}
        fast_body = {} if future is None else {"horizon": 2, "exogenous": exog_wire(187, 188)}
        before_fast = predict(client, name, fast_body)
        before_live = predict(client, name, live_body)
        served = client.app.state.runtime.cache.get(name)
        cutoff_before = served.forecaster.cutoff.copy()
        updated = predict(client, name, {"observations": observations, "horizon": 3, **extra})
        assert updated["cutoff"] != before_fast["cutoff"], name
        assert updated["cutoff"] == observations["quarter" if name != "airline" else "month"][-1]
        after_fast = predict(client, name, fast_body)
        after_live = predict(client, name, live_body)
        assert after_fast == before_fast, name
        assert after_live == before_live, name
        assert served.forecaster.cutoff.equals(cutoff_before), name
    # the registry's artifact still answers like a fresh load
    fresh = Registry(registry_path).load("airline", 1).forecaster
    expected = sktime_table(fresh, "airline", list(range(1, 14)))
    assert_same_table(predict(client, "airline", {"horizon": 13})["forecast"], expected, "airline")


# --------------------------------------------------------------------------- fast path
def test_fast_path_equals_live_sktime(api: TestClient, fitted: Any) -> None:
    """The precomputed table (fast path) gives what a live sktime call gives."""
    runtime = api.app.state.runtime
    body = {"horizon": 12, "coverage": [0.8, 0.95], "quantiles": [0.1, 0.5, 0.9]}
    payload = predict(api, "airline", body)
    # only fast-path answers are kept in the response cache: this one was precomputed
    assert any(key[0] == "airline" and key[2][0] == 12 for key in runtime.responses._items), (
        "the default-horizon request was not answered from the precomputed table"
    )
    live = sktime_table(fitted("airline"), "airline", list(range(1, 13)), [0.8, 0.95], [0.1, 0.5, 0.9])
    assert_same_table(payload["forecast"], live, "airline")
    # a longer horizon goes through sktime; its first 12 steps are the fast ones
    longer = predict(api, "airline", {"horizon": 13, "coverage": [0.8, 0.95], "quantiles": [0.1, 0.5, 0.9]})
    for column, values in payload["forecast"].items():
        head = longer["forecast"][column][:12]
        if column == "month":
            assert head == values
        else:
            np.testing.assert_allclose(head, values, rtol=1e-9, err_msg=column)


@pytest.mark.parametrize("name", ["tourism-monthly", "sales-hierarchy", "macro-var"])
def test_fast_path_equals_live_for_every_precomputed_model(api: TestClient, fitted: Any, name: str) -> None:
    fast = predict(api, name, {})
    steps = list(range(1, 13 if name != "macro-var" else 9))
    assert_same_table(fast["forecast"], sktime_table(fitted(name), name, steps), name)
    live = predict(api, name, {"horizon": len(steps) + 1})
    assert_same_table(live["forecast"], sktime_table(fitted(name), name, [*steps, len(steps) + 1]), name)


def test_repeated_request_is_byte_identical(api: TestClient) -> None:
    body = {"fh": [1, 5], "coverage": [0.8]}
    first = api.post("/v1/models/airline/predict", json=body)
    second = api.post("/v1/models/airline/predict", json=body)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert first.headers["x-model-version"] == second.headers["x-model-version"] == "1"
    assert first.headers["x-cutoff"] == second.headers["x-cutoff"] == "1960-12-01"


# --------------------------------------------------------------------------- wire formats
def _csv_table(content: bytes) -> pd.DataFrame:
    import io

    return pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False)


FORMAT_CASES = [
    ("airline", {"horizon": 3, "coverage": [0.8], "quantiles": [0.1, 0.9]}),
    ("airline", {"horizon": 14, "coverage": [0.5]}),
    ("tourism-monthly", {"horizon": 2, "series": ["T001", "T002"]}),
    ("sales-hierarchy", {"horizon": 2}),
    ("macro-var", {"fh": [1, 9], "coverage": [0.8]}),
    ("uschange", {"horizon": 2, "quantiles": [0.5], "exogenous": exog_wire(187, 188)}),
    ("airline", {"horizon": 2, "observations": {"month": ["1961-01-01"], "passengers": [420.0]}}),
]


@pytest.mark.parametrize(("name", "body"), FORMAT_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FORMAT_CASES)])
def test_csv_and_arrow_equal_json(api: TestClient, name: str, body: dict[str, Any]) -> None:
    keys, time_col, _, _ = SCHEMAS[name]
    as_json = predict(api, name, body)
    table = as_json["forecast"]
    expected = pd.DataFrame(table)

    r = api.post(f"/v1/models/{name}/predict", json=body, headers={"Accept": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["x-cutoff"] == str(as_json["cutoff"])
    csv = _csv_table(r.content)
    assert list(csv.columns) == list(table)
    assert len(csv) == len(expected)
    for column in table:
        if column in keys or column == time_col:
            assert csv[column].tolist() == [str(v) for v in table[column]], column
        else:
            np.testing.assert_allclose(csv[column].astype(float), expected[column].astype(float), rtol=1e-12)

    r = api.post(f"/v1/models/{name}/predict", json=body, headers={"Accept": ARROW})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(ARROW)
    arrow = pyarrow.ipc.open_stream(r.content).read_pandas()
    assert list(arrow.columns) == list(table)
    assert len(arrow) == len(expected)
    for column in table:
        if column in keys or column == time_col:
            assert arrow[column].tolist() == table[column], column
        else:
            np.testing.assert_allclose(arrow[column].to_numpy(dtype=float), expected[column].astype(float), rtol=0)


def test_json_has_no_nan_or_infinity(api: TestClient) -> None:
    """Strictly parsed, every answer of every model is standard JSON (predict() parses strictly)."""
    bodies = {
        "airline": {"horizon": 40, "coverage": [0.5, 0.99], "quantiles": [0.01, 0.99]},
        "tourism-monthly": {"horizon": 24},
        "sales-hierarchy": {"horizon": 24},
        "macro-var": {"horizon": 40, "coverage": [0.99]},
        "uschange": {"horizon": 8, "coverage": [0.99], "quantiles": [0.01], "exogenous": exog_wire(187, 194)},
    }
    for name, body in bodies.items():
        r = api.post(f"/v1/models/{name}/predict", json=body)
        assert r.status_code == 200, r.text
        assert b"NaN" not in r.content and b"Infinity" not in r.content
        predict(api, name, body)
