"""Validation of list parameters (search, limit, offset, cursor, order)."""

from __future__ import annotations

from typing import Callable

from server.domain import validation as v
from server.domain.errors import cursor_not_found
from server.store.paging import PageRequest

MAX_LIMIT = 100
MAX_OFFSET = 5000


def page_request(
    *,
    search: str,
    limit: int | None,
    offset: int,
    cursor: str,
    cursor_direction: str,
    order_type: str = "",
    default_order: str = "ASC",
    cursor_label: str,
    cursor_seq: Callable[[str], int | None],
) -> PageRequest:
    """Validate list parameters; `cursor_seq` finds the cursor row's seq in this list."""
    v.text("search", search, 256)
    limit = 25 if limit is None else v.int_range("limit", limit, 0, MAX_LIMIT)
    v.int_range("offset", offset, 0, MAX_OFFSET)
    direction = v.one_of("cursorDirection", cursor_direction or "after", ("after", "before"))
    order = v.one_of("orderType", order_type or default_order, ("DESC", "ASC"))
    seq = None
    if cursor:
        v.uid("cursor", cursor)
        seq = cursor_seq(cursor)
        if seq is None:
            raise cursor_not_found(cursor_label, cursor)
    return PageRequest(
        search=search,
        limit=limit,
        offset=offset,
        cursor_seq=seq,
        after=direction == "after",
        ascending=order == "ASC",
    )
