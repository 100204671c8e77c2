"""CRON schedules that fire exactly once per fire time, on any number of replicas.

Every replica looks just after every whole second for functions whose
`schedule_next` has come. The database decides who fires: one conditional UPDATE moves
`schedule_previous` to the fire time and `schedule_next` to the next one,
`WHERE schedule_next = <the fire time seen>`, in the transaction that
queues the execution. Two replicas that see the same fire time cannot both
win; a PUT that changed the schedule changed `schedule_next` too, so the old
chain cannot fire again.

After downtime only the most recent missed fire time counts: it runs once
if it is at most `catchup` seconds late, else it is skipped too; either way
the chain restarts from now. A fire with no active, ready deployment is skipped
and logged. Executions are queued like async ones (trigger `schedule`, no
user, `$read: []`), so the durable queue runs them and recovers them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from server.domain import validation as v
from server.domain.errors import ApiError
from server.domain.executions import ExecutionRules
from server.store.db import database
from server.store.models import Function

log = logging.getLogger(__name__)

BATCH = 100  # due functions looked at per round
LOOK_AFTER = 0.005  # seconds past each whole second that the due fires are looked for


@dataclass
class Scheduler:
    executions: ExecutionRules
    catchup: float  # seconds

    @staticmethod
    def until_next_look(now: float | None = None) -> float:
        """Fire times are whole seconds: looking just after each one (rather
        than every so often) starts a fire within milliseconds of its time,
        with one indexed read a second."""
        now = time.time() if now is None else now
        target = math.floor(now) + LOOK_AFTER
        return target - now if target > now else target + 1 - now

    def fire_due(self, now: float | None = None) -> list[int]:
        """Fire every function whose time has come (blocking). Returns the
        seqs of the executions this replica queued."""
        now = time.time() if now is None else now
        due = list(Function.select().where((Function.schedule != "") & (Function.schedule_next > 0)
                                           & (Function.schedule_next <= int(now))).order_by(Function.schedule_next).limit(BATCH))
        queued = []
        for fn in due:
            seq = self._fire(fn, now)
            if seq is not None:
                queued.append(seq)
        return queued

    def _fire(self, fn: Function, now: float) -> int | None:
        seen_next = fn.schedule_next
        # After downtime several fire times may have passed: the most recent
        # one is the fire (if it is not too late), the older ones are skipped.
        fire_time = max(seen_next, v.last_run(fn.schedule, now))
        late = now - fire_time
        with database.atomic():
            won = Function.update(schedule_previous=fire_time if late <= self.catchup else fn.schedule_previous,
                                  schedule_next=v.next_run(fn.schedule, now)).where(
                (Function.seq == fn.seq) & (Function.schedule_next == seen_next)).execute()
            if not won:
                return None  # another replica fired it, or the schedule changed
            if late > self.catchup:
                log.warning("schedule fire skipped: too late", extra={"function": fn.uid, "project": fn.project,
                                                                      "fire_time": fire_time, "late_seconds": round(late)})
                return None
            if fire_time > seen_next:
                log.warning("schedule fires missed while the service was down: the latest runs", extra={
                    "function": fn.uid, "project": fn.project, "first_missed": seen_next, "fire_time": fire_time})
            try:
                run = self.executions.runnable_for_active(fn)
            except ApiError as error:
                log.info("schedule fire skipped: nothing to run", extra={"function": fn.uid, "project": fn.project,
                                                                        "fire_time": fire_time, "reason": error.message})
                return None
            execution = self.executions.record_triggered(run, "schedule")
        log.info("schedule fired", extra={"function": fn.uid, "project": fn.project, "fire_time": fire_time,
                                          "execution": execution.uid})
        return execution.seq
