"""Model registry routes: listing, detail, manifests, alias moves (promote / roll back)
and what predict serves after them; health, OpenAPI and the forecast plot."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from tests.conftest import make_settings, wait_ready

DEMO = {
    # name: (kind, freq, series_count, cutoff)
    "airline": ("single", "M", 1, "1960-12-01"),
    "macro-var": ("single", "Q-DEC", 1, "2009-07-01"),
    "sales-hierarchy": ("hierarchical", "M", 4, "2004-12-01"),
    "tourism-monthly": ("panel", "M", 60, "2007-12-01"),
    "uschange": ("single", None, 1, 186),
}
PNG = b"\x89PNG\r\n\x1a\n"


def assert_problem(response: Any, status: int, *mentions: str) -> dict[str, Any]:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    for word in mentions:
        assert word in json.dumps(body), f"{word!r} not in {body}"
    return body


def aliases_bytes(root: Path, name: str) -> bytes:
    return (root / name / "aliases.json").read_bytes()


def version_dirs(root: Path, name: str) -> list[str]:
    return sorted(p.name for p in (root / name / "versions").iterdir())


@pytest.fixture(scope="module")
def served(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """Read-only tests share one app on a module-private copy of the demo registry."""
    root = tmp_path_factory.mktemp("routes") / "models"
    shutil.copytree(trained_registry_path, root, ignore=shutil.ignore_patterns(".lock"))
    with TestClient(create_app(make_settings(root)), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client, root


@pytest.fixture
def api(served: tuple[TestClient, Path]) -> TestClient:
    return served[0]


# --------------------------------------------------------------------------- listing and detail
def test_list_models(api: TestClient) -> None:
    r = api.get("/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == set(DEMO)
    for name, (kind, freq, count, _) in DEMO.items():
        m = models[name]
        assert (m["kind"], m["freq"], m["series_count"], m["production_version"]) == (kind, freq, count, 1), name
        assert m["description"], name
        assert m["last_trained"], name


def test_model_detail(api: TestClient) -> None:
    for name, (_, _, _, cutoff) in DEMO.items():
        r = api.get(f"/v1/models/{name}")
        assert r.status_code == 200, r.text
        detail = r.json()
        assert detail["name"] == name
        assert detail["aliases"] == {"production": 1}
        assert detail["serving"] == {"production": 1}
        assert [v["version"] for v in detail["versions"]] == [1]
        v1 = detail["versions"][0]
        assert v1["cutoff"] == cutoff
        assert v1["created_at"]
        assert v1["forecaster"]
        assert detail["spec"]["forecaster"]["class"]
        assert 1 in detail["loaded_versions"]
        assert detail["load_errors"] == {}


def test_version_manifest(api: TestClient, served: tuple[TestClient, Path]) -> None:
    _, root = served
    for name, (kind, freq, count, cutoff) in DEMO.items():
        r = api.get(f"/v1/models/{name}/versions/1")
        assert r.status_code == 200, r.text
        manifest = r.json()
        assert manifest["model"] == name
        assert manifest["version"] == 1
        assert manifest["cutoff"] == cutoff
        assert (manifest["kind"], manifest["freq"]) == (kind, freq)
        assert manifest["series"]["count"] == count
        artifact = (root / name / "versions" / "1" / manifest["artifact"]["file"]).read_bytes()
        assert manifest["artifact"]["sha256"] == hashlib.sha256(artifact).hexdigest()
        assert manifest["artifact"]["size"] == len(artifact)
        assert manifest["libraries"]["sktime"]
        assert manifest["schema"]["kind"] == kind
        assert set(manifest["capabilities"]) >= {"pred_int", "quantiles"}


def test_capabilities_recorded_in_manifests(api: TestClient) -> None:
    caps = {name: api.get(f"/v1/models/{name}/versions/1").json()["capabilities"] for name in DEMO}
    assert caps["airline"]["pred_int"]["available"] and caps["airline"]["quantiles"]["available"]
    assert caps["macro-var"]["pred_int"]["available"]
    assert not caps["macro-var"]["quantiles"]["available"] and caps["macro-var"]["quantiles"]["reason"]
    assert caps["tourism-monthly"]["pred_int"]["available"] and caps["tourism-monthly"]["quantiles"]["available"]
    assert not caps["sales-hierarchy"]["pred_int"]["available"] and caps["sales-hierarchy"]["pred_int"]["reason"]
    assert caps["uschange"]["exogenous"]["required"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/models/no-such-model", 404),
        ("/v1/models/no-such-model/versions/1", 404),
        ("/v1/models/airline/versions/9", 404),
        ("/v1/models/airline/versions/0", 422),
        ("/v1/models/airline/versions/one", 422),
    ],
)
def test_unknown_things_are_problems(api: TestClient, path: str, status: int) -> None:
    assert_problem(api.get(path), status)


# --------------------------------------------------------------------------- health, docs
def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").status_code == 200
    r = api.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"
    assert set(r.json()["models"]) == set(DEMO)


def _model_for_example(example: dict[str, Any]) -> str:
    if "exogenous" in example:
        return "uschange"
    if "series" in example:
        return "sales-hierarchy"
    return "airline"


def test_openapi_documents_predict_with_working_examples(api: TestClient) -> None:
    r = api.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    operation = spec["paths"]["/v1/models/{name}/predict"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    examples = schema.get("examples") or []
    assert len(examples) >= 3
    for field in ("horizon", "fh", "timestamps", "series", "coverage", "quantiles", "exogenous", "observations"):
        assert field in schema["properties"], field
    assert {"404", "413", "422"} <= set(operation["responses"])
    # the documented examples are real requests against the demo models
    for example in examples:
        name = _model_for_example(example)
        answer = api.post(f"/v1/models/{name}/predict", json=example)
        assert answer.status_code == 200, (example, answer.text)
    assert api.get("/docs").status_code == 200


# --------------------------------------------------------------------------- forecast.png
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("airline", {"coverage": "0.8"}),
        ("airline", {"coverage": "0.95", "horizon": "24"}),
        ("sales-hierarchy", {"series": "Food preparation/Hobs"}),
        ("sales-hierarchy", [("series", "Food preparation/__total"), ("series", "__total/__total")]),
        ("tourism-monthly", {"series": "T001", "horizon": "6"}),
        ("macro-var", {"coverage": "0.8"}),
    ],
    ids=["airline", "airline-24", "hierarchy-leaf", "hierarchy-totals", "tourism", "var"],
)
def test_forecast_png(api: TestClient, name: str, params: Any) -> None:
    r = api.get(f"/v1/models/{name}/forecast.png", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG)
    assert len(r.content) > 1000


@pytest.mark.parametrize(
    ("name", "params", "status"),
    [
        ("sales-hierarchy", {"series": "Food preparation/Nope"}, 404),
        ("sales-hierarchy", {"series": "Food preparation"}, 422),
        ("sales-hierarchy", {"coverage": "0.8"}, 422),  # no intervals (tourism-monthly has conformal ones)
        ("airline", {"coverage": "1.5"}, 422),
        ("airline", {"horizon": "0"}, 422),
        ("airline", {"horizon": "501"}, 422),
        ("no-such-model", {}, 404),
        ("uschange", {}, 422),
    ],
)
def test_forecast_png_problems(api: TestClient, name: str, params: dict[str, str], status: int) -> None:
    assert_problem(api.get(f"/v1/models/{name}/forecast.png", params=params), status)


# --------------------------------------------------------------------------- aliases (mutating: private app)
def _publish_v2(registry: Registry, name: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_and_publish(registry, name, promote=False)


def _served_version(client: TestClient, name: str, body: dict[str, Any], expected: int, timeout: float = 10.0) -> int:
    """Predict until the answer comes from ``expected`` (the move is immediate, the loop only
    keeps a slow machine from failing the test); returns the last version seen."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.post(f"/v1/models/{name}/predict", json=body)
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        assert r.headers["x-model-version"] == str(version)
        if version == expected or time.monotonic() > deadline:
            return version
        time.sleep(0.05)


def test_alias_move_promotes_and_rolls_back(client: TestClient, registry: Registry, registry_path: Path) -> None:
    name = "macro-var"
    before = client.post(f"/v1/models/{name}/predict", json={})  # cached fast answer of v1
    assert before.json()["version"] == 1
    assert _publish_v2(registry, name) == 2
    assert json.loads(aliases_bytes(registry_path, name)) == {"production": 1}
    # publishing without promotion changes nothing served
    assert _served_version(client, name, {}, expected=1) == 1
    # a version can be asked for by number before any alias points at it (once the
    # registry poll has seen it: poll_interval is 0.2 s here)
    deadline = time.monotonic() + 10
    while True:
        r = client.post(f"/v1/models/{name}/predict", json={"version": 2, "horizon": 2})
        if r.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2

    r = client.put(f"/v1/models/{name}/aliases/production", json={"version": 2})
    assert r.status_code == 200, r.text
    assert r.json() == {"model": name, "alias": "production", "version": 2, "aliases": {"production": 2}}
    assert json.loads(aliases_bytes(registry_path, name)) == {"production": 2}
    assert _served_version(client, name, {}, expected=2) == 2
    assert _served_version(client, name, {"horizon": 10, "coverage": [0.5]}, expected=2) == 2
    detail = client.get(f"/v1/models/{name}").json()
    assert detail["aliases"] == {"production": 2}
    assert detail["serving"] == {"production": 2}
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed[name]["production_version"] == 2
    assert client.get(f"/v1/models/{name}/versions/2").json()["version"] == 2

    # roll back
    r = client.put(f"/v1/models/{name}/aliases/production", json={"version": 1})
    assert r.status_code == 200, r.text
    assert json.loads(aliases_bytes(registry_path, name)) == {"production": 1}
    assert _served_version(client, name, {}, expected=1) == 1
    assert client.post(f"/v1/models/{name}/predict", json={}).content == before.content


def test_new_alias_serves_its_version(client: TestClient, registry: Registry, registry_path: Path) -> None:
    name = "airline"
    assert _publish_v2(registry, name) == 2
    r = client.put(f"/v1/models/{name}/aliases/candidate", json={"version": 2})
    assert r.status_code == 200, r.text
    assert json.loads(aliases_bytes(registry_path, name)) == {"candidate": 2, "production": 1}
    assert _served_version(client, name, {"alias": "candidate"}, expected=2) == 2
    assert _served_version(client, name, {}, expected=1) == 1
    assert client.get(f"/v1/models/{name}").json()["serving"] == {"candidate": 2, "production": 1}


@pytest.mark.parametrize(
    ("model", "alias", "body", "status"),
    [
        ("airline", "production", {"version": 5}, 404),
        ("airline", "candidate", {"version": 2}, 404),
        ("no-such-model", "production", {"version": 1}, 404),
        ("airline", "Bad Alias", {"version": 1}, 422),
        ("airline", "PRODUCTION", {"version": 1}, 422),
        ("airline", "1st", {"version": 1}, 422),
        ("airline", "a" * 40, {"version": 1}, 422),
        ("airline", "production", {"version": 0}, 422),
        ("airline", "production", {"version": "1"}, 422),
        ("airline", "production", {}, 422),
        ("airline", "production", {"version": 1, "extra": True}, 422),
    ],
    ids=[
        "no-version",
        "no-version-new-alias",
        "no-model",
        "space",
        "upper-case",
        "digit-first",
        "too-long",
        "version-zero",
        "version-string",
        "no-body-field",
        "extra-field",
    ],
)
def test_bad_alias_moves_change_nothing(
    api: TestClient, served: tuple[TestClient, Path], model: str, alias: str, body: dict[str, Any], status: int
) -> None:
    _, root = served
    before = {name: aliases_bytes(root, name) for name in DEMO}
    versions = {name: version_dirs(root, name) for name in DEMO}
    assert_problem(api.put(f"/v1/models/{model}/aliases/{alias}", json=body), status)
    assert {name: aliases_bytes(root, name) for name in DEMO} == before
    assert {name: version_dirs(root, name) for name in DEMO} == versions
    assert not (root / "no-such-model").exists()
    assert api.get("/v1/models/airline").json()["serving"] == {"production": 1}
