"""Progress of a panel fit counts series as the chunks of per-series fits finish; the
fitted model is the same as sktime's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sktime.forecasting.theta import ThetaForecaster

from service.datasets.store import DatasetStore
from service.forecasting import training
from service.forecasting.specs import parse_model_spec, write_spec
from service.jobs.retrain import RetrainParams, retrain
from service.registry.store import Registry

SERIES, LENGTH = 40, 48


def panel_csv(path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    months = pd.period_range("2018-01", periods=LENGTH, freq="M").strftime("%Y-%m-01")
    frame = pd.DataFrame(
        {
            "shop": np.repeat([f"shop{i:02d}" for i in range(SERIES)], LENGTH),
            "month": np.tile(months, SERIES),
            "sales": 50 + rng.gamma(4, 5, SERIES * LENGTH),
        }
    )
    frame.to_csv(path, index=False)
    return frame


def spec(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "panel",
        "data": {"source": source, "keys": ["shop"], "time": "month", "targets": ["sales"]},
        "freq": "M",
        "horizon": 6,
        "forecaster": {"class": "ThetaForecaster", "params": {"sp": 12}},
    }


def assert_counts_series(fitting: list[tuple[int, int | None]]) -> None:
    counted = [done for done, total in fitting if total == SERIES]
    assert counted, fitting
    assert counted == sorted(counted), f"progress went back: {fitting}"
    assert max(counted) <= SERIES
    assert any(0 < done < SERIES for done in counted), f"no count between 0 and {SERIES}: {fitting}"


def test_panel_fit_reports_series_as_they_finish(tmp_path: Path) -> None:
    frame = panel_csv(tmp_path / "shops.csv")
    reports: list[tuple[int, int]] = []
    model_spec = parse_model_spec(spec({"path": "shops.csv"}))
    fitted = training.fit_spec(model_spec, frame, parallel=True, progress=lambda d, t: reports.append((d, t)))
    assert_counts_series(list(reports))
    # the counting backend is gone from the published model's config
    assert fitted.forecaster.get_config()["backend:parallel"] == "loky"

    direct = ThetaForecaster(sp=12).fit(fitted.y, fh=list(range(1, 7)))
    pd.testing.assert_frame_equal(fitted.forecaster.predict(), direct.predict())


def test_retrain_job_progress_counts_series_fitted(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    registry, datasets = Registry(tmp_path / "models"), DatasetStore(tmp_path / "data")
    write_spec(registry, "shops", spec({"path": "shops.csv"}))
    panel_csv(registry.model_dir("shops") / "shops.csv")
    events: list[tuple[str, int, int | None]] = []

    result = retrain(registry, datasets, "shops", RetrainParams(), progress=lambda *e: events.append(e))

    fitting = [(done, total) for stage, done, total in events if stage == "fitting"]
    assert_counts_series(fitting)
    assert fitting[-1] == (SERIES, SERIES)
    assert result["version"] == 1
