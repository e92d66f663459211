"""The job store: jobs, their logs, watches and schedules in one SQL database (SQLite by default).

Every text written goes through `redact` first (a Hub error may quote a token), so no secret
this process knows reaches the database.

Every state change is one conditional UPDATE whose WHERE clause names the state (and, for a
running job, the claim) it expects, so concurrent threads and processes can race freely:
exactly one of them wins and the others see rowcount 0. Submission takes a lock row first so
its dedup lookup and limit counts hold until the new job is inserted.

Several processes (a server and workers on other machines) may open an empty PostgreSQL store at
the same moment: the schema is created under a transaction-scoped advisory lock, so exactly one
of them creates it and the others find it made.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, RowMapping, make_url
from sqlalchemy.types import TypeDecorator

from ..errors import LimitError
from ..redact import redact, redact_value
from .settings import Limits
from .states import ACTIVE, FINAL, QUEUED, WAITING_KEY


def now() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return secrets.token_hex(6)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None else None


metadata = MetaData()

jobs = Table(
    "hubbot_jobs", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # queue order
    Column("id", String(32), unique=True, nullable=False),
    Column("owner", String(200), index=True),
    Column("recipe", Text, nullable=False),
    Column("recipe_hash", String(64), nullable=False),
    Column("dedup_key", String(64), index=True, nullable=False),
    Column("target", String(200)),
    Column("options", JSON, nullable=False),
    Column("sources", JSON, nullable=False),  # [{"ref", "revision"}] as planned at submission
    Column("token_source", String(8)),  # "user" (held in memory only), "service" or None
    Column("notify", JSON(none_as_null=True)),  # where to report the outcome: {"repo", "repo_type", "num"}
    Column("state", String(16), index=True, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("not_before", UTCDateTime),  # retry backoff
    Column("claim", String(32)),  # the run that holds the job while active
    Column("lease_until", UTCDateTime),  # a run whose lease lapses is presumed dead
    Column("worker_pid", Integer),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("progress", JSON, nullable=False),
    Column("result", JSON(none_as_null=True)),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("notified", Boolean, nullable=False, default=False),
)

job_logs = Table(
    "hubbot_job_logs", metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), index=True, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("text", Text, nullable=False),
)

watches = Table(
    "hubbot_watches", metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(200), index=True),
    Column("recipe", Text, nullable=False),
    Column("target", String(200)),
    Column("pr", Boolean, nullable=False),
    Column("private", Boolean, nullable=False),
    Column("sources", JSON, nullable=False),  # {label: revision} last merged
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_job_id", String(32)),
    Column("active", Boolean, nullable=False, default=True),
)

schedules = Table(
    "hubbot_schedules", metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(200), index=True),
    Column("recipe", Text, nullable=False),
    Column("cron", String(100), nullable=False),
    Column("target", String(200)),
    Column("pr", Boolean, nullable=False),
    Column("private", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_job_id", String(32)),
    Column("active", Boolean, nullable=False, default=True),
)

locks = Table(
    "hubbot_locks", metadata,
    Column("name", String(32), primary_key=True),
    Column("n", Integer, nullable=False),
)


def make_engine(url: str) -> Engine:
    """An engine whose SQLite transactions take the write lock up front (BEGIN IMMEDIATE), so a
    read-then-write transaction never fails to upgrade its lock under contention."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


SCHEMA_LOCK = 0x6875_6262  # PostgreSQL advisory lock key held while the schema is created ("hubb")


def display_url(url: str) -> str:
    """The store URL as it may be printed or logged: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can read: show its scheme only
        return url.split(":", 1)[0] + ":***"


class Store:
    """All SQL the service runs. Rows come back as plain mappings; the service shapes them."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        with self.engine.begin() as c:
            if c.dialect.name == "postgresql":
                c.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
            metadata.create_all(c)
            if c.execute(select(locks.c.name).where(locks.c.name == "submit")).first() is None:
                c.execute(insert(locks).values(name="submit", n=0))

    def __repr__(self) -> str:
        return f"Store({display_url(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _lock(c: Connection) -> None:
        """Serialise submissions and claims on every backend: an UPDATE locks the row until commit."""
        c.execute(update(locks).where(locks.c.name == "submit").values(n=locks.c.n + 1))

    # --- jobs -----------------------------------------------------------------------------

    def add_job(self, values: dict[str, Any], limits: Limits,
                reusable: Callable[[RowMapping], bool]) -> tuple[RowMapping, bool]:
        """Insert a queued job, or return the live job with the same dedup key (and True).

        Deduplication stays within one owner: another user's identical request is a new job.
        Raises LimitError when the owner's queued cap or the global queue cap is reached.
        """
        values = redact_value(values)
        owner = values.get("owner")
        with self.engine.begin() as c:
            self._lock(c)
            same = c.execute(select(jobs).where(jobs.c.dedup_key == values["dedup_key"],
                                                jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner,
                                                jobs.c.state.not_in(("failed", "cancelled")))
                             .order_by(jobs.c.seq.desc()).limit(1)).mappings().first()
            if same is not None and reusable(same):
                return same, True
            queued = c.execute(select(func.count()).select_from(jobs).where(jobs.c.state == QUEUED)).scalar_one()
            if queued >= limits.queue:
                raise LimitError(f"the queue is full ({queued} jobs waiting, the limit is {limits.queue}); "
                                 "try again in a few minutes")
            if owner is not None:
                mine = c.execute(select(func.count()).select_from(jobs)
                                 .where(jobs.c.state == QUEUED, jobs.c.owner == owner)).scalar_one()
                if mine >= limits.queued_per_owner:
                    raise LimitError(f"you already have {mine} jobs waiting (the limit is {limits.queued_per_owner}); "
                                     "wait for one to start or cancel one")
            row = {"state": QUEUED, "created_at": now(), "progress": {}, "attempts": 0, "cancel_requested": False,
                   "notified": False, **values}
            c.execute(insert(jobs).values(**row))
            return c.execute(select(jobs).where(jobs.c.id == row["id"])).mappings().one(), False

    def get(self, job_id: str) -> RowMapping | None:
        with self.engine.begin() as c:
            return c.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()

    def list(self, owner: str | None = None, limit: int = 50, states: Iterable[str] | None = None) -> list[RowMapping]:
        """Newest first."""
        q = select(jobs).order_by(jobs.c.seq.desc()).limit(limit)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        if states is not None:
            q = q.where(jobs.c.state.in_(tuple(states)))
        with self.engine.begin() as c:
            return list(c.execute(q).mappings())

    def queue(self) -> list[str]:
        """Ids of queued jobs in the order they will run."""
        with self.engine.begin() as c:
            return list(c.execute(select(jobs.c.id).where(jobs.c.state == QUEUED).order_by(jobs.c.seq)).scalars())

    def counts(self) -> dict[str, int]:
        with self.engine.begin() as c:
            return dict(c.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all())

    def claim(self, claim: str, lease_seconds: float, *, held_tokens: set[str],
              running_per_owner: int) -> RowMapping | None:
        """Move the oldest runnable queued job to `validating` under `claim`, or return None.

        Skips jobs whose user token this process does not hold, jobs in retry backoff and owners
        at their running cap. The conditional UPDATE is what makes a claim exclusive.
        """
        t = now()
        with self.engine.begin() as c:
            self._lock(c)
            running = dict(c.execute(select(jobs.c.owner, func.count()).where(jobs.c.state.in_(ACTIVE))
                                     .group_by(jobs.c.owner)).all())
            q = (select(jobs.c.id, jobs.c.owner, jobs.c.token_source)
                 .where(jobs.c.state == QUEUED, or_(jobs.c.not_before.is_(None), jobs.c.not_before <= t))
                 .order_by(jobs.c.seq).limit(200))
            for row in c.execute(q).all():
                if row.token_source == "user" and row.id not in held_tokens:
                    continue
                if row.owner is not None and running.get(row.owner, 0) >= running_per_owner:
                    continue
                won = c.execute(update(jobs).where(jobs.c.id == row.id, jobs.c.state == QUEUED).values(
                    state="validating", claim=claim, lease_until=t + timedelta(seconds=lease_seconds),
                    started_at=func.coalesce(jobs.c.started_at, t), attempts=jobs.c.attempts + 1,
                    cancel_requested=False, not_before=None, error=None)).rowcount
                if won == 1:
                    return c.execute(select(jobs).where(jobs.c.id == row.id)).mappings().one()
        return None

    def _held(self, job_id: str, claim: str):
        return and_(jobs.c.id == job_id, jobs.c.claim == claim, jobs.c.state.in_(ACTIVE))

    def advance(self, job_id: str, claim: str, state: str, **values: Any) -> bool:
        """Move a job this run holds to `state` (final states close it). False if it is no longer ours."""
        values = redact_value(values)
        if state in FINAL:
            values.update(finished_at=now(), lease_until=None)
        with self.engine.begin() as c:
            return c.execute(update(jobs).where(self._held(job_id, claim)).values(state=state, **values)).rowcount == 1

    def report(self, job_id: str, claim: str, progress: dict, lease_seconds: float) -> bool:
        """Store progress and extend the lease. False if the job is no longer held by this run."""
        with self.engine.begin() as c:
            return c.execute(update(jobs).where(self._held(job_id, claim)).values(
                progress=progress, lease_until=now() + timedelta(seconds=lease_seconds))).rowcount == 1

    def set_pid(self, job_id: str, claim: str, pid: int) -> None:
        with self.engine.begin() as c:
            c.execute(update(jobs).where(self._held(job_id, claim)).values(worker_pid=pid))

    def renew(self, claims: Iterable[str], lease_seconds: float) -> None:
        claims = tuple(claims)
        if not claims:
            return
        with self.engine.begin() as c:
            c.execute(update(jobs).where(jobs.c.claim.in_(claims), jobs.c.state.in_(ACTIVE))
                      .values(lease_until=now() + timedelta(seconds=lease_seconds)))

    def release(self, job_id: str, claim: str, *, max_attempts: int, why: str, retry_after: float = 0.0,
                counts: bool = True) -> str | None:
        """A run ended without finishing the job: queue it again (keeping its place), or fail it
        when it has had `max_attempts` runs. `counts=False` (an orderly shutdown) gives the
        attempt back. Returns the new state, None if the job is not held by `claim`."""
        why = redact(why)
        with self.engine.begin() as c:
            row = c.execute(select(jobs.c.attempts, jobs.c.cancel_requested)
                            .where(self._held(job_id, claim))).first()
            if row is None:
                return None
            t = now()
            attempts = row.attempts if counts else row.attempts - 1
            if row.cancel_requested:
                values: dict[str, Any] = {"state": "cancelled", "finished_at": t, "error": "cancelled on request"}
            elif attempts >= max_attempts:
                values = {"state": "failed", "finished_at": t, "error": f"{why}; gave up after {attempts} attempts"}
            else:
                values = {"state": QUEUED, "not_before": t + timedelta(seconds=retry_after) if retry_after else None}
            c.execute(update(jobs).where(self._held(job_id, claim))
                      .values(claim=None, lease_until=None, worker_pid=None, attempts=attempts, **values))
            self._log(c, job_id, f"{why}; " + {"cancelled": "cancelled", "failed": "failed",
                                               QUEUED: f"queued again (attempt {attempts + 1} of {max_attempts})"
                                               }[values["state"]])
            return values["state"]

    def expired(self) -> list[RowMapping]:
        """Active jobs whose run stopped renewing its lease (its worker or server died)."""
        with self.engine.begin() as c:
            return list(c.execute(select(jobs).where(jobs.c.state.in_(ACTIVE), jobs.c.lease_until < now())).mappings())

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job (or an active one nobody runs) at once; else ask its run to stop.
        True if the job is now cancelled."""
        t = now()
        with self.engine.begin() as c:
            done = c.execute(update(jobs).where(jobs.c.id == job_id, or_(
                jobs.c.state == QUEUED, and_(jobs.c.state.in_(ACTIVE), jobs.c.lease_until < t)))
                .values(state="cancelled", finished_at=t, claim=None, lease_until=None,
                        error="cancelled on request")).rowcount == 1
            if done:
                self._log(c, job_id, "cancelled")
                return True
            if c.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE))
                         .values(cancel_requested=True)).rowcount:
                self._log(c, job_id, "cancel requested; stopping the worker")
            return False

    def cancel_requests(self, claims: Iterable[str]) -> list[str]:
        """Claims among `claims` whose job has a pending cancel request."""
        claims = tuple(claims)
        if not claims:
            return []
        with self.engine.begin() as c:
            return list(c.execute(select(jobs.c.claim).where(jobs.c.claim.in_(claims), jobs.c.state.in_(ACTIVE),
                                                             jobs.c.cancel_requested.is_(True))).scalars())

    def settle_unheld(self, held: set[str], *, lost: str, waits: Callable[[RowMapping], str | None],
                      lapsed_only: bool = False) -> list[str]:
        """Jobs that need a user token nobody holds any more (queued, or active with a lapsed lease; with
        `lapsed_only` the latter only). One for which `waits` gives a reason waits in the queue with it in its
        progress (`WAITING_KEY`) and its log, to be claimed once its token is held again; the others fail with
        `lost`. Returns the failed jobs' ids."""
        lost = redact(lost)
        t = now()
        lapsed = and_(jobs.c.state.in_(ACTIVE), jobs.c.lease_until < t)
        unfollowed = lapsed if lapsed_only else or_(jobs.c.state == QUEUED, lapsed)
        failed = []
        with self.engine.begin() as c:
            for row in c.execute(select(jobs).where(jobs.c.token_source == "user", unfollowed)).mappings().all():
                if row["id"] in held:
                    continue
                this = and_(jobs.c.id == row["id"], unfollowed)
                why = waits(row)
                if why is None:
                    c.execute(update(jobs).where(this).values(
                        state="failed", error=lost, finished_at=t, claim=None, lease_until=None))
                    self._log(c, row["id"], f"failed: {lost}")
                    failed.append(row["id"])
                elif row["state"] != QUEUED or (row["progress"] or {}).get(WAITING_KEY) != why:
                    c.execute(update(jobs).where(this).values(
                        state=QUEUED, claim=None, lease_until=None, worker_pid=None,
                        progress={**(row["progress"] or {}), WAITING_KEY: redact(why)}))
                    self._log(c, row["id"], why)
            return failed

    def unnotified(self) -> list[RowMapping]:
        """Finished jobs whose outcome is to be reported (to a discussion) and has not been yet."""
        with self.engine.begin() as c:
            return list(c.execute(select(jobs).where(jobs.c.state.in_(FINAL), jobs.c.notify.is_not(None),
                                                     jobs.c.notified.is_(False))).mappings())

    def mark_notified(self, job_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id).values(notified=True))

    def finished_before(self, before: datetime) -> list[RowMapping]:
        with self.engine.begin() as c:
            return list(c.execute(select(jobs).where(jobs.c.state.in_(FINAL), jobs.c.finished_at < before)).mappings())

    # --- logs -----------------------------------------------------------------------------

    @staticmethod
    def _log(c: Connection, job_id: str, text: str) -> None:
        c.execute(insert(job_logs).values(job_id=job_id, at=now(), text=redact(text)))

    def log(self, job_id: str, text: str) -> None:
        with self.engine.begin() as c:
            self._log(c, job_id, text)

    def log_lines(self, job_id: str, since: int = 0) -> list[tuple[datetime, str]]:
        with self.engine.begin() as c:
            return [(r.at, r.text) for r in c.execute(select(job_logs.c.at, job_logs.c.text)
                                                     .where(job_logs.c.job_id == job_id)
                                                     .order_by(job_logs.c.n).offset(max(0, since)))]

    def prune_logs(self, job_ids: Iterable[str]) -> int:
        ids = tuple(job_ids)
        if not ids:
            return 0
        with self.engine.begin() as c:
            return c.execute(delete(job_logs).where(job_logs.c.job_id.in_(ids))).rowcount

    # --- watches and schedules --------------------------------------------------------------

    def add_watch(self, values: dict[str, Any]) -> RowMapping:
        return self._add(watches, values)

    def add_schedule(self, values: dict[str, Any]) -> RowMapping:
        return self._add(schedules, values)

    def _add(self, table: Table, values: dict[str, Any]) -> RowMapping:
        row = {"id": new_id(), "created_at": now(), "active": True, **redact_value(values)}
        with self.engine.begin() as c:
            c.execute(insert(table).values(**row))
            return c.execute(select(table).where(table.c.id == row["id"])).mappings().one()

    def watches(self, owner: str | None = None) -> list[RowMapping]:
        return self._rows(watches, owner)

    def schedules(self, owner: str | None = None) -> list[RowMapping]:
        return self._rows(schedules, owner)

    def _rows(self, table: Table, owner: str | None) -> list[RowMapping]:
        q = select(table).where(table.c.active.is_(True)).order_by(table.c.created_at)
        if owner is not None:
            q = q.where(table.c.owner == owner)
        with self.engine.begin() as c:
            return list(c.execute(q).mappings())

    def get_schedule(self, schedule_id: str) -> RowMapping | None:
        with self.engine.begin() as c:
            return c.execute(select(schedules).where(schedules.c.id == schedule_id)).mappings().first()

    def update_watch(self, watch_id: str, **values: Any) -> None:
        with self.engine.begin() as c:
            c.execute(update(watches).where(watches.c.id == watch_id).values(**redact_value(values)))

    def update_schedule(self, schedule_id: str, **values: Any) -> None:
        with self.engine.begin() as c:
            c.execute(update(schedules).where(schedules.c.id == schedule_id).values(**redact_value(values)))
