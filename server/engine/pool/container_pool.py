"""ContainerPool: the pool's public face (see the package docstring), and
how an invocation gets a container: taken, grown, waited for, released."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path
from typing import Awaitable, Callable

from server.domain.runtimes import Runtime
from server.engine.drivers import ContainerDriver, hostdir
from server.engine.errors import PoolBusy, PoolClosed
from server.engine.invoker import InvocationResult, ProtocolError, RuntimeGone, result_from_reply
from server.engine.pool import scheduling
from server.engine.pool.config import DeploymentTarget, PoolOptions
from server.engine.pool.container import Container, Deployment, State
from server.engine.pool.lifecycle import TIMEOUT_ERROR, TIMEOUT_STATUS, Lifecycle, usable
from server.engine.pool.registry import NAME_PREFIX, Registry
from server.engine.pool.sweep import sweep
from server.engine.sandbox import ContainerLimits

log = logging.getLogger(__name__)

MAX_ACQUIRE_ROUNDS = 100


class ContainerPool:
    """Warm runtime containers of one driver, on one event loop.

    Args:
        driver: runs the containers; the pool's host directories live in its work_dir.
        ensure_image: the runtime's image ID (blocking; called on the driver threads for stem cells).
        options: see PoolOptions.
    Raises:
        ValueError: the driver's work_dir is too long for the runtimes' socket paths.
    """

    def __init__(self, driver: ContainerDriver, ensure_image: Callable[[Runtime], str], options: PoolOptions):
        hostdir.check_socket_path(Registry.longest_host_dir(driver.work_dir))
        self.options = options
        self._driver = driver
        self._registry = Registry(driver.work_dir, driver.owner)
        self._life = Lifecycle(driver, self._registry, options, ensure_image)
        self._stopped = False

    @property
    def driver(self) -> ContainerDriver:
        return self._driver

    @property
    def owner(self) -> str:
        return self._driver.owner

    @property
    def instance(self) -> str:
        """This service run: builders label their containers with it."""
        return self._driver.instance

    @property
    def limits(self) -> ContainerLimits | None:
        return self._driver.limits

    @property
    def reap_interval(self) -> float:
        """How often `reap` should run: a quarter of keep_alive, within 0.5 to 30 seconds."""
        return min(max(self.options.keep_alive / 4, 0.5), 30.0)

    # -- lifecycle -----------------------------------------------------------

    async def start(self, wait: bool = True) -> None:
        """Remove this pool's leftovers (same work_dir), then start the stem cells
        (awaited, bounded by start_timeout, when `wait`)."""
        if self._stopped or not self._registry.closed:
            raise PoolClosed("a pool starts once")
        life = self._life
        life.loop = asyncio.get_running_loop()
        self._driver.work_dir.mkdir(parents=True, exist_ok=True)
        await sweep(life, own_builds=False)
        await life.run(self._driver.setup)
        self._registry.closed = False
        starting = [t for t in map(life.schedule_replenish, life.prewarm_runtimes.values()) if t]
        if wait and starting:
            await asyncio.wait(starting, timeout=self.options.start_timeout)
        log.info("container pool started", extra={"owner": self.owner, "work_dir": str(self._driver.work_dir)})

    async def stop(self, timeout: float = 30.0) -> None:
        """Remove every container of this pool (in parallel, bounded by `timeout`). Final."""
        if self._stopped:
            return
        self._stopped = True
        life, registry = self._life, self._registry
        if life.loop is None:
            life.shutdown(cancel_futures=False)
            return
        registry.closed = True
        for queue in [registry.room_waiters, *(d.waiters for d in registry.deployments.values())]:
            for fut in queue:
                if not fut.done():
                    fut.set_exception(PoolClosed("the pool is stopping"))
        for c in list(registry.containers.values()):
            life.discard(c, "pool stopping")
        deadline = life.loop.time() + timeout
        for _ in range(5):  # starts that finish now discard themselves: new removal tasks
            pending = {t for t in life.tasks if not t.done()}
            remaining = deadline - life.loop.time()
            if not pending or remaining <= 0:
                break
            await asyncio.wait(pending, timeout=remaining)
        await sweep(life)  # anything a start left behind, and build containers
        try:
            await life.run(self._driver.teardown)
        except OSError as exc:
            log.warning("unmounting the work dir failed", extra={"error": str(exc)})
        life.shutdown(cancel_futures=True)
        await life.join_threads(deadline - life.loop.time())
        log.info("container pool stopped", extra={"owner": self.owner})

    async def sweep_dead(self, owner: str, work_dir: Path) -> int:
        """Remove the containers and host directories a dead pool of this host
        left (another replica's, whose lease expired). Returns how many containers."""
        if Path(work_dir).resolve() == self._driver.work_dir:
            return 0  # never our own
        life = self._life
        leftovers = await life.run(self._driver.owned, True, owner)
        await asyncio.gather(*(life.run(self._driver.remove, cid) for cid in leftovers), return_exceptions=True)
        for path in await life.run(lambda: list(Path(work_dir).glob(f"{NAME_PREFIX}*"))):
            await life.run(hostdir.release_dir, path)
        if leftovers:
            log.info("removed the containers of a dead replica", extra={"owner": owner, "count": len(leftovers)})
        return len(leftovers)

    def reap(self) -> None:
        """Remove IDLE containers past keep_alive and dead idle/stem ones; top up
        stem cells (also after failed starts). On the pool's loop, every
        `reap_interval` seconds; does nothing unless the pool is running."""
        if self._registry.closed:
            return
        found = scheduling.to_reap(list(self._registry.containers.values()), time.monotonic(), self.options.keep_alive, usable)
        for c, reason in found:
            self._life.discard(c, reason)
        for runtime in self._life.prewarm_runtimes.values():
            self._life.schedule_replenish(runtime)

    # -- public API ----------------------------------------------------------

    async def invoke(self, target: DeploymentTarget, payload: str, env: dict, headers: dict, timeout: float,
                     on_start: Callable[[], Awaitable[object]] | None = None,
                     on_output: Callable[[str, list[str]], None] | None = None) -> InvocationResult:
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
            reply = await c.conn.execute(payload, env, headers, timeout, on_output)
        except TimeoutError:
            self._life.discard(c, "execution timed out")
            return InvocationResult(TIMEOUT_STATUS, "", "", "", TIMEOUT_ERROR, time.monotonic() - started, timed_out=True)
        except (RuntimeGone, ProtocolError, OSError) as exc:
            return await self._life.crashed(c, exc, started)
        except (TypeError, ValueError):  # env/headers not JSON-serializable: nothing was sent
            self._release(c)
            raise
        except BaseException:  # cancelled: the reply would arrive on a connection nobody reads
            self._life.discard(c, "invocation cancelled")
            raise
        self._release(c)
        return result_from_reply(reply, time.monotonic() - started)

    async def warm(self, target: DeploymentTarget) -> str | None:
        """Give the deployment a loaded IDLE container if it has none.

        Returns None when it is ready (or no room is left), else the load error."""
        started = time.monotonic()
        if self._registry.closed:
            raise PoolClosed("the pool is not running")
        d = self._registry.deployment(target.key)
        if d.containers:
            return None
        c = self._grow(d, target)
        if c is None:
            self._registry.maybe_drop(d)
            return None
        failure = await self._life.prepare(c, target, self.options.start_timeout, started)
        if failure is not None:
            return failure.error
        self._release(c)
        return None

    async def forget(self, project: str, deployment_id: str) -> int:
        """Remove the deployment's containers: idle ones now, busy ones when their
        execution ends. Returns how many containers it had."""
        d = self._registry.deployments.pop((project, deployment_id), None)
        if d is None:
            return 0
        d.forgotten = True
        count = len(d.containers)
        removals = [self._life.discard(c, "deployment forgotten") for c in list(d.idle)]
        while d.waiters:  # they retry, on a fresh entry
            fut = d.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        removals = [t for t in removals if t]
        if removals:
            await asyncio.wait(removals, timeout=self.options.start_timeout)
        return count

    def stats(self) -> dict:
        """Counts per state, stem cells per runtime, containers per deployment, waiters."""
        registry = self._registry
        return {
            "total": len(registry.containers),
            "states": {s.value: registry.counts[s] for s in State},
            "prewarmed": {rid: len(stems) for rid, stems in registry.stems.items()},
            "deployments": {f"{p}/{dep}": len(d.containers) for (p, dep), d in registry.deployments.items()},
            "waiting": sum(len(d.waiters) for d in registry.deployments.values()) + len(registry.room_waiters),
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
                "driver_id": c.driver_id,
            }
            for c in self._registry.containers.values()
        ]

    # -- acquiring and releasing ---------------------------------------------

    def _take_idle(self, key: tuple[str, str]) -> Container | None:
        """The warm path: an IDLE container of the deployment, now BUSY. No await, no driver call."""
        d = self._registry.deployments.get(key)
        if d is None or self._registry.closed:
            return None
        c, dead = scheduling.choose_idle(d.idle, usable)
        for stale in dead:
            self._life.discard(stale, "runtime exited while idle")
        if c is None:
            return None
        self._registry.transition(c, State.BUSY)
        c.uses += 1
        return c

    async def _acquire(self, target: DeploymentTarget, timeout: float, started: float) -> tuple[Container | None, InvocationResult | None]:
        """The slow path: grow the deployment's containers or wait for one."""
        registry = self._registry
        deadline = self._life.loop.time() + self.options.acquire_timeout
        for _ in range(MAX_ACQUIRE_ROUNDS):
            if registry.closed:
                raise PoolClosed("the pool is not running")
            c = self._take_idle(target.key)
            if c is not None:
                return c, None
            d = registry.deployment(target.key)
            c = self._grow(d, target) if scheduling.may_grow(len(d.containers), self.options.max_per_deployment) else None
            if c is not None:
                return await self._start_or_take_over(c, d, target, timeout, started)
            if not d.containers:
                registry.maybe_drop(d)
            where = scheduling.wait_for(len(d.containers), len(d.waiters), len(registry.room_waiters),
                                        self.options.max_waiters, self.options.max_containers)
            if where is scheduling.WaitFor.DEPLOYMENT:  # one of its containers, handed over when released
                c = await self._wait(d.waiters, deadline, d)
                if c is not None:
                    return c, None
            else:  # max_containers reached, all busy: any slot
                await self._wait(registry.room_waiters, deadline)
        raise PoolBusy("no container became available")

    async def _start_or_take_over(self, c: Container, d: Deployment, target: DeploymentTarget, timeout: float,
                                  started: float) -> tuple[Container | None, InvocationResult | None]:
        """Start `c` (a new container of the deployment), and if the deployment
        has others, busy ones, wait for whichever comes first: `c` ready, or
        one of them released (an execution often ends long before a container
        starts). When a released one wins, `c` carries on starting in the
        background and joins the deployment's idle containers."""
        registry, life = self._registry, self._life
        preparing = life.spawn(life.prepare(c, target, timeout, started))
        try:
            while len(d.containers) > 1 and not preparing.done():
                handed = await self._first_of(preparing, d)
                if handed is not None:
                    preparing.add_done_callback(lambda task: self._adopt(c, task))
                    return handed, None
        except BaseException:  # cancelled: `c` is not lost
            preparing.add_done_callback(lambda task: self._adopt(c, task))
            raise
        failure = await preparing
        if failure is not None:
            return None, failure
        registry.transition(c, State.BUSY)
        c.uses += 1
        return c, None

    async def _first_of(self, preparing: asyncio.Task, d: Deployment) -> Container | None:
        """Wait as one of the deployment's waiters until a container is handed
        over (returned) or `preparing` ends (None)."""
        fut = self._life.loop.create_future()
        d.waiters.append(fut)
        try:
            await asyncio.wait({preparing, fut}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.result() is not None:
                self._release(fut.result())  # handed over just as we gave up: pass it on
            raise
        finally:
            if fut in d.waiters:
                d.waiters.remove(fut)
        if fut.done() and not fut.cancelled() and fut.result() is not None:
            if not preparing.done():
                return fut.result()
            self._release(fut.result())  # both at once: ours is ready, pass the other on
        elif not fut.done():
            fut.cancel()
        return None

    def _adopt(self, c: Container, preparing: asyncio.Task) -> None:
        """A container whose caller was served by another (or went away): once
        loaded it serves the next caller, or waits IDLE."""
        if preparing.cancelled() or preparing.exception() is not None or preparing.result() is not None:
            return  # it failed and was discarded (prepare does that)
        if c.state is State.LOADING:
            self._release(c)

    async def _wait(self, queue: collections.deque, deadline: float, d: Deployment | None = None) -> Container | None:
        """Wait in `queue` for a container handed over by `_release` (BUSY), or None: try again."""
        fut = self._life.loop.create_future()
        queue.append(fut)
        try:
            async with asyncio.timeout_at(deadline):
                return await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled() and fut.exception() is None and fut.result() is not None:
                self._release(fut.result())  # handed over just as we gave up: pass it on
            if isinstance(exc, TimeoutError):
                raise PoolBusy(f"no container became free within {self.options.acquire_timeout:g} s") from None
            raise
        finally:
            if fut in queue:
                queue.remove(fut)
            if d is not None:
                self._registry.maybe_drop(d)

    def _grow(self, d: Deployment, target: DeploymentTarget) -> Container | None:
        """A new container for the deployment (LOADING stem cell or STARTING cold one), or None without room. No await."""
        registry, life = self._registry, self._life
        stem, stale = scheduling.choose_stem(registry.stems.get(target.runtime.id, ()), target.image, usable)
        if stem is not None:
            registry.transition(stem, State.LOADING, "assigned", deployment=d)
            life.schedule_replenish(target.runtime)
            return stem
        for old in stale:
            life.discard(old, "stale stem cell (other image, or exited)")
        fits, victim = scheduling.make_room(registry.active(), self.options.max_containers,
                                            registry.in_state(State.IDLE), registry.in_state(State.PREWARMED))
        if victim is not None:
            life.discard(victim, "evicted: max_containers reached")
        if not fits:
            return None
        life.schedule_replenish(target.runtime)
        return registry.register(target.runtime, target.image, d)

    def _release(self, c: Container) -> None:
        """After an execution (or warm-up): hand over to a waiter, or IDLE."""
        d = c.deployment
        reason = scheduling.discard_on_release(self._registry.closed, d.forgotten, usable(c))
        if reason is not None:
            self._life.discard(c, reason)
            return
        while d.waiters:
            fut = d.waiters.popleft()
            if not fut.done():
                if c.state is not State.BUSY:
                    self._registry.transition(c, State.BUSY)
                c.uses += 1
                c.last_used = time.monotonic()
                fut.set_result(c)
                return
        self._registry.transition(c, State.IDLE)
