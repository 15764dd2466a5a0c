"""The job store's schema, versioned with Alembic (revisions in ``versions/``).

`upgrade` brings a database to the head revision once, however many processes start on
it at the same moment: a database already at the head is only read; otherwise the
upgrade runs under a lock that the database itself holds (SQLite: an exclusive
transaction; PostgreSQL: a transaction-scoped advisory lock), and whoever waited on the
lock finds the work done. A database made before migrations (tables, no version stamp)
is adopted: the baseline revision creates only the tables it lacks.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).resolve().parent
# a name of our own: a PostgreSQL database shared with another Alembic project keeps both stamps
VERSION_TABLE = "jobs_schema_version"
# pg_advisory_xact_lock key: one number for every process that migrates a job store
ADVISORY_LOCK = zlib.crc32(b"forecast-service job store schema")


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    config.attributes["version_table"] = VERSION_TABLE
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The newest revision."""
    revision = _scripts().get_current_head()
    assert revision is not None, f"no revision in {SCRIPTS / 'versions'}"
    return revision


def _known(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:  # a revision of a newer release
        return False


def current(connection: Connection) -> str | None:
    """The revision a database is stamped with (None: new, or made before migrations)."""
    if not sa.inspect(connection).has_table(VERSION_TABLE):  # read as Alembic does, without its log lines
        return None
    versions = sa.table(VERSION_TABLE, sa.column("version_num"))
    return connection.execute(sa.select(versions.c.version_num)).scalar()


@contextlib.contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other process's schema change can enter;
    committed at the end (rolled back on an error)."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # other writers wait (busy_timeout) until the commit; readers go on (WAL)
            connection.exec_driver_sql("BEGIN EXCLUSIVE")
        elif engine.dialect.name == "postgresql":
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK)))
        # (another database: a plain transaction; SQLite and PostgreSQL are the stores we run)
        yield connection
        connection.commit()


def upgrade(engine: Engine) -> bool:
    """Bring the database to the head revision; True when this call changed it. A database
    stamped by a newer release (during a rolling update, say) is left as it is."""
    with engine.connect() as connection:
        stamp = current(connection)
    if stamp == head():
        return False
    if stamp is not None and not _known(stamp):
        log.warning("the job store's schema is at revision %s, newer than this release knows (%s)", stamp, head())
        return False
    with _schema_lock(engine) as connection:
        if current(connection) == head():  # another process did it while we waited
            return False
        command.upgrade(_config(connection), "head")
    return True
