"""Fixed-window rate limits kept in memory (one service process)."""

from __future__ import annotations

import threading
import time

from server.domain.errors import rate_limited


class RateLimiter:
    def __init__(self, limit: int, window: float = 60.0):
        self.limit = limit
        self.window = window
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}

    def hit(self, key: str) -> None:
        """Count one call for `key`; 429 past the limit. A limit of 0 disables."""
        if self.limit <= 0:
            return
        now = time.monotonic()
        with self._lock:
            start, count = self._counts.get(key, (now, 0))
            if now - start >= self.window:
                start, count = now, 0
            if count >= self.limit:
                raise rate_limited()
            self._counts[key] = (start, count + 1)
            if len(self._counts) > 100_000:
                self._counts = {k: v for k, v in self._counts.items() if now - v[0] < self.window}
