"""Executions: who may run a function, what it is given, and the records.

The running itself is server.domain.runner's (async, through the container
pool); this module holds the rules and the store work around it.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from server.domain import validation as v
from server.domain.auth import Caller, Scope
from server.domain.events import NO_EVENTS, EventSink
from server.domain.errors import (
    build_not_found,
    build_not_ready,
    deployment_not_found,
    execution_not_found,
    missing_scope,
    rate_limited,
    runtime_unsupported,
    user_unauthorized,
)
from server.domain.functions import FunctionRules
from server.domain.listing import page_request
from server.domain.packages import PackageStore
from server.domain.ratelimit import RateLimiter
from server.domain.runtimes import Runtime, RuntimeCatalog
from server.limits import OUTPUT_TAIL
import peewee as pw

from server.store import counts, generation, search, statements
from server.store.db import database, skip_locked
from server.store.lifecycles import BuildStatus, ExecutionStatus, transition
from server.store.models import Build, Deployment, Execution, Function
from server.store.paging import Page, find_page

SEARCH_KIND = "execution"
MAX_DATA = 8192


@dataclass(frozen=True)
class Runnable:
    """Everything needed to run one execution of a function's active deployment."""

    function: Function
    deployment: Deployment
    build: Build
    runtime: Runtime
    packages: PackageStore

    @functools.cached_property
    def code_dir(self) -> Path:
        """The build output on this host (fetched first if another host built it: blocking)."""
        return self.packages.local_build(self.build.project, self.build.uid)


class Outcome(Protocol):
    """What a run produced: the engine's InvocationResult has these."""

    status_code: int
    body: str
    logs: str
    errors: str
    error: str
    duration: float  # seconds
    service_fault: bool  # cut off by the service (its container died, it stopped), not by the function


def can_execute(caller: Caller, execute: list[str]) -> bool:
    """API keys always; others when a role they hold is in `execute`."""
    return caller.is_key or any(role in caller.roles for role in execute)


@dataclass
class ExecutionRules:
    functions: FunctionRules
    catalog: RuntimeCatalog
    limiter: RateLimiter
    max_waiting: int
    packages: PackageStore
    replica: str = ""  # this replica's id: the owner of the executions it runs
    events: EventSink = NO_EVENTS
    # Async executions cut off by a fault of the service run again this many times.
    retries: int = 2

    def __post_init__(self):
        # (project, function) -> (changes generation, Runnable): the warm path
        # of an execution reads nothing from the database.
        self._plans: dict[tuple[str, str], tuple[int, Runnable]] = {}

    # ---- creating -------------------------------------------------------

    def runnable(self, caller: Caller, function_id: str, data: str, cached_only: bool = False) -> Runnable | None:
        """All checks before a run, in Appwrite's order. Blocking, unless
        `cached_only`: then it answers from the plan cache or returns None."""
        if caller.is_key:
            caller.require(Scope.EXECUTION_WRITE)
        key = (caller.project, function_id)
        if cached_only and not generation.cheap():
            return None  # the generation is a store read here: not on the event loop
        cached = self._plans.get(key)
        if cached is not None and cached[0] == generation.current():
            run = cached[1]
        elif cached_only:
            return None
        else:
            seen = generation.current()  # read first: a change during the load makes the entry stale
            run = self._load_plan(caller.project, function_id)
            if len(self._plans) > 10_000:
                self._plans.clear()
            self._plans[key] = (seen, run)
        if run.runtime not in self.catalog.enabled():
            raise runtime_unsupported(run.function.runtime)
        if not can_execute(caller, run.function.execute):
            raise user_unauthorized(_denied(caller, run.function.execute))
        v.text("data", data, MAX_DATA)
        if not caller.is_key and self.limiter.active:
            if cached_only:
                return None  # counting is a store write: not on the event loop
            who = f"user:{caller.user_id}" if caller.user_id else f"ip:{caller.address}"
            self.limiter.hit(f"{caller.project}/{function_id}/{who}")
        return run

    def _load_plan(self, project: str, function_id: str) -> Runnable:
        return self._runnable(self.functions.get(project, function_id), None)

    def environment(self, run: Runnable, caller: Caller, data: str, execution: Execution | None = None) -> dict[str, str]:
        """The function's vars under the twelve APPWRITE_FUNCTION_* variables
        (those win). `execution`: a queued one (its trigger and event)."""
        return {
            **run.function.vars,
            "APPWRITE_FUNCTION_ID": run.function.uid,
            "APPWRITE_FUNCTION_NAME": run.function.name,
            "APPWRITE_FUNCTION_DEPLOYMENT": run.deployment.uid,
            "APPWRITE_FUNCTION_TRIGGER": execution.trigger if execution else "http",
            "APPWRITE_FUNCTION_RUNTIME_NAME": run.runtime.name,
            "APPWRITE_FUNCTION_RUNTIME_VERSION": run.runtime.version,
            "APPWRITE_FUNCTION_EVENT": execution.event if execution else "",
            "APPWRITE_FUNCTION_EVENT_DATA": execution.event_data if execution else "",
            "APPWRITE_FUNCTION_DATA": data,
            "APPWRITE_FUNCTION_PROJECT_ID": run.function.project,
            "APPWRITE_FUNCTION_USER_ID": caller.user_id,
            "APPWRITE_FUNCTION_JWT": caller.jwt,
        }

    def record(self, run: Runnable, caller: Caller, data: str, sync: bool) -> Execution:
        """Store a new execution: `processing` for a sync run about to start
        (so a crash leaves a record, never nothing), else `waiting` (the
        async queue; 429 past max_waiting). A sync execution's
        `functions.executions.create` is emitted when it ends (its payload is
        the finished execution, as the caller gets it): one that never ran is
        discarded and was never created."""
        with database.atomic():
            if not sync and Execution.waiting_in(caller.project) >= self.max_waiting:
                raise rate_limited("Too many executions waiting; retry later.")
            ex = self._insert(run.function, run.deployment.uid, trigger="http", data=data, user_id=caller.user_id,
                              status=ExecutionStatus.PROCESSING if sync else ExecutionStatus.WAITING)
            if not sync:
                self._emit("functions.executions.create", ex)
            return ex

    def record_triggered(self, run: Runnable, trigger: str, data: str = "", *, user_id: str = "", event: str = "",
                         event_data: str = "", chain: str = "", depth: int = 0) -> Execution:
        """Queue an execution no caller asked for (a schedule, an event):
        `$read` of its user if any, waiting in the async queue. Not limited by
        max_waiting: a fire or an event is never refused. Inside the caller's
        transaction."""
        ex = self._insert(run.function, run.deployment.uid, trigger=trigger, data=data, user_id=user_id,
                          status=ExecutionStatus.WAITING, event=event, event_data=event_data, chain=chain, depth=depth)
        self._emit("functions.executions.create", ex)
        return ex

    def record_refused(self, fn: Function, message: str, *, user_id: str, event: str, event_data: str, chain: str,
                       depth: int) -> Execution:
        """An event-triggered execution that will not run (the loop limit):
        failed at once, saying why, and emitting nothing."""
        return self._insert(fn, fn.deployment, trigger="event", data="", user_id=user_id, status=ExecutionStatus.FAILED,
                            event=event, event_data=event_data, chain=chain, depth=depth, stderr=message)

    def _insert(self, fn: Function, deployment: str, *, trigger: str, data: str, user_id: str, status: ExecutionStatus,
                event: str = "", event_data: str = "", chain: str = "", depth: int = 0, stderr: str = "") -> Execution:
        sync = status is ExecutionStatus.PROCESSING
        uid = v.new_id()
        row = dict(
            project=fn.project, uid=uid, function=fn.uid, deployment=deployment,
            read=[f"user:{user_id}"] if user_id else [], trigger=trigger, data=data,
            user_id=user_id, date_created=int(time.time()),
            status=status, run_started=_now_ms() if sync else 0, owner=self.replica if sync else "",
            status_code=0, stdout="", stderr=stderr, logs="", errors="", time=0.0,
            event=event, event_data=event_data, chain=chain or uid, depth=depth, attempts=1 if sync else 0, run_after=0,
            sync=sync,
        )
        seq = statements.insert(Execution, row)
        counts.adjust(SEARCH_KIND, fn.project, fn.uid, 1)
        return Execution(seq=seq, **row)

    def _emit(self, name: str, ex: Execution) -> None:
        self.events.emit(ex.project, name, ex, ex.user_id, cause=ex)

    def discard(self, ex: Execution) -> None:
        """Remove a sync execution whose function never ran (the caller got an error instead)."""
        if Execution.delete().where(Execution.seq == ex.seq).execute():
            counts.adjust(SEARCH_KIND, ex.project, ex.function, -1)

    # ---- the async queue ---------------------------------------------------

    def claim(self, seq: int) -> Execution | None:
        """waiting -> processing, atomically; None if another worker took it or it is gone."""
        claimed = transition(Execution, ExecutionStatus.WAITING, ExecutionStatus.PROCESSING, Execution.seq == seq,
                             Execution.run_after <= _now_ms(), owner=self.replica).execute()
        return Execution.get_or_none(Execution.seq == seq) if claimed else None

    def claim_waiting(self, limit: int, older_than_ms: int) -> list[int]:
        """waiting -> processing for up to `limit` of the oldest executions
        waiting for longer than `older_than_ms` (any replica's: fresh ones are
        left to the replica that queued them). Returns their seqs, now this
        replica's. One statement: replicas never claim the same row."""
        if limit <= 0:
            return []
        cutoff = int(time.time()) - older_than_ms // 1000
        oldest = skip_locked(Execution.select(Execution.seq).where(
            (Execution.status == ExecutionStatus.WAITING) & (Execution.date_created <= cutoff)
            & (Execution.run_after <= _now_ms())
        ).order_by(Execution.seq).limit(limit))
        rows = transition(Execution, ExecutionStatus.WAITING, ExecutionStatus.PROCESSING, Execution.seq.in_(oldest),
                          owner=self.replica).returning(Execution.seq).execute()
        return [row.seq for row in rows]

    def get_claimed(self, seq: int) -> Execution | None:
        return Execution.get_or_none((Execution.seq == seq) & (Execution.owner == self.replica)
                                     & (Execution.status == ExecutionStatus.PROCESSING))

    def mark_started(self, ex: Execution) -> None:
        """The function is about to get its request: one more attempt; from
        now on a crash of the service fails it or runs it again."""
        Execution.update(run_started=_now_ms(), attempts=Execution.attempts + 1).where(
            (Execution.seq == ex.seq) & self._still_mine()).execute()
        ex.attempts += 1

    def finish(self, ex: Execution, outcome: Outcome, sync: bool = False) -> Execution:
        status, fields = _outcome_status(outcome), _outcome_fields(outcome)
        moved = transition(Execution, ExecutionStatus.PROCESSING, status, Execution.seq == ex.seq, self._still_mine(),
                           **fields).execute()
        ex.status = status
        for name, value in fields.items():
            setattr(ex, name, value)
        if moved:
            if sync:
                self._emit("functions.executions.create", ex)
            self._emit("functions.executions.update", ex)
        return ex

    def fail(self, ex: Execution, message: str, status_code: int = 500) -> None:
        moved = transition(Execution, ExecutionStatus.PROCESSING, ExecutionStatus.FAILED, Execution.seq == ex.seq,
                           self._still_mine(), status_code=status_code, stderr=message[-OUTPUT_TAIL:]).execute()
        if moved:
            ex.status, ex.status_code, ex.stderr = ExecutionStatus.FAILED, status_code, message[-OUTPUT_TAIL:]
            self._emit("functions.executions.update", ex)

    def retry_or_fail(self, ex: Execution, message: str, count_attempt: bool) -> float | None:
        """An async execution cut off by the service (not by its function):
        back to the queue after a backoff while attempts remain (returns the
        delay in seconds), else failed with `message` (returns None).
        `count_attempt`: the function never got it, but the try counts (a
        container that keeps refusing must not retry for ever)."""
        if count_attempt:
            Execution.update(attempts=Execution.attempts + 1).where((Execution.seq == ex.seq) & self._still_mine()).execute()
            ex.attempts += 1
        if ex.attempts > self.retries:
            self.fail(ex, f"{message} (gave up after {ex.attempts} attempts)")
            return None
        delay = retry_delay(ex.attempts)
        transition(Execution, ExecutionStatus.PROCESSING, ExecutionStatus.WAITING, Execution.seq == ex.seq,
                   self._still_mine(), owner="", run_started=0, run_after=_now_ms() + int(delay * 1000)).execute()
        return delay

    def _still_mine(self):
        """A replica that lost its lease (taken over as dead) no longer writes
        what it ran: the execution was queued again or failed by another."""
        return Execution.owner == self.replica

    def recover(self, owner: str) -> tuple[int, int]:
        """The executions a stopped replica (`owner`) was running: claimed but
        never started ones go back to the queue, and so do started async ones
        with attempts left (after a backoff); the others end failed. Returns
        (queued again, failed). Inside the caller's transaction, if any."""
        requeued = failed = 0
        with database.atomic():
            requeued += transition(Execution, ExecutionStatus.PROCESSING, ExecutionStatus.WAITING,
                                   Execution.owner == owner, Execution.run_started == 0, owner="").execute()
            cut_off = Execution.select().where((Execution.owner == owner) & (Execution.status == ExecutionStatus.PROCESSING))
            for ex in cut_off:
                if not ex.sync and ex.attempts <= self.retries:
                    transition(Execution, ExecutionStatus.PROCESSING, ExecutionStatus.WAITING, Execution.seq == ex.seq,
                               owner="", run_started=0, run_after=_now_ms() + int(retry_delay(ex.attempts) * 1000)).execute()
                    requeued += 1
                    continue
                message = "Execution interrupted: the service stopped while it ran."
                if transition(Execution, ExecutionStatus.PROCESSING, ExecutionStatus.FAILED, Execution.seq == ex.seq,
                              status_code=500, stderr=message).execute():
                    ex.status, ex.status_code, ex.stderr = ExecutionStatus.FAILED, 500, message
                    self._emit("functions.executions.update", ex)
                    failed += 1
        return requeued, failed

    def runnable_for(self, ex: Execution) -> Runnable:
        """The run of a waiting execution: the deployment it was created for."""
        return self._runnable(self.functions.get(ex.project, ex.function), ex.deployment)

    def runnable_for_active(self, fn: Function) -> Runnable:
        """The run of the function's active deployment (for warming it)."""
        return self._runnable(fn, None)

    def _runnable(self, fn: Function, deployment_id: str | None) -> Runnable:
        """The run of `deployment_id` (None: the active one), in Appwrite's
        order of checks: runtime, deployment, build, build ready."""
        runtime = self.catalog.get(fn.runtime)
        if runtime is None:
            raise runtime_unsupported(fn.runtime)
        deployment_id = fn.deployment if deployment_id is None else deployment_id
        dep = Deployment.find(fn.project, deployment_id, Deployment.function == fn.uid)
        if dep is None:
            raise deployment_not_found("Deployment not found. Deploy deployment before trying to execute a function")
        build = Build.find(fn.project, dep.build)
        if build is None:
            raise build_not_found()
        if build.status is not BuildStatus.READY:
            raise build_not_ready()
        return Runnable(function=fn, deployment=dep, build=build, runtime=runtime, packages=self.packages)

    # ---- reading -----------------------------------------------------------

    def get(self, caller: Caller, function_id: str, execution_id: str) -> Execution:
        self._require_read(caller)
        v.uid("functionId", function_id)
        v.uid("executionId", execution_id)  # every path ID before any lookup
        self.functions.get(caller.project, function_id)
        ex = Execution.find(caller.project, execution_id, Execution.function == function_id)
        if ex is None or not (caller.is_key or ex.user_id == caller.user_id):
            raise execution_not_found()
        return ex

    def list(self, caller: Caller, function_id: str, *, search: str, limit: int | None, offset: int, cursor: str,
             cursor_direction: str) -> Page[Execution]:
        self._require_read(caller)
        self.functions.get(caller.project, function_id)
        in_list = (Execution.project == caller.project) & (Execution.function == function_id)
        if not caller.is_key:
            in_list &= Execution.user_id == caller.user_id

        req = page_request(search=search, limit=limit, offset=offset, cursor=cursor, cursor_direction=cursor_direction,
                           default_order="DESC", cursor_label="Execution",
                           cursor_seq=lambda uid: Execution.seq_of(caller.project, uid, in_list))
        return find_page(Execution.select().where(in_list), Execution, SEARCH_KIND, caller.project, function_id, req,
                         counted=caller.is_key, word_match=functools.partial(_id_word_matches, function_id))

    def _require_read(self, caller: Caller) -> None:
        if caller.is_key or caller.user_id:
            caller.require(Scope.EXECUTION_READ)
        else:
            raise missing_scope("User", "guest", Scope.EXECUTION_READ.value)


def _id_word_matches(function_id: str, word: str) -> pw.Expression:
    """Execution search: a word matches as a prefix of the function's ID (all
    rows or none) or of the execution's ID; no word index is written."""
    if any(part.startswith(word) for part in search.words(function_id)):
        return pw.SQL("1 = 1")
    return pw.fn.LOWER(Execution.uid).startswith(word)


def _now_ms() -> int:
    return int(time.time() * 1000)


def retry_delay(attempts: int) -> float:
    """Seconds before an execution cut off by the service runs again: 2, 4, 8 … at most 60."""
    return float(min(60, 2 ** attempts))


def _outcome_status(outcome: Outcome) -> ExecutionStatus:
    completed = 200 <= outcome.status_code < 300 and not outcome.error
    return ExecutionStatus.COMPLETED if completed else ExecutionStatus.FAILED


def _outcome_fields(outcome: Outcome) -> dict:
    return {
        "status_code": outcome.status_code,
        "stdout": outcome.body,  # whole: the runtime refuses bodies past FUNCTIONS_RESPONSE_MAX_BYTES
        "stderr": outcome.error[-OUTPUT_TAIL:],
        "logs": outcome.logs[-OUTPUT_TAIL:],
        "errors": outcome.errors[-OUTPUT_TAIL:],
        "time": round(outcome.duration, 6),
    }


def _denied(caller: Caller, execute: list[str]) -> str:
    if not execute:
        return "No permissions provided for action 'execute'"
    return (f'Missing "execute" permission for role "{execute[-1]}". Only this scopes '
            f'"{sorted(caller.roles)}" are given and only this are allowed "{execute}".')
