"""The first start (`serve --train-missing`) trains the quick models before it is ready and
the slow ones (``first_start: background``) after: /readyz does not wait for them, a predict
for one is a 503 problem saying it is training until its first version is published, then
it is served."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from service.registry.store import Registry

from .conftest import ServerFactory

pytestmark = pytest.mark.slow

DEMO_SPECS = Path(__file__).resolve().parents[2] / "models"
BACKGROUND_SPEC = {  # a real auto model on 12 Tourism series: seconds, not the demo's minutes
    "description": "12 Tourism series, the auto preset, trained after the server is ready",
    "kind": "panel",
    "data": {
        "source": {"builtin": "tourism-monthly", "series": 12, "length": 72},
        "keys": ["series"],
        "time": "month",
        "targets": ["visitors"],
    },
    "freq": "M",
    "horizon": 6,
    "forecaster": {"preset": "auto"},
    "coverage": [0.8],
    "first_start": "background",
}


def versions(registry: Path, name: str) -> list[str]:
    folder = registry / name / "versions"
    return sorted(p.name for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def test_first_start_is_ready_before_the_background_model_which_is_then_served(
    tmp_path: Path, start_server: ServerFactory
) -> None:
    registry = tmp_path / "models"
    (registry / "airline").mkdir(parents=True)
    shutil.copy(DEMO_SPECS / "airline" / "model.yaml", registry / "airline" / "model.yaml")
    (registry / "tourism-bg").mkdir()
    (registry / "tourism-bg" / "model.yaml").write_text(yaml.safe_dump(BACKGROUND_SPEC))

    server = start_server(registry, "--train-missing")
    server.wait_ready(timeout=120.0)
    assert versions(registry, "airline") == ["1"]
    assert versions(registry, "tourism-bg") == []  # readiness did not wait for it
    with server.client(timeout=30.0) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200 and "tourism-bg" not in ready.json()["problems"], ready.text
        early = http.post("/v1/models/tourism-bg/predict", json={"horizon": 3})
        if versions(registry, "tourism-bg") == []:  # still training: no production version yet
            assert early.status_code == 503, early.text
            assert early.headers["content-type"].startswith("application/problem+json")
            assert "training its first version" in early.json()["detail"]
            assert early.headers["retry-after"] == "30"
        assert http.post("/v1/models/airline/predict", json={"horizon": 3}).status_code == 200

        deadline = time.monotonic() + 240
        answer = None
        while time.monotonic() < deadline:
            answer = http.post("/v1/models/tourism-bg/predict", json={"horizon": 6, "coverage": [0.8]})
            if answer.status_code == 200:
                break
            time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, f"{answer and answer.text}\n{server.log()}"
        forecast = answer.json()["forecast"]
        assert len(set(forecast["series"])) == 12 and "visitors_lower_80" in forecast
        manifest = http.get("/v1/models/tourism-bg/versions/1").json()

    assert manifest["forecaster"]["class"] == "service.forecasting.auto.AutoStatistical"
    assert manifest["forecaster"]["params"]["sp"] == 12
    assert manifest["choices"]["series"] == 12 and len(manifest["choices"]["records"]) == 12
    store = Registry(registry)
    quick, slow = (store.read_manifest(n, 1)["created_at"] for n in ("airline", "tourism-bg"))
    assert quick <= slow
    assert store.read_aliases("tourism-bg") == {"production": 1}
    log = server.log_path.read_text(errors="replace")  # whole: sktime's warnings crowd the tail
    assert "training tourism-bg (1/1, in the background)" in log, server.log()
    assert log.index("trained airline v1") < log.index("training tourism-bg (1/1"), server.log()


def test_train_background_off_leaves_the_background_model_to_a_retrain(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.conftest import make_settings, wait_ready

    registry = tmp_path / "models"
    (registry / "airline").mkdir(parents=True)
    shutil.copy(DEMO_SPECS / "airline" / "model.yaml", registry / "airline" / "model.yaml")
    (registry / "tourism-bg").mkdir()
    (registry / "tourism-bg" / "model.yaml").write_text(yaml.safe_dump(BACKGROUND_SPEC))
    settings = make_settings(registry, train_missing=True, train_background=False, scheduler=False)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=120.0)
        time.sleep(3.0)  # the first start's thread ends after the quick models when background training is off
        assert versions(registry, "airline") == ["1"]
        assert versions(registry, "tourism-bg") == []
        answer = client.post("/v1/models/tourism-bg/predict", json={"horizon": 3})
        assert answer.status_code == 404, answer.text  # not training: no version, a plain 404
