"""Running executions: synchronously for the caller, or through the durable
async queue (Execution rows with status `waiting`).

The runner is asyncio code on the server's event loop. Every write of an
execution row goes through `write` (the group-commit writer, one SQLite
writer for all of them); reads go to the blocking pool; the containers are
the engine's (`invoke`). The queue is worked by background jobs (see
server.app): `recover` once at start-up, `queue_waiting` now and then,
workers taking `next_queued` and running `run_queued`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Awaitable, Callable

from server.concurrency import Blocking
from server.domain.auth import Caller
from server.domain.errors import ApiError
from server.domain import livelogs
from server.domain.executions import ExecutionRules, Outcome, Runnable
from server.domain.livelogs import Channel, LogHub
from server.engine.errors import EngineError
from server.store.models import Execution

log = logging.getLogger(__name__)

# invoke(run, payload, env, timeout, on_start=None) -> Outcome; raises
# EngineError when it refuses before the function ran. `on_start` is awaited
# once a container holds the code, right before the function gets its request.
Invoke = Callable[..., Awaitable[Outcome]]
Write = Callable[[Callable[[], object]], Awaitable[object]]


# Waiting executions older than this may be claimed by any replica's sweep;
# younger ones are left to the replica that queued them (it runs them at once).
STEAL_AFTER_MS = 1000


class ExecutionRunner:
    """`workers`: how many queue workers run (the sweep claims no more than are free)."""

    def __init__(self, rules: ExecutionRules, invoke: Invoke, blocking: Blocking, write: Write, workers: int,
                 logs: LogHub | None = None):
        self.rules = rules
        self.logs = logs or LogHub()
        self.invoke = invoke
        self.blocking = blocking
        self.write = write
        self.workers = workers
        self._queue: asyncio.Queue[tuple[int, bool]] = asyncio.Queue()  # (seq, already claimed)
        self._queued: set[int] = set()  # in the queue now: no duplicates
        self._running = 0

    async def run_sync(self, run: Runnable, caller: Caller, data: str) -> Execution:
        """Recorded `processing` first, so a crash mid-run leaves a record (failed at restart)."""
        execution = await self.write(functools.partial(self.rules.record, run, caller, data, True))
        env = self.rules.environment(run, caller, data)
        channel = self.logs.open(execution.project, execution.function, execution.uid)
        try:
            outcome = await self.invoke(run, data, env, float(run.function.timeout), on_output=channel.write)
        except EngineError:  # refused before the function ran (busy, shutting down): no record
            self.logs.discard(channel)
            await self.write(functools.partial(self.rules.discard, execution))
            raise
        return await self._finish(execution, outcome, channel, sync=True)

    async def _finish(self, execution: Execution, outcome: Outcome, channel: Channel, sync: bool = False) -> Execution:
        """Its last lines and its status in one transaction (a subscriber that
        sees it ended has every line stored), then the subscribers' `end`."""
        if not channel.written and (outcome.logs or outcome.errors):
            # A runtime that does not stream (an older or official image): its output, at the end.
            channel.write("stdout", outcome.logs.splitlines())
            channel.write("stderr", outcome.errors.splitlines())
        rows = channel.take_unflushed()

        def finish() -> Execution:
            livelogs.store_lines(rows)
            return self.rules.finish(execution, outcome, sync)

        try:
            return await self.write(finish)
        finally:
            channel.end(execution.status.value, execution.status_code, execution.time)

    async def submit(self, run: Runnable, caller: Caller, data: str) -> Execution:
        execution = await self.write(functools.partial(self.rules.record, run, caller, data, False))
        self.enqueue(execution.seq)
        return execution

    # ---- the durable queue (worked by jobs) -----------------------------------

    async def recover(self) -> None:
        """At start-up: what this replica's previous run was running when it
        stopped is queued again (never started) or failed (started); also
        what a service of before replicas left (no owner)."""
        requeued, failed = 0, 0
        for owner in {self.rules.replica, ""}:
            again, lost = await self.blocking(self.rules.recover, owner)
            requeued, failed = requeued + again, failed + lost
        if requeued or failed:
            log.warning("executions cut off by a stop: never-started ones queued again, started ones failed",
                        extra={"requeued": requeued, "failed": failed})

    async def queue_waiting(self) -> None:
        """Claim waiting executions no replica took (a lost wake-up, another
        replica's backlog, one that stopped), as many as workers are free."""
        free = self.workers - self._running - self._queue.qsize()
        for seq in await self.write(functools.partial(self.rules.claim_waiting, free, STEAL_AFTER_MS)):
            self.enqueue(seq, claimed=True)

    async def next_queued(self) -> tuple[int, bool]:
        item = await self._queue.get()
        self._queued.discard(item[0])
        return item

    def enqueue_all(self, seqs: list[int]) -> None:
        for seq in seqs:
            self.enqueue(seq)

    def enqueue(self, seq: int, claimed: bool = False) -> None:
        """Run this waiting execution soon (`claimed`: this replica claimed it already)."""
        if seq not in self._queued:
            self._queued.add(seq)
            self._queue.put_nowait((seq, claimed))

    async def run_queued(self, item: tuple[int, bool]) -> None:
        self._running += 1
        try:
            await self._run_queued(*item)
        finally:
            self._running -= 1

    async def _run_queued(self, seq: int, claimed: bool) -> None:
        claim = self.rules.get_claimed if claimed else self.rules.claim
        execution = await self.write(functools.partial(claim, seq))
        if execution is None:
            return  # taken by another worker or replica, or deleted
        try:
            run = await self.blocking(self.rules.runnable_for, execution)
        except ApiError as error:
            await self.write(functools.partial(self.rules.fail, execution, error.message))
            return
        caller = Caller(project=execution.project, role="member" if execution.user_id else "guest",
                        scopes=frozenset(), user_id=execution.user_id)
        env = self.rules.environment(run, caller, execution.data, execution)
        started = False

        async def on_start() -> None:
            nonlocal started
            started = True
            await self.write(functools.partial(self.rules.mark_started, execution))

        channel = self.logs.open(execution.project, execution.function, execution.uid,
                                 first_seq=await self._next_seq(execution))
        try:
            outcome = await self.invoke(run, execution.data, env, float(run.function.timeout), on_start=on_start,
                                        on_output=channel.write)
        except EngineError as error:
            await self._cut_off(execution, channel, f"Execution failed: {error}", count_attempt=not started)
            return
        if outcome.service_fault:
            await self._cut_off(execution, channel, outcome.error or "Execution failed: the runtime stopped.",
                                count_attempt=not started)
            return
        await self._finish(execution, outcome, channel)

    async def _next_seq(self, execution: Execution) -> int:
        """Line numbers go on across attempts."""
        if execution.attempts == 0:
            return 1
        return await self.blocking(livelogs.last_stored_seq, execution.project, execution.uid) + 1

    async def _cut_off(self, execution: Execution, channel: Channel, message: str, count_attempt: bool) -> None:
        await self.write(functools.partial(livelogs.store_lines, channel.take_unflushed()))
        if await self._retry_or_fail(execution, message, count_attempt):
            self.logs.discard(channel)  # runs again: its subscribers stay for the next attempt
        else:
            channel.end(execution.status.value, execution.status_code, execution.time)

    async def _retry_or_fail(self, execution: Execution, message: str, count_attempt: bool) -> bool:
        """True if it runs again."""
        delay = await self.write(functools.partial(self.rules.retry_or_fail, execution, message, count_attempt))
        if delay is not None:
            log.warning("execution cut off by the service: it runs again", extra={
                "execution": execution.uid, "attempts": execution.attempts, "delay_seconds": delay, "reason": message})
            asyncio.get_running_loop().call_later(delay + 0.05, self.enqueue, execution.seq)
        return delay is not None
