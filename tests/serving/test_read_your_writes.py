"""Read-your-writes in one process: what a write left on disk is what the next request
after it gets, without waiting for the registry scan, and the fast path reads no file.

A write here is one made behind the cache's back (a retrain's worker process, another
replica): the registry is changed directly, the cache is not told.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import AliasNotFound, ModelNotFound
from service.forecasting.specs import write_spec
from service.jobs.store import JobStore
from service.jobs.submit import request_hash
from service.registry.store import Registry
from service.runtime import Runtime
from service.serving.cache import ModelCache
from tests.conftest import DEMO_SPECS, make_settings, wait_ready
from tests.factories import publish_naive

AIRLINE_SPEC = yaml.safe_load((DEMO_SPECS / "airline" / "model.yaml").read_text())


def publish(registry: Registry, name: str = "toy", seed: int = 0, alias: str | None = "production") -> int:
    version = publish_naive(registry, name, seed=seed)
    if alias is not None:
        registry.set_alias(name, alias, version)
    return version


class GatedRegistry(Registry):
    """A registry whose ``read_aliases``/``list_models`` stop, in a thread named ``held``,
    until ``release`` is set: a scan that read the folder and has not written its state yet."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reached = threading.Event()
        self.release = threading.Event()
        self.hold_in: str | None = None  # "read_aliases" or "list_models"

    def _hold(self, where: str) -> None:
        if self.hold_in == where and threading.current_thread().name == "held":
            self.reached.set()
            assert self.release.wait(10), "never released"

    def read_aliases(self, name: str) -> dict[str, int]:
        aliases = super().read_aliases(name)
        self._hold("read_aliases")
        return aliases

    def list_models(self) -> list[str]:
        names = super().list_models()
        self._hold("list_models")
        return names


def in_thread(target: Callable[[], Any], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    """One process's runtime (no lifespan: no watcher, no job runner) on an empty registry."""
    (tmp_path / "models").mkdir()
    built = Runtime.build(make_settings(tmp_path / "models"))
    built.cache.refresh()
    yield built
    built.executor.shutdown(wait=False, cancel_futures=True)
    built.ingest.shutdown(wait=False, cancel_futures=True)
    built.jobs.dispose()


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, names: tuple[str, ...]) -> list[str]:
    """Every call of ``owner.<name>`` for ``names``, appended to the returned list."""
    calls: list[str] = []
    for name in names:
        original = getattr(owner, name)

        def counting(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)
    return calls


# --------------------------------------------------------------------------- the cache
def test_a_scan_that_read_earlier_never_overwrites_a_later_one(tmp_path: Path) -> None:
    registry = GatedRegistry(tmp_path)
    first = publish(registry)
    second = publish(registry, seed=1, alias=None)
    cache = ModelCache(registry)
    cache.refresh()
    registry.hold_in = "read_aliases"

    old_scan = in_thread(lambda: cache.refresh(only="toy"), "held")  # reads production -> v1, then stops
    assert registry.reached.wait(10)
    registry.set_alias("toy", "production", second)  # the write, then a refresh that sees it
    new_scan = in_thread(lambda: cache.refresh(only="toy"), "after-the-write")
    new_scan.join(1.0)  # today's code: done at once; with one refresh of a model at a time: waiting
    registry.release.set()
    old_scan.join(10)
    new_scan.join(10)

    served = cache.peek("toy")
    assert served is not None and served.version == second, f"v{first} came back after v{second} was served"


def test_a_full_scan_keeps_a_model_refreshed_while_it_ran(tmp_path: Path) -> None:
    registry = GatedRegistry(tmp_path)
    publish(registry)
    cache = ModelCache(registry)
    cache.refresh()
    registry.hold_in = "list_models"

    scan = in_thread(cache.refresh, "held")  # lists the models (toy only), then stops
    assert registry.reached.wait(10)
    publish(registry, "fresh")
    cache.refresh(only="fresh")  # what a request that missed it does
    registry.release.set()
    scan.join(10)

    assert "fresh" in cache.names(), "the scan dropped a model published while it ran"
    served = cache.peek("fresh")
    assert served is not None and served.version == 1


def test_settling_is_bounded_and_the_old_version_serves_until_the_new_one_is_loaded(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first = publish(registry)
    second = publish(registry, seed=1)
    cache = ModelCache(registry)
    loading = threading.Event()
    release = threading.Event()
    original_load = registry.load
    registry.set_alias("toy", "production", first)
    cache.refresh()

    def slow_load(name: str, version: int) -> Any:
        if version == second:
            loading.set()
            assert release.wait(10)
        return original_load(name, version)

    registry.load = slow_load  # type: ignore[method-assign]
    registry.set_alias("toy", "production", second)

    async def scenario() -> None:
        started = time.monotonic()
        assert not await cache.settle("toy", cache.mark(), timeout=0.3)
        assert time.monotonic() - started < 2.0
        assert loading.is_set()
        served = cache.peek("toy")
        assert served is not None and served.version == first  # the old one serves while v2 loads
        release.set()
        assert await cache.settle("toy", cache.mark(), timeout=10)
        served = cache.peek("toy")
        assert served is not None and served.version == second

    asyncio.run(scenario())


# --------------------------------------------------------------------------- a request that misses
def test_a_model_or_alias_written_since_the_scan_is_served_not_a_404(runtime: Runtime) -> None:
    registry = runtime.registry
    publish(registry)
    runtime.cache.refresh()
    fresh = publish(registry, "fresh")  # a new model, behind the cache's back
    staging = publish(registry, seed=1, alias="staging")  # a new alias of a known model

    async def scenario() -> None:
        assert (await runtime.served("fresh")).version == fresh
        assert (await runtime.served("toy", alias="staging")).version == staging
        assert (await runtime.served("fresh", version=fresh)).version == fresh
        with pytest.raises(ModelNotFound):
            await runtime.served("nowhere")
        with pytest.raises(ModelNotFound):
            await runtime.served("..")  # not a model name: the same 404, nothing refreshed
        with pytest.raises(AliasNotFound):
            await runtime.served("toy", alias="nosuch")

    asyncio.run(scenario())
    assert "nowhere" not in runtime.cache.names()


def test_misses_share_one_refresh_at_a_time(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(runtime.registry)
    runtime.cache.refresh()
    running = []
    peak = []
    original = runtime.cache._refresh_model

    def slow_refresh(name: str) -> None:
        running.append(name)
        peak.append(len(running))
        time.sleep(0.3)  # every miss below marks while the first refresh runs
        original(name)
        running.remove(name)

    monkeypatch.setattr(runtime.cache, "_refresh_model", slow_refresh)

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(runtime.served("toy", alias="nosuch") for _ in range(30)), return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, AliasNotFound) for r in results), results
    assert 1 <= len(peak) <= 2, f"{len(peak)} refreshes for 30 concurrent misses (a miss looks on disk, shared)"
    assert max(peak) == 1  # one refresh of a model at a time


def test_the_fast_path_reads_no_file(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(runtime.registry)
    runtime.cache.refresh()
    names = ("exists", "list_models", "list_versions", "read_aliases", "load", "model_dir")
    calls = count_calls(monkeypatch, runtime.registry, names)

    async def scenario() -> None:
        for _ in range(1000):
            assert (await runtime.served("toy")).version == 1

    asyncio.run(scenario())
    assert calls == []


# --------------------------------------------------------------------------- a job read over HTTP
RETRAIN_BODY = {"promote": "always"}
KEY = "first-day"


def finished_retrain(jobs_url: str, model: str, version: int) -> str:
    """A retrain that another process ran and finished (its worker moved the alias)."""
    store = JobStore(jobs_url)
    try:
        job, _ = store.create(
            "retrain", model, RETRAIN_BODY, idempotency_key=KEY, request_hash=request_hash(model, RETRAIN_BODY)
        )
        assert store.claim(job.id, "elsewhere")
        result = {"model": model, "version": version, "promoted": True, "decision": "promoted"}
        assert store.finish(job.id, "elsewhere", "succeeded", result=result)
        return job.id
    finally:
        store.dispose()


@pytest.mark.parametrize("read", ["one job", "the job list", "the same idempotency key"])
def test_a_finished_retrain_is_reported_once_this_process_serves_what_it_promoted(tmp_path: Path, read: str) -> None:
    registry_path = tmp_path / "models"
    registry = Registry(registry_path)
    first = publish(registry)
    second = publish(registry, seed=1, alias=None)
    write_spec(registry, "toy", AIRLINE_SPEC)  # a retrain of it may be asked for (same key)
    settings = make_settings(registry_path, poll_interval=3600.0)  # no scan comes to help
    app = create_app(settings)
    with TestClient(app) as client:
        wait_ready(client)
        assert client.post("/v1/models/toy/predict", json={"horizon": 3}).json()["version"] == first
        registry.set_alias("toy", "production", second)  # the worker's write ...
        job_id = finished_retrain(settings.resolved_jobs_url, "toy", second)  # ... then `succeeded`

        if read == "one job":
            job = client.get(f"/v1/jobs/{job_id}").json()
        elif read == "the job list":
            job = client.get("/v1/jobs", params={"model": "toy"}).json()["jobs"][0]
        else:
            response = client.post("/v1/models/toy/retrain", json=RETRAIN_BODY, headers={"Idempotency-Key": KEY})
            assert response.status_code == 200, response.text
            job = response.json()
        assert job["id"] == job_id and job["status"] == "succeeded" and job["result"]["version"] == second

        for _ in range(5):
            answer = client.post("/v1/models/toy/predict", json={"horizon": 3})
            assert answer.status_code == 200, answer.text
            assert answer.json()["version"] == second
            assert answer.headers["x-model-version"] == str(second)
