"""One runtime container as the pool sees it (its "proxy", after OpenWhisk's
ContainerProxy): a small state machine, and the deployment it belongs to.

`Container.move` is the only code that changes a state; it checks the move
against TRANSITIONS and what a state implies (CONNECTED, ASSIGNED), and touches
nothing but the container. The pool's indexes follow in one place,
Registry.transition (registry.py).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from concurrent.futures import Future
from pathlib import Path

from server.domain.runtimes import Runtime
from server.engine.invoker import RuntimeConnection


class State(enum.Enum):
    STARTING = "starting"
    PREWARMED = "prewarmed"
    LOADING = "loading"
    IDLE = "idle"
    BUSY = "busy"
    REMOVING = "removing"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.PREWARMED, State.LOADING, State.REMOVING}),
    State.PREWARMED: frozenset({State.LOADING, State.REMOVING}),
    State.LOADING: frozenset({State.BUSY, State.IDLE, State.REMOVING}),
    State.IDLE: frozenset({State.BUSY, State.REMOVING}),
    State.BUSY: frozenset({State.IDLE, State.REMOVING}),
    State.REMOVING: frozenset(),
}

# What a container in these states has for sure: a started runtime server it
# talks to (`conn`), and a deployment it belongs to for good (`deployment`).
CONNECTED = frozenset({State.PREWARMED, State.LOADING, State.IDLE, State.BUSY})
ASSIGNED = frozenset({State.LOADING, State.IDLE, State.BUSY})


class Deployment:
    """The pool's view of one deployment: its containers and who waits for one."""

    __slots__ = ("key", "containers", "idle", "waiters", "forgotten")

    def __init__(self, key: tuple[str, str]):
        self.key = key
        self.containers: set[Container] = set()  # assigned and not REMOVING
        self.idle: list[Container] = []  # a stack: the most recently used is reused first
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.forgotten = False


class Container:
    """One runtime container.

    `image` is None for a stem cell until its image is ensured. `driver_id`
    (the driver's ID) and `conn` (to its runtime server) are set while it
    starts. `launch` is the driver's launch in a thread: removal waits for it.
    """

    __slots__ = ("name", "runtime", "image", "host_dir", "state", "deployment", "driver_id", "conn", "launch",
                 "created", "last_used", "uses")

    def __init__(self, name: str, runtime: Runtime, image: str | None, host_dir: Path, deployment: Deployment | None = None):
        self.name = name
        self.runtime = runtime
        self.image = image
        self.host_dir = host_dir
        self.state = State.STARTING
        self.deployment = deployment  # None for a stem cell until a deployment takes it
        self.driver_id: str | None = None
        self.conn: RuntimeConnection | None = None
        self.launch: Future | None = None
        self.created = time.time()
        self.last_used = time.monotonic()
        self.uses = 0

    def move(self, new: State, deployment: Deployment | None = None) -> State:
        """Go to `new` (assigned to `deployment`, for good, if given); returns the old state.

        Raises:
            RuntimeError: TRANSITIONS forbids the move, the container lacks what
                `new` needs, or it already belongs to a deployment.
        """
        old = self.state
        if new not in TRANSITIONS[old]:
            raise RuntimeError(f"invalid container transition {old.value} -> {new.value} ({self.name})")
        if deployment is not None and self.deployment is not None:
            raise RuntimeError(f"container {self.name} already belongs to a deployment")
        if new in CONNECTED and self.conn is None:
            raise RuntimeError(f"container {self.name} cannot be {new.value} before its runtime answered")
        if new in ASSIGNED and self.deployment is None and deployment is None:
            raise RuntimeError(f"container {self.name} cannot be {new.value} without a deployment")
        if deployment is not None:
            self.deployment = deployment
        self.state = new
        if new is State.IDLE:
            self.last_used = time.monotonic()
        return old

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.runtime.id} {self.state.value}>"
