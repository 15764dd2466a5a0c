"""Forecasts meet their actuals over HTTP (TestClient on a real job runner): live metrics
equal sktime's metric functions on the same forecasts and actuals, anomalies flag exactly
the shifted series, the drift policy triggers one retrain, the three ways in agree, bad
uploads are 422s that store nothing, retention bounds the record and a restart keeps it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from sktime.performance_metrics.forecasting import (
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanAbsoluteScaledError,
    MeanSquaredError,
)
from sktime.performance_metrics.forecasting.probabilistic import EmpiricalCoverage, PinballLoss

from service.app import create_app
from service.datasets.store import DatasetStore, Roles
from service.forecasting.backtest import _wape
from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from service.tables import Schema
from tests.conftest import make_settings, wait_ready
from tests.monitoring.conftest import AFTER, SHIFTED, actuals_after, history, spec, wire, write_model

PROBLEM = "application/problem+json"


@pytest.fixture
def shift_root(trained_shift: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(trained_shift, root, ignore=shutil.ignore_patterns("*.lock"))
    return root


@pytest.fixture
def client(shift_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(shift_root))) as test_client:
        wait_ready(test_client)
        yield test_client


def _jobs(client: TestClient, model: str) -> list[dict[str, Any]]:
    return client.get("/v1/jobs", params={"model": model, "kind": "retrain", "limit": 100}).json()["jobs"]


def _wait_jobs(client: TestClient, model: str, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    jobs = _jobs(client, model)
    while any(j["status"] in ("queued", "running") for j in jobs) and time.monotonic() < deadline:
        time.sleep(0.2)
        jobs = _jobs(client, model)
    return jobs


# ----------------------------------------------------------------------------- metrics
def test_live_metrics_equal_sktimes_metric_functions_per_series_per_step_and_overall(
    client: TestClient, shift_root: Path
) -> None:
    registry = Registry(shift_root)
    actuals = actuals_after(registry, "shift")
    sent = client.post("/v1/models/shift/actuals", json=wire(actuals))
    assert sent.status_code == 200, sent.text
    assert sent.json()["matched"] == len(actuals) == 50 * AFTER
    report = client.get("/v1/models/shift/monitoring").json()
    (v1,) = report["versions"]
    assert v1["version"] == 1 and v1["production"] and v1["window"]["points"] == 50 * AFTER

    manifest = registry.read_manifest("shift", 1)
    forecast = registry.read_precomputed("shift", 1, manifest)
    training = registry.read_training("shift", 1, manifest)
    assert forecast is not None
    months = pd.PeriodIndex(pd.to_datetime(actuals["month"]), freq="M")
    truth = actuals.assign(month=months).set_index(["store", "month"])["sales"]
    predicted = forecast.set_index(["store", "month"]).loc[truth.index]
    per_series = {tuple(row["series"]): row["metrics"] for row in v1["per_series"]}
    metric_functions = {
        "MAE": MeanAbsoluteError(),
        "RMSE": MeanSquaredError(square_root=True),
        "MAPE": MeanAbsolutePercentageError(symmetric=False),
        "sMAPE": MeanAbsolutePercentageError(symmetric=True),
        "MASE": MeanAbsoluteScaledError(),
    }
    expected: dict[str, list[float]] = {name: [] for name in [*metric_functions, "WAPE", "pinball", "0.8", "0.95"]}
    for store, y_true in truth.groupby(level=0):
        y_true = y_true.droplevel(0)
        y_pred = predicted.loc[store]["sales"]
        y_train = training[training["store"] == store].set_index("month")["sales"]
        got = per_series[(store,)]
        for name, metric in metric_functions.items():
            value = metric(y_true, y_pred, y_train=y_train)
            assert got[name] == pytest.approx(value, rel=1e-9), (store, name)
            expected[name].append(value)
        wape = _wape(y_true, y_pred)
        assert got["WAPE"] == pytest.approx(wape, rel=1e-9)
        expected["WAPE"].append(wape)
        quantiles = pd.DataFrame(
            {("sales", q): predicted.loc[store][f"sales_q{q:g}"] for q in (0.1, 0.5, 0.9)}, index=y_true.index
        )
        pinball = PinballLoss()(y_true.to_frame("sales"), quantiles)
        assert got["pinball"] == pytest.approx(pinball, rel=1e-9)
        expected["pinball"].append(pinball)
        for c in (0.8, 0.95):
            pct = f"{c * 100:g}"
            intervals = pd.DataFrame(
                {
                    ("sales", c, "lower"): predicted.loc[store][f"sales_lower_{pct}"],
                    ("sales", c, "upper"): predicted.loc[store][f"sales_upper_{pct}"],
                },
                index=y_true.index,
            )
            covered = EmpiricalCoverage(coverage=c)(y_true.to_frame("sales"), intervals)
            assert got["coverage"][f"{c:g}"] == pytest.approx(covered, abs=1e-12)
            expected[f"{c:g}"].append(covered)
    overall = v1["overall"]
    for name in [*metric_functions, "WAPE", "pinball"]:
        assert overall[name] == pytest.approx(np.mean(expected[name]), rel=1e-9), name
    assert overall["coverage"]["0.8"] == pytest.approx(np.mean(expected["0.8"]))
    assert overall["coverage"]["0.8"] == pytest.approx(1 - len(SHIFTED) / 50)
    # by step: step 1 is each series' first month, one point each (MASE per point / scale)
    step1 = next(s for s in v1["by_step"] if s["step"] == 1)
    firsts = [
        MeanAbsoluteScaledError()(
            truth.loc[store].iloc[:1],
            predicted.loc[store]["sales"].iloc[:1],
            y_train=training[training["store"] == store].set_index("month")["sales"],
        )
        for store in truth.index.get_level_values(0).unique()
    ]
    assert step1["points"] == 50 and step1["metrics"]["MASE"] == pytest.approx(np.mean(firsts), rel=1e-9)
    # the drift figure: live over the backtest's promise, recorded at publish
    promised = manifest["metrics"]["backtest"]["MASE"]
    assert v1["promised"]["MASE"] == pytest.approx(promised)
    assert v1["drift"]["MASE"] == pytest.approx(overall["MASE"] / promised)
    metrics_text = client.get("/metrics").text
    assert 'forecast_live_metric{metric="MASE",model="shift",version="1"}' in metrics_text
    assert 'forecast_anomalies_total{model="shift"} 18.0' in metrics_text


# ----------------------------------------------------------------------------- anomalies and drift
def test_three_shifted_series_are_flagged_and_the_breach_triggers_one_retrain(
    client: TestClient, shift_root: Path
) -> None:
    actuals = actuals_after(Registry(shift_root), "shift")
    first = client.post("/v1/models/shift/actuals", json=wire(actuals)).json()
    assert first["drift"]["state"] == "breach" and first["drift"]["triggered"] is True
    again = client.post("/v1/models/shift/actuals", json=wire(actuals)).json()  # the same breach
    assert again["drift"]["job"] == first["drift"]["job"] and again["drift"]["triggered"] is False

    found = client.get("/v1/models/shift/anomalies", params={"coverage": 0.99}).json()
    flagged = {tuple(a["series"]) for a in found["anomalies"]}
    assert flagged == {(s,) for s in SHIFTED}
    assert found["count"] == len(SHIFTED) * AFTER and found["scored"] == 50 * AFTER
    assert all(a["side"] == "above" and a["score"] > 1 and a["version"] == 1 for a in found["anomalies"])
    assert all(a["level"] == pytest.approx(0.9) for a in found["anomalies"])  # above the top quantile
    later = client.get("/v1/models/shift/anomalies", params={"coverage": 0.99, "since": "2023-03"}).json()
    assert later["count"] == len(SHIFTED) * 4  # 2023-03..06 of 2023-01..06
    one = client.get("/v1/models/shift/anomalies", params={"series": "s23"}).json()
    assert {tuple(a["series"]) for a in one["anomalies"]} == {("s23",)}

    jobs = _wait_jobs(client, "shift")
    drift_jobs = [j for j in jobs if j["params"].get("trigger") == "drift"]
    assert len(drift_jobs) == 1, jobs
    job = client.get(f"/v1/jobs/{drift_jobs[0]['id']}").json()
    assert job["status"] == "succeeded", job
    assert job["result"]["trigger"]["breach"]["version"] == 1
    assert job["result"]["trigger"]["breach"]["ratio"] > 1.25
    report = client.get("/v1/models/shift/monitoring").json()
    assert report["production_version"] == 2  # promotion: always
    assert {v["version"] for v in report["versions"]} == {1, 2}  # both forecast these months


def test_no_anomalies_on_unshifted_series_at_high_coverage_and_no_breach_without_a_shift(
    client: TestClient, shift_root: Path
) -> None:
    actuals = actuals_after(Registry(shift_root), "shift", shift=0.0)
    sent = client.post("/v1/models/shift/actuals", json=wire(actuals)).json()
    assert sent["anomalies"] == 0 and sent["drift"]["state"] == "ok", sent
    assert client.get("/v1/models/shift/anomalies", params={"coverage": 0.99}).json()["count"] == 0
    assert not [j for j in _jobs(client, "shift") if j["params"].get("trigger") == "drift"]


def test_alert_only_flags_the_breach(shift_root: Path) -> None:
    document = yaml.safe_load((shift_root / "shift" / "model.yaml").read_text())
    document["monitoring"]["action"] = "alert"
    (shift_root / "shift" / "model.yaml").write_text(yaml.safe_dump(document))
    with TestClient(create_app(make_settings(shift_root))) as client:
        wait_ready(client)
        sent = client.post("/v1/models/shift/actuals", json=wire(actuals_after(Registry(shift_root), "shift"))).json()
        assert sent["drift"]["state"] == "breach" and "triggered" not in sent["drift"]
        assert client.get("/v1/models/shift/monitoring").json()["policy"]["state"] == "breach"
        assert 'forecast_drift_breach{model="shift"} 1.0' in client.get("/metrics").text
        assert not _jobs(client, "shift")


# ----------------------------------------------------------------------------- the three ways in
def test_actuals_through_each_path_give_the_same_monitoring_answer(trained_shift: Path, tmp_path: Path) -> None:
    """The same published version in three deployments, its actuals arriving by POST
    /actuals, by an append to the dataset its spec reads, and as a predict's observations."""
    schema = Schema(kind="panel", keys=("store",), time="month", targets=("sales",), freq="M")
    answers = []
    for path in ("actuals", "dataset", "observations"):
        root = tmp_path / path / "models"
        shutil.copytree(trained_shift, root, ignore=shutil.ignore_patterns("*.lock"))
        settings = make_settings(root)
        document = yaml.safe_load((root / "shift" / "model.yaml").read_text())
        document["monitoring"]["action"] = "none"
        if path == "dataset":
            table = history().assign(month=lambda f: pd.PeriodIndex(f["month"], freq="M"))
            DatasetStore(settings.data_dir).put("shift-data", table, Roles.from_schema(schema))
            document["data"]["source"] = {"dataset": "shift-data"}
        if path == "observations":
            document["monitoring"]["observations_are_actuals"] = True
        (root / "shift" / "model.yaml").write_text(yaml.safe_dump(document))
        actuals = actuals_after(Registry(root), "shift")
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            if path == "actuals":
                sent = client.post("/v1/models/shift/actuals", json=wire(actuals))
            elif path == "dataset":
                sent = client.post("/v1/datasets/shift-data/observations", json=wire(actuals))
            else:
                sent = client.post("/v1/models/shift/predict", json={"observations": wire(actuals), "horizon": 1})
            assert sent.status_code == 200, sent.text
            answers.append(client.get("/v1/models/shift/monitoring").json())
    first = answers[0]
    assert first["actuals"] == 50 * AFTER and first["versions"][0]["window"]["points"] == 50 * AFTER
    for other in answers[1:]:
        assert other["actuals"] == first["actuals"]
        assert _flat(other["versions"][0]["overall"]) == pytest.approx(_flat(first["versions"][0]["overall"]))
        for part, key in (("per_series", "series"), ("by_step", "step")):
            theirs = {str(r[key]): (r["points"], _flat(r["metrics"])) for r in other["versions"][0][part]}
            ours = {str(r[key]): (r["points"], _flat(r["metrics"])) for r in first["versions"][0][part]}
            assert theirs.keys() == ours.keys()
            for k, (points, metrics) in ours.items():
                assert theirs[k][0] == points and theirs[k][1] == pytest.approx(metrics, rel=1e-9), (part, k)


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    coverage = metrics.get("coverage") or {}
    flat = {k: v for k, v in metrics.items() if k != "coverage"}
    return {**flat, **{f"coverage_{k}": v for k, v in coverage.items()}}


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("change", "column", "detail"),
    [
        (lambda t: t.assign(sales=t["sales"].astype(object).where(t.index != 4, None)), "sales", "missing"),
        (lambda t: t.assign(sales=t["sales"].astype(object).where(t.index != 4, "many")), "sales", "numeric"),
        (lambda t: pd.concat([t, t.iloc[[3]]], ignore_index=True), "month", "duplicated"),
        (lambda t: t.assign(month=t["month"].where(t.index != 2, "2023-02-30")), "month", ""),
        (lambda t: t.assign(month=t["month"].where(t.index != 2, "2023-02-15")), "month", ""),
    ],
    ids=["nan", "not-a-number", "duplicated-key-time", "not-a-date", "not-the-frequency"],
)
def test_a_bad_upload_is_a_422_naming_rows_and_columns_and_stores_nothing(
    client: TestClient, shift_root: Path, change: Any, column: str, detail: str
) -> None:
    actuals = change(actuals_after(Registry(shift_root), "shift"))
    sent = client.post("/v1/models/shift/actuals", json=wire(actuals))
    assert sent.status_code == 422, sent.text
    assert sent.headers["content-type"].startswith(PROBLEM)
    problem = sent.json()
    assert column in str(problem) and detail in str(problem).lower()
    assert client.get("/v1/models/shift/monitoring").json()["actuals"] == 0


def test_unknown_series_and_uncovered_times_are_counted_not_refused(client: TestClient, shift_root: Path) -> None:
    actuals = actuals_after(Registry(shift_root), "shift").head(20)
    extra = pd.DataFrame({"store": ["nope", "nope", "s01"], "month": ["2023-01", "2023-02", "2030-01"], "sales": 1.0})
    sent = client.post("/v1/models/shift/actuals", json=wire(pd.concat([actuals, extra], ignore_index=True)))
    assert sent.status_code == 200, sent.text
    report = sent.json()
    assert report["rows"] == 23 and report["matched"] == 20
    assert report["unmatched"] == {
        "rows": 3,
        "unknown_series": 2,
        "uncovered_times": 1,
        "unknown_series_examples": [["nope"]],
    }


def test_errors_of_the_read_endpoints(client: TestClient) -> None:
    assert client.get("/v1/models/nope/monitoring").status_code == 404
    assert client.post("/v1/models/nope/actuals", json={"store": ["s01"]}).status_code == 404
    assert client.get("/v1/models/shift/monitoring", params={"version": 9}).status_code == 404
    assert client.get("/v1/models/shift/anomalies", params={"coverage": 0.5}).json()["count"] == 0  # nothing met yet
    assert client.get("/v1/models/shift/monitoring", params={"since": "not a time"}).status_code == 422
    assert client.get("/v1/models/shift/anomalies", params={"coverage": 1.5}).status_code == 422
    assert client.get("/v1/models/shift/monitoring.png").status_code == 404  # no actuals yet
    assert (
        client.post(
            "/v1/models/shift/actuals", content=b"store,month\n", headers={"content-type": "text/csv"}
        ).status_code
        == 422
    )


def test_anomalies_of_a_model_without_intervals_name_the_capability(tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = write_model(root, "points")
    document = spec({"path": "history.csv"}, action="none")
    document["forecaster"] = {
        "class": "make_reduction",
        "params": {"estimator": {"class": "LinearRegression"}, "window_length": 12, "strategy": "recursive"},
    }
    document["coverage"], document["quantiles"] = [], []
    (folder / "model.yaml").write_text(yaml.safe_dump(document))
    train_and_publish(Registry(root), "points")
    with TestClient(create_app(make_settings(root))) as client:
        wait_ready(client)
        actuals = actuals_after_points(Registry(root))
        sent = client.post("/v1/models/points/actuals", json=wire(actuals))
        assert sent.status_code == 200 and sent.json()["anomalies"] == 0
        found = client.get("/v1/models/points/anomalies")
        assert found.status_code == 422 and found.json()["capability"] == "pred_int", found.text
        report = client.get("/v1/models/points/monitoring").json()  # point metrics still
        assert report["versions"][0]["overall"]["MAE"] > 0 and report["versions"][0]["overall"]["coverage"] is None


def actuals_after_points(registry: Registry) -> pd.DataFrame:
    forecast = registry.read_precomputed("points", 1, registry.read_manifest("points", 1))
    assert forecast is not None
    rows = forecast[forecast["month"] <= forecast["month"].min() + 2]
    return pd.DataFrame(
        {"store": rows["store"], "month": rows["month"].dt.strftime("%Y-%m"), "sales": rows["sales"] + 1}
    )


# ----------------------------------------------------------------------------- live records, retention, restart
def test_a_recorded_live_forecast_after_observations_is_the_one_anomalies_score(
    client: TestClient, shift_root: Path
) -> None:
    actuals = actuals_after(Registry(shift_root), "shift")
    months = sorted(actuals["month"].unique())
    early, late = actuals[actuals["month"].isin(months[:3])], actuals[actuals["month"].isin(months[3:])]
    live = client.post(
        "/v1/models/shift/predict", json={"observations": wire(early), "horizon": 3, "coverage": [0.99], "record": True}
    )
    assert live.status_code == 200, live.text
    assert client.post("/v1/models/shift/actuals", json=wire(late)).status_code == 200
    found = client.get("/v1/models/shift/anomalies", params={"coverage": 0.99}).json()
    assert found["scored"] == 50 * 3
    # scored against the newest forecast served: the live one, from the cutoff after the observations
    answer = pd.DataFrame(live.json()["forecast"])
    answer["month"] = answer["month"].str[:7]
    answer = answer.merge(late, on=["store", "month"], suffixes=("", "_actual"))
    outside = answer[
        (answer["sales_actual"] < answer["sales_lower_99"]) | (answer["sales_actual"] > answer["sales_upper_99"])
    ]
    assert len(answer) == 50 * 3
    assert sorted((a["series"][0], a["time"][:7]) for a in found["anomalies"]) == sorted(
        zip(outside["store"], outside["month"], strict=True)
    )
    assert all(a["kind"] == "live" and a["cutoff"] == live.json()["cutoff"] for a in found["anomalies"])
    report = client.get("/v1/models/shift/monitoring").json()
    assert report["versions"][0]["points"] == 50 * 3 * 2  # the published and the live forecast met them


def test_retention_bounds_the_record_and_a_restart_keeps_it(shift_root: Path) -> None:
    settings = make_settings(shift_root, record_max_rows=50 * 12 + 2 * 50 * 3)
    actuals = actuals_after(Registry(shift_root), "shift")
    body = {"horizon": 3, "record": True}
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        for _ in range(4):
            assert client.post("/v1/models/shift/predict", json=body).status_code == 200
        assert client.post("/v1/models/shift/actuals", json=wire(actuals)).status_code == 200
        before = client.get("/v1/models/shift/monitoring").json()
    record = settings.data_dir / "monitoring" / "shift" / "forecasts"
    files = sorted(p.name for p in record.glob("*.parquet"))
    assert len(files) == 3 and "v1.parquet" in files, files  # 1 published + the 2 newest live ones fit
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        after = client.get("/v1/models/shift/monitoring").json()
    assert after == before


def test_the_monitoring_plot_and_a_window_since_a_time(client: TestClient, shift_root: Path) -> None:
    actuals = actuals_after(Registry(shift_root), "shift")
    assert client.post("/v1/models/shift/actuals", json=wire(actuals)).status_code == 200
    png = client.get("/v1/models/shift/monitoring.png", params={"series": ["s07", "s08"]})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG") and len(png.content) > 10_000
    assert client.get("/v1/models/shift/monitoring.png", params={"metric": "nope"}).status_code == 422
    whole = client.get("/v1/models/shift/monitoring").json()["versions"][0]
    recent = client.get("/v1/models/shift/monitoring", params={"since": "2023-05"}).json()["versions"][0]
    assert recent["window"]["points"] == 50 * 2 and recent["window"]["start"].startswith("2023-05")
    assert {s["step"] for s in recent["by_step"]} == {5, 6}
    assert recent["by_step"] == [s for s in whole["by_step"] if s["step"] in (5, 6)]
    short = client.get("/v1/models/shift/monitoring", params={"window": 2}).json()["versions"][0]
    assert short["overall"] == recent["overall"]
    one = client.get("/v1/models/shift/monitoring", params={"series": "s07"}).json()["versions"][0]
    assert [s["series"] for s in one["per_series"]] == [["s07"]]
