"""Panels with exogenous columns, one key or two, whole or sharded: trained from a spec,
served over HTTP with future exogenous values for some series, and equal to sktime's
SARIMAX fitted directly on the same panel."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sktime.forecasting.sarimax import SARIMAX

from service.app import create_app
from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from tests.conftest import make_settings, wait_ready

MONTHS = pd.period_range("2015-01", periods=40, freq="M")


def exogenous_panel(keys: tuple[str, ...]) -> pd.DataFrame:
    """Three regions (x two stores for two keys), monthly, where `promo` moves `value`."""
    rng = np.random.default_rng(5)
    labels = [("r0",), ("r1",), ("r2",)] if len(keys) == 1 else [(r, s) for r in ("r0", "r1", "r2") for s in ("a", "b")]
    parts = []
    for label in labels:
        promo = rng.normal(size=len(MONTHS))
        part = pd.DataFrame(dict(zip(keys, label, strict=True)), index=range(len(MONTHS)))
        part["month"] = MONTHS.to_timestamp().strftime("%Y-%m-%d")
        part["promo"] = promo
        part["value"] = 100 + 3 * promo + np.cumsum(rng.normal(size=len(MONTHS))) * 0.3
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def write_model(root: Path, keys: tuple[str, ...], table: pd.DataFrame) -> None:
    folder = root / "promo"
    folder.mkdir(parents=True)
    table.to_csv(folder / "data.csv", index=False)
    (folder / "model.yaml").write_text(
        f"""kind: panel
data:
  source: {{path: data.csv}}
  time: month
  keys: [{", ".join(keys)}]
  targets: [value]
  exogenous: [promo]
horizon: 6
freq: M
forecaster: {{class: SARIMAX, params: {{order: [1, 0, 0]}}}}
coverage: [0.8]
"""
    )


def future_promo(table: pd.DataFrame, keys: tuple[str, ...], series: list[tuple[str, ...]], steps: int) -> dict:
    """Future `promo` values for the named series, months after the panel's end."""
    months = pd.period_range(MONTHS[-1] + 1, periods=steps, freq="M")
    rows = [
        (*label, m.to_timestamp().strftime("%Y-%m-%d"), 0.5 * i - 1.0 + 0.1 * j)
        for j, label in enumerate(series)
        for i, m in enumerate(months)
    ]
    columns = [*keys, "month", "promo"]
    return {c: [row[k] for row in rows] for k, c in enumerate(columns)}


def sktime_reference(table: pd.DataFrame, keys: tuple[str, ...], future: dict, steps: int) -> pd.DataFrame:
    """SARIMAX(1,0,0) per series, as sktime vectorises it, with the same future promo."""
    frame = table.assign(month=pd.PeriodIndex(pd.to_datetime(table["month"]), freq="M")).set_index([*keys, "month"])
    x_future = pd.DataFrame(future)
    x_future["month"] = pd.PeriodIndex(pd.to_datetime(x_future["month"]), freq="M")
    x_future = x_future.set_index([*keys, "month"])[["promo"]]
    wanted = x_future.index.droplevel(-1).unique()
    frame = frame[frame.index.droplevel(-1).isin(wanted)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forecaster = SARIMAX(order=(1, 0, 0)).fit(frame[["value"]], X=frame[["promo"]], fh=list(range(1, steps + 1)))
        point = forecaster.predict(X=x_future)
        band = forecaster.predict_interval(X=x_future, coverage=0.8)
    return pd.DataFrame(
        {
            "value": point["value"],
            "value_lower_80": band[("value", 0.8, "lower")],
            "value_upper_80": band[("value", 0.8, "upper")],
        }
    )


@pytest.mark.parametrize("keys", [("region",), ("region", "store")], ids=["one-key", "two-keys"])
@pytest.mark.parametrize("shard_series", [0, 2], ids=["whole", "sharded"])
def test_exogenous_panel_forecasts_equal_sktime(tmp_path: Path, keys: tuple[str, ...], shard_series: int) -> None:
    table = exogenous_panel(keys)
    root = tmp_path / "registry"
    write_model(root, keys, table)
    registry = Registry(root, shard_series=shard_series)
    version = train_and_publish(registry, "promo", sources_root=root)
    assert bool(registry.read_manifest("promo", version).get("shards")) == bool(shard_series)

    series = [("r0",), ("r2",)] if len(keys) == 1 else [("r0", "b"), ("r2", "a")]
    future = future_promo(table, keys, series, steps=4)
    # sktime on the data as the service reads it (the CSV parsed by pandas, to the last bit:
    # SARIMAX's likelihood search magnifies a last-bit difference to 1e-4)
    expected = sktime_reference(pd.read_csv(root / "promo" / "data.csv"), keys, future, steps=4)
    with TestClient(create_app(make_settings(root, shard_series=shard_series))) as api:
        wait_ready(api)
        names = [label[0] if len(keys) == 1 else list(label) for label in series]
        response = api.post(
            "/v1/models/promo/predict",
            json={"horizon": 4, "coverage": [0.8], "series": names, "exogenous": future},
        )
        assert response.status_code == 200, response.text
        got = pd.DataFrame(response.json()["forecast"])
        got["month"] = pd.PeriodIndex(pd.to_datetime(got["month"]), freq="M")
        got = got.set_index([*keys, "month"]).sort_index()
        want = expected.sort_index()
        assert list(got.index) == list(want.index)
        for column in want.columns:
            np.testing.assert_allclose(got[column].to_numpy(float), want[column].to_numpy(float), rtol=1e-9)

        # the promo really moves the forecast: other future values, other numbers
        moved = {**future, "promo": [v + 5.0 for v in future["promo"]]}
        other = api.post("/v1/models/promo/predict", json={"horizon": 4, "series": names, "exogenous": moved})
        assert other.status_code == 200, other.text
        assert not np.allclose(other.json()["forecast"]["value"], response.json()["forecast"]["value"])

        # without future promo values: a 422 that names the exogenous column
        missing = api.post("/v1/models/promo/predict", json={"horizon": 4, "series": names})
        assert missing.status_code == 422, missing.text
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert "promo" in missing.json()["detail"]
