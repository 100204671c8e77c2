"""The build queue: durable in the database, worked by background threads.

A Build row with status `processing` is a queued build; a worker claims the
oldest one atomically (processing -> building), runs it in a container of the
function's runtime image (server.engine.Builder) and stores `ready` or
`failed` with the output. A build left `building` by a stopped service is
queued again at start-up, so none stays stuck.
"""

from __future__ import annotations

import logging
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from server.domain import changes
from server.domain.packages import PackageStore, normalize_member
from server.domain.runtimes import Runtime, RuntimeCatalog
from server.store.db import database
from server.store.models import Build, Deployment, Function

log = logging.getLogger(__name__)

OUTPUT_TAIL = 16_384


class BuildRunner(Protocol):
    """What the queue needs from the Docker side (server.engine)."""

    def build(self, runtime: Runtime, image: str, source: Path, entrypoint: str, output_dir: Path, env: dict[str, str]): ...


DEPENDENCY_MANIFESTS = {"requirements.txt", "package.json"}


def declares_dependencies(package: Path) -> bool:
    """Whether the archive has a dependency manifest at its root."""
    with tarfile.open(package, mode="r|gz") as archive:
        return any(normalize_member(m.name) in DEPENDENCY_MANIFESTS for m in archive)


@dataclass
class BuildQueue:
    """`offline` runs builds with no network; `online` (the build network)
    runs only those whose code declares dependencies to fetch."""

    catalog: RuntimeCatalog
    packages: PackageStore
    offline: BuildRunner
    online: BuildRunner
    ensure_image: Callable[[Runtime], str]
    workers: int = 1
    on_ready: list[Callable[[Build, Deployment, Function], None]] = field(default_factory=list)

    def __post_init__(self):
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        requeued = Build.update(status="processing", stdout="", stderr="Build restarted: the service stopped while it ran.\n").where(
            Build.status == "building"
        ).execute()
        if requeued:
            log.warning("builds interrupted by a restart queued again", extra={"count": requeued})
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"build-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def enqueue(self, build: Build) -> None:
        with self._wake:
            self._wake.notify()

    def _claim(self) -> Build | None:
        with database.atomic():
            candidate = Build.select().where(Build.status == "processing").order_by(Build.seq).first()
            if candidate is None:
                return None
            claimed = Build.update(status="building", start_time=int(time.time())).where(
                (Build.seq == candidate.seq) & (Build.status == "processing")
            ).execute()
        return Build.get_by_id(candidate.seq) if claimed else None

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                build = self._claim()
            except Exception:
                log.exception("claiming a build failed")
                build = None
            if build is None:
                with self._wake:
                    self._wake.wait(timeout=2.0)
                continue
            try:
                self._run(build)
            except Exception as error:  # a broken build must not stop the worker
                log.exception("build crashed", extra={"build": build.uid})
                self._finish(build, ok=False, stdout="", stderr=f"Build failed: internal error: {error}", duration=0.0)
            finally:
                database.close()

    def _run(self, build: Build) -> None:
        dep = Deployment.get_or_none((Deployment.project == build.project) & (Deployment.uid == build.deployment))
        fn = dep and Function.get_or_none((Function.project == dep.project) & (Function.uid == dep.function))
        if dep is None or fn is None:
            build.delete_instance()  # its deployment was deleted meanwhile
            return
        runtime = self.catalog.get(build.runtime)
        if runtime is None:
            self._finish(build, ok=False, stdout="", stderr=f"Runtime {build.runtime!r} is not in the catalog.", duration=0.0)
            return
        log.info("build started", extra={"build": build.uid, "deployment": dep.uid, "runtime": runtime.id})
        image = self.ensure_image(runtime)
        output = self.packages.build_dir(build.project, build.uid)
        runner = self.online if declares_dependencies(Path(dep.path)) else self.offline
        result = runner.build(runtime, image, Path(dep.path), dep.entrypoint, output, dict(fn.vars))
        self._finish(build, ok=result.ok, stdout=result.stdout, stderr=result.stderr, duration=result.duration,
                     output=str(output) if result.ok else "")

    def _finish(self, build: Build, *, ok: bool, stdout: str, stderr: str, duration: float, output: str = "") -> None:
        now = int(time.time())
        with database.atomic():
            updated = Build.update(
                status="ready" if ok else "failed", stdout=stdout[-OUTPUT_TAIL:], stderr=stderr[-OUTPUT_TAIL:],
                output_path=output, end_time=now, duration=int(round(duration)),
            ).where((Build.seq == build.seq) & (Build.status == "building")).execute()
            if not updated:
                return  # deleted meanwhile
            build = Build.get_by_id(build.seq)
            dep = Deployment.get_or_none((Deployment.project == build.project) & (Deployment.uid == build.deployment))
            fn = dep and Function.get_or_none((Function.project == dep.project) & (Function.uid == dep.function))
            if ok and dep is not None and fn is not None and dep.activate:
                fn.deployment = dep.uid
                fn.save()
        changes.bump()
        log.info("build finished", extra={"build": build.uid, "status": build.status})
        if ok and dep is not None and fn is not None:
            for hook in self.on_ready:
                hook(build, dep, fn)
