"""The reviewed allow-list: no class that evaluates, imports or loads code from a parameter,
a mechanical audit of every entry, and the FhPlexForecaster payload refused for real."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.errors import SpecError
from service.forecasting.allowlist import ALLOWED, FAMILIES, REVIEWED, allowed_classes, audit_class
from service.forecasting.specs import build_estimator, parse_model_spec
from tests.factories import wait_for

from .conftest import ADMIN_KEY, KEYS, READ_KEY, ServerFactory, copy_models


def payload(marker: Path) -> str:
    """What outside testing sent: sktime's FhPlexForecaster passes ``fh_params`` to ``eval``."""
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned') and (lambda ix: {{}})"


def evil_spec(marker: Path) -> dict:
    return {
        "data": {"source": {"builtin": "airline"}, "time": "month", "targets": ["passengers"]},
        "freq": "M",
        "horizon": 3,
        "forecaster": {
            "class": "FhPlexForecaster",
            "params": {"forecaster": {"class": "NaiveForecaster"}, "fh_params": payload(marker)},
        },
    }


@pytest.mark.parametrize(
    "name",
    [
        "FhPlexForecaster",  # eval() of fh_params
        "sktime.forecasting.compose._fhplex.FhPlexForecaster",
        "AutoResearchForecaster",  # craft() of a string
        "LagLlamaForecaster",  # torch.load(weights_only=False) of a path
        "HFTransformersForecaster",  # loads a model from a hub name or path
        "MOIRAIForecaster",
        "FunctionTransformer",  # sklearn: a callable by construction
    ],
)
def test_code_loading_classes_are_not_in_the_allow_list(name: str) -> None:
    with pytest.raises(SpecError, match="allow-list"):
        build_estimator({"class": name, "params": {}})


def test_the_allow_list_is_the_explicit_set_and_every_entry_imports() -> None:
    classes = allowed_classes()
    assert set(classes) == set(ALLOWED)  # nothing crawled from sktime's registry, nothing missing
    assert len(ALLOWED) == sum(len(f) for f in FAMILIES.values())  # no name in two families
    for family in ("statistical", "reduction", "composition", "reconciliation", "transformers", "regressors"):
        assert FAMILIES[family]


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_every_allowed_class_passes_the_code_carrying_audit(name: str) -> None:
    """Check 1 (parameter names) and check 2 (eval/import/unpickle/open calls in the class's
    library source) of `audit_class`; a finding must be reviewed in REVIEWED."""
    assert audit_class(name, allowed_classes()[name]) == []


def test_the_audit_catches_the_known_bad_classes() -> None:
    """The audit can fail: it flags FhPlexForecaster's eval and a path-like parameter."""
    from sktime.forecasting.compose._fhplex import FhPlexForecaster

    assert any("eval(" in f for f in audit_class("FhPlexForecaster", FhPlexForecaster))

    class Loader:
        def __init__(self, model_path: str = "", weights: str = "") -> None: ...

    findings = audit_class("Loader", Loader)
    assert any("model_path" in f for f in findings) and any("weights" in f for f in findings)


def test_every_reviewed_exception_names_an_allowed_class() -> None:
    for (cls, _), (verdict, reason) in REVIEWED.items():
        assert cls in ALLOWED and verdict in ("allow", "refuse") and reason


@pytest.mark.parametrize(
    "node",
    [
        # LightGBM reads a file from these through **kwargs
        {"class": "LGBMRegressor", "params": {"forcedsplits_filename": "/etc/passwd"}},
        {"class": "LGBMRegressor", "params": {"input_model": "/tmp/model.txt"}},
        {"class": "XGBRegressor", "params": {"callbacks": ["x"]}},
        {"class": "SARIMAX", "params": {"callback": "print"}},
        {
            "class": "make_reduction",
            "params": {"estimator": {"class": "LGBMRegressor", "params": {"forcedbins_filename": "x.json"}}},
        },
    ],
)
def test_code_or_file_carrying_parameters_are_refused_at_build(node: dict) -> None:
    with pytest.raises(SpecError, match="may carry code"):
        build_estimator(node)


def test_reviewed_parameters_stay_usable() -> None:
    ensemble = build_estimator(
        {
            "class": "EnsembleForecaster",
            "params": {
                "forecasters": [["a", {"class": "NaiveForecaster"}], ["b", {"class": "ThetaForecaster"}]],
                "weights": [0.5, 0.5],
            },
        }
    )
    assert ensemble.weights == [0.5, 0.5]


def test_the_payload_spec_is_refused_without_evaluating(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(SpecError, match="FhPlexForecaster"):
        parse_model_spec(evil_spec(marker))
    assert not marker.exists()


@pytest.mark.slow
def test_the_payload_never_runs_on_a_real_server(
    trained_registry_path: Path, tmp_path: Path, start_server: ServerFactory
) -> None:
    """PUT (admin) is refused; the same spec written to disk by hand makes retrain fail and
    backtests find nothing to run: the marker file never appears."""
    marker = tmp_path / "pwned"
    registry = copy_models(trained_registry_path, tmp_path / "models", ["airline"])
    server = start_server(registry, FORECAST_API_KEYS=KEYS, FORECAST_DATA_DIR=str(tmp_path / "data"))
    server.wait_ready()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    read = {"Authorization": f"Bearer {READ_KEY}"}
    with server.client(timeout=30) as http:
        put = http.put("/v1/models/evil", json=evil_spec(marker), headers=admin)
        assert put.status_code == 422, put.text
        assert "FhPlexForecaster" in put.json()["detail"]
        assert http.get("/v1/models/evil", headers=read).status_code == 404

        (registry / "evil").mkdir()
        (registry / "evil" / "model.yaml").write_text(yaml.safe_dump(evil_spec(marker)))
        retrain = http.post("/v1/models/evil/retrain", json={"promote": "always"}, headers=admin)
        if retrain.status_code in (200, 202):
            job_id = retrain.json()["id"]
            wait_for(
                lambda: http.get(f"/v1/jobs/{job_id}", headers=read).json()["status"] in ("failed", "succeeded"),
                60,
                "the retrain to finish",
            )
            job = http.get(f"/v1/jobs/{job_id}", headers=read).json()
            assert job["status"] == "failed" and "FhPlexForecaster" in job["error"], job
        else:
            assert retrain.status_code in (409, 422), retrain.text
        backtest = http.post("/v1/models/evil/backtests", json={"splitter": {"folds": 2}}, headers=read)
        assert 400 <= backtest.status_code < 500, backtest.text
        assert not (registry / "evil" / "versions").exists()
    assert not marker.exists()


def test_create_app_imports_the_allow_list_before_any_thread_starts(tmp_path: Path) -> None:
    """The startup import race: a scan unpickling a version while the scheduler's thread
    imported scikit-learn for the allow-list failed with 'partially initialized module'.
    A fresh process that only builds the app has every allow-listed module imported, on
    the main thread, and no thread of ours running yet."""
    import subprocess
    import sys

    code = (
        "import sys, threading\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        f"create_app(Settings(registry={str(tmp_path / 'models')!r}, data_dir={str(tmp_path / 'data')!r}))\n"
        "from service.forecasting.allowlist import ALLOWED\n"
        "missing = [p for p in ALLOWED.values() if p.split(':')[0] not in sys.modules]\n"
        "ours = [t.name for t in threading.enumerate() if t.name.startswith('sktime')]\n"
        "print(len(missing), 'sklearn.svm._base' in sys.modules, ours)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[:2] == ["0", "True"], out.stdout + out.stderr
    assert out.stdout.strip().endswith("[]"), out.stdout
