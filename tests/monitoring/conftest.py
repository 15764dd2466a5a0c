"""A synthetic monthly panel for the monitoring tests: 50 seasonal series, a Theta model
with 80/95/99% intervals, and actuals for the 6 months after its cutoff in which 3 series
shift their level and the others behave as forecast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from tests.servers import pytest_runtest_makereport  # noqa: F401 - attaches server logs to failures

SERIES = 50
LENGTH = 48
SHIFTED = ("s07", "s23", "s41")
AFTER = 6  # months of actuals after the cutoff
SHIFT = 40.0


def history() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    months = pd.period_range("2019-01", periods=LENGTH, freq="M")
    season = 10 * np.sin(2 * np.pi * np.arange(LENGTH) / 12)
    frames = [
        pd.DataFrame(
            {
                "store": f"s{i:02d}",
                "month": months.strftime("%Y-%m"),
                "sales": 100 + 3 * i + season + rng.normal(scale=1.0, size=LENGTH),
            }
        )
        for i in range(SERIES)
    ]
    return pd.concat(frames, ignore_index=True)


def spec(source: dict[str, Any], **monitoring: Any) -> dict[str, Any]:
    policy = {"metric": "MASE", "window": 6, "degrade": 0.25, "min_actuals": 12, "action": "retrain"}
    policy.update(monitoring)
    return {
        "description": "50 stores, 3 of which shift after the cutoff",
        "data": {"source": source, "keys": ["store"], "time": "month", "targets": ["sales"]},
        "freq": "M",
        "horizon": 12,
        "forecaster": {"class": "ThetaForecaster", "params": {"sp": 12}},
        "coverage": [0.8, 0.95, 0.99],
        "quantiles": [0.1, 0.5, 0.9],
        "promotion": {"policy": "always"},
        "monitoring": policy,
    }


def write_model(registry: Path, name: str, **monitoring: Any) -> Path:
    folder = registry / name
    folder.mkdir(parents=True, exist_ok=True)
    history().to_csv(folder / "history.csv", index=False)
    (folder / "model.yaml").write_text(yaml.safe_dump(spec({"path": "history.csv"}, **monitoring)))
    return folder


def actuals_after(registry: Registry, name: str, version: int = 1, shift: float = SHIFT) -> pd.DataFrame:
    """Actuals for the first `AFTER` months of the version's precomputed forecast: the point
    forecast plus a little noise (well inside every interval), 3 series shifted by `SHIFT`."""
    manifest = registry.read_manifest(name, version)
    forecast = registry.read_precomputed(name, version, manifest)
    assert forecast is not None
    rng = np.random.default_rng(11)
    months = sorted(forecast["month"].unique())[:AFTER]
    rows = forecast[forecast["month"].isin(months)].copy()
    half = (rows["sales_upper_80"] - rows["sales_lower_80"]) / 2
    rows["value"] = rows["sales"] + 0.05 * half * rng.uniform(-1, 1, size=len(rows))
    rows.loc[rows["store"].isin(SHIFTED), "value"] += shift
    return pd.DataFrame(
        {"store": rows["store"].to_numpy(), "month": rows["month"].dt.strftime("%Y-%m"), "sales": rows["value"]}
    ).reset_index(drop=True)


def wire(table: pd.DataFrame) -> dict[str, list[Any]]:
    return {c: table[c].tolist() for c in table.columns}


@pytest.fixture(scope="session")
def trained_shift(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with the model `shift` trained once (v1, production, with its backtest promise)."""
    root = tmp_path_factory.mktemp("monitoring") / "models"
    write_model(root, "shift")
    train_and_publish(Registry(root), "shift")
    return root
