"""The ``auto`` forecaster (`AutoStatistical`): the same as sktime's EnsembleForecaster (median)
or ForecastingGridSearchCV over a MultiplexForecaster (select) built directly, reproducible,
with nested intervals and uncrossed quantiles, picklable, and served from a spec exactly as
the class forecasts when called directly."""

from __future__ import annotations

import io
import pickle
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sktime.base import BaseObject
from sktime.forecasting.compose import EnsembleForecaster, MultiplexForecaster
from sktime.forecasting.conformal import ConformalIntervals
from sktime.forecasting.model_selection import ForecastingGridSearchCV
from sktime.forecasting.naive import NaiveForecaster
from sktime.forecasting.statsforecast import (
    StatsForecastAutoARIMA,
    StatsForecastAutoCES,
    StatsForecastAutoETS,
    StatsForecastAutoTheta,
)
from sktime.performance_metrics.forecasting import MeanAbsolutePercentageError
from sktime.split import SingleWindowSplitter

from bench.accuracy import competition_data
from service.app import create_app
from service.datasets.sources import read_source
from service.errors import IntegrityError, SpecError
from service.fileio import sha256_bytes
from service.forecasting.allowlist import ALLOWED, allowed_classes, audit_class
from service.forecasting.auto import MEMBERS, AutoStatistical, choices, find_choices
from service.forecasting.shards import load_fitted
from service.forecasting.specs import jsonable, load_model_spec, parse_model_spec, read_spec
from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from tests.conftest import BACKGROUND_DEMOS, DEMO_MODELS, DEMO_SPECS, make_settings, wait_ready

MONTHS = pd.period_range("2016-01", periods=60, freq="M")
FH = list(range(1, 7))


def seasonal_table(series: int = 3, seed: int = 3) -> pd.DataFrame:
    """Positive monthly series with a trend, a yearly season and noise, in long format."""
    rng = np.random.default_rng(seed)
    t = np.arange(len(MONTHS))
    parts = []
    for i in range(series):
        level = 100.0 * (i + 1) + (0.5 + i) * t
        season = (10.0 + 5 * i) * np.sin(2 * np.pi * (t + i) / 12)
        values = level + season + rng.normal(scale=3.0 + i, size=len(t))
        parts.append(pd.DataFrame({"series": f"s{i}", "month": MONTHS.strftime("%Y-%m-01"), "visitors": values}))
    return pd.concat(parts, ignore_index=True)


def as_panel(table: pd.DataFrame) -> pd.DataFrame:
    frame = table.assign(month=pd.PeriodIndex(pd.to_datetime(table["month"]), freq="M"))
    return frame.set_index(["series", "month"])[["visitors"]]


def fitted(forecaster: BaseObject, y: pd.DataFrame) -> BaseObject:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return forecaster.fit(y, fh=FH)


def members() -> list[tuple[str, BaseObject]]:
    return [
        ("ets", StatsForecastAutoETS(season_length=12)),
        ("theta", StatsForecastAutoTheta(season_length=12)),
        ("arima", StatsForecastAutoARIMA(sp=12, approximation=True, n_jobs=1)),
        ("ces", StatsForecastAutoCES(season_length=12)),
    ]


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return as_panel(seasonal_table())


@pytest.fixture(scope="module")
def median_fit(panel: pd.DataFrame) -> AutoStatistical:
    return fitted(AutoStatistical(sp=12), panel)


def test_median_equals_sktime_ensemble_and_members_quantiles(panel: pd.DataFrame, median_fit: AutoStatistical) -> None:
    """Point: sktime's EnsembleForecaster(aggfunc=median) built directly; quantiles: the median
    of each member's own quantiles, every member fitted directly on each series."""
    ensemble = fitted(EnsembleForecaster(members(), aggfunc="median"), panel)
    pd.testing.assert_series_equal(
        median_fit.predict()["visitors"], ensemble.predict()["visitors"], check_names=False, rtol=1e-12
    )
    alphas = [0.025, 0.1, 0.5, 0.9, 0.975]
    got = median_fit.predict_quantiles(alpha=alphas)
    member_quantiles = [fitted(m, panel).predict_quantiles(alpha=alphas).to_numpy() for _, m in members()]
    np.testing.assert_allclose(got.to_numpy(), np.median(np.stack(member_quantiles), axis=0), rtol=1e-12)
    records = choices(median_fit)
    assert [r["series"] for r in records] == [["s0"], ["s1"], ["s2"]]
    assert {r["chosen"] for r in records} == {"median(ets,theta,arima,ces)"}
    assert all(r["weights"] == {"ets": 0.25, "theta": 0.25, "arima": 0.25, "ces": 0.25} for r in records)


def test_select_equals_grid_search_over_multiplex(panel: pd.DataFrame) -> None:
    """Per series: the member ForecastingGridSearchCV over a MultiplexForecaster picks on one
    backtest fold (MAPE), with the same scores, and the same forecasts after the refit."""
    auto = fitted(AutoStatistical(sp=12, combine="select", backtest_horizon=12), panel)
    records = choices(auto)
    for record in records:
        y = panel.loc[record["series"][0]]["visitors"]
        search = ForecastingGridSearchCV(
            MultiplexForecaster(members()),
            cv=SingleWindowSplitter(fh=list(range(1, 13))),
            param_grid={"selected_forecaster": ["ets", "theta", "arima", "ces"]},
            scoring=MeanAbsolutePercentageError(symmetric=False),
        )
        search = fitted(search, y)
        assert record["chosen"] == search.best_params_["selected_forecaster"]
        assert record["weights"][record["chosen"]] == 1.0 and sum(record["weights"].values()) == 1.0
        scores = dict(
            zip(
                [p["selected_forecaster"] for p in search.cv_results_["params"]],
                search.cv_results_["mean_test_MeanAbsolutePercentageError"],
                strict=True,
            )
        )
        assert record["backtest_mape"] == pytest.approx(scores, rel=1e-12)
        ours = auto.forecasters_.loc[record["series"][0]].iloc[0]
        np.testing.assert_allclose(ours.predict().to_numpy().ravel(), search.predict().to_numpy().ravel(), rtol=1e-12)
        bands = ours.predict_interval(coverage=0.9).to_numpy()
        np.testing.assert_allclose(bands, search.predict_interval(coverage=0.9).to_numpy(), rtol=1e-12)


def test_inverse_mape_equals_weighted_sktime_ensemble(panel: pd.DataFrame) -> None:
    """Weights 1 / backtest MAPE of the grid search, normalised; point: sktime's weighted
    EnsembleForecaster built directly; quantiles: the same weighted mean of the members'."""
    auto = fitted(AutoStatistical(sp=12, combine="inverse-mape", backtest_horizon=12), panel)
    for record in choices(auto):
        y = panel.loc[record["series"][0]]["visitors"]
        inverse = {name: 1.0 / mape for name, mape in record["backtest_mape"].items()}
        weights = [inverse[name] / sum(inverse.values()) for name, _ in members()]
        assert list(record["weights"].values()) == pytest.approx(weights, rel=1e-12)
        ensemble = fitted(EnsembleForecaster(members(), aggfunc="mean", weights=weights), y)
        ours = auto.forecasters_.loc[record["series"][0]].iloc[0]
        np.testing.assert_allclose(ours.predict().to_numpy().ravel(), ensemble.predict().to_numpy().ravel(), rtol=1e-9)
        alphas = [0.1, 0.9]
        quantiles = np.stack([fitted(m, y).predict_quantiles(alpha=alphas).to_numpy() for _, m in members()])
        expected = np.average(quantiles, axis=0, weights=weights)
        np.testing.assert_allclose(ours.predict_quantiles(alpha=alphas).to_numpy(), expected, rtol=1e-9)


def test_same_data_same_choice_and_numbers(panel: pd.DataFrame, median_fit: AutoStatistical) -> None:
    again = fitted(AutoStatistical(sp=12), panel.copy())
    assert choices(again) == choices(median_fit)
    pd.testing.assert_frame_equal(again.predict(), median_fit.predict())
    pd.testing.assert_frame_equal(
        again.predict_interval(coverage=[0.8, 0.95]), median_fit.predict_interval(coverage=[0.8, 0.95])
    )


def test_intervals_nest_and_quantiles_do_not_cross(median_fit: AutoStatistical) -> None:
    bands = median_fit.predict_interval(coverage=[0.8, 0.95])["visitors"]
    point = median_fit.predict()["visitors"]
    assert (bands[(0.95, "lower")] < bands[(0.8, "lower")]).all()
    assert (bands[(0.8, "lower")] < point).all() and (point < bands[(0.8, "upper")]).all()
    assert (bands[(0.8, "upper")] < bands[(0.95, "upper")]).all()
    quantiles = median_fit.predict_quantiles(alpha=[0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]).to_numpy()
    assert (np.diff(quantiles, axis=1) > 0).all()


def test_pickle_round_trip(median_fit: AutoStatistical) -> None:
    loaded = pickle.loads(pickle.dumps(median_fit))
    pd.testing.assert_frame_equal(loaded.predict(), median_fit.predict())
    pd.testing.assert_frame_equal(
        loaded.predict_quantiles(alpha=[0.1, 0.9]), median_fit.predict_quantiles(alpha=[0.1, 0.9])
    )
    assert choices(loaded) == choices(median_fit)


def test_short_series_fall_back_to_seasonal_naive(panel: pd.DataFrame) -> None:
    y = panel.loc["s1"]["visitors"].iloc[-20:]
    auto = fitted(AutoStatistical(sp=12), y)
    naive = fitted(NaiveForecaster(strategy="last", sp=12), y)
    [record] = choices(auto)
    assert record["chosen"] == "seasonal-naive" and "fewer than 25" in record["fallback"]
    pd.testing.assert_series_equal(auto.predict(), naive.predict())
    np.testing.assert_allclose(
        auto.predict_interval(coverage=0.8).to_numpy(), naive.predict_interval(coverage=0.8).to_numpy()
    )


def test_allow_listed_audited_and_built_only_from_allow_listed_classes() -> None:
    assert allowed_classes()["AutoStatistical"] is AutoStatistical
    assert audit_class("AutoStatistical", AutoStatistical) == []
    auto = AutoStatistical()
    built = [auto.ensemble(), auto.selector(24), NaiveForecaster()]
    inner = {type(e).__name__ for e in built} | {type(m).__name__ for _, m in auto.ensemble().forecasters}
    search = auto.selector(24)
    inner |= {type(search.forecaster).__name__, type(search.cv).__name__, type(search.scoring).__name__}
    inner |= {type(m).__name__ for _, m in search.forecaster.forecasters}
    assert inner <= set(ALLOWED), inner - set(ALLOWED)


def test_a_spec_naming_auto_is_served_as_the_class_forecasts(tmp_path: Path) -> None:
    table = seasonal_table(series=2, seed=11)
    root = tmp_path / "registry"
    folder = root / "tourism"
    folder.mkdir(parents=True)
    table.to_csv(folder / "data.csv", index=False)
    (folder / "model.yaml").write_text(
        """kind: panel
data:
  source: {path: data.csv}
  time: month
  keys: [series]
  targets: [visitors]
horizon: 6
freq: M
forecaster: {class: AutoStatistical, params: {sp: 12}}
coverage: [0.8, 0.95]
"""
    )
    registry = Registry(root)
    train_and_publish(registry, "tourism", sources_root=root)

    direct = fitted(AutoStatistical(sp=12), as_panel(pd.read_csv(folder / "data.csv")))
    point = direct.predict()["visitors"]
    bands = direct.predict_interval(coverage=[0.8, 0.95])["visitors"]
    quantiles = direct.predict_quantiles(alpha=[0.1, 0.9])["visitors"]
    with TestClient(create_app(make_settings(root))) as api:
        wait_ready(api)
        response = api.post(
            "/v1/models/tourism/predict", json={"horizon": 6, "coverage": [0.8, 0.95], "quantiles": [0.1, 0.9]}
        )
        assert response.status_code == 200, response.text
        got = pd.DataFrame(response.json()["forecast"])
    got["month"] = pd.PeriodIndex(pd.to_datetime(got["month"]), freq="M")
    got = got.set_index(["series", "month"]).sort_index()
    assert list(got.index) == list(point.sort_index().index)
    np.testing.assert_allclose(got["visitors"], point.sort_index(), rtol=1e-9)
    for pct, coverage in ((80, 0.8), (95, 0.95)):
        for side in ("lower", "upper"):
            np.testing.assert_allclose(got[f"visitors_{side}_{pct}"], bands[(coverage, side)].sort_index(), rtol=1e-9)
    for level in (0.1, 0.9):
        np.testing.assert_allclose(got[f"visitors_q{level}"], quantiles[level].sort_index(), rtol=1e-9)


# --------------------------------------------------------------------------- the preset, the manifest's choices
PANEL_SPEC = """kind: panel
data:
  source: {path: data.csv}
  time: month
  keys: [series]
  targets: [visitors]
horizon: 6
freq: M
coverage: [0.8, 0.95]
"""


def spec_registry(root: Path, table: pd.DataFrame, forecasters: dict[str, str], **registry_options: object) -> Registry:
    """A registry with one model per ``forecasters`` entry (name -> the spec's forecaster line),
    each reading ``table`` from its folder."""
    for name, forecaster in forecasters.items():
        folder = root / name
        folder.mkdir(parents=True)
        table.to_csv(folder / "data.csv", index=False)
        (folder / "model.yaml").write_text(PANEL_SPEC + f"forecaster: {forecaster}\n")
    return Registry(root, **registry_options)  # type: ignore[arg-type]


def test_preset_auto_fits_the_numbers_of_the_class_with_sp_12_and_the_manifest_records_its_choices(
    tmp_path: Path,
) -> None:
    """``{preset: auto}`` on a monthly panel is AutoStatistical with sp=12: the same version as
    the class written out, and the manifest lists `choices` of the fitted forecaster."""
    table = seasonal_table(series=2, seed=5)
    registry = spec_registry(
        tmp_path / "registry",
        table,
        {"preset": "{preset: auto}", "written": "{class: AutoStatistical, params: {sp: 12}}"},
    )
    spec = read_spec(registry, "preset")
    assert spec is not None and spec.preset == "auto"
    assert spec.forecaster == {"class": "AutoStatistical", "params": {"sp": 12}}
    assert spec.model_dump(exclude_unset=True)["forecaster"] == {"preset": "auto"}  # written as it was
    for name in ("preset", "written"):
        train_and_publish(registry, name, sources_root=registry.root)

    preset, written = (registry.load(name, 1) for name in ("preset", "written"))
    assert preset.manifest["forecaster"] == written.manifest["forecaster"]
    assert preset.manifest["forecaster"]["params"]["sp"] == 12
    assert preset.manifest["spec"]["forecaster"] == {"preset": "auto"}
    direct = fitted(AutoStatistical(sp=12), as_panel(pd.read_csv(registry.root / "preset" / "data.csv")))
    for loaded in (preset, written):
        pd.testing.assert_frame_equal(loaded.forecaster.predict(fh=FH), direct.predict(fh=FH))
        pd.testing.assert_frame_equal(
            loaded.forecaster.predict_interval(fh=FH, coverage=[0.8, 0.95]),
            direct.predict_interval(fh=FH, coverage=[0.8, 0.95]),
        )
    section = preset.manifest["choices"]
    assert section["records"] == jsonable(choices(preset.forecaster)) == jsonable(choices(direct))
    assert [r["series"] for r in section["records"]] == [["s0"], ["s1"]]
    assert section["series"] == 2 and section["file"] is None and section["fallbacks"] == 0
    assert section["chosen"] == {"median(ets,theta,arima,ces)": 2}
    assert written.manifest["choices"] == section
    assert "choices.parquet" not in Registry(registry.root).read_manifest("preset", 1)["files"]


@pytest.mark.parametrize(("freq", "sp"), [("M", 12), ("Q", 4), ("W", 52), ("D", 7), ("h", 24), ("Y", 1), (None, 1)])
def test_preset_sp_follows_the_models_freq_unless_params_give_it(freq: str | None, sp: int) -> None:
    raw = {
        "data": {"source": {"builtin": "airline"}, "time": "month", "targets": ["passengers"]},
        "freq": freq,
        "forecaster": {"preset": "auto"},
    }
    assert parse_model_spec(raw).build_forecaster().get_params()["sp"] == sp
    given = parse_model_spec({**raw, "forecaster": {"preset": "auto", "params": {"sp": 3, "combine": "select"}}})
    assert given.forecaster == {"class": "AutoStatistical", "params": {"sp": 3, "combine": "select"}}
    with pytest.raises(SpecError) as caught:
        parse_model_spec({**raw, "forecaster": {"preset": "auto", "params": {"season": 12}}})
    assert caught.value.extra["field"] == "forecaster.params"


def test_unknown_preset_is_a_422_naming_the_field_and_the_presets_are_listed(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    spec = {
        "kind": "single",
        "data": {"source": {"builtin": "airline"}, "time": "month", "targets": ["passengers"]},
        "freq": "M",
        "forecaster": {"preset": "automatic"},
    }
    with TestClient(create_app(make_settings(tmp_path / "models"))) as api:
        wait_ready(api)
        response = api.put("/v1/models/airline-auto", json=spec)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["field"] == "forecaster.preset" and body["presets"] == ["auto"]
        assert "automatic" in body["detail"] and "auto" in body["detail"]
        assert not (tmp_path / "models" / "airline-auto").exists()
        ok = api.put("/v1/models/airline-auto", json={**spec, "forecaster": {"preset": "auto"}})
        assert ok.status_code in (200, 201), ok.text
        assert api.get("/v1/models/airline-auto").json()["spec"]["forecaster"] == {"preset": "auto"}
        listing = api.get("/v1/forecasters").json()
    [auto] = listing["presets"]
    assert (auto["name"], auto["forecaster"], auto["example"]) == ("auto", "AutoStatistical", {"preset": "auto"})
    assert "M 12" in auto["defaults"]["sp"]
    assert "AutoStatistical" in {f["name"] for f in listing["forecasters"]}


def test_a_sharded_version_writes_its_choices_to_a_signed_parquet_file(tmp_path: Path) -> None:
    """Sharded (or larger than the manifest's inline bound): ``choices.parquet``, listed with
    its sha256 under the manifest's HMAC like ``shards.parquet``; the manifest keeps the counts."""
    table = seasonal_table(series=3, seed=7)
    registry = spec_registry(
        tmp_path / "registry", table, {"auto": "{preset: auto}"}, shard_series=2, signing_key=b"k" * 32
    )
    train_and_publish(registry, "auto", sources_root=registry.root)
    manifest = registry.verified_manifest("auto", 1)
    assert manifest["shards"]["count"] == 2
    section = manifest["choices"]
    assert section["file"] == "choices.parquet" and section["records"] is None
    assert section["series"] == 3 and sum(section["chosen"].values()) == 3
    entry = manifest["files"]["choices.parquet"]
    data = registry.read_verified("auto", 1, "choices.parquet", manifest)
    assert sha256_bytes(data) == entry["sha256"] and len(data) == entry["size"]
    whole = load_fitted(registry, "auto", 1).forecaster
    records = choices(whole)
    got = pd.read_parquet(io.BytesIO(data))
    assert got["series"].tolist() == [r["series"][0] for r in records] == ["s0", "s1", "s2"]
    assert got["chosen"].tolist() == [r["chosen"] for r in records]
    for member in MEMBERS:
        assert got[f"weight_{member}"].tolist() == [r["weights"][member] for r in records]
    assert section["chosen"] == dict(Counter(r["chosen"] for r in records))

    (registry.version_dir("auto", 1) / "choices.parquet").write_bytes(data[:-1] + b"\0")
    with pytest.raises(IntegrityError):
        registry.read_verified("auto", 1, "choices.parquet", registry.verified_manifest("auto", 1))


def test_choices_are_found_through_a_wrapper_and_absent_for_other_forecasters(panel: pd.DataFrame) -> None:
    """A panel of `ConformalIntervals` around AutoStatistical (intervals: conformal) still
    reports what auto chose per series; a forecaster without auto reports none."""
    y = panel.loc[["s0", "s1"]]
    wrapped = fitted(
        ConformalIntervals(AutoStatistical(sp=12, members=("theta",)), method="conformal", initial_window=0.9), y
    )
    records = find_choices(wrapped)
    assert records is not None and [r["series"] for r in records] == [["s0"], ["s1"]]
    for record, (_, row) in zip(records, wrapped.forecasters_.iterrows(), strict=True):
        assert record["chosen"] == row.iloc[0].forecaster_.chosen_ == "median(theta)"
    assert find_choices(fitted(NaiveForecaster(), y)) is None
    with pytest.raises(ValueError, match="AutoStatistical"):
        choices(fitted(NaiveForecaster(), y))


# --------------------------------------------------------------------------- the tourism-auto demo
def test_the_tourism_auto_demo_is_the_competitions_training_data_with_the_auto_preset() -> None:
    spec = load_model_spec(DEMO_SPECS / "tourism-auto" / "model.yaml")
    assert spec.preset == "auto" and spec.build_forecaster().get_params()["sp"] == 12
    assert (spec.horizon, spec.coverage, spec.first_start) == (24, [0.8, 0.95], "background")
    assert "tourism-auto" in BACKGROUND_DEMOS and "tourism-auto" not in DEMO_MODELS  # never trained by fixtures
    table, _ = read_source(spec.data.source)
    bench, _ = competition_data("tourism")
    assert table["series"].nunique() == 366 and len(table) == len(bench)
    # bench.accuracy labels the series S0001..., the source T001...; the same numbers and months
    ours = table.assign(series=table["series"].str[1:].astype(int), month=table["month"].astype(str))
    theirs = bench.assign(series=bench["series"].str[1:].astype(int), month=bench["month"].str[:7])
    pd.testing.assert_frame_equal(
        ours.sort_values(["series", "month"]).reset_index(drop=True)[["series", "month", "visitors"]],
        theirs.sort_values(["series", "month"]).reset_index(drop=True).rename(columns={"value": "visitors"}),
    )
    assert ours.groupby("series")["month"].max().eq("2007-12").all()
