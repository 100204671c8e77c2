"""Blocking work off the event loop: one bounded thread pool for Peewee
queries, Docker calls and file I/O, so none of them stalls the loop."""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

log = logging.getLogger(__name__)


class Blocking:
    """Runs blocking callables (database, Docker, files) on a bounded thread pool."""

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="blocking")

    async def __call__(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def submit(self, fn: Callable[..., Any], *args) -> None:
        """Run `fn` in the background; nobody waits (failures are logged)."""
        future = self.pool.submit(fn, *args)
        future.add_done_callback(_log_failure)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _log_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("background work failed", exc_info=future.exception())
