"""The change generation, held in the database (table `generation`, one row).

Every change that decides how a function runs (its settings, its active
deployment, a build becoming ready) bumps it, through whichever replica made
the change, so every replica's run-plan cache (server.domain.executions)
knows when it is stale. Reading it must be cheap, since the warm path of an
execution checks it:

- SQLite (replicas of one host): a plain indexed read on a connection of the
  reading thread's own, a few microseconds; no other state.
- PostgreSQL (replicas on many hosts): a listener thread (`GenerationWatch`)
  keeps the value; `bump` sends NOTIFY in the writer's transaction, so the
  new value arrives the moment it commits. The listener also re-reads it
  every second, should a notification be lost with its connection.
"""

from __future__ import annotations

import asyncio
import logging
import select
import sqlite3
import threading

import peewee as pw

from server.jobs.base import Job
from server.store.db import database
from server.store.models import Generation

log = logging.getLogger(__name__)

CHANNEL = "functions_generation"
POLL_SECONDS = 1.0


_local = threading.local()  # SQLite: each thread's own reading connection
_listener: "GenerationWatch | None" = None  # PostgreSQL: the running listener


def bump() -> None:
    """A change was committed (or is about to be, in the caller's transaction).
    In a transaction of its own otherwise: SQLite writers then queue for the
    write lock instead of sleeping in the busy handler."""
    with database.atomic():
        Generation.update(value=Generation.value + 1).where(Generation.id == 1).execute()
        if isinstance(database.obj, pw.PostgresqlDatabase):
            database.execute_sql("SELECT pg_notify(%s, '')", (CHANNEL,))


def current() -> int:
    """The generation as this replica knows it (cheap: see the module docstring)."""
    if _listener is not None:
        return _listener.value
    if isinstance(database.obj, pw.SqliteDatabase):
        return _read_sqlite()
    return _read()  # PostgreSQL without the listener (the command line, tests)


def _read_sqlite() -> int:
    conn = getattr(_local, "conn", None)
    if conn is None or getattr(_local, "path", None) != database.obj.database:
        conn = _local.conn = sqlite3.connect(database.obj.database, check_same_thread=False, timeout=30)
        _local.path = database.obj.database
    return conn.execute("SELECT value FROM generation WHERE id = 1").fetchone()[0]


class GenerationWatch(Job):
    """On PostgreSQL, the listener thread that keeps `current()` fresh; on
    SQLite nothing runs (reads are cheap there)."""

    name = "generation-watch"
    runs_on = "thread (PostgreSQL only)"

    def __init__(self):
        self.value = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        global _listener
        if not isinstance(database.obj, pw.PostgresqlDatabase):
            return
        self.value = _read()
        self._thread = threading.Thread(target=self._listen, name=self.name, daemon=True)
        self._thread.start()
        _listener = self

    def _listen(self) -> None:
        conn = None
        while not self._stopping.is_set():
            try:
                if conn is None:
                    conn = database.obj._connect()  # a connection of its own, outside Peewee's pool
                    conn.autocommit = True
                    conn.cursor().execute(f"LISTEN {CHANNEL}")
                self.value = _read_on(conn)  # after LISTEN: nothing committed since is missed
                if select.select([conn], [], [], POLL_SECONDS) != ([], [], []):
                    conn.poll()
                    conn.notifies.clear()
            except Exception as error:  # the database went away: try again
                log.warning("generation listener lost its connection", extra={"error": str(error)})
                conn = _close(conn)
                self._stopping.wait(POLL_SECONDS)
        _close(conn)

    async def stop(self, deadline: float) -> None:
        global _listener
        if _listener is self:
            _listener = None
        self._stopping.set()
        if self._thread is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._thread.join, max(deadline - loop.time(), 0))

    def alive(self) -> list[str]:
        return [self.name] if self._thread is not None and self._thread.is_alive() else []


def _read() -> int:
    row = Generation.get_or_none(Generation.id == 1)
    return row.value if row else 0


def _read_on(conn) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SELECT value FROM generation WHERE id = 1")
        row = cursor.fetchone()
    return row[0] if row else 0


def _close(conn) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass
    return None
