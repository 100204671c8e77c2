"""What the pool does to its containers: start them (a cold start, or a stem
cell), connect to their runtime, load a deployment's code, discard and
remove them, make sense of a crash, and keep stem cells topped up.

Event loop only. Every state change goes through Registry.transition; as a
state may change during any await (stop, forget, a timeout), each await here
is followed by a look at the state. Blocking driver calls run on the pool's
own threads (`run`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from server.domain.runtimes import Runtime
from server.engine.drivers import ContainerDriver, hostdir
from server.engine.errors import PoolClosed
from server.engine.invoker import InvocationResult, ProtocolError, RuntimeConnection, RuntimeGone
from server.engine.pool import scheduling
from server.engine.pool.config import DeploymentTarget, PoolOptions
from server.engine.pool.container import Container, State
from server.engine.pool.registry import Registry

log = logging.getLogger(__name__)

TIMEOUT_STATUS = 124
TIMEOUT_ERROR = "Execution timed out."


class StartAborted(Exception):
    """The container was removed (stop, forget) while it was starting."""


def usable(c: Container) -> bool:
    """Its runtime can still be talked to."""
    return not c.conn.at_eof()


class Lifecycle:
    def __init__(self, driver: ContainerDriver, registry: Registry, options: PoolOptions, ensure_image: Callable[[Runtime], str]):
        self.driver = driver
        self.registry = registry
        self.options = options
        self._ensure_image = ensure_image
        self._executor = ThreadPoolExecutor(max_workers=options.driver_threads, thread_name_prefix="pool-driver")
        self.prewarm_runtimes = {r.id: r for r in options.runtimes}
        self._replenishing: set[str] = set()
        self.tasks: set[asyncio.Task] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        # What a failed start may raise: a failed result, not an exception out of invoke.
        self._start_errors = (RuntimeGone, ProtocolError, OSError, *driver.errors)

    # -- loading a deployment's code -------------------------------------------

    async def prepare(self, c: Container, target: DeploymentTarget, timeout: float, started: float) -> InvocationResult | None:
        """Start (if cold) and load `c` for the target; None on success (then LOADING), else the failed result.

        Raises:
            PoolClosed: the pool stopped meanwhile.
        """
        def failed(error: str, **flags) -> InvocationResult:
            return InvocationResult(TIMEOUT_STATUS if flags.get("timed_out") else 500, "", "", "", error, time.monotonic() - started, **flags)

        try:
            if c.state is State.STARTING:
                await self.start(c)
                self.registry.transition(c, State.LOADING, "cold start")
            await self.run(self.driver.give_code, target.code_dir, c.host_dir)
            if c.state is not State.LOADING:
                raise StartAborted()
            error = await c.conn.load(self.driver.code_path(c.host_dir), target.entrypoint, timeout,
                                      response_max_bytes=self.options.response_max_bytes)
        except TimeoutError:
            self.discard(c, "load timed out")
            return failed(TIMEOUT_ERROR, timed_out=True)
        except StartAborted:
            self.discard(c, "aborted")
            if self.registry.closed:
                raise PoolClosed("the pool is stopping") from None
            return failed("Execution failed: the runtime container was removed while starting.", service_fault=True)
        except self._start_errors as exc:
            self.discard(c, f"start failed: {exc}")
            if self.registry.closed:
                raise PoolClosed("the pool is stopping") from None
            log.warning("runtime container failed to start", extra={"container": c.name, "runtime": c.runtime.id, "error": str(exc)})
            return failed(f"Execution failed: could not start the runtime: {exc}", service_fault=True)
        except BaseException:
            self.discard(c, "cancelled while loading")
            raise
        if error is not None:
            self.discard(c, "load failed")
            return failed(error)
        if c.state is not State.LOADING:  # stopped or forgotten meanwhile
            if self.registry.closed:
                raise PoolClosed("the pool is stopping")
            return failed("Execution failed: the runtime container was removed while loading.", service_fault=True)
        return None

    # -- starting ----------------------------------------------------------------

    async def start(self, c: Container) -> None:
        """Launch and connect; `c` stays STARTING. Raises on failure, or StartAborted."""
        if c.image is None:
            c.image = await self.run(self._ensure_image, c.runtime)
        if c.state is not State.STARTING or self.registry.closed:
            raise StartAborted()
        project, deployment = c.deployment.key if c.deployment else ("", "")
        c.launch = self._executor.submit(self.driver.launch, c.name, c.host_dir, c.runtime, c.image, project, deployment)
        c.driver_id = await asyncio.wrap_future(c.launch)
        if c.state is not State.STARTING:
            raise StartAborted()
        c.conn = await self._connect(c, self.loop.time() + self.options.start_timeout)
        if c.state is not State.STARTING:
            c.conn.close()
            raise StartAborted()

    async def _connect(self, c: Container, deadline: float) -> RuntimeConnection:
        """Connect once the runtime listens on its socket, then ping. Bounded by `deadline`."""
        path = str(hostdir.socket_path(c.host_dir))
        next_check = self.loop.time() + 0.5
        while True:
            if os.path.exists(path):
                try:
                    conn = await RuntimeConnection.open(path)
                except (ConnectionRefusedError, FileNotFoundError):
                    pass  # bound, not listening yet
                else:
                    try:
                        await conn.ping(max(deadline - self.loop.time(), 0.1))
                        self.driver.lock_socket_dir(c.host_dir)
                        return conn
                    except TimeoutError:
                        conn.close()
                        raise RuntimeGone("the runtime did not answer a ping") from None
                    except BaseException:
                        conn.close()
                        raise
            now = self.loop.time()
            if now >= deadline:
                output = await self.run(self.driver.logs_tail, c.driver_id)
                raise RuntimeGone(f"the runtime did not listen within {self.options.start_timeout:g} s{output}")
            if now >= next_check:  # an early exit (bad image, no interpreter) fails fast
                next_check = now + 0.5
                if c.state is not State.STARTING:
                    raise StartAborted()
                status = await self.run(self.driver.status, c.driver_id)
                if status != "running":
                    raise RuntimeGone(f"the runtime container is {status}{await self.run(self.driver.logs_tail, c.driver_id)}")
            await asyncio.sleep(0.005)

    # -- removing ----------------------------------------------------------------

    def discard(self, c: Container, reason: str) -> asyncio.Task | None:
        """→ REMOVING; removal by the driver in the background. Returns the removal task."""
        if c.state is State.REMOVING:
            return None
        self.registry.transition(c, State.REMOVING, reason)
        if c.conn is not None:
            c.conn.close()
        return self.spawn(self._remove(c))

    async def _remove(self, c: Container) -> None:
        try:
            if c.launch is not None and not c.launch.done():  # removed while starting: let the launch finish
                await asyncio.wait([asyncio.wrap_future(c.launch)], timeout=self.options.start_timeout + 60)
            await self.run(self.driver.remove, c.name, c.host_dir)
        except Exception as exc:  # the sweep at start/stop catches it later
            log.warning("container removal failed", extra={"container": c.name, "error": str(exc)})
        finally:
            self.registry.removed(c)

    async def crashed(self, c: Container, exc: Exception, started: float) -> InvocationResult:
        """The runtime died or misbehaved during an execution: say why, remove it."""
        closing = self.registry.closed or c.state is State.REMOVING
        if c.state is not State.REMOVING:
            self.registry.transition(c, State.REMOVING, f"execution failed: {exc}")
            c.conn.close()
        oom, error = False, "Execution failed: the service is shutting down."
        if not closing:
            try:
                oom, error = await self.run(self.driver.diagnose, c.driver_id, c.created, isinstance(exc, ProtocolError), str(exc))
            except Exception as diag_exc:
                error = f"Execution failed: the runtime stopped unexpectedly ({exc}; {diag_exc})."
            finally:
                self.spawn(self._remove(c))
        return InvocationResult(500, "", "", "", error, time.monotonic() - started, out_of_memory=oom, service_fault=not oom)

    # -- stem cells ----------------------------------------------------------------

    def schedule_replenish(self, runtime: Runtime) -> asyncio.Task | None:
        """Top up the runtime's stem cells in the background (once at a time)."""
        if (self.registry.closed or self.options.prewarm <= 0 or runtime.id not in self.prewarm_runtimes
                or runtime.id in self._replenishing):
            return None
        self._replenishing.add(runtime.id)
        return self.spawn(self._replenish(runtime))

    async def _replenish(self, runtime: Runtime) -> None:
        """Start stem cells up to `prewarm`, never evicting anything for them.
        A few rounds (stem cells may be taken meanwhile); a failed start ends it
        until the next claim or reap."""
        registry = self.registry
        try:
            for _ in range(3):
                count = scheduling.stems_to_start(len(registry.stems[runtime.id]), self.options.prewarm,
                                                  registry.active(), self.options.max_containers)
                new = [registry.register(runtime, None, None) for _ in range(count)]
                if not new or not all(await asyncio.gather(*(self._start_stem(c) for c in new))):
                    return
        finally:
            self._replenishing.discard(runtime.id)

    async def _start_stem(self, c: Container) -> bool:
        try:
            await self.start(c)
        except StartAborted:
            return False
        except Exception as exc:
            log.warning("stem cell failed to start", extra={"container": c.name, "runtime": c.runtime.id, "error": str(exc)})
            self.discard(c, f"start failed: {exc}")
            return False
        if self.registry.closed:
            self.discard(c, "pool stopping")
            return False
        self.registry.transition(c, State.PREWARMED)
        return True

    # -- plumbing --------------------------------------------------------------------

    def spawn(self, coro) -> asyncio.Task:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), PoolClosed):
            log.error("container pool task failed", exc_info=task.exception())

    def run(self, fn, *args) -> asyncio.Future:
        """`fn(*args)` on the pool's driver threads."""
        return self.loop.run_in_executor(self._executor, fn, *args)

    def shutdown(self, cancel_futures: bool) -> None:
        """No more driver calls (at the end of stop)."""
        self._executor.shutdown(wait=False, cancel_futures=cancel_futures)

    async def join_threads(self, timeout: float) -> None:
        """After `shutdown`: wait (bounded, off the loop) until the driver threads have ended."""
        join = functools.partial(self._executor.shutdown, wait=True)
        await asyncio.wait([asyncio.get_running_loop().run_in_executor(None, join)], timeout=max(timeout, 0.1))
