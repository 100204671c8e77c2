"""List totals kept as counters (see models.ListCount).

Callers adjust the counter in the same transaction as the insert or delete.
"""

from __future__ import annotations

from server.store import statements
from server.store.models import ListCount


def adjust(kind: str, project: str, scope: str, delta: int) -> None:
    if not statements.add_to_count(delta, kind, project, scope):
        ListCount.insert(kind=kind, project=project, scope=scope, count=max(delta, 0)).on_conflict(
            conflict_target=[ListCount.kind, ListCount.project, ListCount.scope],
            update={ListCount.count: ListCount.count + delta},
        ).execute()


def get(kind: str, project: str, scope: str) -> int:
    row = ListCount.get_or_none((ListCount.kind == kind) & (ListCount.project == project) & (ListCount.scope == scope))
    return row.count if row else 0


def drop(kind: str, project: str, scope: str) -> None:
    ListCount.delete().where((ListCount.kind == kind) & (ListCount.project == project) & (ListCount.scope == scope)).execute()
