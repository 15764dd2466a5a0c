"""Every demo spec fits on its shipped data and its published version serves forecasts."""

from __future__ import annotations

import numpy as np
import pytest

from service.registry.store import Registry
from tests.conftest import DEMO_MODELS, DEMO_SPECS


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_demo_model_is_trained_published_and_promoted(trained_registry_path, name: str) -> None:
    registry = Registry(trained_registry_path)
    assert registry.list_versions(name) == [1]
    assert registry.read_aliases(name) == {"production": 1}
    manifest = registry.read_manifest(name, 1)
    assert manifest["fit_seconds"] > 0
    forecaster = registry.load(name, 1).forecaster
    assert forecaster.is_fitted


def test_demo_kinds_cover_single_panel_hierarchical_exogenous_and_multivariate(trained_registry_path) -> None:
    registry = Registry(trained_registry_path)
    manifests = {name: registry.read_manifest(name, 1) for name in DEMO_MODELS}
    assert manifests["airline"]["kind"] == "single"
    assert manifests["airline"]["capabilities"]["pred_int"]["available"] is True
    assert manifests["tourism-monthly"]["kind"] == "panel"
    assert manifests["tourism-monthly"]["series"]["count"] >= 30
    assert manifests["sales-hierarchy"]["kind"] == "hierarchical"
    assert manifests["uschange"]["capabilities"]["exogenous"]["required"] is True
    assert len(manifests["macro-var"]["schema"]["targets"]) >= 2


def test_hierarchical_demo_is_reconciled_with_mint(trained_registry_path) -> None:
    forecaster = Registry(trained_registry_path).load("sales-hierarchy", 1).forecaster
    assert type(forecaster).__name__ == "ReconcilerForecaster"
    assert forecaster.method.startswith("mint")
    predicted = forecaster.predict(fh=[1, 2])
    total = predicted.loc[("__total", "__total")]["sales"].to_numpy()
    leaves = predicted[[("__total" not in idx[:2]) for idx in predicted.index]]
    np.testing.assert_allclose(total, leaves.groupby(level=-1)["sales"].sum().to_numpy(), rtol=1e-9)


def test_pitfall_autoets_intervals_are_recorded_unavailable_not_served(tmp_path) -> None:
    """SPEC pitfall: AutoETS(auto=True).predict_interval raises inside statsmodels with
    sktime 1.2: the manifest records it unavailable with the reason."""
    import yaml

    from service.forecasting.training import train_and_publish

    spec = yaml.safe_load((DEMO_SPECS / "airline" / "model.yaml").read_text())
    spec["forecaster"] = {"class": "AutoETS", "params": {"auto": True, "sp": 12, "n_jobs": 1}}
    (tmp_path / "ets").mkdir()
    (tmp_path / "ets" / "model.yaml").write_text(yaml.safe_dump(spec))
    registry = Registry(tmp_path)
    version = train_and_publish(registry, "ets")
    status = registry.read_manifest("ets", version)["capabilities"]["pred_int"]
    assert status["available"] is False
    assert "publish time" in status["reason"] and "TypeError" in status["reason"]
    assert registry.read_manifest("ets", version)["precomputed"]["coverage"] == []
    # and a request for intervals is a 422 naming the reason, never a 500
    from service.errors import CapabilityUnavailable
    from service.forecasting.served import Limits, PredictQuery, ServedVersion

    loaded = registry.load("ets", version)
    served = ServedVersion("ets", version, loaded.manifest, loaded.forecaster, None)
    with pytest.raises(CapabilityUnavailable, match="simulate"):
        served.answer(PredictQuery(horizon=3, coverage=(0.9,)), Limits())
