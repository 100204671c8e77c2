"""Jobs that run on the event loop: periodic work, queue consumers, start-up
work and components with a lifecycle of their own."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any, Awaitable, Callable

from server.concurrency import Blocking
from server.jobs.base import Job

log = logging.getLogger(__name__)


async def _call(fn: Callable[[], Any], blocking: Blocking | None) -> Any:
    """Await a coroutine function; run a plain one on `blocking` (or inline, if None: no blocking work)."""
    if inspect.iscoroutinefunction(fn):
        return await fn()
    if blocking is not None:
        return await blocking(fn)
    return fn()


async def _cancel(tasks: list[asyncio.Task], deadline: float) -> None:
    for task in tasks:
        task.cancel()
    pending = [t for t in tasks if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=max(deadline - asyncio.get_running_loop().time(), 0))


class Periodic(Job):
    """Runs `action` every `every` seconds (monotonic time), never two rounds
    at once: the next round is timed from the end of the last. `first` is
    the delay before the first round (0: at start)."""

    def __init__(self, name: str, every: float, action: Callable[[], Any], *, blocking: Blocking | None = None,
                 first: float | None = None):
        if every <= 0:
            raise ValueError("a periodic job needs a positive interval")
        self.name = name
        self.every = every
        self.first = every if first is None else first
        self.action = action
        self.blocking = blocking
        self.runs_on = "blocking pool" if blocking is not None and not inspect.iscoroutinefunction(action) else "event loop"
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def _loop(self) -> None:
        await asyncio.sleep(self.first)
        while True:
            try:
                await _call(self.action, self.blocking)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic job failed; next round as planned", extra={"job": self.name})
            await asyncio.sleep(self.every)

    async def stop(self, deadline: float) -> None:
        if self._task is not None:
            await _cancel([self._task], deadline)

    def alive(self) -> list[str]:
        return [self.name] if self._task is not None and not self._task.done() else []


class QueueWorkers(Job):
    """`count` tasks, each taking the next item (`take`, awaited) and handing
    it to `handle`. A failing item is logged and the worker takes the next."""

    def __init__(self, name: str, count: int, take: Callable[[], Awaitable[Any]], handle: Callable[[Any], Awaitable[None]]):
        self.name = name
        self.count = count
        self.take = take
        self.handle = handle
        self.runs_on = f"event loop, {count} tasks"
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"{self.name}-{i}") for i in range(self.count)]

    async def _work(self) -> None:
        while True:
            item = await self.take()
            try:
                await self.handle(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # one broken item must not stop the worker
                log.exception("queue worker failed on an item", extra={"job": self.name, "item": repr(item)[:200]})

    async def stop(self, deadline: float) -> None:
        await _cancel(self._tasks, deadline)

    def alive(self) -> list[str]:
        return [t.get_name() for t in self._tasks if not t.done()]


class OneShot(Job):
    """Start-up work. `wait=True`: done before the next job starts (a failure
    stops the start-up). `wait=False`: runs in a thread of its own (blocking
    work that may take long, e.g. building runtime images); a failure is
    logged, and `cancel` (called on signal) makes it end early."""

    def __init__(self, name: str, action: Callable[[], Any], *, wait: bool = True, blocking: Blocking | None = None,
                 cancel: Callable[[], None] | None = None):
        self.name = name
        self.action = action
        self.wait = wait
        self.blocking = blocking
        self.cancel = cancel
        self.runs_on = "event loop" if wait and (blocking is None or inspect.iscoroutinefunction(action)) else (
            "blocking pool" if wait else "thread")
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        if self.wait:
            await _call(self.action, self.blocking)
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.action()
        except Exception:
            log.exception("start-up job failed", extra={"job": self.name})

    def signal(self) -> None:
        if self.cancel is not None and self.alive():
            self.cancel()

    async def stop(self, deadline: float) -> None:
        if self._thread is not None:
            remaining = max(deadline - asyncio.get_running_loop().time(), 0)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, remaining)

    def alive(self) -> list[str]:
        return [self.name] if self._thread is not None and self._thread.is_alive() else []


class Resource(Job):
    """A component with its own start and stop (the container pool): placed
    among the jobs so it starts before the work that needs it and stops after.
    `stop` gets the seconds left until the deadline."""

    runs_on = "event loop"

    def __init__(self, name: str, start: Callable[[], Awaitable[None]], stop: Callable[[float], Awaitable[None]],
                 alive: Callable[[], list[str]] = lambda: []):
        self.name = name
        self._start, self._stop, self._alive = start, stop, alive

    async def start(self) -> None:
        await self._start()

    async def stop(self, deadline: float) -> None:
        await self._stop(max(deadline - asyncio.get_running_loop().time(), 1.0))

    def alive(self) -> list[str]:
        return self._alive()
