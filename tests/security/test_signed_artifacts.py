"""Signed manifests (FORECAST_SIGNING_KEY): HMAC checked before a single byte is unpickled."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import IntegrityError, ServiceError
from service.registry.store import Registry, library_versions, sign_manifest
from tests.conftest import make_settings, wait_ready

from .conftest import Boom, copy_models, publish_naive

KEY = b"signing-key-for-tests-0123456789"
OTHER_KEY = b"another-signing-key-0123456789ab"


def manifest_path(registry: Registry, version: int, name: str = "toy") -> Path:
    return registry.version_dir(name, version) / "manifest.json"


def read_manifest(registry: Registry, version: int, name: str = "toy") -> dict[str, Any]:
    return json.loads(manifest_path(registry, version, name).read_text())


def write_manifest(registry: Registry, version: int, manifest: dict[str, Any], name: str = "toy") -> None:
    manifest_path(registry, version, name).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def plant_boom(registry: Registry, version: int, marker: Path, *, resign: bytes | None = None) -> None:
    """Replace the artifact with code that runs on unpickling, and make the manifest vouch
    for its size and sha256 — as an attacker with write access to the folder would. Only
    with ``resign`` (the key) is the HMAC updated too."""
    malicious = pickle.dumps(Boom(marker))
    (registry.version_dir("toy", version) / "artifact.pkl").write_bytes(malicious)
    manifest = read_manifest(registry, version)
    digest = {"sha256": hashlib.sha256(malicious).hexdigest(), "size": len(malicious)}
    manifest["files"]["artifact.pkl"] = digest
    manifest["artifact"].update(digest)
    if resign is not None:
        manifest["signature"]["value"] = sign_manifest(manifest, resign)
    write_manifest(registry, version, manifest)


@pytest.fixture
def signed(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "models", signing_key=KEY)
    assert publish_naive(registry) == 1
    return registry


# --------------------------------------------------------------------------- the registry
def test_publish_signs_the_manifest_and_load_accepts_it(signed: Registry) -> None:
    manifest = read_manifest(signed, 1)
    assert manifest["signature"]["alg"] == "HMAC-SHA256"
    assert len(manifest["signature"]["value"]) == 64
    assert manifest["signature"]["value"] == sign_manifest(manifest, KEY)
    loaded = signed.load("toy", 1)
    assert loaded.manifest["version"] == 1
    assert loaded.forecaster.predict(fh=[1]).shape[0] == 3
    assert len(signed.read_training("toy", 1)) == 3 * 36


def test_tampered_artifact_with_vouching_manifest_is_refused_before_unpickling(
    signed: Registry, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled.marker"
    plant_boom(signed, 1, marker)  # sha256 and size match the bytes; the HMAC does not
    with pytest.raises(IntegrityError, match="signature"):
        signed.load("toy", 1)
    assert not marker.exists(), "the artifact was unpickled before the signature was checked"
    # the control: the same files with a valid HMAC would have run their code on load
    plant_boom(signed, 1, marker, resign=KEY)
    signed.load("toy", 1)
    assert marker.exists()


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda m: m["forecaster"]["params"].update(strategy="mean"), id="param"),
        pytest.param(lambda m: m.update(horizon=m["horizon"] + 1), id="horizon"),
        pytest.param(lambda m: m["schema"].update(freq="D"), id="schema"),
        pytest.param(lambda m: m.update(extra="added"), id="added-field"),
        pytest.param(lambda m: m["signature"].update(alg="none"), id="algorithm"),
        pytest.param(lambda m: m["signature"].update(value=m["signature"]["value"].upper()), id="case"),
    ],
)
def test_tampered_manifest_is_refused(signed: Registry, tmp_path: Path, tamper: Any) -> None:
    marker = tmp_path / "unpickled.marker"
    plant_boom(signed, 1, marker, resign=KEY)  # a signed boom: only the manifest change stands in the way
    manifest = read_manifest(signed, 1)
    tamper(manifest)
    write_manifest(signed, 1, manifest)
    with pytest.raises(IntegrityError):
        signed.load("toy", 1)
    with pytest.raises(IntegrityError):
        signed.read_training("toy", 1)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["deleted", "empty", "null"])
def test_missing_signature_is_refused(signed: Registry, tmp_path: Path, how: str) -> None:
    marker = tmp_path / "unpickled.marker"
    plant_boom(signed, 1, marker, resign=KEY)
    manifest = read_manifest(signed, 1)
    if how == "deleted":
        del manifest["signature"]
    elif how == "empty":
        manifest["signature"] = {"alg": "HMAC-SHA256", "value": ""}
    else:
        manifest["signature"] = None
    write_manifest(signed, 1, manifest)
    with pytest.raises(IntegrityError, match="not signed"):
        signed.load("toy", 1)
    assert not marker.exists()


def test_versions_published_without_a_key_are_refused_by_a_signing_registry(tmp_path: Path) -> None:
    unsigned = Registry(tmp_path / "models")
    publish_naive(unsigned)
    assert "signature" not in read_manifest(unsigned, 1)
    with pytest.raises(IntegrityError, match="not signed"):
        Registry(tmp_path / "models", signing_key=KEY).load("toy", 1)


def test_wrong_key_is_refused(signed: Registry, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.marker"
    plant_boom(signed, 1, marker, resign=KEY)
    with pytest.raises(IntegrityError, match="signature"):
        Registry(signed.root, signing_key=OTHER_KEY).load("toy", 1)
    assert not marker.exists()
    # an attacker who signs with a key of their own gets nowhere either
    plant_boom(signed, 1, marker, resign=OTHER_KEY)
    with pytest.raises(IntegrityError):
        signed.load("toy", 1)
    assert not marker.exists()


# --------------------------------------------------------------------------- library versions
def current(lib: str) -> str:
    version = library_versions()[lib]
    assert version is not None
    return version


def set_library(registry: Registry, lib: str, version: str) -> None:
    manifest = read_manifest(registry, 1)
    manifest["libraries"][lib] = version
    manifest["signature"]["value"] = sign_manifest(manifest, KEY)  # a legitimately signed manifest
    write_manifest(registry, 1, manifest)


def test_library_major_version_mismatch_is_refused_with_a_clear_message(signed: Registry) -> None:
    now = current("sktime")
    old = "0.1.0" if not now.startswith("0.") else "9.0.0"
    set_library(signed, "sktime", old)
    with pytest.raises(ServiceError) as refused:
        signed.load("toy", 1)
    message = refused.value.detail
    assert "sktime" in message and old in message and now in message, message
    assert "retrain" in message or "publish" in message, message


def test_library_minor_version_difference_loads_with_a_warning(
    signed: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    major, minor, *_ = current("sktime").split(".")
    other = f"{major}.{int(minor) + 1}.0"
    set_library(signed, "sktime", other)
    with caplog.at_level(logging.WARNING, logger="service"):
        loaded = signed.load("toy", 1)
    assert loaded.manifest["libraries"]["sktime"] == other
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("sktime" in w and other in w for w in warnings), warnings


def test_library_patch_difference_loads(signed: Registry) -> None:
    major, minor, *_ = current("sktime").split(".")
    set_library(signed, "sktime", f"{major}.{minor}.9999")
    signed.load("toy", 1)


# --------------------------------------------------------------------------- through the app
def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_tampered_new_version_is_refused_and_the_old_one_keeps_serving(signed: Registry, tmp_path: Path) -> None:
    signed.set_alias("toy", "production", 1)
    settings = make_settings(signed.root, signing_key=KEY.decode(), scheduler=False)
    marker = tmp_path / "unpickled.marker"
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        before = client.post("/v1/models/toy/predict", json={"horizon": 3})
        assert before.status_code == 200 and before.json()["version"] == 1

        assert publish_naive(signed, seed=1) == 2
        plant_boom(signed, 2, marker)
        # the alias flips at file level by someone holding the key (an operator's CLI, a CI
        # job): the aliases file verifies, the server must still refuse v2
        Registry(signed.root, signing_key=KEY).set_alias("toy", "production", 2)

        def refused() -> bool:
            return "2" in client.get("/v1/models/toy").json()["load_errors"]

        wait_for(refused)
        detail = client.get("/v1/models/toy").json()
        assert "signature" in detail["load_errors"]["2"], detail
        assert detail["aliases"] == {"production": 2}
        assert detail["serving"] == {"production": 1}, detail
        after = client.post("/v1/models/toy/predict", json={"horizon": 3})
        assert after.status_code == 200, after.text
        assert after.json()["version"] == 1
        assert after.json()["forecast"] == before.json()["forecast"]
        # asking for v2 by number is refused too, as a problem, not a 500
        by_number = client.post("/v1/models/toy/predict", json={"horizon": 3, "version": 2})
        assert 400 <= by_number.status_code < 500, by_number.text
        assert by_number.headers["content-type"].startswith("application/problem+json")
        # and an alias move through the API to v2 is refused without moving anything
        moved = client.put("/v1/models/toy/aliases/candidate", json={"version": 2})
        assert 400 <= moved.status_code < 500, moved.text
        assert "candidate" not in signed.read_aliases("toy")
    assert not marker.exists(), "a refused artifact was unpickled"


def test_signing_server_refuses_unsigned_registry_and_says_why(trained_registry_path: Path, tmp_path: Path) -> None:
    registry = copy_models(trained_registry_path, tmp_path / "models", ["airline"])
    settings = make_settings(registry, signing_key=KEY.decode(), scheduler=False)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while (ready := client.get("/readyz")).json().get("problems") == {"registry": "not scanned yet"}:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert ready.status_code == 503, ready.text
        # an unsigned registry: its aliases.json is refused first (/readyz is open: a category)
        assert ready.json()["problems"]["airline"] == "aliases.json unreadable"
        assert "not signed" in client.get("/v1/models/airline").json()["aliases_error"]
        response = client.post("/v1/models/airline/predict", json={"horizon": 3})
        assert 400 <= response.status_code < 600 and response.status_code != 500, response.text
        assert "not signed" in response.json()["detail"]
