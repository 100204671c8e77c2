"""The one translation of errors into what API clients get.

The domain raises ApiError (already Appwrite's type and message); other
layers raise their own exceptions, and this registry says which ApiError
each becomes. Anything else is a bug: logged, answered 500 general_unknown.
"""

from __future__ import annotations

from typing import Callable

from server.domain import errors
from server.domain.errors import ApiError
from server.engine.errors import EngineError, EngineUnavailable, PoolBusy, PoolClosed

# Most specific first: the first class the error is an instance of wins.
TRANSLATIONS: list[tuple[type[BaseException], Callable[[BaseException], ApiError]]] = [
    (PoolBusy, lambda _: errors.too_many_executions()),
    (PoolClosed, lambda _: errors.shutting_down()),
    (EngineUnavailable, lambda _: errors.no_container_engine()),
    (EngineError, lambda exc: errors.unavailable(f"Execution refused: {exc}")),
]


def to_api_error(error: BaseException) -> ApiError | None:
    """The ApiError a client gets for `error`; None when it is not an expected one (a bug)."""
    if isinstance(error, ApiError):
        return error
    for kind, translate in TRANSLATIONS:
        if isinstance(error, kind):
            return translate(error)
    return None
