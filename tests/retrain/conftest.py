"""Real `forecast-service serve` processes for the retrain tests (the harness is
`tests/servers.py`): each in a session of its own, on a data folder the test names, with
the FORECAST_* variables of the test run dropped; teardown kills each server's whole
process group (its forkserver and job workers included)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import DataServerFactory, group_members, pytest_runtest_makereport  # noqa: F401 - re-exported

ServerFactory = DataServerFactory  # what the tests annotate `start_server` with


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[DataServerFactory]:
    """``start_server(registry, data_dir, **env)`` -> a started `ServerProcess`; all are stopped afterwards."""
    with DataServerFactory(
        tmp_path, clean_env=True, new_session=True, ready_timeout=90.0, client_timeout=30.0, stop_timeout=15.0
    ) as factory:
        yield factory
