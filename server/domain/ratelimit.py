"""Fixed-window rate limits, counted in the database so that they hold
across replicas (a caller limited to 60 a minute gets 60, not 60 per replica).

One upsert per hit: the window's counter goes up, or a new window starts
when the old one has passed. Blocking (a store write): callers run it off
the event loop.
"""

from __future__ import annotations

import time

import peewee as pw

from server.domain.errors import rate_limited
from server.store.db import database
from server.store.models import RateWindow


class RateLimiter:
    def __init__(self, limit: int, window: float = 60.0):
        self.limit = limit
        self.window_ms = int(window * 1000)

    @property
    def active(self) -> bool:
        return self.limit > 0

    def hit(self, key: str) -> None:
        """Count one call for `key`; 429 past the limit. A limit of 0 disables."""
        if not self.active:
            return
        now = int(time.time() * 1000)
        key = key[:255]
        with database.atomic():
            fresh = RateWindow.window_start <= now - self.window_ms
            RateWindow.insert(key=key, window_start=now, count=1).on_conflict(
                conflict_target=[RateWindow.key],
                update={
                    RateWindow.count: pw.Case(None, [(fresh, 1)], RateWindow.count + 1),
                    RateWindow.window_start: pw.Case(None, [(fresh, now)], RateWindow.window_start),
                },
            ).execute()
            count = RateWindow.select(RateWindow.count).where(RateWindow.key == key).scalar()
        if count > self.limit:
            raise rate_limited()

    def sweep(self) -> int:
        """Remove windows that have passed (a periodic job)."""
        cutoff = int(time.time() * 1000) - self.window_ms
        return RateWindow.delete().where(RateWindow.window_start <= cutoff).execute()
