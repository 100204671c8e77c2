"""One list query for every resource: search, cursor or offset paging, total."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import peewee as pw

from server.store import search

T = TypeVar("T")


@dataclass(frozen=True)
class PageRequest:
    """A validated list request (see server.domain.listing)."""

    search: str = ""
    limit: int = 25
    offset: int = 0
    cursor_seq: int | None = None
    after: bool = True
    ascending: bool = True


@dataclass
class Page(Generic[T]):
    total: int
    items: list[T]


def find_page(query: pw.ModelSelect, model, kind: str, project: str, scope: str, req: PageRequest) -> Page:
    """Run `query` (already filtered to one list) as one page.

    Order is creation order (`seq`). With a cursor, `after` returns the rows
    that follow it in the requested order and `before` the rows that precede
    it, still in the requested order. `total` counts every match.
    """
    seq = model.seq
    for word in search.words(req.search):
        query = query.where(seq.in_(search.matching(kind, project, scope, word)))
    total = query.count()
    forward = req.ascending
    if req.cursor_seq is not None:
        forward = req.ascending == req.after
        query = query.where(seq > req.cursor_seq if forward else seq < req.cursor_seq)
    query = query.order_by(seq.asc() if forward else seq.desc()).offset(req.offset).limit(req.limit)
    items = list(query)
    if forward != req.ascending:
        items.reverse()
    return Page(total=total, items=items)
