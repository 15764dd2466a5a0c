"""The real server as a subprocess for the integration tests: the harness is `tests/servers.py`.

Names the tests of this folder import from here; the fixtures below are thin. When a test
fails, the log tail of every server it used is attached to the report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import (  # noqa: F401 - the helpers tests import from here, the fixture and the report hook
    CLI,
    HOST,
    ServerFactory,
    ServerProcess,
    copy_models,
    free_port,
    pytest_runtest_makereport,
    running_server,
    start_server,
)


@pytest.fixture(scope="module")
def live_server(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on a private copy of the trained airline, uschange and tourism-monthly models."""
    root = tmp_path_factory.mktemp("live-server")
    registry = copy_models(trained_registry_path, root / "models", ["airline", "uschange", "tourism-monthly"])
    yield from running_server(registry, root / "server.log")


@pytest.fixture
def airline_registry(trained_registry_path: Path, tmp_path: Path) -> Path:
    """A private registry with the trained airline model only (v1, production)."""
    return copy_models(trained_registry_path, tmp_path / "models", ["airline"])


@pytest.fixture
def airline_server(airline_registry: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on `airline_registry`, polling it every 0.2 s."""
    yield from running_server(airline_registry, tmp_path / "server.log")
