"""How long work says where it is, and how it is stopped."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int | None], None]
"""(stage, done, total or None): a job's or a command's progress; it may raise `Cancelled`."""

FitProgress = Callable[[int, int], None]
"""(series fitted, series in all) while a panel fits."""


class Cancelled(Exception):
    """Raised by a progress report (between folds, chunks, stages) when the job was cancelled."""
