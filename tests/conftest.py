"""Shared fixtures: a demo registry trained once per session (real sktime fits), and
per-test copies of it so tests that publish or move aliases never see each other."""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.forecasting.training import train_and_publish
from service.observability import quiet_sktime_warnings
from service.registry.store import Registry
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEMO_SPECS = REPO / "models"


def _first_start(spec: Path) -> str:
    return str((yaml.safe_load(spec.read_text()) or {}).get("first_start") or "wait")


DEMO_MODELS = sorted(p.parent.name for p in DEMO_SPECS.glob("*/model.yaml") if _first_start(p) == "wait")
"""The quick demos, trained once per session (`trained_registry_path`) and copied by the tests."""
BACKGROUND_DEMOS = sorted(p.parent.name for p in DEMO_SPECS.glob("*/model.yaml") if _first_start(p) == "background")
"""Demos a first start trains in the background (``first_start: background``, fits of minutes:
tourism-auto): never trained or copied by the shared fixtures."""


def copy_specs(target: Path, names: list[str] | None = None) -> Path:
    for name in names or DEMO_MODELS:
        (target / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(DEMO_SPECS / name / "model.yaml", target / name / "model.yaml")
    return target


@pytest.fixture(scope="session")
def trained_registry_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every demo model trained once (v1, production) — never mutate: use `registry_path`."""
    quiet_sktime_warnings()
    root = copy_specs(tmp_path_factory.mktemp("trained-registry"))
    registry = Registry(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in DEMO_MODELS:
            train_and_publish(registry, name)
    return root


@pytest.fixture
def registry_path(trained_registry_path: Path, tmp_path: Path) -> Path:
    """A private copy of the trained demo registry."""
    target = tmp_path / "models"
    shutil.copytree(trained_registry_path, target, ignore=shutil.ignore_patterns(".lock"))
    return target


@pytest.fixture
def registry(registry_path: Path) -> Registry:
    return Registry(registry_path)


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


def make_settings(registry_path: Path, **overrides: object) -> Settings:
    """Settings on a registry copy, with a private data folder (job store, datasets) beside it."""
    values: dict[str, object] = {"data_dir": registry_path.parent / "data", "poll_interval": 0.2}
    values.update(overrides)
    return Settings(registry=registry_path, **values)  # type: ignore[arg-type]


@pytest.fixture
def client(registry_path: Path) -> Iterator[TestClient]:
    """The app on a private copy of the trained demo registry, ready to serve."""
    with TestClient(create_app(make_settings(registry_path))) as test_client:
        wait_ready(test_client)
        yield test_client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with `slow` tests (real servers, subprocesses, long fits) run first: pytest-xdist
    hands tests out in this order, and a long test handed out last leaves the other worker idle
    while it runs. Whole modules move, so module-scoped fixtures are set up once; the order
    within a module, and among the other modules, is kept."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow") and item.module}
    items.sort(key=lambda item: 0 if item.module and item.module.__name__ in slow_modules else 1)
