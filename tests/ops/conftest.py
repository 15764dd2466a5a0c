"""A real `forecast-service serve` on a free loopback port (empty registry) for healthcheck commands."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import ServerProcess, running_server
from tests.servers import free_port as _free_port  # noqa: F401 - the tests import it from here

LiveServer = ServerProcess  # what the tests annotate `live_server` with


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Up once /healthz answers; its own data folder, none of the test run's FORECAST_* variables."""
    root = tmp_path_factory.mktemp("ops-server")
    (root / "models").mkdir()
    yield from running_server(
        root / "models",
        root / "server.log",
        clean_env=True,
        data_dir=root / "data",
        ready_path="/healthz",
        FORECAST_LOG_LEVEL="warning",
    )
