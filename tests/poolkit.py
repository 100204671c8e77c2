"""Helpers of the pool tests (test_pool_scheduling, test_engine_pool,
test_runtime_isolation): a pool on an event loop of its own, and deployments
written to disk.

pytest-asyncio is not used: a pool lives on one event loop, so each pool here
comes with its own loop (`PoolRunner`), and tests run coroutines on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from server.domain.runtimes import Runtime
from server.engine import ContainerDriver, ContainerPool, DeploymentTarget, PoolOptions
from server.settings import Settings


def pool_options(**overrides) -> PoolOptions:
    """The service's defaults (Settings), changed by `overrides` (PoolOptions fields)."""
    if "runtimes" in overrides:
        overrides["runtimes"] = tuple(overrides["runtimes"])
    return dataclasses.replace(PoolOptions.from_settings(Settings()), **overrides)


class PoolRunner:
    """A started pool with its own event loop (the pool is bound to the loop),
    on a fresh work dir, its driver made by `make_driver(work_dir)`."""

    def __init__(self, make_driver: Callable[[Path], ContainerDriver], ensure_image: Callable[[Runtime], str], **options):
        self.loop = asyncio.new_event_loop()
        self.work_dir = Path(tempfile.mkdtemp(prefix="pool-"))
        self.driver = make_driver(self.work_dir)
        self.pool = ContainerPool(self.driver, ensure_image, pool_options(**options))
        self.run(self.pool.start())

    def run(self, coro, timeout: float = 60):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def stop(self) -> None:
        try:
            self.run(self.pool.stop())
        finally:
            self.loop.close()
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def invoke(self, target, action: str = "", payload: str = "", env=None, timeout: float = 10):
        return self.run(self.pool.invoke(target, payload, env or {}, {"x-action": action}, timeout))

    def states(self) -> dict:
        return self.pool.stats()["states"]

    def rows(self, target=None) -> list[dict]:
        """Containers not being removed, of one deployment (or all)."""
        return [r for r in self.pool.containers()
                if r["state"] != "removing" and (target is None or r["deployment"] == target.key)]

    def wait_until(self, predicate, timeout: float = 10) -> None:
        """Run the loop until `predicate()` holds (bounded)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; stats: {self.pool.stats()}"
            self.run(asyncio.sleep(0.02))


class Deployments:
    """Makes deployments: `entry` files with the language's default source (or another)."""

    def __init__(self, runtimes: dict[str, Runtime], image_of: Callable[[Runtime], str], sources: dict[str, str]):
        self.runtimes = runtimes
        self.image_of = image_of
        self.sources = sources  # language -> source
        self.root = Path(tempfile.mkdtemp(prefix="pool-code-"))
        self.count = 0

    def __call__(self, runtime_id: str = "python-3.11", source: str | None = None, project: str = "proj",
                 image: str | None = None) -> DeploymentTarget:
        runtime = self.runtimes[runtime_id]
        entry = "main.py" if runtime.language == "python" else "index.js"
        self.count += 1
        code = self.root / f"dep{self.count}"
        code.mkdir()
        (code / entry).write_text(source if source is not None else self.sources[runtime.language])
        return DeploymentTarget(project, code.name, runtime, image or self.image_of(runtime), code, entry)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
