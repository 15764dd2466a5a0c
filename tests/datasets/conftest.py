"""Dataset tests; a failed test that ran a real server gets that server's log attached."""

from tests.servers import pytest_runtest_makereport  # noqa: F401 - the report hook
