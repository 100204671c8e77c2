"""Database binding and schema management."""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import peewee

log = logging.getLogger(__name__)

# One proxy the models bind to; `open_database` points it at SQLite or PostgreSQL.
database = peewee.DatabaseProxy()

# Bump when a migration is added to _MIGRATIONS.
SCHEMA_VERSION = 4
# Any number for pg_advisory_xact_lock: "functions" in ASCII.
SCHEMA_LOCK_KEY = 0x66756E6374696F6E


class QueuedWritersSqliteDatabase(peewee.SqliteDatabase):
    """SQLite whose write transactions queue on a lock file beside the
    database (`<db>-writer`, flock), across threads and processes.

    Without it, writers that find the database locked wait in SQLite's busy
    handler, which sleeps in growing steps (1, 2, 5 … 100 ms) and retries: a
    writer that keeps losing to others stalls for a second and more (seen
    with two replicas under write load). A flock waiter is woken the moment
    the lock is free. Autocommit statements outside transactions still use
    the busy handler (there are few: heartbeats, single-row updates)."""

    def __init__(self, database, *args, **kwargs):
        super().__init__(database, *args, **kwargs)
        self._writer_path = f"{database}-writer"
        self._writer = threading.local()  # this thread's lock-file descriptor, and whether it holds the lock
        self._turns = FairLock()  # this process's writers, first come first served (flock is not fair)

    def begin(self, lock_type=None):
        self._queue_for_writing()
        try:
            return super().begin(lock_type)
        except BaseException:
            self._done_writing()
            raise

    def commit(self):
        try:
            return super().commit()
        finally:
            self._done_writing()

    def rollback(self):
        try:
            return super().rollback()
        finally:
            self._done_writing()

    def _queue_for_writing(self) -> None:
        state = self._writer
        if getattr(state, "held", False):
            return
        if getattr(state, "fd", None) is None:
            state.fd = os.open(self._writer_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._turns.acquire()
        try:
            fcntl.flock(state.fd, fcntl.LOCK_EX)
        except BaseException:
            self._turns.release()
            raise
        state.held = True

    def _done_writing(self) -> None:
        state = self._writer
        if getattr(state, "held", False):
            state.held = False
            fcntl.flock(state.fd, fcntl.LOCK_UN)
            self._turns.release()


class FairLock:
    """A lock handed to its waiters in the order they came (threading.Lock
    lets a thread that keeps asking win again and again: one writer among
    eight waited 1.4 s)."""

    def __init__(self):
        self._guard = threading.Lock()
        self._held = False
        self._waiting: collections.deque[threading.Event] = collections.deque()

    def acquire(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()  # release() hands the lock over: it stays held

    def release(self) -> None:
        with self._guard:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._held = False


def _connect(url: str, sqlite_path: Path) -> peewee.Database:
    if not url:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return QueuedWritersSqliteDatabase(
            str(sqlite_path),
            timeout=30,
            # Transactions take the write lock when they begin. A deferred one
            # that reads and then writes must upgrade its lock, and that fails
            # at once ("database is locked", no busy wait) when another
            # process wrote in between: with several replicas it would, now
            # and then. Waiting at BEGIN is always safe.
            lock_type="IMMEDIATE",
            pragmas={
                "journal_mode": "wal",
                "synchronous": "normal",
                "foreign_keys": 1,
                "busy_timeout": 30000,
                "cache_size": -32000,
                # No checkpoint inside a request's commit (its fsync stalled
                # writes for hundreds of ms): the `sqlite-checkpoint` job
                # checkpoints in the background (`checkpoint`).
                "wal_autocheckpoint": 0,
            },
            check_same_thread=False,
        )
    parsed = urlparse(url)
    if parsed.scheme in ("postgres", "postgresql"):
        return peewee.PostgresqlDatabase(
            unquote(parsed.path.lstrip("/")),
            user=unquote(parsed.username or "") or None,
            password=unquote(parsed.password or "") or None,
            host=parsed.hostname or None,
            port=parsed.port or None,
        )
    if parsed.scheme == "sqlite":
        return _connect("", Path(unquote(parsed.path)))
    raise ValueError(f"unsupported database URL scheme: {parsed.scheme!r}")


def open_database(url: str, sqlite_path: Path) -> peewee.Database:
    """Bind the models and bring the schema up to date (safe to call again)."""
    from server.store import models

    db = _connect(url, sqlite_path)
    database.initialize(db)
    for attempt in range(20):
        try:
            db.connect(reuse_if_open=True)
            break
        except peewee.OperationalError as error:
            # Switching a new SQLite file to WAL needs it alone: another
            # process starting at the same moment makes that fail at once.
            if "locked" not in str(error) or attempt == 19:
                raise
            time.sleep(0.1)
    # Replicas start at once: the schema is made and upgraded by one of them,
    # under a lock the others wait for (PostgreSQL: an advisory lock held by
    # the transaction; SQLite: every transaction takes the write lock at BEGIN).
    with db.atomic():
        if isinstance(db, peewee.PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        # Existing databases are migrated first: create_tables also adds
        # missing indexes, which may be on columns a migration adds.
        if db.table_exists(models.SchemaVersion._meta.table_name):
            _migrate(db)
        db.create_tables(models.ALL_MODELS, safe=True)
        models.SchemaVersion.get_or_create(id=1, defaults={"version": SCHEMA_VERSION})
        models.Generation.get_or_create(id=1, defaults={"value": 0})
    log.info("database ready", extra={"backend": type(db).__name__, "schema": SCHEMA_VERSION})
    return db


def checkpoint() -> None:
    """Copy SQLite's write-ahead log into the database, without blocking
    readers or writers (PASSIVE); nothing to do on PostgreSQL. Blocking."""
    if isinstance(database.obj, peewee.SqliteDatabase):
        database.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")


def is_postgres() -> bool:
    return isinstance(database.obj, peewee.PostgresqlDatabase)


def skip_locked(query: peewee.Select) -> peewee.Select:
    """A queue's "next rows" subquery: on PostgreSQL rows another replica is
    claiming right now are skipped, not waited for (no herd on one row);
    SQLite has one writer at a time anyway."""
    return query.for_update("FOR UPDATE SKIP LOCKED") if is_postgres() else query


def _migrate(db: peewee.Database) -> None:
    """Apply migrations newer than the stored schema version, in order."""
    from server.store.models import SchemaVersion

    row = SchemaVersion.get_or_none(SchemaVersion.id == 1)
    if row is None:
        return  # made but never stamped: create_tables completes it
    for version in range(row.version + 1, SCHEMA_VERSION + 1):
        for step in _MIGRATIONS.get(version, ()):
            step(db)
        row.version = version
        row.save()


def _add_run_started_and_output_bytes(db: peewee.Database) -> None:
    from playhouse.migrate import SchemaMigrator, migrate

    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column("execution", "run_started", peewee.BigIntegerField(default=0)),
        migrator.add_column("build", "output_bytes", peewee.BigIntegerField(default=0)),
    )


def _add_owners(db: peewee.Database) -> None:
    from playhouse.migrate import SchemaMigrator, migrate

    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column("execution", "owner", peewee.CharField(max_length=64, default="")),
        migrator.add_column("build", "owner", peewee.CharField(max_length=64, default="")),
    )


def _add_triggers(db: peewee.Database) -> None:
    """Event and retry columns of executions; subscriptions of existing functions."""
    from playhouse.migrate import SchemaMigrator, migrate

    from server.store.models import Function, Subscription

    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column("execution", "event", peewee.CharField(max_length=64, default="")),
        migrator.add_column("execution", "event_data", peewee.TextField(default="")),
        migrator.add_column("execution", "chain", peewee.CharField(max_length=36, default="")),
        migrator.add_column("execution", "depth", peewee.IntegerField(default=0)),
        migrator.add_column("execution", "attempts", peewee.IntegerField(default=0)),
        migrator.add_column("execution", "run_after", peewee.BigIntegerField(default=0)),
        migrator.add_column("execution", "sync", peewee.BooleanField(default=False)),
    )
    Subscription.create_table(safe=True)
    for fn in Function.select(Function.project, Function.uid, Function.events):
        Subscription.replace(fn.project, fn.uid, fn.events)


# version -> list of callables(db). create_tables(safe=True) creates new tables
# and missing indexes, also of existing tables (a new database starts at
# SCHEMA_VERSION); migrations only handle changes to existing columns.
_MIGRATIONS: dict[int, list] = {2: [_add_run_started_and_output_bytes], 3: [_add_owners], 4: [_add_triggers]}


def close_database() -> None:
    if database.obj is not None and not database.is_closed():
        database.close()
