"""Group commit: many small writes from concurrent requests, one transaction.

SQLite serializes writers and its busy handler sleeps in steps of
milliseconds, so concurrent commits from many threads queue up slowly. One
writer thread takes every write waiting and runs them in a single
transaction, each inside its own savepoint (a failing write rolls back alone).
The writer is a background job (server.jobs): started first, stopped last,
so every write submitted before the stop is committed.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from server.jobs.base import Job
from server.store.db import database

log = logging.getLogger(__name__)

MAX_BATCH = 256


class BatchWriter(Job):
    name = "batch-writer"
    runs_on = "thread"

    def __init__(self):
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def submit(self, write: Callable[[], Any]) -> Future:
        """Run `write` (store work) in the next batch; the future holds its result."""
        future: Future = Future()
        self._queue.put((write, future))
        return future

    async def start(self) -> None:
        self._thread.start()

    async def stop(self, deadline: float) -> None:
        """Commit what was submitted before, then end (by `deadline`)."""
        self._queue.put(None)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._thread.join, max(deadline - loop.time(), 0))

    def alive(self) -> list[str]:
        return [self.name] if self._thread.is_alive() else []

    def _run(self) -> None:
        stopping = False
        while not stopping:
            # Nothing may end this loop but stop(): every later write would hang.
            item = self._queue.get()
            batch = []
            while item is not None:
                batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            stopping = item is None
            if batch:
                try:
                    self._commit(batch)
                except Exception:
                    log.exception("batch writer failed")
        database.close()

    def _commit(self, batch: list[tuple[Callable[[], Any], Future]]) -> None:
        if len(batch) == 1:  # no savepoint needed
            write, future = batch[0]
            try:
                with database.atomic():
                    value = write()
            except Exception as error:
                _settle(future, None, error)
            else:
                _settle(future, value, None)
            return
        results = []
        try:
            with database.atomic():
                for write, future in batch:
                    try:
                        with database.atomic():  # a savepoint per write
                            results.append((future, write(), None))
                    except Exception as error:  # this write alone fails
                        results.append((future, None, error))
        except Exception as error:  # the commit itself failed: every write fails
            log.exception("batch commit failed")
            results = [(future, None, error) for _, future in batch]
        for future, value, error in results:
            _settle(future, value, error)


def _settle(future: Future, value: Any, error: BaseException | None) -> None:
    """Report to the waiter, if it still waits (a caller that went away
    cancelled its future; the write itself stands)."""
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
