"""The real-server harness of ``tests/servers.py``: its `start_server` fixture and the
report hook that attaches a failed test's server logs."""

from tests.servers import pytest_runtest_makereport, start_server  # noqa: F401 - re-exported for pytest
