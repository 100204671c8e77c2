"""The Docker side as one object the service wires in (see server.app).

It raises only its own errors (server.engine.errors) and returns the pool's
InvocationResult; the API edge turns refusals into Appwrite errors."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import requests

from server.domain.runtimes import Runtime, RuntimeCatalog
from server.engine.builder import Builder
from server.engine.drivers import DockerDriver
from server.engine.images import RuntimeImages
from server.engine.errors import EngineUnavailable
from server.engine.pool import ContainerPool, DeploymentTarget, InvocationResult, PoolOptions
from server.engine.sandbox import ContainerLimits
from server.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

RUNTIMES_DIR = REPO_ROOT / "runtimes"
AVAILABILITY_REFRESH = 5.0  # seconds between checks of the runtime images (a job, see server.app)

if TYPE_CHECKING:  # the domain's run plan, read by attribute only
    from server.domain.executions import Runnable


class DockerUnavailable(EngineUnavailable):
    """The Docker engine is unreachable."""


@dataclass
class Engine:
    client: docker.DockerClient | None
    images: RuntimeImages | None
    offline_builder: Builder | None
    online_builder: Builder | None
    pool: ContainerPool | None

    @classmethod
    def connect(cls, settings: Settings, runtimes: list[Runtime], replica: int = 0) -> "Engine":
        """Connect to the Docker engine; without one the service still manages
        functions, but no runtime is available. `runtimes` get pre-started
        containers. Each replica of a host has a pool of its own (`containers_dir(replica)`)."""
        try:
            client = docker.from_env(timeout=120)
            client.ping()
        except (docker.errors.DockerException, requests.RequestException) as error:
            log.error("Docker engine unreachable: no runtime is available", extra={"error": str(error)})
            return cls(client=None, images=None, offline_builder=None, online_builder=None, pool=None)
        build_limits = ContainerLimits(memory_mb=settings.build_memory_mb, cpus=settings.build_cpus, pids=settings.build_pids)
        work_dir = settings.data_dir.resolve() / "tmp"
        work_dir.mkdir(parents=True, exist_ok=True)
        containers_dir = cls.containers_dir(settings, replica)
        containers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Readable copies of source archives for builds; the pool's start-up sweep empties it.
        staging_dir = settings.data_dir.resolve() / "staging" / str(replica)
        staging_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        engine = cls(client=client, images=RuntimeImages(client, RUNTIMES_DIR, work_dir=work_dir),
                     offline_builder=None, online_builder=None, pool=None)
        driver = DockerDriver(client, RUNTIMES_DIR, containers_dir,
                              limits=ContainerLimits(memory_mb=settings.memory_mb, cpus=settings.cpus, pids=settings.pids),
                              tmp_mb=settings.tmp_mb, network=settings.execution_network)
        engine.pool = ContainerPool(driver, engine.image_id,
                                    PoolOptions.from_settings(settings, runtimes=tuple(runtimes), staging_dir=staging_dir))
        # Build containers carry the pool's labels: its sweep removes them after a crash, and at stop.
        labels = dict(owner=engine.pool.owner, work_dir=containers_dir, instance=engine.pool.instance, staging_dir=staging_dir)
        engine.offline_builder = Builder(client, RUNTIMES_DIR, build_limits, settings.build_timeout, network="none", **labels)
        engine.online_builder = Builder(client, RUNTIMES_DIR, build_limits, settings.build_timeout,
                                        network=settings.build_network, **labels)
        return engine

    @staticmethod
    def containers_dir(settings: Settings, replica: int) -> Path:
        """Replica `replica`'s container directories (they hold UNIX sockets: a short path)."""
        return settings.data_dir.resolve() / "c" / str(replica)

    # ---- images -------------------------------------------------------------

    def image_available(self, runtime: Runtime) -> bool:
        """Last known availability: no Docker call (this runs on every
        execution, on the event loop). A periodic job keeps it fresh
        (`refresh_availability`); a runtime never seen is checked once, here."""
        known = self._available.get(runtime.id)
        if known is None:
            known = self._available[runtime.id] = self.images is not None and self.images.available(runtime)
        return known

    def ensure_image(self, runtime: Runtime) -> str:
        if self.images is None:
            raise DockerUnavailable("the Docker engine is unreachable")
        return self.images.ensure(runtime, progress=lambda line: log.info(line, extra={"runtime": runtime.id}))

    def image_id(self, runtime: Runtime) -> str:
        """The runtime's image ID, remembered: the warm path makes no Docker call."""
        cached = self._image_ids.get(runtime.id)
        if cached is None:
            cached = self._image_ids[runtime.id] = self.ensure_image(runtime)
        return cached

    def __post_init__(self):
        self._available: dict[str, bool] = {}
        self._image_ids: dict[str, str] = {}
        # deployment ID -> (build ID, target): the warm path builds no target
        self._targets: dict[str, tuple[str, DeploymentTarget]] = {}

    # ---- executions -----------------------------------------------------------

    def target(self, run: "Runnable") -> DeploymentTarget:
        """Blocking (the first call per runtime may build or inspect its image)."""
        return DeploymentTarget(
            project=run.function.project, deployment_id=run.deployment.uid, runtime=run.runtime,
            image=self.image_id(run.runtime), code_dir=run.code_dir, entrypoint=run.deployment.entrypoint,
        )

    async def invoke(self, run: "Runnable", payload: str, env: dict, timeout: float, on_start=None,
                     on_output=None) -> InvocationResult:
        """Run one execution in the pool. Raises EngineError subclasses when
        it is refused before the function ran (no Docker, busy, stopping)."""
        if self.pool is None:
            raise DockerUnavailable("the Docker engine is unreachable")
        cached = self._targets.get(run.deployment.uid)
        if cached is not None and cached[0] == run.build.uid:
            target = cached[1]
        else:
            loop = asyncio.get_running_loop()
            target = await loop.run_in_executor(None, self.target, run)
            self._targets[run.deployment.uid] = (run.build.uid, target)
        return await self.pool.invoke(target, payload, env, {}, timeout, on_start=on_start, on_output=on_output)

    def forget(self, project: str, deployment_id: str, loop: asyncio.AbstractEventLoop) -> None:
        """Remove a deleted deployment's containers (callable from any thread)."""
        self._targets.pop(deployment_id, None)
        if self.pool is not None:
            asyncio.run_coroutine_threadsafe(self.pool.forget(project, deployment_id), loop)

    def warm(self, run: "Runnable", loop: asyncio.AbstractEventLoop) -> None:
        """Give an activated deployment a container ahead of its first execution (any thread)."""
        if self.pool is not None:
            target = self.target(run)
            self._targets[run.deployment.uid] = (run.build.uid, target)
            asyncio.run_coroutine_threadsafe(self.pool.warm(target), loop)

    def prepare_images(self, catalog: RuntimeCatalog) -> None:
        """Build or pull missing runtime images (blocking; a start-up job):
        runtimes are listed as they become available."""
        if self.images is None:
            return
        wanted = catalog.configured()
        results = self.images.ensure_all(wanted, progress=lambda line: log.info(line))
        for runtime_id, outcome in results.items():
            if isinstance(outcome, Exception):
                log.error("runtime disabled: its image is unavailable", extra={"runtime": runtime_id, "error": str(outcome)})
        self.refresh_availability(catalog)

    def refresh_availability(self, catalog: RuntimeCatalog) -> None:
        """Check the configured runtimes' images again (blocking; a periodic
        job): images may be removed or rebuilt from outside."""
        if self.images is None:
            return
        for runtime in catalog.configured():
            self._available[runtime.id] = self.images.available(runtime)
