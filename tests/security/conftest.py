"""Shared helpers of the security and robustness tests.

The real-server helpers come from ``tests/integration/conftest.py`` (importable because
``tests/security`` is a package, which puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import re

from tests.factories import SCHEMA, Boom, fit_naive, publish_naive, small_panel  # noqa: F401 - shared helpers
from tests.integration.conftest import (  # noqa: F401 - fixtures and the report hook are re-exported
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
