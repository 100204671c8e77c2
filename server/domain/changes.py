"""A generation number for what decides how a function runs (its settings,
active deployment, builds). Every such change bumps it, so caches of run
plans (server.domain.executions) know when they are stale. One process owns
the database's writers, so an in-memory counter is enough."""

from __future__ import annotations

import itertools
import threading

_lock = threading.Lock()
_counter = itertools.count(1)
_current = 0


def bump() -> None:
    global _current
    with _lock:
        _current = next(_counter)


def current() -> int:
    return _current
