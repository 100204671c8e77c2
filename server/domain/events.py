"""Events: what happened in a project, and the functions it triggers.

Two sources: the service's own routes (`functions.*`, `deployments.*`,
`executions.*`, emitted by the domain rules inside the transaction of the
change they describe) and internal services (`publish`, the PublishEvent
RPC). Either way the fan-out is an outbox: one `waiting` execution per
subscribed function is written in the same transaction as the change or the
event, so what is committed is delivered (at least once, by the durable
queue), and a crash right after loses nothing. Subscribers are found through
the Subscription index, never by scanning functions; one that cannot run (no
active ready deployment) is skipped and logged, and never stops the others.

Loops: an execution's own events (`functions.executions.create|update`)
carry its chain (what started it) and depth. An event at depth d triggers
executions at depth d + 1; past MAX_DEPTH (Lambda's 16) the fan-out is
refused and recorded as a failed execution that says why, so a function
that triggers itself stops. Within one chain a function runs at most once
per (depth, event name): a function subscribed to both events of its own
executions grows the chain by two per level, not twice as many.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import peewee as pw

from server.domain import validation as v
from server.domain.errors import ApiError, invalid_argument
from server.store.db import database
from server.store.models import Event, Execution, Function, Subscription

if TYPE_CHECKING:
    from server.domain.executions import ExecutionRules

log = logging.getLogger(__name__)

MAX_DEPTH = 16  # event hops in one chain (AWS Lambda's recursion limit)
MAX_DATA = 65536  # characters of a published event's JSON payload
DEDUPE_WINDOW = 7 * 24 * 3600  # seconds a published (source, id) is remembered
MAX_SOURCE = 255

EVENT_NAMES = frozenset(  # Appwrite 0.13.4's app/config/events.php
    """
    account.create account.update.email account.update.name account.update.password
    account.update.prefs account.recovery.create account.recovery.update
    account.verification.create account.verification.update account.delete
    account.sessions.create account.sessions.delete account.sessions.update
    database.collections.create database.collections.update database.collections.delete
    database.attributes.create database.attributes.delete
    database.indexes.create database.indexes.delete
    database.documents.create database.documents.update database.documents.delete
    functions.create functions.update functions.delete
    functions.deployments.create functions.deployments.update functions.deployments.delete
    functions.executions.create functions.executions.update
    storage.files.create storage.files.update storage.files.delete
    storage.buckets.create storage.buckets.update storage.buckets.delete
    users.create users.update.prefs users.update.email users.update.name
    users.update.password users.update.status users.delete users.sessions.delete
    teams.create teams.update teams.delete
    teams.memberships.create teams.memberships.update teams.memberships.update.status
    teams.memberships.delete
    """.split()
)


class EventSink(Protocol):
    def emit(self, project: str, name: str, resource: object, user_id: str = "",
             cause: Execution | None = None) -> None:
        """Inside the transaction of the change: trigger the subscribers."""


class NoEvents:
    """An EventSink that drops everything (rules used without a bus)."""

    def emit(self, project: str, name: str, resource: object, user_id: str = "", cause: Execution | None = None) -> None:
        return None


NO_EVENTS = NoEvents()


@dataclass(frozen=True)
class Published:
    event: Event
    duplicate: bool  # (source, id) was published before: nothing new ran


@dataclass
class EventBus:
    """`payload(resource)`: the API's JSON of a resource (the event data).
    `queued(seqs)`: called after the commit with the executions this replica
    queued, to run them at once (the queue's sweep would find them later)."""

    payload: Callable[[object], str]
    queued: Callable[[list[int]], None] = lambda seqs: None
    executions: "ExecutionRules | None" = None  # set when wired: executions emit events too

    # ---- the service's own events -----------------------------------------------

    def emit(self, project: str, name: str, resource: object, user_id: str = "", cause: Execution | None = None) -> None:
        subscribers = Subscription.functions_of(project, name)
        if not subscribers:
            return  # the common case costs one indexed read
        if cause is not None:
            chain, depth = cause.chain or cause.uid, cause.depth
        else:
            chain, depth = v.new_id(), 0
        self._fan_out(project, name, self.payload(resource), user_id, chain, depth, subscribers)

    # ---- events of internal services ---------------------------------------------

    def publish(self, project: str, name: str, data: str, user_id: str, source: str, source_id: str,
                depth: int = 0) -> Published:
        """Store the event and queue its subscribers' executions, in one
        transaction; a (source, id) seen before is answered as a duplicate."""
        if name == "":
            raise v.missing_argument("event")
        if name not in EVENT_NAMES:
            raise invalid_argument("event", "Value must be one of the events of the catalog (e.g. users.create)")
        data = _json_text(data)
        v.text("source", source, MAX_SOURCE, required=True)
        v.text("id", source_id, MAX_SOURCE, required=True)
        v.text("userId", user_id, 36)
        v.int_range("depth", depth, 0, MAX_DEPTH)
        with database.atomic():
            seen = Event.get_or_none(_key(project, source, source_id))
            if seen is not None:
                return Published(seen, duplicate=True)
            row = dict(project=project, uid=v.new_id(), name=name, source=source, source_id=source_id, data=data,
                       user_id=user_id, depth=depth, matched=0, date_created=int(time.time()))
            try:
                with database.atomic():  # a savepoint: PostgreSQL's transaction survives the conflict
                    event = Event.create(**row)
            except pw.IntegrityError:  # the same key published at the same moment elsewhere
                return Published(Event.get(_key(project, source, source_id)), duplicate=True)
            subscribers = Subscription.functions_of(project, name)
            event.matched = self._fan_out(project, name, data, user_id, event.uid, depth, subscribers)
            if event.matched:
                event.save()
        log.info("event published", extra={"project": project, "event_name": name, "source": source,
                                           "matched": event.matched})
        return Published(event, duplicate=False)

    @staticmethod
    def forget_older_than(seconds: float = DEDUPE_WINDOW) -> int:
        """Drop published events past the deduplication window (a periodic job)."""
        return Event.delete().where(Event.date_created < int(time.time() - seconds)).execute()

    # ---- the fan-out -----------------------------------------------------------------

    def _fan_out(self, project: str, name: str, data: str, user_id: str, chain: str, depth: int,
                 subscribers: list[str]) -> int:
        """One waiting execution per subscriber that can run. Returns how many."""
        executions = self.executions
        if executions is None or not subscribers:
            return 0
        queued: list[int] = []
        functions = Function.select().where((Function.project == project) & Function.uid.in_(subscribers))
        ran = _ran_in_chain(project, subscribers, name, chain, depth + 1) if depth > 0 else set()
        for fn in functions.order_by(Function.seq):
            if fn.uid in ran:
                continue
            cause = dict(event=name, event_data=data, user_id=user_id, chain=chain, depth=depth + 1)
            if depth + 1 > MAX_DEPTH:
                log.warning("event fan-out refused: loop limit", extra={"project": project, "function": fn.uid,
                                                                        "event_name": name, "depth": depth + 1})
                executions.record_refused(fn, f"Not run: {name} is event {depth + 1} of a chain of executions "
                                              f"and events; the limit is {MAX_DEPTH} (a function that triggers itself?).",
                                          **cause)
                continue
            try:
                run = executions.runnable_for_active(fn)
            except ApiError as error:
                log.info("event subscriber skipped: nothing to run", extra={
                    "project": project, "function": fn.uid, "event_name": name, "reason": error.message})
                continue
            queued.append(executions.record_triggered(run, "event", **cause).seq)
        if queued:
            database.after_commit(functools.partial(self.queued, queued))
        return len(queued)


def _ran_in_chain(project: str, functions, name: str, chain: str, depth: int) -> set[str]:
    """Which of `functions` already ran for event `name` at `depth` of the chain (one query)."""
    return {row.function for row in Execution.select(Execution.function).where(
        (Execution.chain == chain) & (Execution.project == project) & Execution.function.in_(functions)
        & (Execution.depth == depth) & (Execution.event == name))}


def _key(project: str, source: str, source_id: str) -> pw.Expression:
    return (Event.project == project) & (Event.source == source) & (Event.source_id == source_id)


def _json_text(data: str) -> str:
    """The payload as given (it reaches functions verbatim): JSON, at most MAX_DATA characters."""
    if data == "":
        return "{}"
    if len(data) > MAX_DATA:
        raise invalid_argument("data", f"Value must be JSON text of at most {MAX_DATA} chars")
    try:
        json.loads(data)
    except ValueError:
        raise invalid_argument("data", "Value must be valid JSON text") from None
    return data
