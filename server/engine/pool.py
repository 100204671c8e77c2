"""The warm container pool: runs executions in long-lived, hardened runtime
containers, one deployment per container, reused while warm.

Every container is a small state machine (after OpenWhisk's ContainerProxy);
`ContainerPool._transition` is the only place a state changes (checked against
TRANSITIONS), and it logs:

    STARTING ─► PREWARMED ─► LOADING ─► BUSY ⇄ IDLE
       └───────────────────► LOADING               cold start: no stem cell was ready
    any state ─► REMOVING                          timeout, crash, load error, eviction,
                                                   keep-alive, forget, stop

STARTING   `docker run` of the runtime server, until it answers a ping on its socket.
PREWARMED  a code-less "stem cell" of one runtime, waiting for any deployment.
LOADING    assigned to ONE deployment for the rest of its life: the build output
           is mounted read-only on its code directory (or, without root,
           hard-linked into it), then the runtime `load`s it.
BUSY       running one execution (runtime servers handle one at a time).
IDLE       loaded and free; reused by its deployment, removed after `keep_alive`.
REMOVING   killed and removed in the background; it no longer counts against any cap.

Scheduling an invocation: an IDLE container of the deployment (the warm path);
else a new one (a stem cell, or a cold start) while the deployment has fewer
than `max_per_deployment` and the pool fewer than `max_containers` (the least
recently used IDLE container, or a stem cell, is evicted to make room); else
wait, bounded by `acquire_timeout` and `max_waiters`, for one of the
deployment's containers (handed over on release) or, if it has none, for any
slot. A full queue or a wait that times out raises PoolBusy (HTTP 429).

Each container has its own host directory `<work_dir>/<name>/` (0700) holding
`code/` (bind-mounted read-only at CODE_MOUNT with rslave propagation, empty
until assignment; the build output mounted on it then appears inside) and
`sock/` (at SOCKET_MOUNT, the runtime's UNIX socket; 0700, writable by the
sandbox user only until the runtime listens). A host directory is unmounted
before it is deleted, and the sweeps at start and stop unmount what a killed
service left. Containers have no network at all (`network_mode="none"`) unless
the operator opts in (`network`).

The sweep at start and stop also removes build containers carrying the pool's
owner label (Builder(owner=pool.owner, instance=pool.instance, ...)) and empties
`staging_dir` (the builders' copies of source archives), except, at start, what
belongs to this instance.

Threading: everything here runs on the event loop, without locks (no state
change spans an await). Blocking Docker and file work runs on the pool's own
thread pool. The warm path of `invoke` makes no Docker call: take an IDLE
container, one request/reply on its socket, put it back.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import hashlib
import logging
import os
import secrets
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterable

import docker
import requests

from server.domain.runtimes import Runtime
from server.engine.builder import CODE_MOUNT, ContainerLimits
from server.engine.docker_runtimes import OWNER_LABEL, DockerRuntimes, lock_socket_dir, release_dir
from server.engine.invoker import (
    SOCKET_NAME,
    InvocationResult,
    ProtocolError,
    RuntimeConnection,
    RuntimeGone,
    result_from_reply,
)

log = logging.getLogger(__name__)

__all__ = ["ContainerPool", "DeploymentTarget", "InvocationResult", "OWNER_LABEL", "PoolBusy", "PoolClosed", "PoolError", "State"]

NAME_PREFIX = "fn-"
TIMEOUT_STATUS = 124
TIMEOUT_ERROR = "Execution timed out."
MAX_ACQUIRE_ROUNDS = 100


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
_QUIET = {(State.IDLE, State.BUSY), (State.BUSY, State.IDLE)}  # the warm path logs at DEBUG only


class PoolError(Exception):
    pass


class PoolBusy(PoolError):
    """No container is free and the deployment's wait queue is full (HTTP 429)."""


class PoolClosed(PoolError):
    """The pool is not running (not started yet, or stopping)."""


class _StartAborted(Exception):
    """The container was removed (stop, forget) while it was starting."""


@dataclass(frozen=True)
class DeploymentTarget:
    """What to run. `image` should be the image ID `ensure_image` returns, so stem cells match it."""

    project: str
    deployment_id: str
    runtime: Runtime
    image: str
    code_dir: Path  # the build output on the host (same filesystem as work_dir for hard links)
    entrypoint: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.project, self.deployment_id)


class Container:
    """One runtime container as the pool sees it (its "proxy")."""

    __slots__ = ("name", "runtime", "image", "state", "deployment", "docker_id", "conn",
                 "host_dir", "launch", "created", "last_used", "uses")

    def __init__(self, name: str, runtime: Runtime, image: str | None, host_dir: Path):
        self.name = name
        self.runtime = runtime
        self.image = image
        self.state = State.STARTING
        self.deployment: _Deployment | None = None
        self.docker_id: str | None = None
        self.conn: RuntimeConnection | None = None
        self.host_dir = host_dir
        self.launch: Future | None = None  # `docker create/start` in a thread; removal waits for it
        self.created = time.time()
        self.last_used = time.monotonic()
        self.uses = 0

    @property
    def code_dir(self) -> Path:
        return self.host_dir / "code"

    @property
    def sock_dir(self) -> Path:
        return self.host_dir / "sock"

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.runtime.id} {self.state.value}>"


class _Deployment:
    __slots__ = ("key", "containers", "idle", "waiters", "forgotten")

    def __init__(self, key: tuple[str, str]):
        self.key = key
        self.containers: set[Container] = set()  # assigned and not REMOVING
        self.idle: list[Container] = []  # a stack: the most recently used is reused first
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.forgotten = False


class ContainerPool:
    def __init__(
        self,
        client: docker.DockerClient,
        runtimes_dir: Path,
        work_dir: Path,
        ensure_image: Callable[[Runtime], str],
        limits: ContainerLimits | None = None,
        *,
        prewarm: int = 1,
        max_per_deployment: int = 8,
        max_containers: int = 64,
        keep_alive: float = 300.0,
        tmp_mb: int = 64,
        runtimes: Iterable[Runtime] = (),
        max_waiters: int = 64,
        acquire_timeout: float = 30.0,
        start_timeout: float = 30.0,
        reap_interval: float | None = None,
        docker_threads: int = 8,
        network: str = "none",
        response_max_bytes: int = 1024 * 1024,
        staging_dir: Path | None = None,
    ):
        self._work_dir = Path(work_dir).resolve()
        longest = self._work_dir / f"{NAME_PREFIX}{'x' * 8}-{'x' * 8}" / "sock" / SOCKET_NAME
        if len(str(longest).encode()) >= 104:
            raise ValueError(f"work_dir is too long for UNIX socket paths: {self._work_dir}")
        self._ensure_image = ensure_image
        self.limits = limits or ContainerLimits(memory_mb=256, cpus=1.0, pids=128)
        self.prewarm = prewarm
        self.max_per_deployment = max_per_deployment
        self.max_containers = max_containers
        self.keep_alive = keep_alive
        self.tmp_mb = tmp_mb
        self.max_waiters = max_waiters
        self.acquire_timeout = acquire_timeout
        self.start_timeout = start_timeout
        self._reap_interval = reap_interval or min(max(keep_alive / 4, 0.5), 30.0)
        self._prewarm_runtimes = {r.id: r for r in runtimes}
        self.response_max_bytes = response_max_bytes
        self._staging_dir = Path(staging_dir).resolve() if staging_dir else None
        self.owner = hashlib.sha256(str(self._work_dir).encode()).hexdigest()[:16]
        self.instance = secrets.token_hex(8)  # this service run: builders label their containers with it
        self._docker = DockerRuntimes(client, runtimes_dir, self.limits, tmp_mb, self.owner, network, self._work_dir, self.instance)
        self._executor = ThreadPoolExecutor(max_workers=docker_threads, thread_name_prefix="pool-docker")

        self._containers: dict[str, Container] = {}  # until removed from Docker
        self._counts: collections.Counter[State] = collections.Counter()
        self._deployments: dict[tuple[str, str], _Deployment] = {}
        self._stems: dict[str, list[Container]] = collections.defaultdict(list)  # runtime id -> PREWARMED
        self._room_waiters: collections.deque[asyncio.Future] = collections.deque()  # for a slot under max_containers
        self._replenishing: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._reaper: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = True  # not accepting work: before start, and from stop on
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------

    async def start(self, wait: bool = True) -> None:
        """Remove this pool's leftovers (same work_dir), then start the stem cells
        (awaited, bounded by start_timeout, when `wait`) and the reaper."""
        if self._stopped or not self._closed:
            raise PoolClosed("a pool starts once")
        self._loop = asyncio.get_running_loop()
        self._work_dir.mkdir(parents=True, exist_ok=True)
        await self._sweep(own_builds=False)
        await self._run(self._docker.enable_mounts)
        self._closed = False
        self._reaper = self._spawn(self._reap_loop())
        starting = [t for t in map(self._schedule_replenish, self._prewarm_runtimes.values()) if t]
        if wait and starting:
            await asyncio.wait(starting, timeout=self.start_timeout)
        log.info("container pool started", extra={"owner": self.owner, "work_dir": str(self._work_dir)})

    async def stop(self, timeout: float = 30.0) -> None:
        """Remove every container of this pool (in parallel, bounded by `timeout`). Final."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop is None:
            self._executor.shutdown(wait=False)
            return
        self._closed = True
        if self._reaper:
            self._reaper.cancel()
        for queue in [self._room_waiters, *(d.waiters for d in self._deployments.values())]:
            for fut in queue:
                if not fut.done():
                    fut.set_exception(PoolClosed("the pool is stopping"))
        for c in list(self._containers.values()):
            self._discard(c, "pool stopping")
        deadline = self._loop.time() + timeout
        for _ in range(5):  # starts that finish now discard themselves: new removal tasks
            pending = {t for t in self._tasks if not t.done()}
            remaining = deadline - self._loop.time()
            if not pending or remaining <= 0:
                break
            await asyncio.wait(pending, timeout=remaining)
        await self._sweep()  # anything a start left behind, and build containers
        try:
            await self._run(self._docker.disable_mounts)
        except OSError as exc:
            log.warning("unmounting the work dir failed", extra={"error": str(exc)})
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("container pool stopped", extra={"owner": self.owner})

    # -- public API ----------------------------------------------------------

    async def invoke(self, target: DeploymentTarget, payload: str, env: dict, headers: dict, timeout: float,
                     on_start: Callable[[], Awaitable[object]] | None = None) -> InvocationResult:
        """Run one execution. `timeout` bounds loading and running the user's
        code; waiting for a container is bounded by acquire_timeout (then
        PoolBusy), starting one by start_timeout.

        `on_start` (async) is awaited once a container is acquired and loaded,
        right before the execution is sent to it; if it raises (or is
        cancelled), the container is released and the error propagates."""
        started = time.monotonic()
        c = self._take_idle(target.key)
        if c is None:
            c, failure = await self._acquire(target, timeout, started)
            if failure is not None:
                return failure
        if on_start is not None:
            try:
                await on_start()
            except BaseException:
                self._release(c)
                raise
        try:
            reply = await c.conn.execute(payload, env, headers, timeout)
        except TimeoutError:
            self._discard(c, "execution timed out")
            return InvocationResult(TIMEOUT_STATUS, "", "", "", TIMEOUT_ERROR, time.monotonic() - started, timed_out=True)
        except (RuntimeGone, ProtocolError, OSError) as exc:
            return await self._crashed(c, exc, started)
        except (TypeError, ValueError):  # env/headers not JSON-serializable: nothing was sent
            self._release(c)
            raise
        except BaseException:  # cancelled: the reply would arrive on a connection nobody reads
            self._discard(c, "invocation cancelled")
            raise
        self._release(c)
        return result_from_reply(reply, time.monotonic() - started)

    async def warm(self, target: DeploymentTarget) -> str | None:
        """Give the deployment a loaded IDLE container if it has none.

        Returns None when it is ready (or no room is left), else the load error."""
        started = time.monotonic()
        if self._closed:
            raise PoolClosed("the pool is not running")
        d = self._deployment(target.key)
        if d.containers:
            return None
        c = self._grow(d, target)
        if c is None:
            self._maybe_drop(d)
            return None
        failure = await self._prepare(c, target, self.start_timeout, started)
        if failure is not None:
            return failure.error
        self._release(c)
        return None

    async def forget(self, project: str, deployment_id: str) -> int:
        """Remove the deployment's containers: idle ones now, busy ones when their
        execution ends. Returns how many containers it had."""
        d = self._deployments.pop((project, deployment_id), None)
        if d is None:
            return 0
        d.forgotten = True
        count = len(d.containers)
        removals = [self._discard(c, "deployment forgotten") for c in list(d.idle)]
        while d.waiters:  # they retry, on a fresh entry
            fut = d.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        removals = [t for t in removals if t]
        if removals:
            await asyncio.wait(removals, timeout=self.start_timeout)
        return count

    def stats(self) -> dict:
        """Counts per state, stem cells per runtime, containers per deployment, waiters."""
        return {
            "total": len(self._containers),
            "states": {s.value: self._counts[s] for s in State},
            "prewarmed": {rid: len(stems) for rid, stems in self._stems.items()},
            "deployments": {f"{p}/{dep}": len(d.containers) for (p, dep), d in self._deployments.items()},
            "waiting": sum(len(d.waiters) for d in self._deployments.values()) + len(self._room_waiters),
        }

    def containers(self) -> list[dict]:
        """One row per container (for diagnostics and tests)."""
        return [
            {
                "name": c.name,
                "state": c.state.value,
                "runtime": c.runtime.id,
                "deployment": c.deployment.key if c.deployment else None,
                "uses": c.uses,
                "docker_id": c.docker_id,
            }
            for c in self._containers.values()
        ]

    # -- the state machine ---------------------------------------------------

    def _transition(self, c: Container, new: State, reason: str = "", deployment: _Deployment | None = None) -> None:
        old = c.state
        if new not in TRANSITIONS[old]:
            raise RuntimeError(f"invalid container transition {old.value} -> {new.value} ({c.name})")
        if old is State.PREWARMED:
            self._stems[c.runtime.id].remove(c)
        elif old is State.IDLE:
            c.deployment.idle.remove(c)
        if deployment is not None:  # assignment, for good
            c.deployment = deployment
            deployment.containers.add(c)
        c.state = new
        self._counts[old] -= 1
        self._counts[new] += 1
        if new is State.PREWARMED:
            self._stems[c.runtime.id].append(c)
        elif new is State.IDLE:
            c.last_used = time.monotonic()
            c.deployment.idle.append(c)
            if self._room_waiters:  # an idle container can be evicted for them
                self._wake(self._room_waiters)
        elif new is State.REMOVING:
            if c.deployment is not None:
                d = c.deployment
                d.containers.discard(c)
                self._wake(d.waiters)  # a slot is free: a waiter may start a new container
                self._maybe_drop(d)
            self._wake(self._room_waiters)
        if (old, new) in _QUIET:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("container %s: %s -> %s", c.name, old.value, new.value)
        else:
            log.info(
                "container %s -> %s", c.name, new.value,
                extra={"container": c.name, "runtime": c.runtime.id, "from": old.value, "to": new.value, "reason": reason,
                       "deployment": "/".join(c.deployment.key) if c.deployment else None},
            )

    def _register(self, runtime: Runtime, image: str | None, deployment: _Deployment | None) -> Container:
        name = f"{NAME_PREFIX}{self.owner[:8]}-{secrets.token_hex(4)}"
        c = Container(name, runtime, image, self._work_dir / name)
        self._containers[name] = c
        self._counts[State.STARTING] += 1
        if deployment is not None:
            c.deployment = deployment
            deployment.containers.add(c)
        return c

    def _active(self) -> int:
        return len(self._containers) - self._counts[State.REMOVING]

    # -- acquiring and releasing ---------------------------------------------

    def _deployment(self, key: tuple[str, str]) -> _Deployment:
        d = self._deployments.get(key)
        if d is None:
            d = self._deployments[key] = _Deployment(key)
        return d

    def _maybe_drop(self, d: _Deployment) -> None:
        if not d.containers and not d.waiters and self._deployments.get(d.key) is d:
            del self._deployments[d.key]

    def _take_idle(self, key: tuple[str, str]) -> Container | None:
        """The warm path: an IDLE container of the deployment, now BUSY. No await."""
        d = self._deployments.get(key)
        if d is None or self._closed:
            return None
        while d.idle:  # shrinks every round
            c = d.idle[-1]
            if c.conn.at_eof():
                self._discard(c, "runtime exited while idle")
                continue
            self._transition(c, State.BUSY)
            c.uses += 1
            return c
        return None

    async def _acquire(self, target: DeploymentTarget, timeout: float, started: float) -> tuple[Container | None, InvocationResult | None]:
        """The slow path: grow the deployment's containers or wait for one."""
        deadline = self._loop.time() + self.acquire_timeout
        for _ in range(MAX_ACQUIRE_ROUNDS):
            if self._closed:
                raise PoolClosed("the pool is not running")
            c = self._take_idle(target.key)
            if c is not None:
                return c, None
            d = self._deployment(target.key)
            c = self._grow(d, target) if len(d.containers) < self.max_per_deployment else None
            if c is not None:
                failure = await self._prepare(c, target, timeout, started)
                if failure is not None:
                    return None, failure
                self._transition(c, State.BUSY)
                c.uses += 1
                return c, None
            if d.containers:  # wait for one of them (handed over when it is released)
                if len(d.waiters) >= self.max_waiters:
                    raise PoolBusy(f"all {len(d.containers)} containers of the deployment are busy and {len(d.waiters)} requests are waiting")
                c = await self._wait(d.waiters, deadline, d)
                if c is not None:
                    return c, None
            else:  # max_containers reached, all busy: wait for any slot
                self._maybe_drop(d)
                if len(self._room_waiters) >= self.max_waiters:
                    raise PoolBusy(f"all {self.max_containers} containers are busy and {len(self._room_waiters)} requests are waiting")
                await self._wait(self._room_waiters, deadline)
        raise PoolBusy("no container became available")

    async def _wait(self, queue: collections.deque, deadline: float, d: _Deployment | None = None) -> Container | None:
        """Wait in `queue` for a container handed over by `_release` (BUSY), or None: try again."""
        fut = self._loop.create_future()
        queue.append(fut)
        try:
            async with asyncio.timeout_at(deadline):
                return await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled() and fut.exception() is None and fut.result() is not None:
                self._release(fut.result())  # handed over just as we gave up: pass it on
            if isinstance(exc, TimeoutError):
                raise PoolBusy(f"no container became free within {self.acquire_timeout:g} s") from None
            raise
        finally:
            if fut in queue:
                queue.remove(fut)
            if d is not None:
                self._maybe_drop(d)

    @staticmethod
    def _wake(queue: collections.deque) -> None:
        """Let the first live waiter try again."""
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _grow(self, d: _Deployment, target: DeploymentTarget) -> Container | None:
        """A new container for the deployment (LOADING stem cell or STARTING cold one), or None without room. No await."""
        stems = self._stems.get(target.runtime.id, ())
        for stem in reversed(stems):
            if stem.image == target.image and not stem.conn.at_eof():
                self._transition(stem, State.LOADING, "assigned", deployment=d)
                self._schedule_replenish(target.runtime)
                return stem
        for stem in [s for s in stems if s.image != target.image or s.conn.at_eof()]:
            self._discard(stem, "stale stem cell (other image, or exited)")
        if not self._make_room():
            return None
        self._schedule_replenish(target.runtime)
        return self._register(target.runtime, target.image, d)

    def _make_room(self) -> bool:
        """True when one more container fits under max_containers, evicting the LRU idle one (or a stem cell) if needed."""
        if self._active() < self.max_containers:
            return True
        for state in (State.IDLE, State.PREWARMED):
            victims = [c for c in self._containers.values() if c.state is state]
            if victims:
                self._discard(min(victims, key=lambda c: c.last_used), "evicted: max_containers reached")
                return True
        return False

    def _release(self, c: Container) -> None:
        """After an execution (or warm-up): hand over to a waiter, or IDLE."""
        d = c.deployment
        if self._closed or d.forgotten:
            self._discard(c, "deployment forgotten" if d.forgotten else "pool stopping")
            return
        if c.conn is not None and c.conn.at_eof():  # closed, or compromised: never handed on
            self._discard(c, "runtime closed or compromised")
            return
        while d.waiters:
            fut = d.waiters.popleft()
            if not fut.done():
                if c.state is not State.BUSY:
                    self._transition(c, State.BUSY)
                c.uses += 1
                c.last_used = time.monotonic()
                fut.set_result(c)
                return
        self._transition(c, State.IDLE)

    # -- starting, loading, removing -----------------------------------------

    async def _prepare(self, c: Container, target: DeploymentTarget, timeout: float, started: float) -> InvocationResult | None:
        """Start (if cold) and load `c` for the target; None on success (then LOADING), else the failed result."""
        def failed(error: str, **flags) -> InvocationResult:
            return InvocationResult(TIMEOUT_STATUS if flags.get("timed_out") else 500, "", "", "", error, time.monotonic() - started, **flags)

        try:
            if c.state is State.STARTING:
                await self._start(c)
                self._transition(c, State.LOADING, "cold start")
            await self._run(self._docker.give_code, target.code_dir, c.code_dir)
            if c.state is not State.LOADING:
                raise _StartAborted()
            error = await c.conn.load(CODE_MOUNT, target.entrypoint, timeout, response_max_bytes=self.response_max_bytes)
        except TimeoutError:
            self._discard(c, "load timed out")
            return failed(TIMEOUT_ERROR, timed_out=True)
        except _StartAborted:
            self._discard(c, "aborted")
            if self._closed:
                raise PoolClosed("the pool is stopping") from None
            return failed("Execution failed: the runtime container was removed while starting.")
        except (RuntimeGone, ProtocolError, OSError, docker.errors.DockerException, requests.RequestException) as exc:
            self._discard(c, f"start failed: {exc}")
            if self._closed:
                raise PoolClosed("the pool is stopping") from None
            log.warning("runtime container failed to start", extra={"container": c.name, "runtime": c.runtime.id, "error": str(exc)})
            return failed(f"Execution failed: could not start the runtime: {exc}")
        except BaseException:
            self._discard(c, "cancelled while loading")
            raise
        if error is not None:
            self._discard(c, "load failed")
            return failed(error)
        if c.state is not State.LOADING:  # stopped or forgotten meanwhile
            if self._closed:
                raise PoolClosed("the pool is stopping")
            return failed("Execution failed: the runtime container was removed while loading.")
        return None

    async def _start(self, c: Container) -> None:
        """`docker run` and connect; `c` stays STARTING. Raises on failure or _StartAborted."""
        if c.image is None:
            c.image = await self._run(self._ensure_image, c.runtime)
        if c.state is not State.STARTING or self._closed:
            raise _StartAborted()
        project, deployment = c.deployment.key if c.deployment else ("", "")
        c.launch = self._executor.submit(self._docker.launch, c.name, c.host_dir, c.runtime, c.image, project, deployment)
        c.docker_id = await asyncio.wrap_future(c.launch)
        if c.state is not State.STARTING:
            raise _StartAborted()
        c.conn = await self._connect(c, self._loop.time() + self.start_timeout)
        if c.state is not State.STARTING:
            c.conn.close()
            raise _StartAborted()

    async def _connect(self, c: Container, deadline: float) -> RuntimeConnection:
        """Connect once the runtime listens on its socket, then ping. Bounded by `deadline`."""
        path = str(c.sock_dir / SOCKET_NAME)
        next_check = self._loop.time() + 0.5
        while True:
            if os.path.exists(path):
                try:
                    conn = await RuntimeConnection.open(path)
                except (ConnectionRefusedError, FileNotFoundError):
                    pass  # bound, not listening yet
                else:
                    try:
                        await conn.ping(max(deadline - self._loop.time(), 0.1))
                        lock_socket_dir(c.sock_dir)
                        return conn
                    except TimeoutError:
                        conn.close()
                        raise RuntimeGone("the runtime did not answer a ping") from None
                    except BaseException:
                        conn.close()
                        raise
            now = self._loop.time()
            if now >= deadline:
                raise RuntimeGone(f"the runtime did not listen within {self.start_timeout:g} s{await self._run(self._docker.logs_tail, c.docker_id)}")
            if now >= next_check:  # an early exit (bad image, no interpreter) fails fast
                next_check = now + 0.5
                if c.state is not State.STARTING:
                    raise _StartAborted()
                status = await self._run(self._docker.status, c.docker_id)
                if status != "running":
                    raise RuntimeGone(f"the runtime container is {status}{await self._run(self._docker.logs_tail, c.docker_id)}")
            await asyncio.sleep(0.005)

    def _discard(self, c: Container, reason: str) -> asyncio.Task | None:
        """→ REMOVING; Docker removal in the background. Returns the removal task."""
        if c.state is State.REMOVING:
            return None
        self._transition(c, State.REMOVING, reason)
        if c.conn is not None:
            c.conn.close()
        return self._spawn(self._remove(c))

    async def _remove(self, c: Container) -> None:
        try:
            if c.launch is not None and not c.launch.done():  # removed while starting: let `docker run` finish
                await asyncio.wait([asyncio.wrap_future(c.launch)], timeout=self.start_timeout + 60)
            await self._run(self._docker.remove, c.name, c.host_dir)
        except Exception as exc:  # the label sweep at start/stop catches it later
            log.warning("container removal failed", extra={"container": c.name, "error": str(exc)})
        finally:
            if self._containers.get(c.name) is c:
                del self._containers[c.name]
                self._counts[State.REMOVING] -= 1

    async def _crashed(self, c: Container, exc: Exception, started: float) -> InvocationResult:
        """The runtime died or misbehaved during an execution: say why, remove it."""
        closing = self._closed or c.state is State.REMOVING
        if c.state is not State.REMOVING:
            self._transition(c, State.REMOVING, f"execution failed: {exc}")
            c.conn.close()
        oom, error = False, "Execution failed: the service is shutting down."
        if not closing:
            try:
                oom, error = await self._run(self._docker.diagnose, c.docker_id, c.created, isinstance(exc, ProtocolError), str(exc))
            except Exception as diag_exc:
                error = f"Execution failed: the runtime stopped unexpectedly ({exc}; {diag_exc})."
            finally:
                self._spawn(self._remove(c))
        return InvocationResult(500, "", "", "", error, time.monotonic() - started, out_of_memory=oom)

    # -- stem cells and the reaper -------------------------------------------

    def _schedule_replenish(self, runtime: Runtime) -> asyncio.Task | None:
        if self._closed or self.prewarm <= 0 or runtime.id not in self._prewarm_runtimes or runtime.id in self._replenishing:
            return None
        self._replenishing.add(runtime.id)
        return self._spawn(self._replenish(runtime))

    async def _replenish(self, runtime: Runtime) -> None:
        """Start stem cells up to `prewarm`, never evicting anything for them.
        A few rounds (stem cells may be taken meanwhile); a failed start ends it
        until the next claim or reaper tick."""
        try:
            for _ in range(3):
                new = []
                while len(self._stems[runtime.id]) + len(new) < self.prewarm and self._active() < self.max_containers:
                    new.append(self._register(runtime, None, None))
                if not new or not all(await asyncio.gather(*(self._start_stem(c) for c in new))):
                    return
        finally:
            self._replenishing.discard(runtime.id)

    async def _start_stem(self, c: Container) -> bool:
        try:
            await self._start(c)
        except _StartAborted:
            return False
        except Exception as exc:
            log.warning("stem cell failed to start", extra={"container": c.name, "runtime": c.runtime.id, "error": str(exc)})
            self._discard(c, f"start failed: {exc}")
            return False
        if self._closed:
            self._discard(c, "pool stopping")
            return False
        self._transition(c, State.PREWARMED)
        return True

    async def _reap_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._reap_interval)
            try:
                self._reap()
            except Exception:
                log.exception("container reaper failed")

    def _reap(self) -> None:
        """Remove IDLE containers past keep_alive and dead idle/stem ones; top up stem cells."""
        expired = time.monotonic() - self.keep_alive
        for c in list(self._containers.values()):
            if c.state is State.IDLE and (c.last_used < expired or c.conn.at_eof()):
                self._discard(c, "keep-alive expired" if c.last_used < expired else "runtime exited while idle")
            elif c.state is State.PREWARMED and c.conn.at_eof():
                self._discard(c, "stem cell exited")
        for runtime in self._prewarm_runtimes.values():
            self._schedule_replenish(runtime)  # also retries after failed starts

    # -- plumbing ------------------------------------------------------------

    def _spawn(self, coro) -> asyncio.Task:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("container pool task failed", exc_info=task.exception())

    def _run(self, fn, *args):
        return self._loop.run_in_executor(self._executor, fn, *args)

    async def _sweep(self, own_builds: bool = True) -> None:
        """Remove every runtime and build container carrying this pool's owner
        label (at start-up, `own_builds=False`, not this instance's builds), stale
        host dirs (unmounted first: a killed service leaves its mounts) and the
        builders' staging copies."""
        leftovers = await self._run(self._docker.owned, own_builds)
        if leftovers:
            log.info("removing leftover containers", extra={"owner": self.owner, "count": len(leftovers)})
            await asyncio.gather(*(self._run(self._docker.remove, cid) for cid in leftovers), return_exceptions=True)
        for path in await self._run(lambda: list(self._work_dir.glob(f"{NAME_PREFIX}*"))):
            if path.name not in self._containers:
                await self._run(release_dir, path)
        if self._staging_dir is not None:
            await self._run(self._empty_staging, own_builds)

    def _empty_staging(self, own_builds: bool) -> None:
        if not self._staging_dir.is_dir():
            return
        for path in self._staging_dir.iterdir():
            if own_builds or path.name != self.instance:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
