"""Database binding and schema management."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import peewee

log = logging.getLogger(__name__)

# One proxy the models bind to; `open_database` points it at SQLite or PostgreSQL.
database = peewee.DatabaseProxy()

# Bump when a migration is added to _MIGRATIONS.
SCHEMA_VERSION = 2
_schema_lock = threading.Lock()


def _connect(url: str, sqlite_path: Path) -> peewee.Database:
    if not url:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return peewee.SqliteDatabase(
            str(sqlite_path),
            timeout=30,
            pragmas={
                "journal_mode": "wal",
                "synchronous": "normal",
                "foreign_keys": 1,
                "busy_timeout": 30000,
                "cache_size": -32000,
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
    with _schema_lock:
        db.connect(reuse_if_open=True)
        with db.atomic():
            db.create_tables(models.ALL_MODELS, safe=True)
            models.SchemaVersion.get_or_create(id=1, defaults={"version": SCHEMA_VERSION})
            _migrate(db)
    log.info("database ready", extra={"backend": type(db).__name__, "schema": SCHEMA_VERSION})
    return db


def _migrate(db: peewee.Database) -> None:
    """Apply migrations newer than the stored schema version, in order."""
    from server.store.models import SchemaVersion

    row = SchemaVersion.get_by_id(1)
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


# version -> list of callables(db). create_tables(safe=True) creates new tables
# and indexes (a new database starts at SCHEMA_VERSION); migrations only
# handle changes to existing tables.
_MIGRATIONS: dict[int, list] = {2: [_add_run_started_and_output_bytes]}


def close_database() -> None:
    if database.obj is not None and not database.is_closed():
        database.close()
