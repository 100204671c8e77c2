"""The pool's books: every container it has, by name, state, runtime (stem
cells) and deployment, and who waits for one. `Registry.transition` is the
one place a container changes state and these indexes follow; it also wakes
the waiters the change may serve, and logs it.

Event loop only, no locks: nothing here awaits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
from pathlib import Path
from typing import Iterator

from server.domain.runtimes import Runtime
from server.engine.pool.container import Container, Deployment, State

log = logging.getLogger("server.engine.pool")

NAME_PREFIX = "fn-"
_QUIET = {(State.IDLE, State.BUSY), (State.BUSY, State.IDLE)}  # the warm path logs at DEBUG only


class Registry:
    def __init__(self, work_dir: Path, owner: str):
        self.work_dir = work_dir
        self.owner = owner
        self.containers: dict[str, Container] = {}  # until the driver removed them
        self.counts: collections.Counter[State] = collections.Counter()
        self.deployments: dict[tuple[str, str], Deployment] = {}
        self.stems: dict[str, list[Container]] = collections.defaultdict(list)  # runtime id -> PREWARMED
        self.room_waiters: collections.deque[asyncio.Future] = collections.deque()  # for a slot under max_containers
        self.closed = True  # not accepting work: before start, and from stop on

    @staticmethod
    def longest_host_dir(work_dir: Path) -> Path:
        """A host directory with the longest name `register` makes (for the socket path check)."""
        return work_dir / f"{NAME_PREFIX}{'x' * 8}-{'x' * 8}"

    def register(self, runtime: Runtime, image: str | None, deployment: Deployment | None) -> Container:
        """A new STARTING container (a stem cell when `deployment` is None)."""
        name = f"{NAME_PREFIX}{self.owner[:8]}-{secrets.token_hex(4)}"
        c = Container(name, runtime, image, self.work_dir / name, deployment)
        self.containers[name] = c
        self.counts[State.STARTING] += 1
        if deployment is not None:
            deployment.containers.add(c)
        return c

    def transition(self, c: Container, new: State, reason: str = "", deployment: Deployment | None = None) -> None:
        """Move `c` to `new` (assigning it to `deployment`, for good, if given) and update the indexes."""
        old = c.move(new, deployment)
        if old is State.PREWARMED:
            self.stems[c.runtime.id].remove(c)
        elif old is State.IDLE:
            c.deployment.idle.remove(c)
        if deployment is not None:
            deployment.containers.add(c)
        self.counts[old] -= 1
        self.counts[new] += 1
        if new is State.PREWARMED:
            self.stems[c.runtime.id].append(c)
        elif new is State.IDLE:
            c.deployment.idle.append(c)
            if self.room_waiters:  # an idle container can be evicted for them
                wake(self.room_waiters)
        elif new is State.REMOVING:
            if c.deployment is not None:
                d = c.deployment
                d.containers.discard(c)
                wake(d.waiters)  # a slot is free: a waiter may start a new container
                self.maybe_drop(d)
            wake(self.room_waiters)
        _log_transition(c, old, new, reason)

    def removed(self, c: Container) -> None:
        """The driver removed `c` (or gave up): it is no longer the pool's."""
        if self.containers.get(c.name) is c:
            del self.containers[c.name]
            self.counts[State.REMOVING] -= 1

    def active(self) -> int:
        """Containers that count against max_containers: all but the REMOVING ones."""
        return len(self.containers) - self.counts[State.REMOVING]

    def in_state(self, state: State) -> Iterator[Container]:
        """Lazily: read it before anything changes."""
        return (c for c in self.containers.values() if c.state is state)

    def deployment(self, key: tuple[str, str]) -> Deployment:
        """The deployment's entry, made if it has none."""
        d = self.deployments.get(key)
        if d is None:
            d = self.deployments[key] = Deployment(key)
        return d

    def maybe_drop(self, d: Deployment) -> None:
        """Forget the entry of a deployment with no container and no waiter."""
        if not d.containers and not d.waiters and self.deployments.get(d.key) is d:
            del self.deployments[d.key]


def wake(queue: collections.deque) -> None:
    """Let the first live waiter try again."""
    while queue:
        fut = queue.popleft()
        if not fut.done():
            fut.set_result(None)
            return


def _log_transition(c: Container, old: State, new: State, reason: str) -> None:
    if (old, new) in _QUIET:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("container %s: %s -> %s", c.name, old.value, new.value)
        return
    log.info(
        "container %s -> %s", c.name, new.value,
        extra={"container": c.name, "runtime": c.runtime.id, "from": old.value, "to": new.value, "reason": reason,
               "deployment": "/".join(c.deployment.key) if c.deployment else None},
    )
