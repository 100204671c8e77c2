"""The Docker side as one object the service wires in (see server.app)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import docker
import requests

from server.domain.runtimes import Runtime, RuntimeCatalog
from server.engine.builder import Builder, ContainerLimits
from server.engine.images import RuntimeImages
from server.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

RUNTIMES_DIR = REPO_ROOT / "runtimes"


class DockerUnavailable(RuntimeError):
    pass


@dataclass
class Engine:
    client: docker.DockerClient | None
    images: RuntimeImages | None
    offline_builder: Builder | None
    online_builder: Builder | None

    @classmethod
    def connect(cls, settings: Settings) -> "Engine":
        """Connect to the Docker engine; without one the service still manages
        functions, but no runtime is available."""
        try:
            client = docker.from_env(timeout=120)
            client.ping()
        except (docker.errors.DockerException, requests.RequestException) as error:
            log.error("Docker engine unreachable: no runtime is available", extra={"error": str(error)})
            return cls(client=None, images=None, offline_builder=None, online_builder=None)
        limits = ContainerLimits(memory_mb=settings.build_memory_mb, cpus=settings.build_cpus, pids=settings.build_pids)
        work_dir = settings.data_dir.resolve() / "tmp"
        work_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            client=client,
            images=RuntimeImages(client, RUNTIMES_DIR, work_dir=work_dir),
            offline_builder=Builder(client, RUNTIMES_DIR, limits, settings.build_timeout, network="none"),
            online_builder=Builder(client, RUNTIMES_DIR, limits, settings.build_timeout, network=settings.build_network),
        )

    def image_available(self, runtime: Runtime) -> bool:
        return self.images is not None and self.images.available(runtime)

    def ensure_image(self, runtime: Runtime) -> str:
        if self.images is None:
            raise DockerUnavailable("the Docker engine is unreachable")
        return self.images.ensure(runtime, progress=lambda line: log.info(line, extra={"runtime": runtime.id}))

    def prepare_images_in_background(self, catalog: RuntimeCatalog) -> threading.Thread | None:
        """Build or pull missing runtime images; runtimes are listed as they become available."""
        if self.images is None:
            return None
        wanted = [r for r in catalog.configured()]

        def prepare():
            results = self.images.ensure_all(wanted, progress=lambda line: log.info(line))
            for runtime_id, outcome in results.items():
                if isinstance(outcome, Exception):
                    log.error("runtime disabled: its image is unavailable", extra={"runtime": runtime_id, "error": str(outcome)})

        thread = threading.Thread(target=prepare, name="runtime-images", daemon=True)
        thread.start()
        return thread
