"""The predict API serves exactly what sktime computes on the same fitted object.

Every request form (horizon, fh, timestamps, series subsets, coverage, quantiles,
observations, exogenous) is compared column by column with a direct call of
``predict`` / ``predict_interval`` / ``predict_quantiles`` on the version loaded from the
registry. The expected tables are built here from sktime's outputs, without the
service's own conversion helpers, so a mistake there cannot hide itself.
"""

from __future__ import annotations

import json
import pickle
import shutil
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
from tests.conftest import make_settings, wait_ready

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


def copy_registry(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def predict(client: TestClient, name: str, body: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    r = client.post(f"/v1/models/{name}/predict", json=dict(body), **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    payload = strict_json(r.content)
    took_observations = "observations" in body
    assert set(payload) == {"model", "version", "cutoff", "freq", "forecast"} | (
        {"observations_mode"} if took_observations else set()
    )
    if took_observations:  # how the version took them, in the body and in a header
        assert payload["observations_mode"] in ("state", "refit")
        assert r.headers["x-observations-mode"] == payload["observations_mode"]
    else:
        assert "x-observations-mode" not in r.headers
    assert payload["model"] == name
    keys, time_col, _, _ = SCHEMAS[name]
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
    """sktime called directly, laid out as the documented wire table.

    sktime is asked for the contiguous horizon 1..max(steps) and the requested steps are
    picked from it: sktime 1.2's ThetaForecaster (deseasonalize=True) returns wrong
    values for a non-contiguous ``fh`` (e.g. fh=[1, 6, 12] puts another month's seasonal
    factor on step 6), so the contiguous call is the reference."""
    keys, time_col, targets, _ = SCHEMAS[name]
    wanted = sorted(set(steps))
    fh = np.arange(1, wanted[-1] + 1, dtype="int64")
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
    table = pd.DataFrame(columns)
    if len(wanted) == len(fh):
        return table
    times = wire_times(index.get_level_values(-1))
    chosen = set(wire_times(fh_times(index.get_level_values(-1), wanted)))
    return table[[t in chosen for t in times]].reset_index(drop=True)


def fh_times(times: pd.Index, steps: Sequence[int]) -> pd.Index:
    """The absolute times of relative ``steps`` (1 = the first forecast time in ``times``)."""
    first = times.min()
    return pd.Index([first + (s - 1) for s in steps])


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


def exog_wire(start: int, stop: int) -> dict[str, list[Any]]:
    """Future exogenous values for uschange, quarters start..stop inclusive."""
    quarters = list(range(start, stop + 1))
    rows = [
        {
            "quarter": q,
            "income": 0.5 + 0.1 * i,
            "production": -0.3 + 0.2 * i,
            "savings": 2.0 - 0.5 * i,
            "unemployment": 0.05 * i,
        }
        for i, q in enumerate(quarters)
    ]
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
    with TestClient(create_app(make_settings(served_path))) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def fitted(served_path: Path) -> Any:
    """v1 of a model as unpickled from the registry, one instance per model and module.

    Used for predict calls only; `_updated` works on an isolated copy."""
    loaded: dict[str, Any] = {}

    def load(name: str) -> Any:
        if name not in loaded:
            loaded[name] = Registry(served_path).load(name, 1).forecaster
        return loaded[name]

    return load


# tourism's recursive XGBoost costs ~0.5-1 s per step: its reference is computed once for
# 13 steps (recursive forecasts of the first k steps do not depend on later ones)
REFERENCE_HORIZON = {"tourism-monthly": 13}


@pytest.fixture(scope="module")
def reference(fitted: Any) -> Any:
    """sktime's answer for a request without exogenous data (memoised per module)."""
    memo: dict[tuple[Any, ...], pd.DataFrame] = {}

    def compute(
        name: str, steps: Sequence[int], coverage: Sequence[float] = (), quantiles: Sequence[float] = ()
    ) -> pd.DataFrame:
        horizon = max(max(steps), REFERENCE_HORIZON.get(name, 0))
        key = (name, horizon, tuple(coverage), tuple(quantiles))
        if key not in memo:
            memo[key] = sktime_table(fitted(name), name, range(1, horizon + 1), coverage, quantiles)
        full = memo[key]
        time_col = SCHEMAS[name][1]
        first = pd.Period(full[time_col].min(), freq=FREQS[name])
        chosen = {(first + (s - 1)).start_time.strftime("%Y-%m-%d") for s in steps}
        return full[full[time_col].isin(chosen)].reset_index(drop=True)

    return compute


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
    ("tourism-horizon-live", "tourism-monthly", {"horizon": 13}, list(range(1, 14)), [], [], None),
    ("tourism-fh", "tourism-monthly", {"fh": [3, 12]}, [3, 12], [], [], None),
    ("tourism-timestamps", "tourism-monthly", {"timestamps": ["2008-05-01"]}, [5], [], [], None),
    (
        "tourism-series",
        "tourism-monthly",
        {"series": ["T060", "T001", "T017"]},
        list(range(1, 13)),
        [],
        [],
        [[s] for s in T],
    ),
    (
        "tourism-series-objects",
        "tourism-monthly",
        {"series": [{"series": "T017"}, ["T001"]], "fh": [1, 12]},
        [1, 12],
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
    reference: Any,
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
    expected = reference(name, steps, coverage, quantiles)
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
    leaves = [
        ("Food preparation", "Hobs"),
        ("Food preparation", "Ovens"),
        ("Food preservation", "Freezers"),
        ("Food preservation", "Fridges"),
    ]
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


def _updated(forecaster: Any, y_new: Any, x_new: pd.DataFrame | None = None, *, refit: bool = False) -> Any:
    """``update(update_params=refit)`` on an isolated copy (the version's observations mode:
    ``state`` updates with fixed parameters, ``refit`` refits). A pickle round trip, not
    ``copy.deepcopy``: sktime keeps the per-node forecasters of vectorised/hierarchical
    models in a pandas DataFrame, and pandas' deep copy does not copy those objects, so
    updating a deepcopy moves the original's inner forecasters too."""
    private = pickle.loads(pickle.dumps(forecaster))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private.update(y_new, X=x_new, update_params=refit)
    return private


def test_observations_airline(api: TestClient, fitted: Any) -> None:
    wire = {"month": ["1961-01-01", "1961-02-01", "1961-03-01"], "passengers": [417.0, 391.0, 419.0]}
    body = {"observations": wire, "horizon": 4, "coverage": [0.8], "quantiles": [0.5]}
    payload = predict(api, "airline", body)
    assert payload["cutoff"] == "1961-03-01"
    assert payload["observations_mode"] == "refit"  # Theta ignores new actuals at fixed parameters
    y_new = pd.DataFrame(
        {"passengers": wire["passengers"]}, index=pd.period_range("1961-01", periods=3, freq="M", name="month")
    )
    expected = sktime_table(_updated(fitted("airline"), y_new, refit=True), "airline", [1, 2, 3, 4], [0.8], [0.5])
    assert_same_table(payload["forecast"], expected, "airline")
    assert payload["forecast"]["month"][0] == "1961-04-01"


def test_observations_airline_with_timestamps_and_fh(api: TestClient, fitted: Any) -> None:
    wire = {"month": ["1961-01-01"], "passengers": [430.0]}
    y_new = pd.DataFrame(
        {"passengers": wire["passengers"]}, index=pd.period_range("1961-01", periods=1, freq="M", name="month")
    )
    updated = _updated(fitted("airline"), y_new, refit=True)
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
    assert payload["observations_mode"] == "state"
    expected = sktime_table(_updated(forecaster, y_new), "tourism-monthly", [1, 2, 3])
    assert_same_table(payload["forecast"], expected, "tourism-monthly")
    subset = predict(api, "tourism-monthly", {"observations": wire, "fh": [3], "series": ["T017"]})
    expected_subset = only_series(expected, "tourism-monthly", [["T017"]])
    assert_same_table(subset["forecast"], expected_subset[expected_subset["month"] == "2008-05-01"], "tourism-monthly")


def test_observations_hierarchy(client: TestClient, registry_path: Path) -> None:
    """(A private app: an observations request must not, but might, move the served model.)"""
    wire, y_new = _hierarchy_observations()
    payload = predict(client, "sales-hierarchy", {"observations": wire, "horizon": 5})
    assert payload["cutoff"] == "2005-02-01"
    assert payload["observations_mode"] == "refit"
    fresh = Registry(registry_path).load("sales-hierarchy", 1).forecaster
    expected = sktime_table(_updated(fresh, y_new, refit=True), "sales-hierarchy", [1, 2, 3, 4, 5])
    assert_same_table(payload["forecast"], expected, "sales-hierarchy")
    assert payload["forecast"]["month"][0] == "2005-03-01"


def test_observations_var(api: TestClient, fitted: Any) -> None:
    wire = {"quarter": ["2009-10-01"], "infl": [1.2], "realint": [-0.4], "unemp": [10.0]}
    payload = predict(api, "macro-var", {"observations": wire, "horizon": 3, "coverage": [0.9]})
    assert payload["cutoff"] == "2009-10-01"
    assert payload["observations_mode"] == "refit"
    y_new = pd.DataFrame(
        {"infl": [1.2], "realint": [-0.4], "unemp": [10.0]},
        index=pd.period_range("2009Q4", periods=1, freq="Q-DEC", name="quarter"),
    )
    expected = sktime_table(_updated(fitted("macro-var"), y_new, refit=True), "macro-var", [1, 2, 3], [0.9])
    assert_same_table(payload["forecast"], expected, "macro-var")


def test_observations_with_exogenous(api: TestClient, fitted: Any) -> None:
    observed = exog_wire(187, 188)
    observations = {**observed, "consumption": [0.2, 0.9]}
    future = exog_wire(189, 191)
    body = {"observations": observations, "exogenous": future, "horizon": 3, "coverage": [0.8]}
    payload = predict(api, "uschange", body)
    assert payload["cutoff"] == 188
    assert payload["observations_mode"] == "state"
    y_new = pd.DataFrame({"consumption": [0.2, 0.9]}, index=pd.Index([187, 188]))
    x_new = exog_frame(observed, 187, 188)
    updated = _updated(fitted("uschange"), y_new, x_new)
    expected = sktime_table(updated, "uschange", [1, 2, 3], [0.8], [], exog_frame(future, 189, 191))
    assert_same_table(payload["forecast"], expected, "uschange")
    assert payload["forecast"]["quarter"] == [189, 190, 191]


def test_observations_never_mutate_the_served_model(client: TestClient, registry_path: Path) -> None:
    """A private copy is updated: later plain predicts (fast and live) are the original ones."""
    hierarchy_observations, _ = _hierarchy_observations()
    cases: dict[str, tuple[dict[str, list[Any]], str | int, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
        # name: (observations, new cutoff, extra body, fast-path body, live body)
        "airline": (
            {"month": ["1961-01-01", "1961-02-01"], "passengers": [500.0, 480.0]},
            "1961-02-01",
            {},
            {},
            {"horizon": 13},
        ),
        "macro-var": (
            {"quarter": ["2009-10-01"], "infl": [5.0], "realint": [1.0], "unemp": [11.0]},
            "2009-10-01",
            {},
            {"coverage": [0.8]},
            {"horizon": 9, "coverage": [0.5]},
        ),
        "sales-hierarchy": (hierarchy_observations, "2005-02-01", {}, {}, {"horizon": 13}),
        "uschange": (
            {**exog_wire(187, 187), "consumption": [3.0]},
            187,
            {"exogenous": exog_wire(188, 200)},
            {"horizon": 2, "exogenous": exog_wire(187, 188)},
            {"horizon": 13, "exogenous": exog_wire(187, 199)},
        ),
    }
    for name, (observations, new_cutoff, extra, fast_body, live_body) in cases.items():
        before_fast = predict(client, name, fast_body)
        before_live = predict(client, name, live_body)
        served = client.app.state.runtime.cache.get(name)
        cutoff_before = served.forecaster.cutoff.copy()
        updated = predict(client, name, {"observations": observations, "horizon": 3, **extra})
        assert updated["cutoff"] == new_cutoff, name
        assert updated["cutoff"] != before_fast["cutoff"], name
        after_fast = predict(client, name, fast_body)
        after_live = predict(client, name, live_body)
        assert after_fast == before_fast, f"{name}: a plain predict changed after an observations request"
        assert after_live == before_live, f"{name}: a live predict changed after an observations request"
        assert after_live["cutoff"] == CUTOFFS[name], name
        assert served.forecaster.cutoff.equals(cutoff_before), name
    # the served versions still answer like fresh loads of the registry's artifacts
    for name in ("airline", "sales-hierarchy"):
        fresh = Registry(registry_path).load(name, 1).forecaster
        expected = sktime_table(fresh, name, list(range(1, 14)))
        assert_same_table(predict(client, name, {"horizon": 13})["forecast"], expected, name)


# --------------------------------------------------------------------------- fast path
class _NoSktime:
    """Stands in for the fitted forecaster: any sktime call fails loudly."""

    def __getattr__(self, attribute: str) -> Any:
        raise AssertionError(f"sktime was called ({attribute}) on the fast path")


def test_fast_path_equals_live_sktime(api: TestClient, fitted: Any) -> None:
    """The precomputed table (fast path) gives what a live sktime call gives."""
    served = api.app.state.runtime.cache.get("airline")
    body = {"fh": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "coverage": [0.8, 0.95], "quantiles": [0.1, 0.5, 0.9]}
    original = served.forecaster
    served.forecaster = _NoSktime()
    try:
        payload = predict(api, "airline", body)  # answered without sktime: the precomputed table
        live_attempt = api.post("/v1/models/airline/predict", json={"horizon": 13})
    finally:
        served.forecaster = original
    assert live_attempt.status_code != 200, "a horizon beyond the precomputed one must need sktime"
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


@pytest.mark.parametrize("name", ["sales-hierarchy", "macro-var"])
def test_fast_path_equals_live_for_every_precomputed_model(api: TestClient, fitted: Any, name: str) -> None:
    """(tourism: covered by the tourism-default / tourism-horizon-live parity cases.)"""
    fast = predict(api, name, {})
    steps = list(range(1, 13 if name != "macro-var" else 9))
    assert_same_table(fast["forecast"], sktime_table(fitted(name), name, steps), name)
    live = predict(api, name, {"horizon": len(steps) + 1})
    assert_same_table(live["forecast"], sktime_table(fitted(name), name, [*steps, len(steps) + 1]), name)


SPARSE = {
    "airline": ({}, [2, 6, 14]),
    "macro-var": ({"coverage": [0.8]}, [3, 10]),
    "sales-hierarchy": ({}, [6, 14]),
    "uschange": ({"exogenous": exog_wire(187, 200)}, [3, 14]),
}


@pytest.mark.parametrize("name", sorted(SPARSE))
def test_sparse_fh_gives_the_same_steps_as_the_full_horizon(api: TestClient, name: str) -> None:
    """fh=[a, b] answers the rows a and b of horizon=b, whichever path (fast/live) serves it."""
    extra, fh = SPARSE[name]
    keys, time_col, _, _ = SCHEMAS[name]
    full = pd.DataFrame(predict(api, name, {"horizon": max(fh), **extra})["forecast"])
    sparse = pd.DataFrame(predict(api, name, {"fh": fh, **extra})["forecast"])
    times = sorted(full[time_col].unique())
    wanted = [times[s - 1] for s in fh]
    expected = full[full[time_col].isin(wanted)].reset_index(drop=True)
    order = [*keys, time_col]
    sparse = sparse.sort_values(order).reset_index(drop=True)
    expected = expected.sort_values(order).reset_index(drop=True)
    assert sparse[order].equals(expected[order])
    for column in sparse.columns:
        if column not in order:
            np.testing.assert_allclose(sparse[column], expected[column], rtol=1e-9, err_msg=f"{name}: {column}")


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
        "tourism-monthly": {"horizon": 12},
        "sales-hierarchy": {"horizon": 24},
        "macro-var": {"horizon": 40, "coverage": [0.99]},
        "uschange": {"horizon": 8, "coverage": [0.99], "quantiles": [0.01], "exogenous": exog_wire(187, 194)},
    }
    for name, body in bodies.items():
        r = api.post(f"/v1/models/{name}/predict", json=body)
        assert r.status_code == 200, r.text
        assert b"NaN" not in r.content and b"Infinity" not in r.content
        predict(api, name, body)


# --------------------------------------------------------------------------- hierarchy coherence
LINES = {"Food preparation": ["Hobs", "Ovens"], "Food preservation": ["Freezers", "Fridges"]}
ALL_NODES = {
    (TOTAL, TOTAL),
    *((line, TOTAL) for line in LINES),
    *((line, group) for line, groups in LINES.items() for group in groups),
}


def hierarchy_by_node(forecast: Mapping[str, list[Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """{(line, group): {month: sales}} from a sales-hierarchy forecast table."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    rows = zip(forecast["product_line"], forecast["product_group"], forecast["month"], forecast["sales"], strict=True)
    for line, group, month, value in rows:
        node = out.setdefault((line, group), {})
        assert month not in node, f"two rows for {line}/{group} at {month}"
        node[month] = value
    return out


def assert_coherent(forecast: Mapping[str, list[Any]]) -> int:
    """Every parent equals the sum of its children, at every time; returns the checks made."""
    nodes = hierarchy_by_node(forecast)
    checks = 0
    for (line, group), values in nodes.items():
        if group != TOTAL:
            continue
        children = [(other, TOTAL) for other in LINES] if line == TOTAL else [(line, child) for child in LINES[line]]
        for month, value in values.items():
            present = [nodes[c][month] for c in children if c in nodes and month in nodes[c]]
            if len(present) < len(children):
                continue  # a subset without every child: compared with the full answer instead
            assert value == pytest.approx(sum(present), rel=1e-9, abs=1e-9), f"{line}/{group} at {month}"
            checks += 1
    # the grand total is also the sum of the leaves
    if (TOTAL, TOTAL) in nodes:
        leaves = [(line, group) for line, groups in LINES.items() for group in groups]
        for month, value in nodes[(TOTAL, TOTAL)].items():
            if all(leaf in nodes and month in nodes[leaf] for leaf in leaves):
                assert value == pytest.approx(sum(nodes[leaf][month] for leaf in leaves), rel=1e-9, abs=1e-9)
                checks += 1
    return checks


@pytest.mark.parametrize(
    "body", [{}, {"horizon": 3}, {"horizon": 15}, {"fh": [2, 13]}, {"timestamps": ["2005-06-01"]}], ids=str
)
def test_hierarchy_is_coherent(api: TestClient, body: dict[str, Any]) -> None:
    forecast = predict(api, "sales-hierarchy", body)["forecast"]
    nodes = hierarchy_by_node(forecast)
    assert set(nodes) == ALL_NODES, "every node of the hierarchy, aggregates included, is returned"
    months = {m for values in nodes.values() for m in values}
    assert all(set(values) == months for values in nodes.values())
    # per month: the total, 2 line totals → 3 parent checks, plus total = sum of leaves
    assert assert_coherent(forecast) == 4 * len(months)


SUBSETS = [
    [["Food preparation", TOTAL], ["Food preparation", "Hobs"], ["Food preparation", "Ovens"]],
    [[TOTAL, TOTAL], ["Food preparation", TOTAL], ["Food preservation", TOTAL]],
    [[TOTAL, TOTAL], ["Food preservation", "Fridges"]],
    [{"product_line": "Food preservation", "product_group": "Freezers"}],
]


@pytest.mark.parametrize("subset", SUBSETS, ids=lambda s: str(len(s)))
@pytest.mark.parametrize("horizon", [4, 14])
def test_hierarchy_subset_rows_are_the_full_answers_rows(api: TestClient, subset: list[Any], horizon: int) -> None:
    full = hierarchy_by_node(predict(api, "sales-hierarchy", {"horizon": horizon})["forecast"])
    part_forecast = predict(api, "sales-hierarchy", {"horizon": horizon, "series": subset})["forecast"]
    part = hierarchy_by_node(part_forecast)
    wanted = {tuple(s.values()) if isinstance(s, dict) else tuple(s) for s in subset}
    assert set(part) == wanted
    for node, values in part.items():
        assert list(values) == list(full[node])
        for month, value in values.items():
            assert value == pytest.approx(full[node][month], rel=1e-12), f"{node} {month}"
    assert_coherent(part_forecast)


def test_hierarchy_with_observations_is_coherent(client: TestClient) -> None:
    wire, _ = _hierarchy_observations()
    forecast = predict(client, "sales-hierarchy", {"observations": wire, "horizon": 6})["forecast"]
    assert set(hierarchy_by_node(forecast)) == ALL_NODES
    assert assert_coherent(forecast) == 4 * 6
    subset = [["Food preparation", TOTAL], ["Food preparation", "Hobs"], ["Food preparation", "Ovens"]]
    part = predict(client, "sales-hierarchy", {"observations": wire, "horizon": 6, "series": subset})["forecast"]
    assert assert_coherent(part) == 6
