"""Blocking consumers: worker threads that claim work from the database."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from server.jobs.base import Job

log = logging.getLogger(__name__)


class ThreadWorkers(Job):
    """`count` threads, each claiming the next item (`claim`, blocking; None:
    nothing to do) and handing it to `handle`. Idle workers sleep until
    `wake()` or `idle_poll` seconds, so work queued by another process is
    found too. `on_signal` callables run when the service starts stopping
    (e.g. interrupt running builds); then the threads are joined by the deadline."""

    def __init__(self, name: str, count: int, claim: Callable[[], Any], handle: Callable[[Any], None], *,
                 idle_poll: float = 2.0, on_signal: tuple[Callable[[], None], ...] = ()):
        self.name = name
        self.count = count
        self.claim = claim
        self.handle = handle
        self.idle_poll = idle_poll
        self.on_signal = on_signal
        self.runs_on = f"{count} threads"
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wake(self) -> None:
        """New work was queued: one idle worker looks at once."""
        with self._wake:
            self._wake.notify()

    async def start(self) -> None:
        self._stopping.clear()
        self._threads = [threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True) for i in range(self.count)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self.claim()
            except Exception:
                log.exception("claiming work failed; trying again", extra={"job": self.name})
                item = None
            if item is None:
                with self._wake:
                    if not self._stopping.is_set():
                        self._wake.wait(timeout=self.idle_poll)
                continue
            try:
                self.handle(item)
            except Exception:  # one broken item must not stop the worker
                log.exception("worker thread failed on an item", extra={"job": self.name})

    def signal(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        for hook in self.on_signal:
            try:
                hook()
            except Exception:
                log.exception("stop hook failed", extra={"job": self.name})

    async def stop(self, deadline: float) -> None:
        self.signal()
        loop = asyncio.get_running_loop()

        def join() -> None:
            for thread in self._threads:
                thread.join(max(deadline - loop.time(), 0))

        await loop.run_in_executor(None, join)

    def alive(self) -> list[str]:
        return [t.name for t in self._threads if t.is_alive()]
