"""The sweeps at pool start and stop: whatever a killed service (or an
unfinished start) left behind on this work_dir goes.

That is every runtime and build container the driver finds as this owner's
(at start-up, not the builds of this very instance: they may have started
before the pool), host directories of containers the pool no longer has
(unmounted first: a killed service leaves its mounts), and the builders'
copies of source archives in `staging_dir` (at start-up, except this
instance's).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from server.engine.drivers import hostdir
from server.engine.pool.lifecycle import Lifecycle
from server.engine.pool.registry import NAME_PREFIX

log = logging.getLogger(__name__)


async def sweep(life: Lifecycle, own_builds: bool = True) -> None:
    """Remove the leftovers; `own_builds=False` at start-up."""
    driver, registry = life.driver, life.registry
    leftovers = await life.run(driver.owned, own_builds)
    if leftovers:
        log.info("removing leftover containers", extra={"owner": driver.owner, "count": len(leftovers)})
        await asyncio.gather(*(life.run(driver.remove, cid) for cid in leftovers), return_exceptions=True)
    for path in await life.run(lambda: list(driver.work_dir.glob(f"{NAME_PREFIX}*"))):
        if path.name not in registry.containers:
            await life.run(hostdir.release_dir, path)
    staging_dir = life.options.staging_dir
    if staging_dir is not None:
        await life.run(empty_staging, Path(staging_dir).resolve(), driver.instance, own_builds)


def empty_staging(staging_dir: Path, instance: str, own_builds: bool) -> None:
    """Delete what is in `staging_dir`: all of it, or (`own_builds=False`) all but `instance`'s. Blocking."""
    if not staging_dir.is_dir():
        return
    for path in staging_dir.iterdir():
        if own_builds or path.name != instance:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
