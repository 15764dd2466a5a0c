"""Registry store: atomic publish, integrity before unpickling, aliases, names."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.errors import IntegrityError, InvalidName, VersionNotFound
from service.forecasting.publishing import PublishRequest, publish_version
from service.registry.store import Registry
from service.tables import Schema
from tests.factories import SCHEMA, Boom, publish_naive, small_panel  # noqa: F401


# --------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("name", ["airline", "tourism-monthly", "sales-hierarchy", "macro-var"])
def test_publish_load_round_trip_predicts_exactly_like_the_original(registry: Registry, name: str) -> None:
    original = registry.load(name, 1).forecaster
    table = registry.read_training(name, 1)
    manifest = registry.read_manifest(name, 1)
    schema = Schema.from_dict(manifest["schema"])
    version = publish_version(registry, name, original, PublishRequest(training=table, schema=schema, horizon=6))
    loaded = registry.load(name, version).forecaster
    pd.testing.assert_frame_equal(original.predict(fh=[1, 2, 3, 6]), loaded.predict(fh=[1, 2, 3, 6]), check_exact=True)


def test_manifest_records_what_the_issue_lists(registry: Registry) -> None:
    manifest = registry.read_manifest("tourism-monthly", 1)
    artifact = (registry.version_dir("tourism-monthly", 1) / "artifact.pkl").read_bytes()
    import hashlib

    assert manifest["artifact"]["sha256"] == hashlib.sha256(artifact).hexdigest()
    assert manifest["artifact"]["size"] == len(artifact)
    assert manifest["forecaster"]["class"] == "service.forecasting.conformal.GlobalConformalIntervals"
    reduction = manifest["forecaster"]["params"]["forecaster"]  # intervals: conformal wraps the reduction
    assert reduction["class"].endswith("RecursiveTabularRegressionForecaster")
    assert reduction["params"]["estimator"]["class"] == "xgboost.sklearn.XGBRegressor"
    assert reduction["params"]["pooling"] == "global"
    for lib in ("python", "sktime", "xgboost", "pandas"):
        assert manifest["libraries"][lib]
    assert manifest["cutoff"] == "2007-12-01"
    assert manifest["freq"] == "M"
    assert manifest["series"]["keys"] == ["series"]
    assert manifest["series"]["count"] == len(manifest["series"]["ids"]) == 60
    assert len(manifest["training"]["fingerprint"]) == 64
    assert (manifest["training"]["start"], manifest["training"]["end"]) == ("1998-01-01", "2007-12-01")
    training = registry.read_training("tourism-monthly", 1)
    assert len(training) == manifest["training"]["rows"] == 60 * 120
    json.dumps(manifest, allow_nan=False)  # JSON-safe, no NaN


def test_training_table_is_kept_and_reproduces_the_fit(registry: Registry) -> None:
    training = registry.read_training("airline", 1)
    assert list(training.columns) == ["month", "passengers"]
    assert isinstance(training["month"].dtype, pd.PeriodDtype)
    from sktime.datasets import load_airline

    np.testing.assert_array_equal(training["passengers"].to_numpy(), load_airline().to_numpy())


# --------------------------------------------------------------------------- atomicity
def test_half_written_staging_dir_is_never_listed_and_is_cleaned_at_start(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert publish_naive(registry) == 1
    versions_dir = registry.model_dir("toy") / "versions"
    staging = versions_dir / ".staging-deadbeef"
    staging.mkdir()
    good = (versions_dir / "1" / "artifact.pkl").read_bytes()
    (staging / "artifact.pkl").write_bytes(good[: len(good) // 2])  # truncated, a killed writer
    (staging / ".owner").touch()
    assert registry.list_versions("toy") == [1]
    removed = Registry(tmp_path).cleanup_staging()
    assert removed == [staging]
    assert not staging.exists()
    assert registry.list_versions("toy") == [1]
    assert publish_naive(registry) == 2


def test_cleanup_leaves_a_live_publishers_staging_dir_alone(tmp_path: Path) -> None:
    import fcntl

    registry = Registry(tmp_path)
    publish_naive(registry)
    staging = registry.model_dir("toy") / "versions" / ".staging-live"
    staging.mkdir()
    with open(staging / ".owner", "a+") as owner:
        fcntl.flock(owner.fileno(), fcntl.LOCK_EX)
        assert registry.cleanup_staging() == []
        assert staging.exists()


def test_version_dir_without_manifest_is_not_a_version_and_its_number_is_not_reused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish_naive(registry)
    (registry.model_dir("toy") / "versions" / "2").mkdir()
    assert registry.list_versions("toy") == [1]
    assert publish_naive(registry) == 3


def _publish_many(root: str, count: int, seed: int, results: multiprocessing.Queue) -> None:
    registry = Registry(root)
    results.put([publish_naive(registry, seed=seed + i) for i in range(count)])


def test_two_processes_publishing_concurrently_get_distinct_consecutive_versions(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    workers = [context.Process(target=_publish_many, args=(str(tmp_path), 4, 10 * i, results)) for i in range(2)]
    for worker in workers:
        worker.start()
    got = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    numbers = sorted(n for batch in got for n in batch)
    assert numbers == list(range(1, 9))
    assert Registry(tmp_path).list_versions("toy") == list(range(1, 9))
    for batch in got:  # each process saw its own numbers increase
        assert batch == sorted(batch)


# --------------------------------------------------------------------------- integrity
def test_flipped_byte_is_refused_before_unpickling(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish_naive(registry)
    marker = tmp_path / "unpickled.marker"
    artifact = registry.version_dir("toy", 1) / "artifact.pkl"
    malicious = pickle.dumps(Boom(marker))
    manifest_path = registry.version_dir("toy", 1) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    import hashlib

    # a manifest that vouches for the malicious bytes, then one flipped byte in the artifact
    manifest["files"]["artifact.pkl"] = {"sha256": hashlib.sha256(malicious).hexdigest(), "size": len(malicious)}
    manifest_path.write_text(json.dumps(manifest))
    flipped = bytearray(malicious)
    flipped[-3] ^= 0x01
    artifact.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError, match="sha256"):
        registry.load("toy", 1)
    assert not marker.exists()
    # the control: with matching bytes the same file would have run its code on load
    artifact.write_bytes(malicious)
    registry.load("toy", 1)
    assert marker.exists()


def test_real_artifact_with_one_flipped_byte_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish_naive(registry)
    artifact = registry.version_dir("toy", 1) / "artifact.pkl"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        registry.load("toy", 1)


def test_truncated_artifact_is_refused_by_size(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish_naive(registry)
    artifact = registry.version_dir("toy", 1) / "artifact.pkl"
    artifact.write_bytes(artifact.read_bytes()[:100])
    with pytest.raises(IntegrityError, match="bytes"):
        registry.load("toy", 1)


# --------------------------------------------------------------------------- aliases, names
def test_alias_moves_atomically_and_only_to_existing_versions(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish_naive(registry)
    publish_naive(registry, seed=1)
    registry.set_alias("toy", "production", 1)
    registry.set_alias("toy", "candidate", 2)
    assert registry.read_aliases("toy") == {"production": 1, "candidate": 2}
    registry.set_alias("toy", "production", 2)
    assert registry.resolve("toy") == 2
    before = (registry.model_dir("toy") / "aliases.json").read_bytes()
    with pytest.raises(VersionNotFound):
        registry.set_alias("toy", "production", 7)
    assert (registry.model_dir("toy") / "aliases.json").read_bytes() == before
    leftovers = [p.name for p in registry.model_dir("toy").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", "", ".hidden", "UPPER", "x" * 65, "a\x00b", "/abs"])
def test_model_names_with_path_tricks_are_rejected(tmp_path: Path, bad: str) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(InvalidName):
        registry.model_dir(bad)
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("bad", ["Production", "../x", "", "a b"])
def test_bad_alias_names_are_rejected(tmp_path: Path, bad: str) -> None:
    registry = Registry(tmp_path)
    publish_naive(registry)
    with pytest.raises(InvalidName):
        registry.set_alias("toy", bad, 1)
