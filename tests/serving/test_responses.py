"""The response cache counts the bytes it really holds (tracemalloc agrees), evicts by
that count, shares header blocks between entries and forgets deleted versions."""

from __future__ import annotations

import gc
import tracemalloc

import orjson

from service.serving.fastlane import CSV, JSON
from service.serving.responses import CachedAnswer, ResponseCache


def answer(i: int, version: int = 1, size: int = 3) -> CachedAnswer:
    """A small answer as the predict route builds it: orjson bytes, four header pairs made per request."""
    payload = orjson.dumps({"model": "toy", "version": version, "forecast": {"y": [float(i + k) for k in range(size)]}})
    headers = (
        (b"content-type", JSON.encode()),
        (b"x-model", b"toy"),
        (b"x-model-version", str(version).encode()),
        (b"x-cutoff", b"2017-12-01"),
    )
    return CachedAnswer(version=version, follows_production=True, payload=payload, headers=headers)


def key(i: int, model: str = "toy", media: str = JSON) -> tuple[str, bytes, str]:
    return (model, b'{"fh": [%d]}' % i, media)


def test_the_counted_bytes_are_the_bytes_held() -> None:
    """orjson's bytes keep their 4 KB write buffer: a cache counting lengths held ~20x its count."""
    cache = ResponseCache(64 * 1024 * 1024)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(3000):  # built per request, as the route does; what the cache does not keep is freed
            cache.put(key(i), answer(i))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == 3000
    assert 0.85 * held <= cache.size <= 1.15 * held, f"counts {cache.size} bytes, holds {held}"


def test_eviction_keeps_the_count_within_the_budget_and_drops_the_oldest() -> None:
    cache = ResponseCache(200_000)
    for i in range(5000):
        cache.put(key(i), answer(i))
        assert cache.size <= cache.max_bytes
    assert 0 < len(cache) < 5000
    assert cache.get(key(4999)) is not None and cache.get(key(0)) is None
    assert cache.size > 0.9 * cache.max_bytes  # full, not over-evicted


def test_header_blocks_are_shared_and_uncounted_with_their_last_entry() -> None:
    cache = ResponseCache(1_000_000)
    cache.put(key(1), answer(1))
    one = cache.size
    cache.put(key(2), answer(2))
    first, second = cache.get(key(1)), cache.get(key(2))
    assert first is not None and second is not None
    assert first.headers is second.headers  # one block for both
    assert cache.size - one < one / 2  # the second entry did not pay for the headers again
    cache.put(key(1, media=CSV), answer(3, version=2))
    cache.forget("toy", 1)
    assert cache.get(key(1)) is None and cache.get(key(2)) is None
    assert cache.get(key(1, media=CSV)) is not None
    cache.forget("toy", 2)
    assert len(cache) == 0 and cache.size == 0


def test_a_replaced_entry_is_counted_once_and_a_zero_budget_stores_nothing() -> None:
    cache = ResponseCache(1_000_000)
    cache.put(key(1), answer(1))
    once = cache.size
    cache.put(key(1), answer(1))
    assert cache.size == once and len(cache) == 1
    off = ResponseCache(0)
    off.put(key(1), answer(1))
    assert len(off) == 0 and off.get(key(1)) is None and off.size == 0


def test_a_payload_over_a_quarter_of_the_budget_is_not_stored() -> None:
    cache = ResponseCache(4000)
    cache.put(key(1), answer(1, size=200))
    assert len(cache) == 0
