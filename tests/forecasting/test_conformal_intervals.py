"""``intervals: conformal``: a point-only reduction wrapped in sktime's ConformalIntervals
serves coverages and quantiles, with sktime's own numbers.

Every expectation is built from sktime directly: `ConformalIntervals` around
`make_reduction(...)`, fitted in this file on the same data, compared with what the service
fits (`fit_spec`), publishes and serves over HTTP. The backtest's empirical coverage is
checked against a count done here on sktime's own fold predictions, and against nominal
on stationary noise around a seasonal pattern. Spec errors are 422s naming ``intervals``.
"""

from __future__ import annotations

import itertools
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.tree import DecisionTreeRegressor
from sktime.forecasting.compose import make_reduction
from sktime.forecasting.conformal import ConformalIntervals
from sktime.split import ExpandingWindowSplitter
from xgboost import XGBRegressor

from service.app import create_app
from service.errors import SpecError
from service.forecasting.backtest import BacktestRequest, SplitterSpec, run_backtest
from service.forecasting.conformal import GlobalConformalIntervals, residual_counts, series_scales
from service.forecasting.publishing import PublishRequest, publish_version
from service.forecasting.shards import shardable
from service.forecasting.specs import (
    CONFORMAL_INITIAL_WINDOW,
    CONFORMAL_PANEL_WINDOWS,
    capability_warnings,
    conformal_history,
    parse_model_spec,
)
from service.forecasting.training import fit_spec
from service.registry.store import Registry
from tests.conftest import make_settings, wait_ready

HORIZON = 6
COVERAGE = [0.8, 0.95]
QUANTILES = [0.1, 0.5, 0.9]
LENGTH = 180
XGB = {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.3, "n_jobs": 1, "random_state": 0}
TREE = {"max_depth": 4, "random_state": 0}


def seasonal(length: int = LENGTH, seed: int = 0, level: float = 100.0) -> np.ndarray:
    """Stationary noise around a yearly pattern: level + 10 sin(2 pi t / 12) + N(0, 2)."""
    t = np.arange(length)
    return level + 10 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(seed).normal(0, 2, length)


def single_table(length: int = LENGTH) -> pd.DataFrame:
    return pd.DataFrame({"month": pd.period_range("2000-01", periods=length, freq="M"), "y": seasonal(length)})


def panel_table(series: int = 3, length: int = 120) -> pd.DataFrame:
    months = pd.period_range("2005-01", periods=length, freq="M")
    frames = [
        pd.DataFrame({"shop": f"s{i}", "month": months, "y": seasonal(length, seed=10 + i, level=50.0 * (i + 1))})
        for i in range(series)
    ]
    return pd.concat(frames, ignore_index=True)


def reduction_node(estimator: str, params: dict[str, Any], pooling: str = "local") -> dict[str, Any]:
    return {
        "class": "make_reduction",
        "params": {
            "estimator": {"class": estimator, "params": params},
            "strategy": "recursive",
            "window_length": 12,
            "pooling": pooling,
        },
    }


def spec_doc(forecaster: dict[str, Any], keys: list[str] | None = None, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "data": {"source": {"path": "data.csv"}, "keys": keys or [], "time": "month", "targets": ["y"]},
        "freq": "M",
        "horizon": HORIZON,
        "forecaster": forecaster,
        "intervals": "conformal",
        "coverage": COVERAGE,
        "quantiles": QUANTILES,
    }
    doc.update(changes)
    return doc


GLOBAL_SERIES = 20
GLOBAL_LAGS = {"lag": [1, 2, 12], "mean": [[1, 3], [1, 12]]}


def global_table(series: int = GLOBAL_SERIES, length: int = 120, seed: int = 7) -> pd.DataFrame:
    """Series of very different scales (levels 50 .. 1000), each a yearly pattern of 10% of
    its level plus Gaussian noise of 3% of its level: the errors of every series are the
    same distribution up to its scale."""
    rng = np.random.default_rng(seed)
    months = pd.period_range("2005-01", periods=length, freq="M")
    t = np.arange(length)
    frames = []
    for i in range(series):
        level = 50.0 * (i + 1)
        values = level * (1 + 0.1 * np.sin(2 * np.pi * (t + i) / 12)) + rng.normal(0, 0.03 * level, length)
        frames.append(pd.DataFrame({"shop": f"g{i:02d}", "month": months, "y": values}))
    return pd.concat(frames, ignore_index=True)


def global_node() -> dict[str, Any]:
    """A global recursive XGBoost reduction on the demo's window features (small)."""
    return {
        "class": "make_reduction",
        "params": {
            "estimator": {"class": "XGBRegressor", "params": XGB},
            "strategy": "recursive",
            "pooling": "global",
            "window_length": None,
            "transformers": [{"class": "WindowSummarizer", "params": {"lag_feature": GLOBAL_LAGS, "n_jobs": 1}}],
        },
    }


def global_spec(**changes: Any) -> dict[str, Any]:
    return spec_doc(global_node(), keys=["shop"], kind="panel", **changes)


def global_reduction() -> Any:
    """The same reduction, built here from sktime's and xgboost's classes."""
    from sktime.transformations.summarize import WindowSummarizer

    return make_reduction(
        XGBRegressor(**XGB),
        strategy="recursive",
        pooling="global",
        window_length=None,
        transformers=[WindowSummarizer(lag_feature=GLOBAL_LAGS, n_jobs=1)],
    )


def sktime_conformal(inner: Any, y: pd.DataFrame) -> ConformalIntervals:
    """What the service should have built and fitted, built here from sktime's classes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = ConformalIntervals(inner, method="conformal", initial_window=CONFORMAL_INITIAL_WINDOW)
        return wrapper.fit(y, fh=list(range(1, HORIZON + 1)))


def publish(registry: Registry, name: str, spec_raw: dict[str, Any], table: pd.DataFrame, parallel: bool) -> int:
    spec = parse_model_spec(spec_raw)
    result = fit_spec(spec, table, parallel=parallel)
    version = publish_version(
        registry,
        name,
        result.forecaster,
        PublishRequest(
            training=result.training,
            schema=result.schema,
            horizon=spec.horizon,
            coverage=spec.coverage,
            quantiles=spec.quantiles,
            spec=spec_raw,
            source=spec.data.source,
            fit_seconds=result.fit_seconds,
        ),
    )
    registry.set_alias(name, "production", version)
    return version


def served(client: TestClient, name: str, body: dict[str, Any]) -> pd.DataFrame:
    response = client.post(f"/v1/models/{name}/predict", json=body)
    assert response.status_code == 200, response.text
    return pd.DataFrame(response.json()["forecast"])


def pct(level: float) -> str:
    return f"{round(level * 100):g}"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def served_registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pd.DataFrame]]:
    """One registry: 'single' (conformal XGBoost reduction, one series), 'panel'
    (conformal per-series XGBoost reduction over three series, fitted in chunks on the
    local cores and published as shards of two series) and 'global' (one global XGBoost
    reduction over a 20-series panel in GlobalConformalIntervals, published whole in the
    same sharding registry: one model is not split)."""
    root = tmp_path_factory.mktemp("conformal") / "models"
    root.mkdir()
    registry = Registry(root, shard_series=2)
    tables = {"single": single_table(), "panel": panel_table(), "global": global_table()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        publish(registry, "single", spec_doc(reduction_node("XGBRegressor", XGB)), tables["single"], parallel=False)
        publish(registry, "global", global_spec(), tables["global"], parallel=True)
        publish(
            registry,
            "panel",
            spec_doc(reduction_node("XGBRegressor", XGB), keys=["shop"], kind="panel"),
            tables["panel"],
            parallel=True,
        )
    return root, tables


@pytest.fixture(scope="module")
def client(served_registry: tuple[Path, dict[str, pd.DataFrame]]) -> Iterator[TestClient]:
    root, _ = served_registry
    with TestClient(create_app(make_settings(root, shard_series=2))) as test_client:
        wait_ready(test_client)
        yield test_client


def direct_single(tables: dict[str, pd.DataFrame]) -> ConformalIntervals:
    y = tables["single"].set_index("month")[["y"]]
    inner = make_reduction(XGBRegressor(**XGB), strategy="recursive", window_length=12, pooling="local")
    return sktime_conformal(inner, y)


def direct_panel(tables: dict[str, pd.DataFrame]) -> ConformalIntervals:
    y = tables["panel"].set_index(["shop", "month"])[["y"]]
    inner = make_reduction(XGBRegressor(**XGB), strategy="recursive", window_length=12, pooling="local")
    return sktime_conformal(inner, y)


# --------------------------------------------------------------------------- (a) sktime's numbers
def test_served_conformal_intervals_equal_sktimes_conformal_intervals(
    client: TestClient, served_registry: tuple[Path, dict[str, pd.DataFrame]]
) -> None:
    theirs = direct_single(served_registry[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        points = theirs.predict()
        intervals = theirs.predict_interval(coverage=COVERAGE)
        quantiles = theirs.predict_quantiles(alpha=QUANTILES)
    for body in ({"coverage": COVERAGE, "quantiles": QUANTILES}, {"horizon": HORIZON + 3, "coverage": COVERAGE}):
        ours = served(client, "single", body)  # precomputed fast path, then a live horizon beyond it
        steps = len(ours)
        intervals_live, points_live = intervals, points
        if steps > HORIZON:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                points_live = theirs.predict(fh=list(range(1, steps + 1)))
                intervals_live = theirs.predict_interval(fh=list(range(1, steps + 1)), coverage=COVERAGE)
        np.testing.assert_allclose(ours["y"], points_live["y"].to_numpy(dtype=float), rtol=1e-9)
        for level in COVERAGE:
            for side in ("lower", "upper"):
                expected = intervals_live[("y", level, side)].to_numpy(dtype=float)
                np.testing.assert_allclose(ours[f"y_{side}_{pct(level)}"], expected, rtol=1e-9)
        if "quantiles" in body:
            for q in QUANTILES:
                np.testing.assert_allclose(ours[f"y_q{q}"], quantiles[("y", q)].to_numpy(dtype=float), rtol=1e-9)
    manifest = Registry(served_registry[0]).read_manifest("single", 1)
    assert manifest["capabilities"]["pred_int"]["available"] and manifest["capabilities"]["quantiles"]["available"]
    assert manifest["precomputed"]["coverage"] == COVERAGE


def test_a_per_series_conformal_panel_is_chunk_fitted_sharded_and_serves_sktimes_numbers(
    client: TestClient, served_registry: tuple[Path, dict[str, pd.DataFrame]]
) -> None:
    """sktime fits ConformalIntervals per series: the chunked fit assembles the same
    per-series wrappers, the version is sharded, and any series is served with the numbers
    of sktime's own vectorised fit on the whole panel."""
    root, tables = served_registry
    manifest = Registry(root).read_manifest("panel", 1)
    assert manifest["shards"]["count"] == 2
    theirs = direct_panel(tables)
    assert shardable(theirs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        intervals = theirs.predict_interval(coverage=COVERAGE)
    for series in (["s1"], ["s0", "s2"]):
        ours = served(client, "panel", {"series": [[s] for s in series], "coverage": COVERAGE})
        for s in series:
            mine = ours[ours["shop"] == s]
            for level in COVERAGE:
                for side in ("lower", "upper"):
                    expected = intervals.loc[s][("y", level, side)].to_numpy(dtype=float)
                    np.testing.assert_allclose(mine[f"y_{side}_{pct(level)}"], expected, rtol=1e-9)
    # new actuals for one series: sktime's update (update_params=False) of that series' own fit
    new = {"shop": ["s1"], "month": ["2015-01"], "y": [80.0]}
    response = client.post(
        "/v1/models/panel/predict", json={"series": [["s1"]], "coverage": [0.8], "observations": new}
    )
    assert response.status_code == 200, response.text
    assert response.json()["observations_mode"] == "state"
    ours = pd.DataFrame(response.json()["forecast"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_s1 = direct_single_series(tables, "s1")
        theirs_s1.update(
            pd.DataFrame({"y": [80.0]}, index=pd.PeriodIndex(["2015-01"], freq="M", name="month")), update_params=False
        )
        expected = theirs_s1.predict_interval(coverage=[0.8])
    for side in ("lower", "upper"):
        np.testing.assert_allclose(ours[f"y_{side}_80"], expected[("y", 0.8, side)].to_numpy(dtype=float), rtol=1e-9)


def direct_single_series(tables: dict[str, pd.DataFrame], series: str) -> ConformalIntervals:
    y = tables["panel"].set_index(["shop", "month"])[["y"]].loc[series]
    inner = make_reduction(XGBRegressor(**XGB), strategy="recursive", window_length=12, pooling="local")
    return sktime_conformal(inner, y)


# --------------------------------------------------------------------------- (c) nesting, no crossing
@pytest.mark.parametrize("name", ["single", "panel", "global"])
def test_intervals_nest_and_quantiles_do_not_cross(client: TestClient, name: str) -> None:
    levels = [0.5, 0.8, 0.9, 0.95]
    grid = [0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975]
    ours = served(client, name, {"coverage": levels, "quantiles": grid})
    for narrow, wide in itertools.pairwise(levels):
        assert (ours[f"y_lower_{pct(wide)}"] <= ours[f"y_lower_{pct(narrow)}"]).all()
        assert (ours[f"y_upper_{pct(narrow)}"] <= ours[f"y_upper_{pct(wide)}"]).all()
    assert (ours["y_lower_50"] <= ours["y"]).all() and (ours["y"] <= ours["y_upper_50"]).all()
    assert (ours["y_upper_95"] - ours["y_lower_95"] > 0).all()  # calibrated: never zero-width
    values = np.column_stack([ours[f"y_q{q}"].to_numpy(dtype=float) for q in grid])
    assert (np.diff(values, axis=1) >= 0).all()
    # sktime's contract: the 80% interval's bounds are the 0.1 and 0.9 quantiles
    np.testing.assert_allclose(ours["y_q0.1"], ours["y_lower_80"], rtol=1e-12)
    np.testing.assert_allclose(ours["y_q0.9"], ours["y_upper_80"], rtol=1e-12)


# --------------------------------------------------------------------------- (b) backtest coverage
def test_backtest_reports_empirical_coverage_equal_to_a_direct_count_and_near_nominal() -> None:
    """Stationary noise around a seasonal pattern, 180 months: a conformal tree reduction's
    intervals cover about their nominal share of the test points (within 0.1), and the
    reported fractions are the points inside sktime's own fold intervals, counted here."""
    table = single_table()
    spec = parse_model_spec(spec_doc(reduction_node("DecisionTreeRegressor", TREE)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = fit_spec(spec, table)
    request = BacktestRequest(
        splitter=SplitterSpec("expanding", horizon=HORIZON, initial_window=120, step=3),
        metrics=("MAE",),
        coverage=tuple(COVERAGE),
    )
    result, _ = run_backtest(fitted.forecaster, fitted.y, None, request, fitted.schema)
    reported = {level["coverage"]: level for level in result["interval_coverage"]}
    assert set(reported) == set(COVERAGE)

    # the same folds by hand: sktime's ConformalIntervals refitted on each training window
    y = table.set_index("month")[["y"]]
    splitter = ExpandingWindowSplitter(fh=list(range(1, HORIZON + 1)), initial_window=120, step_length=3)
    inside: dict[float, list[np.ndarray]] = {level: [] for level in COVERAGE}
    for train, test in splitter.split(y):
        inner = make_reduction(DecisionTreeRegressor(**TREE), strategy="recursive", window_length=12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapper = ConformalIntervals(inner, method="conformal", initial_window=CONFORMAL_INITIAL_WINDOW)
            wrapper.fit(y.iloc[train], fh=list(range(1, HORIZON + 1)))
            intervals = wrapper.predict_interval(coverage=COVERAGE)
        actual = y.iloc[test]["y"].to_numpy()
        for level in COVERAGE:
            lower = intervals[("y", level, "lower")].to_numpy(dtype=float)
            upper = intervals[("y", level, "upper")].to_numpy(dtype=float)
            inside[level].append((actual >= lower) & (actual <= upper))
    folds = len(inside[COVERAGE[0]])
    assert result["n_folds"] == folds >= 15
    for level in COVERAGE:
        hits = np.concatenate(inside[level])
        mine = reported[level]
        assert mine["nominal"] == level
        assert (mine["inside"], mine["points"]) == (int(hits.sum()), hits.size)
        assert mine["empirical"] == pytest.approx(hits.mean(), abs=1e-12)
        assert mine["by_fold"] == pytest.approx([f.mean() for f in inside[level]], abs=1e-12)
        assert mine["by_step"] == pytest.approx(np.vstack(inside[level]).mean(axis=0).tolist(), abs=1e-12)
        assert abs(mine["empirical"] - level) <= 0.1, (level, mine["empirical"])
        fold_levels = [f["interval_coverage"] for f in result["folds"]]
        assert [next(c["empirical"] for c in f if c["coverage"] == level) for f in fold_levels] == mine["by_fold"]
    print({level: round(reported[level]["empirical"], 3) for level in COVERAGE}, "points", hits.size)


# --------------------------------------------------------------------------- spec checks
def test_a_conformal_reduction_asking_for_coverage_is_accepted_without_warnings() -> None:
    native = parse_model_spec({**spec_doc(reduction_node("XGBRegressor", XGB)), "intervals": "native"})
    assert any("capability:pred_int" in w for w in capability_warnings(native))
    conformal = parse_model_spec(spec_doc(reduction_node("XGBRegressor", XGB)))
    assert capability_warnings(conformal) == []
    built = conformal.build_forecaster()
    assert type(built).__name__ == "ConformalIntervals" and built.get_tag("capability:pred_int")
    assert (built.method, built.initial_window, built.sample_frac) == ("conformal", CONFORMAL_INITIAL_WINDOW, None)
    assert built.get_config()["remember_data"] is True
    assert (
        parse_model_spec(
            {k: v for k, v in spec_doc({"class": "ThetaForecaster"}).items() if k != "intervals"}
        ).intervals
        == "native"
    )


def test_conformal_history_leaves_every_step_its_residuals() -> None:
    """The shortest history `conformal_history` allows gives sktime's residual matrix
    CONFORMAL_MIN_RESIDUALS residuals at the last step of the horizon."""
    from service.forecasting.specs import CONFORMAL_MIN_RESIDUALS

    n = conformal_history(HORIZON)
    y = pd.DataFrame({"y": seasonal(n)}, index=pd.period_range("2000-01", periods=n, freq="M"))
    inner = make_reduction(DecisionTreeRegressor(**TREE), strategy="recursive", window_length=12)
    fitted = sktime_conformal(inner, y)
    matrix = fitted.residuals_matrix_.to_numpy(dtype=float)
    at_last_step = np.diagonal(matrix, offset=HORIZON)
    assert np.isfinite(at_last_step).sum() == CONFORMAL_MIN_RESIDUALS
    short = parse_model_spec(spec_doc(reduction_node("DecisionTreeRegressor", TREE)))
    with pytest.raises(SpecError, match="intervals: conformal") as raised:
        fit_spec(short, single_table(n - 1))
    assert raised.value.extra["field"] == "intervals"
    assert raised.value.extra["required_history"] == n


# --------------------------------------------------------------------------- (d) 422 over HTTP
@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    root = tmp_path / "models"
    root.mkdir()
    with TestClient(create_app(make_settings(root))) as test_client:
        wait_ready(test_client)
        months = pd.period_range("2010-01", periods=40, freq="M").strftime("%Y-%m")
        csv = pd.DataFrame({"month": months, "y": seasonal(40)}).to_csv(index=False).encode()
        r = test_client.put(
            "/v1/datasets/short?time=month&targets=y&freq=M", content=csv, headers={"content-type": "text/csv"}
        )
        assert r.status_code == 200, r.text
        yield test_client


def problem(response: Any, status: int, field: str, *mentions: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body.get("field") == field, body
    for word in mentions:
        assert word in body["detail"], body
    return body


@pytest.mark.parametrize(
    ("changes", "mentions"),
    [
        (
            {
                "forecaster": reduction_node("XGBRegressor", XGB, pooling="global"),
                "kind": "hierarchical",
                "data": {"source": {"path": "data.csv"}, "keys": ["region", "shop"], "time": "month", "targets": ["y"]},
            },
            ("pooling: global", "hierarchy"),
        ),
        (
            {
                "forecaster": {"class": "VAR"},
                "data": {"source": {"path": "data.csv"}, "time": "month", "targets": ["a", "b"]},
                "coverage": [0.8],
            },
            ("VAR", "one target at a time"),
        ),
        (
            {
                "data": {"source": {"path": "data.csv"}, "keys": ["shop"], "time": "month", "targets": ["y"]},
                "forecaster": {"class": "ThetaForecaster", "params": {"sp": 12}},
                "engine": "statsforecast",
            },
            ("engine",),
        ),
        ({"data": {"source": {"dataset": "short"}}}, ("at least", "has 40")),
    ],
    ids=["global-reduction-on-a-hierarchy", "multivariate", "statsforecast-engine", "too-short"],
)
def test_conformal_where_it_cannot_wrap_is_a_422_naming_intervals(
    api: TestClient, changes: dict[str, Any], mentions: tuple[str, ...]
) -> None:
    spec = {**spec_doc(reduction_node("XGBRegressor", XGB)), **changes}
    problem(api.put("/v1/models/conformal", json=spec), 422, "intervals", "intervals: conformal", *mentions)
    assert api.get("/v1/models/conformal").status_code == 404  # nothing stored


def test_an_unknown_intervals_value_is_a_422(api: TestClient) -> None:
    r = api.put("/v1/models/conformal", json=spec_doc({"class": "ThetaForecaster"}, intervals="bootstrap"))
    assert r.status_code == 422 and "intervals" in r.text and "conformal" in r.text


def test_a_conformal_reduction_spec_is_stored_without_capability_warnings(api: TestClient) -> None:
    months = pd.period_range("2000-01", periods=LENGTH, freq="M").strftime("%Y-%m")
    csv = pd.DataFrame({"month": months, "y": seasonal()}).to_csv(index=False).encode()
    assert (
        api.put(
            "/v1/datasets/long?time=month&targets=y&freq=M", content=csv, headers={"content-type": "text/csv"}
        ).status_code
        == 200
    )
    spec = spec_doc(reduction_node("XGBRegressor", XGB), data={"source": {"dataset": "long"}})
    r = api.put("/v1/models/conformal", json=spec)
    assert r.status_code == 201, r.text
    assert r.json()["check"]["warnings"] == []
    native = api.put("/v1/models/native", json={**spec, "intervals": "native"})
    assert native.status_code == 201 and any("intervals: conformal" in w for w in native.json()["check"]["warnings"])


# --------------------------------------------------------------------------- a global reduction on a panel
def by_hand_global_intervals(y: pd.DataFrame, coverage: list[float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The documented method, computed here with sktime directly: the reduction fitted on
    the whole panel up to 3 cutoffs (T - H, T - H - 3, T - H - 6), each series' residuals
    divided by its mean absolute 12-month difference up to the cutoff, pooled per step; step
    h, coverage c: point +/- the ceil((m + 1) c)-th smallest |scaled residual| x the series'
    scale on all data. Returns (point, intervals) of sktime's final fit on all data."""
    fh = list(range(1, HORIZON + 1))
    times = y.index.get_level_values(-1)
    grid = times.unique().sort_values()

    def scales(frame: pd.DataFrame) -> pd.Series:
        diffs = frame["y"].groupby(level=0).diff(12).abs()
        return diffs.groupby(level=0).mean()

    pooled: dict[int, list[float]] = {h: [] for h in fh}
    for k in range(CONFORMAL_PANEL_WINDOWS):
        cutoff = grid[len(grid) - 1 - HORIZON - 3 * k]
        train = y[times <= cutoff]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predicted = global_reduction().fit(train, fh=fh).predict()
        scale = scales(train)
        for (series, when), value in predicted["y"].items():
            step = (when - cutoff).n
            pooled[step].append(abs(y.loc[(series, when), "y"] - value) / scale[series])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point = global_reduction().fit(y, fh=fh).predict()
    full = scales(y)
    rows = []
    for (series, when), value in point["y"].items():
        step = (when - grid[-1]).n
        ranked = np.sort(pooled[step])
        row = {"shop": series, "month": when, "y": value}
        for c in coverage:
            width = ranked[min(int(np.ceil((len(ranked) + 1) * c)), len(ranked)) - 1] * full[series]
            row[f"y_lower_{pct(c)}"], row[f"y_upper_{pct(c)}"] = value - width, value + width
        rows.append(row)
    return point, pd.DataFrame(rows)


def test_a_global_reduction_on_a_panel_gets_whole_panel_conformal_intervals() -> None:
    """``intervals: conformal`` on a global reduction over a panel is accepted without
    warnings and builds GlobalConformalIntervals around the spec's reduction; per-series
    reductions keep sktime's ConformalIntervals."""
    spec = parse_model_spec(global_spec())
    assert capability_warnings(spec) == []
    built = spec.build_forecaster()
    assert type(built) is GlobalConformalIntervals and built.get_tag("capability:pred_int")
    assert built.windows == CONFORMAL_PANEL_WINDOWS
    assert type(built.forecaster).__name__ == "RecursiveTabularRegressionForecaster"
    assert built.forecaster.pooling == "global"
    local = parse_model_spec(spec_doc(reduction_node("XGBRegressor", XGB), keys=["shop"], kind="panel"))
    assert type(local.build_forecaster()) is ConformalIntervals


def test_served_global_intervals_are_the_documented_calibration_of_sktimes_reduction(
    client: TestClient, served_registry: tuple[Path, dict[str, pd.DataFrame]]
) -> None:
    """Over HTTP: the point forecast is sktime's reduction fitted on the whole panel, the
    intervals are the by-hand calibration (sktime fits on 3 windows, scaled residuals
    pooled over the 20 series), lower < point < upper; the version is one whole artifact."""
    root, tables = served_registry
    manifest = Registry(root).read_manifest("global", 1)
    assert "shards" not in manifest and manifest["artifact"]["format"] == "pickle"
    assert manifest["capabilities"]["pred_int"]["available"] and manifest["capabilities"]["quantiles"]["available"]
    assert manifest["precomputed"]["coverage"] == COVERAGE and manifest["precomputed"]["quantiles"] == QUANTILES
    assert manifest["forecaster"]["class"].endswith("GlobalConformalIntervals")
    y = tables["global"].set_index(["shop", "month"])[["y"]]
    _, expected = by_hand_global_intervals(y, COVERAGE)
    ours = served(client, "global", {"coverage": COVERAGE, "quantiles": QUANTILES})
    assert len(ours) == GLOBAL_SERIES * HORIZON
    expected["month"] = [p.start_time.strftime("%Y-%m-%d") for p in expected["month"]]
    merged = ours.merge(expected, on=["shop", "month"], suffixes=("", "_expected"))
    assert len(merged) == len(ours)
    for column in ["y", *(f"y_{side}_{pct(c)}" for c in COVERAGE for side in ("lower", "upper"))]:
        np.testing.assert_allclose(merged[column], merged[f"{column}_expected"], rtol=1e-6)
    assert (ours["y_lower_80"] < ours["y"]).all() and (ours["y"] < ours["y_upper_80"]).all()
    np.testing.assert_allclose(ours["y_q0.5"], ours["y"], rtol=1e-12)
    # a larger series gets proportionally wider intervals: same distribution up to its scale
    width = (ours["y_upper_95"] - ours["y_lower_95"]).groupby(ours["shop"]).mean()
    assert width["g19"] > 5 * width["g00"]


def test_global_intervals_beyond_the_calibrated_horizon_are_a_422_points_are_served(client: TestClient) -> None:
    far = client.post("/v1/models/global/predict", json={"horizon": HORIZON + 2, "coverage": [0.8]})
    assert far.status_code == 422, far.text
    assert f"steps 1-{HORIZON}" in far.json()["detail"]
    assert len(served(client, "global", {"horizon": HORIZON + 2})) == GLOBAL_SERIES * (HORIZON + 2)


def test_global_intervals_move_with_new_actuals_at_fixed_widths(client: TestClient) -> None:
    """New actuals (observations, mode state): the point forecast moves, each series keeps
    its scale, so the half-width at step h is the one served before at step h."""
    before = served(client, "global", {"series": [["g03"]], "coverage": [0.8]})
    new = {"shop": ["g03"], "month": ["2015-01-01"], "y": [300.0]}
    response = client.post(
        "/v1/models/global/predict", json={"series": [["g03"]], "coverage": [0.8], "observations": new}
    )
    assert response.status_code == 200, response.text
    assert response.json()["observations_mode"] == "state"
    after = pd.DataFrame(response.json()["forecast"])
    assert not np.allclose(after["y"][: HORIZON - 1], before["y"][1:])
    half = (after["y_upper_80"] - after["y_lower_80"]).to_numpy() / 2
    np.testing.assert_allclose(half, ((before["y_upper_80"] - before["y_lower_80"]) / 2).to_numpy(), rtol=1e-9)


def test_global_intervals_cover_their_nominal_share_in_a_backtest() -> None:
    """Six expanding folds of 6 months (cutoffs after 84, 90, ..., 114 months) over 20
    series of different scales, 720 test points per level: the fitted version's forecaster
    refitted on each fold's training window covers within 0.1 of nominal. (The service's
    backtests do not score a panel's intervals: sktime 1.2's evaluate cannot.)"""
    table = global_table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = fit_spec(parse_model_spec(global_spec()), table)
    y = fitted.y
    times = y.index.get_level_values(-1)
    grid = times.unique().sort_values()
    inside: dict[float, list[np.ndarray]] = {level: [] for level in COVERAGE}
    for cutoff in grid[83 : len(grid) - HORIZON : 6]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = fitted.forecaster.clone().fit(y[times <= cutoff], fh=list(range(1, HORIZON + 1)))
            intervals = model.predict_interval(coverage=COVERAGE)
        actual = y["y"].reindex(intervals.index).to_numpy()
        for level in COVERAGE:
            lower = intervals[("y", level, "lower")].to_numpy(dtype=float)
            upper = intervals[("y", level, "upper")].to_numpy(dtype=float)
            inside[level].append((actual >= lower) & (actual <= upper))
    empirical = {}
    for level in COVERAGE:
        hits = np.concatenate(inside[level])
        assert hits.size == 6 * GLOBAL_SERIES * HORIZON
        empirical[level] = float(hits.mean())
        assert abs(empirical[level] - level) <= 0.1, (level, empirical[level])
    print(empirical)


def test_global_conformal_intervals_are_deterministic_and_pickle() -> None:
    y = global_table(series=6, length=72).set_index(["shop", "month"])[["y"]]
    fh = list(range(1, HORIZON + 1))

    def fitted() -> GlobalConformalIntervals:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return GlobalConformalIntervals(global_reduction()).fit(y, fh=fh)

    first, second = fitted(), fitted()
    copy = pickle.loads(pickle.dumps(first))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        intervals = [f.predict_interval(coverage=COVERAGE) for f in (first, second, copy)]
        quantiles = [f.predict_quantiles(alpha=QUANTILES) for f in (first, second, copy)]
    for other in intervals[1:]:
        pd.testing.assert_frame_equal(intervals[0], other, check_exact=True)
    for other in quantiles[1:]:
        pd.testing.assert_frame_equal(quantiles[0], other, check_exact=True)
    assert list(intervals[0].columns) == [("y", c, side) for c in COVERAGE for side in ("lower", "upper")]
    assert first.sp_ == 12 and sorted(first.abs_scaled_) == fh
    assert all(len(first.abs_scaled_[h]) == CONFORMAL_PANEL_WINDOWS * 6 for h in fh)


def test_a_single_series_is_delegated_to_sktimes_conformal_intervals() -> None:
    """A global reduction on one series: GlobalConformalIntervals hands it whole to sktime's
    ConformalIntervals with the service's settings and serves its numbers."""
    y = single_table(64).set_index("month")[["y"]]
    tree = make_reduction(DecisionTreeRegressor(**TREE), strategy="recursive", window_length=12, pooling="global")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = GlobalConformalIntervals(tree).fit(y, fh=list(range(1, HORIZON + 1)))
        mine = ours.predict_interval(coverage=COVERAGE)
        inner = ours.single_
        assert type(inner) is ConformalIntervals
        assert (inner.method, inner.initial_window, inner.sample_frac) == ("conformal", CONFORMAL_INITIAL_WINDOW, None)
        expected = inner.predict_interval(coverage=COVERAGE)
        quantiles = ours.predict_quantiles(alpha=QUANTILES)
    np.testing.assert_allclose(mine.to_numpy(dtype=float), expected.to_numpy(dtype=float), rtol=1e-12)
    assert quantiles.shape == (HORIZON, len(QUANTILES))


def test_scales_are_robust_to_constant_zero_and_short_series() -> None:
    index = pd.MultiIndex.from_tuples(
        [("a", t) for t in range(30)]
        + [("b", t) for t in range(30)]
        + [("c", t) for t in range(30)]
        + [("d", 0)]
        + [("d", 1)]
    )
    values = [*np.arange(30.0), *([5.0] * 30), *([0.0] * 30), 2.0, 4.0]
    scales = series_scales(pd.DataFrame({"y": values}, index=index), sp=12)
    assert scales.to_dict() == {"a": 12.0, "b": 5.0, "c": 1.0, "d": 2.0}


def test_a_panel_too_small_to_calibrate_is_a_422_naming_intervals() -> None:
    """Two series give 3 windows x 2 = 6 residuals a step, fewer than the 10 needed."""
    table = global_table(series=2)
    assert residual_counts(table.set_index(["shop", "month"])[["y"]], HORIZON) == 6
    with pytest.raises(SpecError, match="intervals: conformal") as raised:
        fit_spec(parse_model_spec(global_spec()), table)
    assert raised.value.extra["field"] == "intervals" and raised.value.extra["residuals"] == 6
