"""Functions: create, read, list, replace and delete, with Appwrite 0.13's rules."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable

import peewee as pw

from server.domain import livelogs
from server.domain import validation as v
from server.domain.errors import function_already_exists, function_not_found
from server.domain.events import EVENT_NAMES, NO_EVENTS, EventSink
from server.domain.listing import page_request
from server.domain.runtimes import RuntimeCatalog
from server.store import counts, generation, search
from server.store.db import database
from server.store.models import Build, Deployment, Execution, Function, Subscription
from server.store.paging import Page, find_page

SEARCH_KIND = "function"
MAX_LIST_ITEMS = 100
MAX_ITEM_LENGTH = 64
DEFAULT_TIMEOUT = 15


@dataclass
class FunctionInput:
    """The settable fields of a function, as received (unvalidated)."""

    name: str
    execute: list[str]
    vars: dict[str, str]
    events: list[str]
    schedule: str
    timeout: int | None


@dataclass
class FunctionRules:
    catalog: RuntimeCatalog
    max_timeout: int
    vars_max_bytes: int
    # Called inside the delete transaction's aftermath with the function and
    # its deployments (remove packages, stop containers, ...).
    on_delete: list[Callable[[Function, list[Deployment]], None]] = field(default_factory=list)
    events: EventSink = NO_EVENTS

    def _validated(self, data: FunctionInput, runtime: str | None = None) -> dict:
        """Checks in Appwrite's parameter order; `runtime` only on create."""
        v.text("name", data.name, 128, required=True)
        execute = v.string_list("execute", data.execute, MAX_LIST_ITEMS, MAX_ITEM_LENGTH)
        if runtime is not None:
            if runtime == "":
                raise v.missing_argument("runtime")
            self.catalog.require_enabled("runtime", runtime)
        variables = v.string_map("vars", data.vars, self.vars_max_bytes)
        events = v.string_list("events", data.events, MAX_LIST_ITEMS, MAX_ITEM_LENGTH, allowed=EVENT_NAMES)
        schedule = v.cron("schedule", data.schedule)
        timeout = DEFAULT_TIMEOUT if data.timeout is None else v.int_range("timeout", data.timeout, 1, self.max_timeout)
        return dict(name=data.name, execute=execute, vars=variables, events=events, schedule=schedule, timeout=timeout)

    def create(self, project: str, function_id: str, runtime: str, data: FunctionInput) -> Function:
        uid = v.custom_id("functionId", function_id)
        fields = self._validated(data, runtime)
        now = int(time.time())
        try:
            with database.atomic():
                fn = Function.create(
                    project=project, uid=uid, runtime=runtime, deployment="", status="disabled",
                    schedule_next=_next_run(fields["schedule"]), schedule_previous=0,
                    date_created=now, date_updated=now, **fields,
                )
                _index(fn)
                counts.adjust(SEARCH_KIND, project, "", 1)
                Subscription.replace(project, uid, fn.events)
                self.events.emit(project, "functions.create", fn)
        except pw.IntegrityError:
            raise function_already_exists() from None
        return fn

    def get(self, project: str, function_id: str) -> Function:
        v.uid("functionId", function_id)  # 400 before any lookup, as Appwrite's UID validator
        fn = Function.find(project, function_id)
        if fn is None:
            raise function_not_found()
        return fn

    def list(self, project: str, *, search: str, limit: int | None, offset: int, cursor: str,
             cursor_direction: str, order_type: str) -> Page[Function]:
        req = page_request(
            search=search, limit=limit, offset=offset, cursor=cursor, cursor_direction=cursor_direction,
            order_type=order_type, cursor_label="Function", cursor_seq=functools.partial(Function.seq_of, project),
        )
        query = Function.select().where(Function.project == project)
        return find_page(query, Function, SEARCH_KIND, project, "", req)

    def update(self, project: str, function_id: str, data: FunctionInput) -> Function:
        """PUT: replaces every settable field; omitted ones take their defaults."""
        fn = self.get(project, function_id)
        fields = self._validated(data)
        with database.atomic():
            for name, value in fields.items():
                setattr(fn, name, value)
            fn.date_updated = int(time.time())
            fn.schedule_next = _next_run(fn.schedule)
            fn.save()
            _index(fn)
            Subscription.replace(project, fn.uid, fn.events)
            self.events.emit(project, "functions.update", fn)
        generation.bump()
        return fn

    def delete(self, project: str, function_id: str) -> None:
        """Deletes the function with its deployments, builds and executions."""
        fn = self.get(project, function_id)
        deployments = list(Deployment.select().where((Deployment.project == project) & (Deployment.function == fn.uid)))
        with database.atomic():
            deployment_ids = [d.uid for d in deployments]
            if deployment_ids:
                Build.delete().where((Build.project == project) & Build.deployment.in_(deployment_ids)).execute()
            search.unindex("deployment", [d.seq for d in deployments])
            Deployment.delete().where((Deployment.project == project) & (Deployment.function == fn.uid)).execute()
            Execution.delete().where((Execution.project == project) & (Execution.function == fn.uid)).execute()
            search.unindex(SEARCH_KIND, [fn.seq])
            counts.drop("deployment", project, fn.uid)
            counts.drop("execution", project, fn.uid)
            counts.adjust(SEARCH_KIND, project, "", -1)
            Subscription.replace(project, fn.uid, [])
            livelogs.forget(project, function=fn.uid)
            fn.delete_instance()
            self.events.emit(project, "functions.delete", fn)
        generation.bump()
        for hook in self.on_delete:
            hook(fn, deployments)


def _next_run(schedule: str) -> int:
    """`scheduleNext`: when the schedule fires next (0 without one). Appwrite
    0.13 left it 0 until a deployment was active; showing the real next time
    is more useful, and a run without an active deployment is skipped."""
    return v.next_run(schedule) if schedule else 0


def _index(fn: Function) -> None:
    search.index(SEARCH_KIND, fn.project, "", fn.seq, [fn.uid, fn.name, fn.runtime])
