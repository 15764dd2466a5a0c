"""Shared helpers of the security and robustness tests; the real-server harness is
``tests/servers.py`` (its `start_server` fixture and report hook are imported here)."""

from __future__ import annotations

import re

from tests.factories import SCHEMA, Boom, fit_naive, publish_naive, small_panel  # noqa: F401 - shared helpers
from tests.servers import (  # noqa: F401 - the fixture and the report hook are re-exported
    CLI,
    HOST,
    ServerFactory,
    ServerProcess,
    copy_models,
    free_port,
    pytest_runtest_makereport,
    start_server,
)

# 20+ characters each; distinctive so a leak is easy to grep for
READ_KEY = "rk-9f3b2c7d1e8a4f60b5c2"
ADMIN_KEY = "ak-41d7e0c9b3a25f86e7d1"
KEYS = f"read:{READ_KEY},admin:{ADMIN_KEY}"


def one_line(text: str) -> str:
    """Rich wraps long messages; compare them with whitespace collapsed."""
    return re.sub(r"\s+", " ", text)
