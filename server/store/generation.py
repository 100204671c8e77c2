"""The change generation, held in the database (table `generation`, one row).

Every change that decides how a function runs (its settings, its active
deployment, a build becoming ready) bumps it, through whichever replica made
the change, so every replica's run-plan cache (server.domain.executions)
knows when it is stale, from its very next execution on:

- SQLite (replicas of one host): a plain indexed read on a connection of the
  reading thread's own, a few microseconds: cheap enough for the event loop.
- PostgreSQL (replicas on many hosts): a read of the row, a round trip, so
  off the event loop (`cheap()` is False). LISTEN/NOTIFY was tried first: a
  notification arrives a little after the commit, and a test that activates
  through one replica and executes through another at once saw the old
  deployment now and then.
"""

from __future__ import annotations

import sqlite3
import threading

import peewee as pw

from server.store.db import database
from server.store.models import Generation

_local = threading.local()  # SQLite: each thread's own reading connection


def bump() -> None:
    """A change was committed (or is about to be, in the caller's transaction).
    In a transaction of its own otherwise: SQLite writers then queue for the
    write lock instead of sleeping in the busy handler."""
    with database.atomic():
        Generation.update(value=Generation.value + 1).where(Generation.id == 1).execute()


def cheap() -> bool:
    """Whether `current()` may run on the event loop."""
    return isinstance(database.obj, pw.SqliteDatabase)


def current() -> int:
    """The generation now (blocking on PostgreSQL: see `cheap`)."""
    if isinstance(database.obj, pw.SqliteDatabase):
        conn = getattr(_local, "conn", None)
        if conn is None or getattr(_local, "path", None) != database.obj.database:
            conn = _local.conn = sqlite3.connect(database.obj.database, check_same_thread=False, timeout=30)
            _local.path = database.obj.database
        return conn.execute("SELECT value FROM generation WHERE id = 1").fetchone()[0]
    row = Generation.get_or_none(Generation.id == 1)
    return row.value if row else 0
