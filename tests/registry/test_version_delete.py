"""Deleting versions in the store: aliases protect, numbers are never reused, a delete that
died midway is cleaned up on start."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import Conflict, VersionNotFound
from service.registry.store import DELETING_PREFIX, Registry
from tests.factories import publish_naive


def test_delete_and_prune_keep_aliased_versions_and_never_reuse_numbers(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert [publish_naive(registry, "toy", seed=s) for s in range(4)] == [1, 2, 3, 4]
    registry.set_alias("toy", "production", 2)
    with pytest.raises(Conflict, match="production"):
        registry.delete_version("toy", 2)
    registry.delete_version("toy", 4)
    with pytest.raises(VersionNotFound):
        registry.delete_version("toy", 4)
    with pytest.raises(VersionNotFound):
        registry.read_manifest("toy", 4)
    assert registry.list_versions("toy") == [1, 2, 3]
    assert publish_naive(registry, "toy", seed=9) == 5  # 4 stays taken
    assert registry.prune_versions("toy", keep=1) == [1, 3]
    assert registry.list_versions("toy") == [2, 5]
    assert registry.prune_versions("toy", keep=1) == []


def test_a_delete_that_died_midway_is_removed_on_start(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish_naive(registry, "toy")
    leftover = tmp_path / "toy" / "versions" / f"{DELETING_PREFIX}7-abc"
    leftover.mkdir()
    (leftover / "artifact.pkl").write_bytes(b"x")
    assert leftover in registry.cleanup_staging()
    assert not leftover.exists() and registry.list_versions("toy") == [1]
