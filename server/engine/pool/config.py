"""What the pool is told: how to run (PoolOptions, once) and what to run
(DeploymentTarget, per invocation)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.domain.runtimes import Runtime

if TYPE_CHECKING:
    from server.settings import Settings


@dataclass(frozen=True)
class PoolOptions:
    """The pool's settings. Those the operator sets come from Settings
    (`from_settings`) and have no default here; the others do."""

    prewarm: int  # stem cells kept per runtime of `runtimes`
    max_per_deployment: int  # containers one deployment may have (its concurrency)
    max_containers: int  # containers in all (REMOVING ones do not count)
    keep_alive: float  # seconds an IDLE container is kept
    response_max_bytes: int  # the longest body a function may answer
    runtimes: tuple[Runtime, ...] = ()  # the runtimes that get stem cells
    max_waiters: int = 64  # invocations that may wait, per deployment (and for a free slot)
    acquire_timeout: float = 30.0  # seconds an invocation waits for a container, then PoolBusy
    start_timeout: float = 30.0  # seconds a runtime has to listen once started
    staging_dir: Path | None = None  # the builders' copies of source archives, emptied by the sweeps
    driver_threads: int = 8  # threads for the driver's blocking calls

    @classmethod
    def from_settings(cls, settings: "Settings", **others) -> "PoolOptions":
        """The operator's settings, plus `others` (any other field)."""
        return cls(prewarm=settings.prewarm, max_per_deployment=settings.max_containers_per_function,
                   max_containers=settings.max_containers, keep_alive=settings.keep_alive,
                   response_max_bytes=settings.response_max_bytes, **others)


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
