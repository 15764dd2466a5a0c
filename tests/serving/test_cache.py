"""The model cache: versions asked for by number live in a bounded LRU; versions an alias
serves are never evicted."""

from __future__ import annotations

from pathlib import Path

from service.registry.store import Registry
from service.serving.cache import ModelCache
from tests.factories import publish_naive


def test_versions_asked_by_number_are_evicted_beyond_the_budget(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    versions = [publish_naive(registry, seed=seed) for seed in range(5)]
    registry.set_alias("toy", "production", versions[0])
    cache = ModelCache(registry, extra_versions=2)
    cache.refresh()

    for version in versions:
        assert cache.get("toy", version=version).version == version

    loaded = set(cache.state("toy").loaded)
    # production (v1) stays; of the rest only the two most recently asked for are kept
    assert loaded == {versions[0], versions[3], versions[4]}
    # asking again for an evicted version loads it anew, and evicts the least recent
    assert cache.get("toy", version=versions[1]).version == versions[1]
    assert set(cache.state("toy").loaded) == {versions[0], versions[4], versions[1]}
