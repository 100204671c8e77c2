"""What the engine refuses with. The engine says what happened in its own
terms; server.api.errors turns these into Appwrite's error types and messages."""

from __future__ import annotations


class EngineError(Exception):
    """An execution was refused before the function got its request."""


class EngineUnavailable(EngineError):
    """No container engine is reachable: no function can run."""


class BuildInterrupted(Exception):
    """A build's container was removed under it (the service stopping, or an
    operator): not the build's fault, so it is queued again."""


class PoolError(EngineError):
    pass


class PoolBusy(PoolError):
    """No container is free and the deployment's wait queue is full."""


class PoolClosed(PoolError):
    """The pool is not running (not started yet, or stopping)."""
