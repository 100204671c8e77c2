"""The stored lifecycles of builds and executions, as types.

Each status is a string enum (its values are what the API shows and the
database holds), with the transitions it allows. `transition` is the one way
a status changes: one `UPDATE … WHERE status IN (:from)`, so two workers (or
replicas) racing for the same row cannot both win, and a row that moved on
(deleted, claimed, finished) is left as it is.

    Build:      processing ─► building ─► ready | failed
                    ▲            │                   │
                    └────────────┘ interrupted       └─► processing (retry)

    Execution:  waiting ─► processing ─► completed | failed
                   ▲            │
                   └────────────┘ interrupted before the function started
"""

from __future__ import annotations

import enum
from typing import Iterable

import peewee as pw


class Lifecycle(enum.StrEnum):
    """A status enum whose members list the statuses they may move to."""

    @classmethod
    def allowed(cls, source: "Lifecycle", target: "Lifecycle") -> bool:
        return target in cls._transitions().get(source, ())

    @classmethod
    def _transitions(cls) -> dict["Lifecycle", tuple["Lifecycle", ...]]:
        raise NotImplementedError


class BuildStatus(Lifecycle):
    PROCESSING = "processing"  # queued
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"

    @classmethod
    def _transitions(cls):
        return _BUILD_TRANSITIONS


class ExecutionStatus(Lifecycle):
    WAITING = "waiting"  # in the durable async queue
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @classmethod
    def _transitions(cls):
        return _EXECUTION_TRANSITIONS


_BUILD_TRANSITIONS = {
    BuildStatus.PROCESSING: (BuildStatus.BUILDING,),
    BuildStatus.BUILDING: (BuildStatus.READY, BuildStatus.FAILED, BuildStatus.PROCESSING),
    BuildStatus.FAILED: (BuildStatus.PROCESSING,),
}
_EXECUTION_TRANSITIONS = {
    ExecutionStatus.WAITING: (ExecutionStatus.PROCESSING,),
    ExecutionStatus.PROCESSING: (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.WAITING),
}


class StatusField(pw.CharField):
    """A Lifecycle column: stored as its string value, read back as the enum."""

    def __init__(self, lifecycle: type[Lifecycle], **kwargs):
        self.lifecycle = lifecycle
        kwargs.setdefault("max_length", 16)
        super().__init__(**kwargs)

    def db_value(self, value):
        return None if value is None else self.lifecycle(value).value

    def python_value(self, value):
        return None if value is None else self.lifecycle(value)


def transition(model: type[pw.Model], source: Lifecycle | Iterable[Lifecycle], target: Lifecycle,
               *where: pw.Expression, **fields) -> pw.ModelUpdate:
    """The UPDATE that moves rows matching `where` from `source` to `target`
    (also setting `fields`). Not executed: callers `.execute()` it (the number
    of rows moved) or add `.returning(...)`. Raises ValueError for a
    transition the lifecycle does not allow."""
    sources = (source,) if isinstance(source, Lifecycle) else tuple(source)
    for status in sources:
        if not type(target).allowed(status, target):
            raise ValueError(f"{model.__name__}: no transition {status.value} -> {target.value}")
    status_field = model.status
    condition = status_field == sources[0] if len(sources) == 1 else status_field.in_(list(sources))
    for extra in where:
        condition &= extra
    return model.update(status=target, **fields).where(condition)
