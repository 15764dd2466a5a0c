"""Faults the model cache lives through: an aliases.json that is corrupt or vanished (the
last good aliases keep serving and the problem is reported), loads that fail once (tried
again after a backoff), integrity failures (never tried again), and an open /readyz that
names categories, never paths or exception text."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import IntegrityError, NotReady
from service.fileio import atomic_write
from service.registry.store import LoadedArtifact, Registry
from service.serving.cache import (
    ALIASES_UNREADABLE,
    INTEGRITY_FAILED,
    RETRYING,
    ModelCache,
    describe_state,
    scrub_paths,
)
from tests.conftest import make_settings
from tests.factories import publish_naive, wait_for

ABSOLUTE_PATH = re.compile(r"(?<![\w.:/>~])/[A-Za-z0-9_.-]+/")
# what a failed import looks like (the startup race), with a path and a trace in its text
IMPORT_RACE = (
    "cannot import name 'BaseLibSVM' from partially initialized module 'sklearn.svm._base' "
    "(most likely due to a circular import) (/opt/venv/lib/python3.11/site-packages/sklearn/svm/_base.py)\n"
    'Traceback (most recent call last):\n  File "/opt/venv/lib/python3.11/site-packages/sklearn/__init__.py"'
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """toy v1 (production) and v2, both real fitted sktime models."""
    registry = Registry(tmp_path / "models")
    assert publish_naive(registry, seed=0) == 1
    assert publish_naive(registry, seed=1) == 2
    registry.set_alias("toy", "production", 1)
    return registry


def aliases_path(registry: Registry) -> Path:
    return registry.model_dir("toy") / "aliases.json"


def failing_loads(
    monkeypatch: pytest.MonkeyPatch, failures: int, make: Callable[[], Exception] = lambda: ImportError(IMPORT_RACE)
) -> list[int]:
    """`Registry.load` raises ``make()`` for its first ``failures`` calls; returns the versions asked for."""
    real = Registry.load
    calls: list[int] = []

    def load(self: Registry, name: str, version: int) -> LoadedArtifact:
        calls.append(version)
        if len(calls) <= failures:
            raise make()
        return real(self, name, version)

    monkeypatch.setattr(Registry, "load", load)
    return calls


# --------------------------------------------------------------------------- aliases.json
CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "invalid JSON": lambda path: path.write_text('{"production": 1'),
    "a version that is not a number": lambda path: path.write_text(json.dumps({"production": "x"})),
    "a list": lambda path: path.write_text(json.dumps([{"production": 2}])),
    "deleted": lambda path: path.unlink(),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_a_corrupt_aliases_file_keeps_the_last_good_aliases_serving_and_is_reported(
    registry: Registry, corrupt: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    cache = ModelCache(registry)
    cache.refresh()
    assert cache.get("toy").version == 1

    corrupt(aliases_path(registry))
    with caplog.at_level(logging.ERROR, logger="service.serving.cache"):
        for _ in range(3):
            cache.refresh()

    state = cache.state("toy")  # still known: not a 404
    assert cache.get("toy").version == 1
    assert state.file_aliases == {"production": 1}
    assert state.serving == {"production": 1}
    assert state.aliases_error and "aliases.json" in state.aliases_error
    assert describe_state(state, registry.root)["aliases_error"] == state.aliases_error
    report = cache.readiness()
    assert report.ready, report  # it serves from the last good aliases ...
    assert any(ALIASES_UNREADABLE in w for w in report.warnings["toy"]), report  # ... and says so
    logged = [r for r in caplog.records if "aliases" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]  # once per change, not every poll

    # moving an alias rewrites the file from the last good aliases and clears the problem
    registry.set_alias("toy", "production", 2)
    cache.refresh()
    state = cache.state("toy")
    assert state.aliases_error is None
    assert state.serving == {"production": 2}
    assert cache.get("toy").version == 2
    assert cache.readiness().warnings == {}


def test_a_tampered_signed_aliases_file_keeps_the_last_good_aliases(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models", signing_key=b"k" * 32)
    publish_naive(registry, seed=0)
    publish_naive(registry, seed=1)
    registry.set_alias("toy", "production", 1)
    cache = ModelCache(registry)
    cache.refresh()
    document = json.loads(aliases_path(registry).read_bytes())
    document["production"] = 2  # the signature no longer matches
    atomic_write(aliases_path(registry), json.dumps(document).encode())

    cache.refresh()
    state = cache.state("toy")
    assert cache.get("toy").version == 1
    assert state.aliases_error and "signature" in state.aliases_error
    assert cache.readiness().ready


def test_an_aliases_file_written_empty_on_purpose_is_honoured(registry: Registry) -> None:
    cache = ModelCache(registry)
    cache.refresh()
    atomic_write(aliases_path(registry), b"{}")
    cache.refresh()
    assert cache.state("toy").aliases_error is None
    assert cache.state("toy").serving == {}


def test_a_fresh_start_on_a_corrupt_aliases_file_is_not_ready(registry: Registry) -> None:
    aliases_path(registry).write_text("not json")
    cache = ModelCache(Registry(registry.root))  # a new process: no last good aliases
    cache.refresh()

    report = cache.readiness()
    assert not report.ready
    assert report.problems == {"toy": ALIASES_UNREADABLE}
    with pytest.raises(NotReady):
        cache.get("toy")

    cache.registry.set_alias("toy", "production", 2)
    cache.refresh()
    assert cache.readiness().ready
    assert cache.get("toy").version == 2


# --------------------------------------------------------------------------- retries
def test_a_load_that_fails_once_is_retried_after_the_backoff(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = failing_loads(monkeypatch, failures=1)
    clock = Clock()
    cache = ModelCache(registry, clock=clock)
    cache.refresh()

    state = cache.state("toy")
    assert state.serving == {}
    assert "partially initialized module" in state.load_errors[1]
    assert cache.readiness().problems == {"toy": f"production -> v1: {RETRYING}"}

    clock.now = 0.5  # before the backoff: not tried again, still reported
    cache.refresh()
    assert calls == [1]
    assert 1 in cache.state("toy").load_errors

    clock.now = 1.0
    cache.refresh()
    assert calls == [1, 1]
    assert cache.get("toy").version == 1
    assert cache.state("toy").load_errors == {}
    assert cache.readiness().ready


def test_the_backoff_doubles_per_failure_up_to_its_cap(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = failing_loads(monkeypatch, failures=1000, make=lambda: OSError("disk hiccup"))
    clock = Clock()
    cache = ModelCache(registry, retry_base=1.0, retry_max=60.0, clock=clock)
    waits = []
    for _ in range(9):
        cache.refresh()
        failure = cache.state("toy").failures[1]
        assert failure.retry_at is not None
        waits.append(failure.retry_at - clock.now)
        clock.now = failure.retry_at
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert len(calls) == 9


def test_an_old_version_keeps_serving_while_the_new_one_is_retried(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    cache = ModelCache(registry, clock=clock)
    cache.refresh()
    calls = failing_loads(monkeypatch, failures=1)
    registry.set_alias("toy", "production", 2)
    cache.refresh()
    assert cache.get("toy").version == 1
    report = cache.readiness()
    assert report.ready
    assert report.warnings["toy"] == [f"production -> v2: {RETRYING} (serving v1)"]
    clock.now = 1.0
    cache.refresh()
    assert calls == [2, 2]
    assert cache.get("toy").version == 2


def test_an_alias_to_a_version_published_later_is_loaded_once_it_exists(registry: Registry) -> None:
    cache = ModelCache(registry)
    cache.refresh()
    atomic_write(aliases_path(registry), json.dumps({"production": 3}).encode())  # ahead of the publish
    cache.refresh()
    assert cache.get("toy").version == 1
    assert publish_naive(registry, seed=2) == 3
    cache.refresh()
    assert cache.get("toy").version == 3


def test_an_integrity_failure_is_not_retried(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = registry.version_dir("toy", 2) / "artifact.pkl"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    calls = failing_loads(monkeypatch, failures=0)  # counts, never fails itself
    clock = Clock()
    cache = ModelCache(registry, clock=clock)
    cache.refresh()
    registry.set_alias("toy", "production", 2)
    for step in range(5):
        clock.now = 1000.0 * step
        cache.refresh()

    assert calls.count(2) == 1
    failure = cache.state("toy").failures[2]
    assert failure.kind == "integrity" and failure.retry_at is None
    assert "sha256" in failure.detail
    assert cache.get("toy").version == 1
    assert cache.readiness().warnings["toy"] == [f"production -> v2: {INTEGRITY_FAILED} (serving v1)"]
    with pytest.raises(IntegrityError):  # asked for by number: refused without reading it again
        cache.get("toy", version=2)
    assert calls.count(2) == 1


# --------------------------------------------------------------------------- no paths out
def test_scrub_paths() -> None:
    root = Path("/srv/models")
    assert scrub_paths("/srv/models/toy/versions/2/artifact.pkl is missing", root) == (
        "<registry>/toy/versions/2/artifact.pkl is missing"
    )
    assert (
        scrub_paths("[Errno 13] Permission denied: '/srv/modelsx/a'", root) == "[Errno 13] Permission denied: '<path>'"
    )
    assert scrub_paths(IMPORT_RACE, root).count("<path>") == 2
    assert "/opt" not in scrub_paths(IMPORT_RACE, root)
    kept = "toy/aliases.json: alias 'production' -> v2, 1/2 done, see https://example.org/x"
    assert scrub_paths(kept, root) == kept


def test_load_errors_in_the_model_detail_have_no_paths(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_loads(monkeypatch, failures=1, make=lambda: FileNotFoundError(f"no such file: '{registry.root}/toy/x'"))
    cache = ModelCache(registry)
    cache.refresh()
    shown = describe_state(cache.state("toy"), registry.root)["load_errors"]["1"]
    assert "<registry>/toy/x" in shown
    assert str(registry.root) not in shown


@pytest.fixture
def app_client(registry: Registry) -> Iterator[Callable[[], TestClient]]:
    clients: list[Any] = []

    def start() -> TestClient:
        settings = make_settings(registry.root, poll_interval=0.1, scheduler=False)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def scanned(client: TestClient) -> dict[str, Any]:
    wait_for(lambda: client.get("/readyz").json()["problems"] != {"registry": "not scanned yet"}, 30, "a scan")
    return client.get("/readyz").json()


def assert_no_leak(text: str) -> None:
    assert "Traceback" not in text
    assert not ABSOLUTE_PATH.search(text), text


def test_readyz_names_a_retried_load_without_paths_then_recovers(
    app_client: Callable[[], TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = [True]
    real = Registry.load

    def load(self: Registry, name: str, version: int) -> LoadedArtifact:
        if broken[0]:
            raise ImportError(IMPORT_RACE)
        return real(self, name, version)

    monkeypatch.setattr(Registry, "load", load)
    client = app_client()
    body = scanned(client)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert body["problems"] == {"toy": f"production -> v1: {RETRYING}"}
    assert_no_leak(ready.text)
    detail = client.get("/v1/models/toy")
    assert "partially initialized module" in detail.json()["load_errors"]["1"]
    assert "/opt/venv" not in detail.text and "<path>" in detail.text
    predict = client.post("/v1/models/toy/predict", json={"horizon": 3})
    assert predict.status_code == 409 and "/opt/venv" not in predict.text

    broken[0] = False  # the import works now: the next retry serves
    wait_for(lambda: client.get("/readyz").status_code == 200, 30, "v1 loaded on a retry")
    assert client.post("/v1/models/toy/predict", json={"horizon": 3}).json()["version"] == 1


def test_readyz_and_model_detail_report_a_corrupt_aliases_file(
    app_client: Callable[[], TestClient], registry: Registry
) -> None:
    client = app_client()
    wait_for(lambda: client.get("/readyz").status_code == 200, 30, "ready")
    aliases_path(registry).write_text("{oops")
    wait_for(lambda: client.get("/v1/models/toy").json()["aliases_error"] is not None, 30, "the report")

    detail = client.get("/v1/models/toy").json()
    assert "not valid JSON" in detail["aliases_error"]
    assert detail["aliases"] == {"production": 1} and detail["serving"] == {"production": 1}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["warnings"]["toy"] == [f"{ALIASES_UNREADABLE}: serving the last good aliases"]
    assert_no_leak(ready.text)
    assert client.post("/v1/models/toy/predict", json={"horizon": 3}).json()["version"] == 1

    moved = client.put("/v1/models/toy/aliases/production", json={"version": 2})
    assert moved.status_code == 200, moved.text
    detail = client.get("/v1/models/toy").json()
    assert detail["aliases_error"] is None and detail["serving"] == {"production": 2}
    assert client.get("/readyz").json()["warnings"] == {}


def test_readyz_is_503_on_a_fresh_start_with_a_corrupt_aliases_file(
    app_client: Callable[[], TestClient], registry: Registry
) -> None:
    aliases_path(registry).write_text("[1, 2]")
    client = app_client()
    body = scanned(client)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert body["problems"] == {"toy": ALIASES_UNREADABLE}
    assert_no_leak(ready.text)
    assert "must be an object" in client.get("/v1/models/toy").json()["aliases_error"]
    assert client.post("/v1/models/toy/predict", json={"horizon": 3}).status_code == 503


def test_readyz_names_an_integrity_failure_without_its_detail(
    app_client: Callable[[], TestClient], registry: Registry
) -> None:
    artifact = registry.version_dir("toy", 1) / "artifact.pkl"
    artifact.write_bytes(artifact.read_bytes()[:-1])
    client = app_client()
    scanned(client)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["problems"] == {"toy": f"production -> v1: {INTEGRITY_FAILED}"}
    assert "bytes" in client.get("/v1/models/toy").json()["load_errors"]["1"]
