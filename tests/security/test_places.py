"""Things bound to where they belong: `path` sources stay in the model folder (or the
sources root), signed manifests and aliases stay with their model and version, and a
key's backtests are bounded."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.datasets.sources import resolve_source_path
from service.errors import AliasesUnreadable, IntegrityError, SpecError
from service.registry.store import ALIAS_SIGNATURE, Registry
from tests.conftest import make_settings, wait_ready

from .conftest import ADMIN_KEY, KEYS, READ_KEY, publish_naive

KEY = b"signing-key-for-tests-0123456789"


# ----------------------------------------------------------------------------- path sources
def csv_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    months = pd.period_range("2000-01", periods=36, freq="M").astype(str)
    pd.DataFrame({"month": months, "y": range(36)}).to_csv(path, index=False)
    return path


def path_spec(source_path: str) -> dict:
    return {
        "data": {"source": {"path": source_path}, "time": "month", "targets": ["y"]},
        "freq": "M",
        "horizon": 3,
        "forecaster": {"class": "NaiveForecaster"},
        "promotion": {"policy": "always"},
    }


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "models" / "m"


def test_a_file_in_the_model_folder_is_a_source(model_dir: Path) -> None:
    csv_file(model_dir / "data" / "y.csv")
    assert resolve_source_path("data/y.csv", model_dir) == (model_dir / "data" / "y.csv").resolve()


@pytest.mark.parametrize("where", ["absolute", "dotdot", "other-model", "own-version", "symlink", "symlink-dir"])
def test_paths_outside_the_model_folder_are_refused(tmp_path: Path, model_dir: Path, where: str) -> None:
    outside = csv_file(tmp_path / "outside" / "secret.csv")
    other = csv_file(tmp_path / "models" / "other" / "versions" / "1" / "training.csv")
    model_dir.mkdir(parents=True, exist_ok=True)
    raw = {
        "absolute": str(outside),
        "dotdot": "../../outside/secret.csv",
        "other-model": "../other/versions/1/training.csv",
        "own-version": "versions/1/training.csv",
        "symlink": "link.csv",
        "symlink-dir": "linked/secret.csv",
    }[where]
    csv_file(model_dir / "versions" / "1" / "training.csv")
    (model_dir / "link.csv").symlink_to(outside)
    (model_dir / "linked").symlink_to(outside.parent, target_is_directory=True)
    assert other.exists()
    with pytest.raises(SpecError, match=r"outside the model's folder|published versions"):
        resolve_source_path(raw, model_dir)


def test_the_sources_root_is_allowed_when_configured(tmp_path: Path, model_dir: Path) -> None:
    shared = csv_file(tmp_path / "shared" / "y.csv")
    with pytest.raises(SpecError, match="outside"):
        resolve_source_path(str(shared), model_dir)
    assert resolve_source_path(str(shared), model_dir, tmp_path / "shared") == shared.resolve()


@pytest.fixture
def path_client(tmp_path: Path) -> Iterator[TestClient]:
    registry = tmp_path / "models"
    registry.mkdir()
    settings = make_settings(registry, sources_root=tmp_path / "shared")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize(
    ("source", "status"),
    [("data/y.csv", 202), ("{shared}/y.csv", 202), ("{outside}/secret.csv", 422), ("../../outside/secret.csv", 422)],
)
def test_retrain_refuses_a_source_outside_before_a_job_exists(
    path_client: TestClient, tmp_path: Path, source: str, status: int
) -> None:
    registry = tmp_path / "models"
    csv_file(registry / "m" / "data" / "y.csv")
    csv_file(tmp_path / "shared" / "y.csv")
    csv_file(tmp_path / "outside" / "secret.csv")
    spec = path_spec(source.format(shared=tmp_path / "shared", outside=tmp_path / "outside"))
    (registry / "m" / "model.yaml").write_text(yaml.safe_dump(spec))
    response = path_client.post("/v1/models/m/retrain", json={})
    assert response.status_code == status, response.text
    jobs = path_client.get("/v1/jobs").json()["jobs"]
    if status == 422:
        assert "outside" in response.json()["detail"]
        assert str(tmp_path) not in response.json()["detail"].replace(source.format(outside=tmp_path / "outside"), "")
        assert jobs == []
    else:
        assert len(jobs) == 1


# ----------------------------------------------------------------------------- signed places
def test_a_signed_version_copied_elsewhere_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path, signing_key=KEY)
    publish_naive(registry, "uschange", seed=1)
    publish_naive(registry, "airline", seed=2)
    publish_naive(registry, "airline", seed=3)
    # under another model
    shutil.copytree(registry.version_dir("airline", 1), registry.version_dir("uschange", 2))
    with pytest.raises(IntegrityError, match="belongs to airline v1"):
        registry.load("uschange", 2)
    # under another number of the same model
    shutil.copytree(registry.version_dir("airline", 1), registry.version_dir("airline", 7))
    with pytest.raises(IntegrityError, match="belongs to airline v1"):
        registry.load("airline", 7)
    assert registry.load("airline", 1).manifest["version"] == 1


def test_signed_aliases_verify_and_refuse_tampering_copies_and_replays(tmp_path: Path) -> None:
    registry = Registry(tmp_path, signing_key=KEY)
    for seed in (1, 2, 3):
        publish_naive(registry, "toy", seed=seed)
    publish_naive(registry, "other")
    aliases_file = registry.model_dir("toy") / "aliases.json"
    registry.set_alias("toy", "production", 1)
    old = aliases_file.read_bytes()
    registry.set_alias("toy", "production", 3)
    document = json.loads(aliases_file.read_bytes())
    assert document["production"] == 3 and document[ALIAS_SIGNATURE]["alg"] == "HMAC-SHA256"
    assert registry.read_aliases("toy") == {"production": 3}

    # a hand edit (roll back by file): the HMAC does not match
    aliases_file.write_text(json.dumps({**document, "production": 2}))
    with pytest.raises(AliasesUnreadable, match="does not match"):
        registry.read_aliases("toy")
    # an older signed file put back: a replay, refused by a process that saw the newer one
    aliases_file.write_bytes(old)
    with pytest.raises(AliasesUnreadable, match="replayed"):
        registry.read_aliases("toy")
    # a signed file of another model
    registry.set_alias("other", "production", 1)
    aliases_file.write_bytes((registry.model_dir("other") / "aliases.json").read_bytes())
    with pytest.raises(AliasesUnreadable, match="does not match"):
        registry.read_aliases("toy")
    # unsigned, with a key set
    aliases_file.write_text(json.dumps({"production": 1}))
    with pytest.raises(AliasesUnreadable, match="not signed"):
        registry.read_aliases("toy")
    # a move through the registry rewrites it from the last good aliases, signed again
    registry.set_alias("toy", "candidate", 2)
    assert registry.read_aliases("toy") == {"production": 3, "candidate": 2}
    # a fresh process (no memory of sequences) verifies the file too
    assert Registry(tmp_path, signing_key=KEY).read_aliases("toy") == {"production": 3, "candidate": 2}


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b'{"production": "3"}', b'{"production": true}', b'{"Prod uction": 1}']
)
def test_unreadable_aliases_raise_instead_of_reading_as_empty(tmp_path: Path, content: bytes) -> None:
    registry = Registry(tmp_path)
    publish_naive(registry, "toy")
    (registry.model_dir("toy") / "aliases.json").write_bytes(content)
    with pytest.raises(AliasesUnreadable):
        registry.read_aliases("toy")


def test_names_with_a_trailing_newline_are_refused(tmp_path: Path) -> None:
    from service.datasets.store import DatasetStore
    from service.errors import InvalidName
    from service.registry.store import validate_alias, validate_name

    for check, name in (
        (validate_name, "sales\n"),
        (validate_alias, "production\n"),
        (DatasetStore(tmp_path)._dir, "sales\n"),
    ):
        with pytest.raises(InvalidName):
            check(name)
        check(name.strip())  # the same name without the newline is fine


# ----------------------------------------------------------------------------- per-key job limit
def test_a_read_key_cannot_queue_unbounded_backtests(registry_path: Path) -> None:
    settings = make_settings(
        registry_path, api_keys=KEYS, max_active_jobs_per_key=2, max_concurrent_jobs=1, scheduler=False
    )
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        runtime.runner.max_concurrent = 0  # hold jobs in the queue: they stay active while we count
        body = {"splitter": {"folds": 2, "horizon": 3}}
        first = [client.post("/v1/models/airline/backtests", json=body, headers=headers) for _ in range(2)]
        assert [r.status_code for r in first] == [202, 202]
        third = client.post("/v1/models/airline/backtests", json=body, headers=headers)
        assert third.status_code == 429, third.text
        assert third.headers["content-type"].startswith("application/problem+json")
        assert int(third.headers["Retry-After"]) > 0
        assert "FORECAST_MAX_ACTIVE_JOBS_PER_KEY" in third.json()["detail"]
        assert len(client.get("/v1/jobs", headers=headers).json()["jobs"]) == 2
        # another key is counted apart
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert client.post("/v1/models/airline/backtests", json=body, headers=admin).status_code == 202
        # a finished (here: cancelled while queued) job frees a slot
        cancel = client.post(f"/v1/jobs/{first[0].json()['id']}/cancel", headers=admin)
        assert cancel.status_code in (200, 202), cancel.text
        assert client.post("/v1/models/airline/backtests", json=body, headers=headers).status_code == 202
