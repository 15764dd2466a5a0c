"""The job store's schema: made by its Alembic revisions, once, however many processes open
a new store at the same moment (SQLite and a real PostgreSQL); a store made before
migrations (tables, no version stamp) is adopted with its jobs; and the head revision
makes exactly the tables `service.jobs.store.metadata` describes."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.jobs import migrations
from service.jobs.store import JobStore, make_engine, metadata, now
from tests.scaleout.conftest import Postgres, postgres  # noqa: F401 - the PostgreSQL server fixture

PROCESSES = 6


def legacy_metadata(with_later_tables: bool = True) -> sa.MetaData:
    """The tables as the store made them with ``create_all`` before migrations; without the
    later tables, as the first job store did (jobs only, its idempotency key unique)."""
    legacy = sa.MetaData()
    sa.Table(
        "jobs",
        legacy,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("stage", sa.String(64), nullable=True),
        sa.Column("done", sa.Integer, nullable=False, default=0),
        sa.Column("total", sa.Integer, nullable=True),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True, unique=not with_later_tables),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("active_slot", sa.String(100), nullable=True, unique=True),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
    )
    if with_later_tables:
        sa.Table(
            "idempotency_keys",
            legacy,
            sa.Column("key", sa.String(255), primary_key=True),
            sa.Column("job_id", sa.String(32), nullable=False),
            sa.Column("request_hash", sa.String(64), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )
        sa.Table(
            "job_submitters",
            legacy,
            sa.Column("job_id", sa.String(32), primary_key=True),
            sa.Column("submitter", sa.String(64), nullable=False, index=True),
        )
    return legacy


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'jobs.sqlite'}"


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:  # noqa: F811 - the imported fixture
    return postgres.create_database("schema")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


def schema_drift(engine: sa.Engine) -> list[Any]:
    """What the database lacks or has beyond `metadata` (the version table aside)."""

    def ours(name: str | None, type_: str, _: Any) -> bool:
        return not (type_ == "table" and name == migrations.VERSION_TABLE)

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": ours, "compare_type": True})
        return list(compare_metadata(context, metadata))


def stamped(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return migrations.current(conn)


# --------------------------------------------------------------------------- many processes at once
class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def open_store(url: str, barrier: Any, results: Any) -> None:
    """In a fresh process: open the store when every other process does, create a job."""
    errors = Errors()
    logging.getLogger("service").addHandler(errors)
    barrier.wait(timeout=60)
    try:
        store = JobStore(url)
        store.create("backtest", "model", {"n": 1})
        store.dispose()
        outcome = "ok"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"[:500]
    results.put((outcome, errors.messages))


def test_processes_opening_a_new_store_at_once_all_succeed(store_url: str, engine: sa.Engine) -> None:
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as servers starting together
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=open_store, args=(store_url, barrier, results)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    failures = [f"{outcome} (logged: {logged})" for outcome, logged in outcomes if (outcome, logged) != ("ok", [])]
    assert not failures, "\n".join(failures)
    assert stamped(engine) == migrations.head()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == PROCESSES
    assert schema_drift(engine) == []


# --------------------------------------------------------------------------- one process
def test_the_head_revision_makes_the_tables_the_store_describes(store_url: str, engine: sa.Engine) -> None:
    assert stamped(engine) is None
    JobStore(store_url).dispose()
    assert stamped(engine) == migrations.head()
    assert schema_drift(engine) == []
    assert migrations.upgrade(engine) is False  # at the head: nothing to do, nothing written


@pytest.mark.parametrize("with_later_tables", [True, False], ids=["last-layout", "first-layout"])
def test_a_store_made_before_migrations_is_adopted_with_its_jobs(
    store_url: str, engine: sa.Engine, with_later_tables: bool
) -> None:
    legacy = legacy_metadata(with_later_tables)
    legacy.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            legacy.tables["jobs"]
            .insert()
            .values(
                id="0" * 32,
                kind="retrain",
                model="old",
                status="succeeded",
                stage="succeeded",
                done=1,
                params="{}",
                result='{"version": 3}',
                cancel_requested=False,
                created_at=now(),
                finished_at=now(),
            )
        )
    assert stamped(engine) is None

    store = JobStore(store_url)
    try:
        assert stamped(engine) == migrations.head()
        old = store.get("0" * 32)
        assert (old.status, old.result) == ("succeeded", {"version": 3})
        job, created = store.create("backtest", "new", {}, idempotency_key="k", submitter="someone", max_active=5)
        assert created and store.active_count("someone") == 1
        assert store.create("backtest", "new", {}, idempotency_key="k")[0].id == job.id
    finally:
        store.dispose()
    assert sorted(sa.inspect(engine).get_table_names()) == sorted([*metadata.tables, migrations.VERSION_TABLE])


def test_a_store_stamped_by_a_newer_release_is_used_as_it_is(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    JobStore(sqlite_url).dispose()
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = 'from-the-future'"))
        with caplog.at_level(logging.WARNING, logger="service"):
            store = JobStore(sqlite_url)
        assert store.create("backtest", "model", {})[1]
        store.dispose()
        assert stamped(engine) == "from-the-future"
        assert [r.levelname for r in caplog.records] == ["WARNING"], caplog.text
        assert "newer than this release knows" in caplog.text
    finally:
        engine.dispose()
