"""The job store: one table through SQLAlchemy Core (SQLite by default, Postgres by URL).

Every state change is a conditional UPDATE, so two processes never both claim a job
and a job marked failed (e.g. interrupted) is never flipped back by a late worker.
The schema is made and changed by the Alembic revisions of `service.jobs.migrations`,
safe when several processes open one store at the same moment; `metadata` here is what
the head revision makes (a test compares the two).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.errors import Conflict, InvalidInput, NotFound, TooManyJobs
from service.jobs import migrations
from service.tables import encode_json

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
KINDS = ("backtest", "export", "leaderboard", "retrain")

metadata = sa.MetaData()
jobs_table = sa.Table(
    "jobs",
    metadata,
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
    sa.Column("idempotency_key", sa.String(255), nullable=True),  # the key that created it
    sa.Column("request_hash", sa.String(64), nullable=True),
    # an active retrain per model: unique, so two triggers cannot both insert one
    sa.Column("active_slot", sa.String(100), nullable=True, unique=True),
    sa.Column("owner", sa.String(200), nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
)

# every Idempotency-Key ever answered, with the job it was answered with (several keys may
# name one job: a key that arrived while that retrain was already running)
keys_table = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


# who submitted a job (a hash of the API key, or "open"): bounds queued + running jobs per key
submitters_table = sa.Table(
    "job_submitters",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("submitter", sa.String(64), nullable=False, index=True),
)


def now() -> datetime:
    return datetime.now(UTC)


def process_owner() -> str:
    """host:pid:boot — unique per process, so a restarted process never owns old jobs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    model: str
    status: str
    stage: str | None
    done: int
    total: int | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    idempotency_key: str | None
    request_hash: str | None
    owner: str | None
    cancel_requested: bool
    created_at: str | None
    started_at: str | None
    finished_at: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        return cls(
            id=row["id"],
            kind=row["kind"],
            model=row["model"],
            status=row["status"],
            stage=row["stage"],
            done=row["done"] or 0,
            total=row["total"],
            params=json.loads(row["params"]),
            result=json.loads(row["result"]) if row["result"] else None,
            error=row["error"],
            idempotency_key=row["idempotency_key"],
            request_hash=row["request_hash"],
            owner=row["owner"],
            cancel_requested=bool(row["cancel_requested"]),
            created_at=_iso(row["created_at"]),
            started_at=_iso(row["started_at"]),
            finished_at=_iso(row["finished_at"]),
        )

    @property
    def finished(self) -> bool:
        return self.status not in ACTIVE

    def public(self) -> dict[str, Any]:
        """The job as the API shows it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "model": self.model,
            "status": self.status,
            "progress": {"stage": self.stage, "done": self.done, "total": self.total},
            "params": self.params,
            "result": self.result,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def _write_ahead_log(cursor: Any, patience: float = 30.0) -> None:
    """``PRAGMA journal_mode=WAL``. On a new file, processes switching it at the same moment
    can get "database is locked" at once (SQLite skips its busy handler where waiting could
    deadlock): tried again for up to ``patience`` seconds, as the busy timeout would."""
    deadline = time.monotonic() + patience
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            with contextlib.suppress(OSError):  # a read-only folder: the first query says so
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            _write_ahead_log(cursor)
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


JobIds = list[str]  # named outside JobStore, whose list() method shadows the builtin there
Jobs = list[Job]


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    """A `JobStore.page` cursor back to (created_at, id); InvalidInput for anything else."""
    created, _, job_id = cursor.partition("|")
    try:
        return datetime.fromisoformat(created), job_id
    except ValueError:
        raise InvalidInput(
            "page_token is not one this server gave out: start again without it", field="page_token"
        ) from None


class JobStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            if migrations.upgrade(self.engine):
                log.info("job store schema upgraded to revision %s", migrations.head())
        except (sa.exc.OperationalError, OSError) as exc:  # a read-only data folder: serve, jobs answer 503
            log.error("the job store cannot be written (%s): job requests answer 503 until it can be", exc)

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ create
    def create(
        self,
        kind: str,
        model: str,
        params: Mapping[str, Any],
        *,
        total: int | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        exclusive: bool = False,
        submitter: str | None = None,
        max_active: int | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job; returns (job, created). With ``idempotency_key`` the same
        key returns the same job (a different ``request_hash`` is a conflict); with
        ``exclusive`` an active job of this kind and model is returned instead. A
        ``submitter`` with ``max_active`` queued or running jobs already gets `TooManyJobs`."""
        if kind not in KINDS:
            raise InvalidInput(f"unknown job kind {kind!r}")
        job_id = uuid.uuid4().hex
        row = {
            "id": job_id,
            "kind": kind,
            "model": model,
            "status": "queued",
            "stage": "queued",
            "done": 0,
            "total": total,
            "params": encode_json(dict(params)).decode(),
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
            "active_slot": f"{kind}:{model}" if exclusive else None,
            "cancel_requested": False,
            "created_at": now(),
        }
        if idempotency_key is not None:
            known = self._by_key(idempotency_key, request_hash)
            if known is not None:
                return known, False
        if submitter is not None and max_active is not None:
            active_count = self.active_count(submitter)
            if active_count >= max_active:
                raise TooManyJobs(
                    f"this key has {active_count} queued or running jobs, the most allowed "
                    "(FORECAST_MAX_ACTIVE_JOBS_PER_KEY); retry when one has finished",
                    retry_after=10,
                    limit=max_active,
                )
        try:
            with self.engine.begin() as conn:  # the job and its key in one transaction
                conn.execute(jobs_table.insert().values(**row))
                if submitter is not None:
                    conn.execute(submitters_table.insert().values(job_id=job_id, submitter=submitter))
                if idempotency_key is not None:
                    conn.execute(keys_table.insert().values(**self._key_row(idempotency_key, job_id, request_hash)))
        except sa.exc.IntegrityError:
            if idempotency_key is not None:
                known = self._by_key(idempotency_key, request_hash)
                if known is not None:  # the same key won a race
                    return known, False
            active = self._active(kind, model) if exclusive else None
            if active is None:  # the competing job finished in between: try again
                return self.create(
                    kind,
                    model,
                    params,
                    total=total,
                    idempotency_key=idempotency_key,
                    request_hash=request_hash,
                    exclusive=exclusive,
                )
            if idempotency_key is not None:  # remember that this key was answered with that job
                try:
                    with self.engine.begin() as conn:
                        conn.execute(
                            keys_table.insert().values(**self._key_row(idempotency_key, active.id, request_hash))
                        )
                except sa.exc.IntegrityError:
                    known = self._by_key(idempotency_key, request_hash)
                    return (known or active), False
            return active, False
        return self.get(job_id), True

    def active_count(self, submitter: str) -> int:
        """Queued + running jobs of one submitter."""
        query = (
            sa.select(sa.func.count())
            .select_from(submitters_table.join(jobs_table, submitters_table.c.job_id == jobs_table.c.id))
            .where(submitters_table.c.submitter == submitter, jobs_table.c.status.in_(ACTIVE))
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    @staticmethod
    def _key_row(key: str, job_id: str, request_hash: str | None) -> dict[str, Any]:
        return {"key": key, "job_id": job_id, "request_hash": request_hash, "created_at": now()}

    def _by_key(self, key: str, request_hash: str | None) -> Job | None:
        """The job a key was answered with; a different request body is a 422."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(keys_table).where(keys_table.c.key == key)).mappings().first()
        if row is None:
            return None
        if request_hash is not None and row["request_hash"] != request_hash:
            raise InvalidInput(
                f"Idempotency-Key {key!r} was used with a different request body",
                field="Idempotency-Key",
                job=row["job_id"],
            )
        return self.get(row["job_id"])

    def by_key(self, key: str) -> Job | None:
        """The job an idempotency key was answered with, whatever its body was."""
        return self._by_key(key, None)

    def _active(self, kind: str, model: str) -> Job | None:
        query = sa.select(jobs_table).where(jobs_table.c.active_slot == f"{kind}:{model}")
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return Job.from_row(row) if row is not None else None

    # ------------------------------------------------------------------ read
    def get(self, job_id: str) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs_table).where(jobs_table.c.id == job_id)).mappings().first()
        if row is None:
            raise NotFound(f"no job with id {job_id!r}", job=job_id)
        return Job.from_row(row)

    def list(
        self,
        model: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        return self.page(model, kind, status, limit)[0]

    def page(
        self,
        model: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> tuple[Jobs, str | None]:
        """Up to ``limit`` jobs, newest first (by creation time, then id), after the cursor
        ``after`` that a previous page returned; and the cursor of the next page (None at
        the end). A keyset, not an offset: jobs created or deleted between pages never make
        a later page repeat or skip one."""
        query = sa.select(jobs_table).order_by(jobs_table.c.created_at.desc(), jobs_table.c.id.desc()).limit(limit + 1)
        if after is not None:
            created, job_id = _parse_cursor(after)
            query = query.where(
                sa.or_(
                    jobs_table.c.created_at < created,
                    sa.and_(jobs_table.c.created_at == created, jobs_table.c.id < job_id),
                )
            )
        if model:
            query = query.where(jobs_table.c.model == model)
        if kind:
            query = query.where(jobs_table.c.kind == kind)
        if status:
            query = query.where(jobs_table.c.status == status)
        with self.engine.connect() as conn:
            rows = list(conn.execute(query).mappings())
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = f"{rows[-1]['created_at'].isoformat()}|{rows[-1]['id']}" if more and rows else None
        return [Job.from_row(r) for r in rows], cursor

    # ------------------------------------------------------------------ delete
    def delete(self, job_id: str) -> Job:
        """Remove a finished job, with the idempotency keys and the submitter row naming it
        (a key may then start a new job). A queued or running job is a `Conflict`."""
        job = self.get(job_id)
        if not job.finished:
            raise Conflict(
                f"job {job_id} is {job.status}: only finished jobs are deleted; cancel it first",
                job=job_id,
                job_status=job.status,
            )
        if not self._delete([job_id]):
            self.get(job_id)  # deleted meanwhile: NotFound (a finished job never becomes active again)
        return job

    def purge_finished(self, older_than: timedelta, batch: int = 500) -> JobIds:
        """Delete the jobs that finished more than ``older_than`` ago; returns their ids."""
        limit = now() - older_than
        query = (
            sa.select(jobs_table.c.id)
            .where(jobs_table.c.status.notin_(ACTIVE), jobs_table.c.finished_at < limit)
            .limit(batch)
        )
        purged: JobIds = []
        while True:
            with self.engine.connect() as conn:
                ids = [r[0] for r in conn.execute(query)]
            if not ids:
                return purged
            self._delete(ids)
            purged += ids
            if len(ids) < batch:
                return purged

    def _delete(self, job_ids: JobIds) -> int:
        with self.engine.begin() as conn:
            gone = conn.execute(
                jobs_table.delete().where(jobs_table.c.id.in_(job_ids), jobs_table.c.status.notin_(ACTIVE))
            ).rowcount
            remaining = sa.select(jobs_table.c.id).where(jobs_table.c.id.in_(job_ids))  # none, but to be sure
            for table in (keys_table, submitters_table):
                conn.execute(table.delete().where(table.c.job_id.in_(job_ids), table.c.job_id.notin_(remaining)))
        return int(gone)

    # ------------------------------------------------------------------ transitions
    def _update(self, job_id: str, where: Any, **values: Any) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(jobs_table.update().where(jobs_table.c.id == job_id, where).values(**values))
        return result.rowcount == 1

    def claim(self, job_id: str, owner: str) -> bool:
        """queued -> running, by exactly one process."""
        stamp = now()
        return self._update(
            job_id,
            sa.and_(jobs_table.c.status == "queued", jobs_table.c.cancel_requested.is_(False)),
            status="running",
            stage="starting",
            owner=owner,
            started_at=stamp,
            heartbeat_at=stamp,
        )

    def queued_ids(self, limit: int) -> JobIds:
        query = (
            sa.select(jobs_table.c.id)
            .where(jobs_table.c.status == "queued")
            .order_by(jobs_table.c.created_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(query)]

    def progress(self, job_id: str, owner: str, stage: str, done: int, total: int | None) -> bool:
        """Record progress; False when the job is no longer ours or a cancel was asked."""
        values: dict[str, Any] = {"stage": stage, "done": done, "heartbeat_at": now()}
        if total is not None:
            values["total"] = total
        moved = self._update(job_id, sa.and_(jobs_table.c.status == "running", jobs_table.c.owner == owner), **values)
        return moved and not self.get(job_id).cancel_requested

    def heartbeat(self, job_ids: JobIds, owner: str) -> None:
        if not job_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id.in_(job_ids), jobs_table.c.owner == owner, jobs_table.c.status == "running")
                .values(heartbeat_at=now())
            )

    def finish(
        self,
        job_id: str,
        owner: str | None,
        status: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """running (ours) -> succeeded/failed/cancelled; queued -> cancelled/failed."""
        assert status in ("succeeded", "failed", "cancelled")
        where = (
            sa.and_(jobs_table.c.status == "running", jobs_table.c.owner == owner)
            if owner is not None
            else jobs_table.c.status == "queued"
        )
        return self._update(
            job_id,
            where,
            status=status,
            stage=status,
            result=encode_json(dict(result)).decode() if result is not None else None,
            error=error,
            finished_at=now(),
            active_slot=None,
        )

    def request_cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.finished:
            raise Conflict(f"job {job_id} is already {job.status}", job=job_id, job_status=job.status)
        self._update(job_id, jobs_table.c.status.in_(ACTIVE), cancel_requested=True)
        self.finish(job_id, None, "cancelled", error="cancelled before it started")
        return self.get(job_id)

    def cancel_requested(self, job_ids: JobIds) -> JobIds:
        if not job_ids:
            return []
        query = sa.select(jobs_table.c.id).where(jobs_table.c.id.in_(job_ids), jobs_table.c.cancel_requested.is_(True))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(query)]

    def fail_owned(self, owner: str, error: str) -> int:
        """Every job still running under ``owner`` -> failed (the owner is shutting down)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.status == "running", jobs_table.c.owner == owner)
                .values(status="failed", stage="failed", error=error, finished_at=now(), active_slot=None)
            )
        return result.rowcount

    def fail_interrupted(self, stale_after: float, own_host_dead: Any = None) -> JobIds:
        """Mark `running` jobs whose owner stopped beating (or died on this host) as
        failed: interrupted. Returns their ids."""
        limit = now() - timedelta(seconds=stale_after)
        with self.engine.connect() as conn:
            rows = list(
                conn.execute(
                    sa.select(jobs_table.c.id, jobs_table.c.owner, jobs_table.c.heartbeat_at).where(
                        jobs_table.c.status == "running"
                    )
                ).mappings()
            )
        failed = []
        for row in rows:
            beat = row["heartbeat_at"]
            if beat is not None and beat.tzinfo is None:
                beat = beat.replace(tzinfo=UTC)
            dead_here = own_host_dead is not None and own_host_dead(row["owner"])
            if (dead_here or beat is None or beat < limit) and self._update(
                row["id"],
                sa.and_(jobs_table.c.status == "running", jobs_table.c.owner == row["owner"]),
                status="failed",
                stage="failed",
                error="interrupted: the process running this job stopped",
                finished_at=now(),
                active_slot=None,
            ):
                failed.append(row["id"])
        return failed
