"""Make the repo's `bench` package importable however pytest is started.

No ``__init__.py`` here on purpose: it would make pytest import this folder as a package
named ``bench`` and shadow the harness."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
