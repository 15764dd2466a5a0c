"""Process helpers shared by job workers and fit workers."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
from collections.abc import Iterator


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so no orphan goes on working."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def on_dask_worker() -> bool:
    """True inside a task on a Dask worker."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


@contextlib.contextmanager
def seceded() -> Iterator[None]:
    """Inside a Dask task: leave the worker's thread pool while the block runs, so the
    sub-tasks it waits for (sktime's ``"dask"`` backend) can use this worker's threads
    too instead of deadlocking on them; rejoins after. Elsewhere: nothing."""
    if not on_dask_worker():
        yield
        return
    from distributed import worker_client

    with worker_client():
        yield
