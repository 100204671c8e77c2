"""PostgreSQL LISTEN/NOTIFY as a wake-up between replicas (never the data:
payloads are short keys, and the listener reads the rows itself).

`notify` is sent inside the writing transaction and delivered when it
commits, so a woken replica finds the rows. On SQLite both are no-ops: the
readers poll (one host, and the table is local).
"""

from __future__ import annotations

import asyncio
import logging
import select
import threading
from typing import Callable

from server.jobs.base import Job
from server.store.db import database, is_postgres

log = logging.getLogger(__name__)

MAX_PAYLOAD = 7000  # bytes: PostgreSQL refuses 8000 and more


def notify(channel: str, payload: str) -> None:
    """Inside the caller's transaction (blocking)."""
    if is_postgres() and len(payload.encode()) < MAX_PAYLOAD:
        database.execute_sql("SELECT pg_notify(%s, %s)", (channel, payload))


class Listener(Job):
    """A thread with its own connection, LISTENing on `channel`; each
    payload goes to `wake` on the event loop. Reconnects after errors."""

    runs_on = "thread"

    def __init__(self, channel: str, wake: Callable[[str], None]):
        self.name = f"listen-{channel}"
        self.channel, self.wake = channel, wake
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def signal(self) -> None:
        self._stop.set()

    async def stop(self, deadline: float) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, max(0.1, deadline - asyncio.get_running_loop().time()))

    def alive(self) -> list[str]:
        return [self.name] if self._thread is not None and self._thread.is_alive() else []

    def _run(self) -> None:
        import psycopg2

        while not self._stop.is_set():
            conn = None
            try:
                db = database.obj
                conn = psycopg2.connect(dbname=db.database, **db.connect_params)
                conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                with conn.cursor() as cursor:
                    cursor.execute(f'LISTEN "{self.channel}"')
                while not self._stop.is_set():
                    if select.select([conn], [], [], 0.5)[0]:
                        conn.poll()
                        while conn.notifies:
                            payload = conn.notifies.pop(0).payload
                            self._loop.call_soon_threadsafe(self.wake, payload)
            except Exception as error:  # the database restarted, or went away for a while
                log.warning("listener lost its connection; reconnecting", extra={"job": self.name, "error": str(error)})
                self._stop.wait(1.0)
            finally:
                if conn is not None:
                    conn.close()
