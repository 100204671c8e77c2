"""Running executions: synchronously for the caller, or through the durable
async queue (Execution rows with status `waiting`).

The runner is asyncio code on the server's event loop. Every write of an
execution row goes through `write` (the group-commit writer, one SQLite
writer for all of them); reads go to the blocking pool; the containers are
the engine's (`invoke`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Awaitable, Callable

from server.domain.auth import Caller
from server.domain.errors import ApiError
from server.domain.executions import ExecutionRules, Outcome, Runnable
from server.store.models import Execution

log = logging.getLogger(__name__)

# invoke(run, payload, env, timeout, on_start=None): `on_start` is awaited once
# a container holds the code, right before the function gets its request.
Invoke = Callable[..., Awaitable[Outcome]]


class ExecutionRunner:
    """`write` runs store work through the group-commit writer (server.store.batch)."""

    def __init__(self, rules: ExecutionRules, invoke: Invoke, blocking, workers: int, write):
        self.rules = rules
        self.invoke = invoke
        self.blocking = blocking
        self.write = write
        self.workers = workers
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._queued: set[int] = set()  # in the queue now: the sweep adds no duplicates
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        requeued, failed = await self.blocking(self.rules.interrupted)
        if requeued or failed:
            log.warning("executions cut off by a stop: never-started ones queued again, started ones failed",
                        extra={"requeued": requeued, "failed": failed})
        self._tasks = [asyncio.create_task(self._work(), name=f"execution-worker-{i}") for i in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._sweep(), name="execution-sweeper"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run_sync(self, run: Runnable, caller: Caller, data: str) -> Execution:
        """Recorded `processing` first, so a crash mid-run leaves a record (failed at restart)."""
        execution = await self.write(functools.partial(self.rules.record, run, caller, data, True))
        env = self.rules.environment(run, caller, data)
        try:
            outcome = await self.invoke(run, data, env, float(run.function.timeout))
        except ApiError:  # refused before the function ran (busy, shutting down): no record
            await self.write(functools.partial(self.rules.discard, execution))
            raise
        return await self.write(functools.partial(self.rules.finish, execution, outcome))

    async def submit(self, run: Runnable, caller: Caller, data: str) -> Execution:
        execution = await self.write(functools.partial(self.rules.record, run, caller, data, False))
        self._enqueue(execution.seq)
        return execution

    def _enqueue(self, seq: int) -> None:
        if seq not in self._queued:
            self._queued.add(seq)
            self._queue.put_nowait(seq)

    async def _sweep(self) -> None:
        """Queue what the database holds as waiting: at start and then now and
        then, so an execution whose wake-up was lost still runs."""
        while True:
            seqs = await self.blocking(self.rules.waiting)
            for seq in seqs:
                self._enqueue(seq)
            await asyncio.sleep(5.0)

    async def _work(self) -> None:
        while True:
            seq = await self._queue.get()
            self._queued.discard(seq)
            try:
                await self._run_waiting(seq)
            except asyncio.CancelledError:
                raise
            except Exception:  # one broken execution must not stop the worker
                log.exception("async execution crashed", extra={"seq": seq})

    async def _run_waiting(self, seq: int) -> None:
        execution = await self.write(functools.partial(self.rules.claim, seq))
        if execution is None:
            return  # taken by another worker, or deleted
        try:
            run = await self.blocking(self.rules.runnable_for, execution)
        except ApiError as error:
            await self.write(functools.partial(self.rules.fail, execution, error.message))
            return
        caller = Caller(project=execution.project, role="member" if execution.user_id else "guest",
                        scopes=frozenset(), user_id=execution.user_id)
        env = self.rules.environment(run, caller, execution.data)
        async def started() -> None:
            await self.write(functools.partial(self.rules.mark_started, execution))

        try:
            outcome = await self.invoke(run, execution.data, env, float(run.function.timeout), on_start=started)
        except ApiError as error:
            await self.write(functools.partial(self.rules.fail, execution, error.message))
            return
        await self.write(functools.partial(self.rules.finish, execution, outcome))
