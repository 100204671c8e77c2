"""One list query for every resource: search, cursor or offset paging, total."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import peewee as pw

from server.store import counts, search

T = TypeVar("T")

# With a search, pages of at most this many matches are sorted in memory from
# the word index; larger result sets are walked in creation order instead,
# which stops as soon as the page is full.
_SMALL_RESULT = 2000


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


def find_page(query: pw.ModelSelect, model, kind: str, project: str, scope: str, req: PageRequest,
              counted: bool = True, word_match: Callable[[str], pw.Expression] | None = None) -> Page:
    """Run `query` (already filtered to one list) as one page.

    Order is creation order (`seq`). With a cursor, `after` returns the rows
    that follow it in the requested order and `before` the rows that precede
    it, still in the requested order. `total` counts every match; `counted`
    says that `query` is exactly the list whose counter store.counts keeps
    (no further filters), so an unsearched total is one lookup.
    `word_match`, when given, turns a search word into a condition instead of
    the word index (for lists whose words are just IDs).
    """
    seq = model.seq
    words = search.words(req.search)
    if words and word_match is not None:
        for word in words:
            query = query.where(word_match(word))
        total = query.count()
    elif words:
        # Drive from the most selective word through the word index (probed
        # with bounded counts); check the other words per row.
        if len(words) > 1:
            words.sort(key=lambda w: (search.bounded_count(kind, project, scope, w, _SMALL_RESULT + 1), -len(w)))
        driver, *others = words
        for word in others:
            query = query.where(search.has_word(kind, seq, word))
        narrowed = query.where(seq.in_(search.matching(kind, project, scope, driver)))
        total = narrowed.count()
        if total <= _SMALL_RESULT:
            query = narrowed
        else:
            query = query.where(search.has_word(kind, seq, driver))
    else:
        total = counts.get(kind, project, scope) if counted else query.count()
    forward = req.ascending
    if req.cursor_seq is not None:
        forward = req.ascending == req.after
        query = query.where(seq > req.cursor_seq if forward else seq < req.cursor_seq)
    query = query.order_by(seq.asc() if forward else seq.desc()).offset(req.offset).limit(req.limit)
    items = list(query)
    if forward != req.ascending:
        items.reverse()
    return Page(total=total, items=items)
