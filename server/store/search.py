"""Word-prefix search through the SearchToken table.

Text is lowercased and split into words; each word is stored hex-encoded
(UTF-8), so prefix order is byte order under any database collation and a
prefix match is an index range scan: `token >= hex(p) AND token < hex(p) + "g"`.
"""

from __future__ import annotations

import re
from typing import Iterable

import peewee as pw

from server.store.models import SearchToken

_WORD = re.compile(r"[^\W]+", re.UNICODE)
_MAX_WORD_BYTES = 32  # hex-encoded: 64 chars, the column size


def words(text: str) -> list[str]:
    """Distinct lowercased words of `text`, in order ('_' is a word character)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        seen.setdefault(word, None)
    return list(seen)


def _encode(word: str) -> str:
    return word.encode("utf-8")[:_MAX_WORD_BYTES].hex()


def index(kind: str, project: str, scope: str, owner: int, texts: Iterable[str]) -> None:
    """(Re)index one resource: replaces the words stored for it."""
    SearchToken.delete().where((SearchToken.kind == kind) & (SearchToken.owner == owner)).execute()
    tokens = {_encode(w) for text in texts for w in words(text)}
    if tokens:
        SearchToken.insert_many(
            [{"kind": kind, "project": project, "scope": scope, "owner": owner, "token": t} for t in sorted(tokens)]
        ).execute()


def unindex(kind: str, owners: Iterable[int] | pw.SelectQuery) -> None:
    SearchToken.delete().where((SearchToken.kind == kind) & SearchToken.owner.in_(owners)).execute()


def has_word(kind: str, owner_column: pw.Field, term: str) -> pw.Expression:
    """EXISTS: the row in `owner_column` has a word that starts with `term`'s word."""
    low = _encode(term)
    token = SearchToken.alias()
    return pw.fn.EXISTS(
        token.select(pw.SQL("1")).where(
            (token.kind == kind) & (token.owner == owner_column) & (token.token >= low) & (token.token < low + "g")
        )
    )


def matching(kind: str, project: str, scope: str, term: str) -> pw.SelectQuery:
    """Subquery of owners having a word that starts with `term`'s word."""
    low = _encode(term)
    return SearchToken.select(SearchToken.owner).where(
        (SearchToken.kind == kind)
        & (SearchToken.project == project)
        & (SearchToken.scope == scope)
        & (SearchToken.token >= low)
        & (SearchToken.token < low + "g")
    )


def bounded_count(kind: str, project: str, scope: str, term: str, cap: int) -> int:
    """How many rows have a word starting with `term`'s, counted up to `cap`
    (an index range scan of at most `cap` entries): a cheap selectivity probe."""
    limited = matching(kind, project, scope, term).limit(cap)
    return SearchToken.select(pw.fn.COUNT(pw.SQL("*"))).from_(limited.alias("limited")).scalar()
