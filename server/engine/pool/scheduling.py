"""The pool's scheduling decisions, as pure functions over plain data: which
container to take, whether to grow, what to evict, where to wait, what to
reap. They change nothing and await nothing; the pool (container_pool.py)
acts on what they decide. Containers are anything with the attributes named
(`image`, `last_used`, `state`); `usable(c)` says whether its runtime can
still be talked to (a connection neither closed nor compromised).
"""

from __future__ import annotations

import enum
from typing import Callable, Iterable, Sequence, TypeVar

from server.engine.errors import PoolBusy
from server.engine.pool.container import State

C = TypeVar("C")
Usable = Callable[[C], bool]


def choose_idle(idle: Sequence[C], usable: Usable) -> tuple[C | None, list[C]]:
    """The warm path: the deployment's idle stack is used from the top (the
    most recently used first). Returns the container to take (None: none is
    usable) and the unusable ones above it, to discard."""
    dead = []
    for c in reversed(idle):
        if usable(c):
            return c, dead
        dead.append(c)
    return None, dead


def choose_stem(stems: Sequence[C], image: str, usable: Usable) -> tuple[C | None, list[C]]:
    """A stem cell of the runtime for a new container: the most recently
    started usable one of the deployment's image. Without one, every stem cell
    of the runtime is stale (another image, or exited): the second value, to discard."""
    for stem in reversed(stems):
        if stem.image == image and usable(stem):
            return stem, []
    return None, list(stems)


def may_grow(containers: int, max_per_deployment: int) -> bool:
    """Whether the deployment may have one more container."""
    return containers < max_per_deployment


def make_room(active: int, max_containers: int, idle: Iterable[C], prewarmed: Iterable[C]) -> tuple[bool, C | None]:
    """Whether one more container fits under max_containers, and what to evict
    for it: the least recently used IDLE container, else the least recently
    used stem cell. (True, None): it fits as it is; (False, None): all are busy."""
    if active < max_containers:
        return True, None
    for candidates in (idle, prewarmed):
        victims = list(candidates)
        if victims:
            return True, min(victims, key=lambda c: c.last_used)
    return False, None


class WaitFor(enum.Enum):
    DEPLOYMENT = "deployment"  # one of its containers, handed over when it is released
    SLOT = "slot"  # any slot under max_containers (the deployment has no container)


def wait_for(containers: int, waiters: int, room_waiters: int, max_waiters: int, max_containers: int) -> WaitFor:
    """Where an invocation that found no container waits.

    Args:
        containers, waiters: the deployment's containers and waiters.
        room_waiters: invocations waiting for any slot.
    Raises:
        PoolBusy: the queue to wait in already holds max_waiters.
    """
    if containers:
        if waiters >= max_waiters:
            raise PoolBusy(f"all {containers} containers of the deployment are busy and {waiters} requests are waiting")
        return WaitFor.DEPLOYMENT
    if room_waiters >= max_waiters:
        raise PoolBusy(f"all {max_containers} containers are busy and {room_waiters} requests are waiting")
    return WaitFor.SLOT


def discard_on_release(closed: bool, forgotten: bool, usable: bool) -> str | None:
    """Why a container coming back from an execution (or a warm-up) must go
    rather than serve again, or None. An unusable one (closed, or compromised)
    is never handed on."""
    if closed or forgotten:
        return "deployment forgotten" if forgotten else "pool stopping"
    if not usable:
        return "runtime closed or compromised"
    return None


def stems_to_start(prewarmed: int, prewarm: int, active: int, max_containers: int) -> int:
    """How many stem cells to start for a runtime that has `prewarmed`: up to
    `prewarm`, and only into free slots (nothing is evicted for stem cells)."""
    return max(0, min(prewarm - prewarmed, max_containers - active))


def to_reap(containers: Iterable[C], now: float, keep_alive: float, usable: Usable) -> list[tuple[C, str]]:
    """The containers the reaper removes, with the reason: IDLE ones unused for
    `keep_alive` seconds (`now` and `last_used` are time.monotonic()) or whose
    runtime exited, and stem cells whose runtime exited."""
    expired = now - keep_alive
    found = []
    for c in containers:
        if c.state is State.IDLE and (c.last_used < expired or not usable(c)):
            found.append((c, "keep-alive expired" if c.last_used < expired else "runtime exited while idle"))
        elif c.state is State.PREWARMED and not usable(c):
            found.append((c, "stem cell exited"))
    return found
