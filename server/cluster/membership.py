"""This replica's lease, and taking over the work of replicas that died.

Every `lease/3` seconds a replica renews its row in `replica` and looks for
rows whose heartbeat is older than the lease: such a replica is dead (killed,
its host gone, or stalled). Exactly one survivor takes each over: the one
whose conditional DELETE of the expired row succeeds, in the same
transaction that finalizes the dead replica's work (its `processing`
executions are queued again or failed, its `building` builds queued again).
A survivor on the same host also removes the dead replica's containers.

A replica that comes back under the same id (its slot restarted) registers
anew and recovers its own leftovers at once (server.domain.runner.recover),
so a restart never waits for the lease. A replica that finds its own row
gone was declared dead while it stalled: it registers again, and its late
results are dropped (executions and builds are written only by their owner).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Awaitable, Callable

from server.cluster.identity import ReplicaIdentity
from server.concurrency import Blocking
from server.jobs.base import Job
from server.store.db import database
from server.store.models import Replica

log = logging.getLogger(__name__)

# take_over(dead replica id) -> description of what was done (blocking, inside the transaction)
TakeOver = Callable[[str], dict]
# sweep(pool owner label, work dir) -> containers removed (async; only for replicas of this host)
Sweep = Callable[[str, Path], Awaitable[int]]


def now_ms() -> int:
    return int(time.time() * 1000)


class Membership(Job):
    name = "replica-lease"
    runs_on = "event loop (store work on the blocking pool)"

    def __init__(self, identity: ReplicaIdentity, lease_seconds: float, blocking: Blocking, take_over: TakeOver,
                 pool_owner: str = "", work_dir_of: Callable[[int], Path] | None = None, sweep: Sweep | None = None):
        self.identity = identity
        self.lease_ms = int(lease_seconds * 1000)
        self.every = max(lease_seconds / 3, 0.2)
        self.blocking = blocking
        self._take_over = take_over
        self.pool_owner = pool_owner
        self.work_dir_of = work_dir_of
        self.sweep = sweep
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.blocking(self._register)
        self._task = asyncio.create_task(self._loop(), name=self.name)

    def _register(self) -> None:
        ident = self.identity
        Replica.register(ident.id, ident.host, self.pool_owner, ident.address, os.getpid(), now_ms())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease round failed; next round as planned", extra={"job": self.name})

    async def round(self) -> None:
        """Renew this lease, then take over whatever replica is dead."""
        if not await self.blocking(Replica.renew, self.identity.id, now_ms()):
            log.error("this replica's lease was lost (it stalled past the lease): its work went to others; registering again",
                      extra={"id": self.identity.id})
            await self.blocking(self._register)
        cutoff = now_ms() - self.lease_ms
        for dead in await self.blocking(Replica.expired, cutoff):
            if dead.id == self.identity.id:
                continue
            done = await self.blocking(self._claim, dead.id, cutoff)
            if done is None:
                continue  # another replica took it, or it came back
            if dead.host == self.identity.host and self.sweep is not None and self.work_dir_of is not None:
                index = int(dead.id.rsplit("-", 1)[1])
                done["containers"] = await self.sweep(dead.pool_owner, self.work_dir_of(index))
            log.warning("took over a dead replica", extra={"dead": dead.id, "by": self.identity.id, **done})

    def _claim(self, dead_id: str, cutoff: int) -> dict | None:
        with database.atomic():
            if not Replica.take_over(dead_id, cutoff):
                return None
            return self._take_over(dead_id)

    async def stop(self, deadline: float) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=max(deadline - asyncio.get_running_loop().time(), 0))
        # Whatever this run leaves unfinished is the others' at once (or this slot's, when it restarts).
        try:
            await self.blocking(Replica.renew, self.identity.id, 0)
        except Exception:
            log.exception("could not give the lease up; it expires on its own", extra={"id": self.identity.id})

    def alive(self) -> list[str]:
        return [self.name] if self._task is not None and not self._task.done() else []
