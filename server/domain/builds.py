"""The build queue: durable in the database, worked by background threads.

A Build row with status `processing` is a queued build; a worker claims the
oldest one atomically (processing -> building), runs it in a container of the
function's runtime image (server.engine.Builder) and stores `ready` or
`failed` with the output. A build left `building` by a stopped service is
queued again at start-up, so none stays stuck.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import peewee as pw

from server.domain import changes
from server.domain.packages import PackageStore, normalize_member
from server.domain.quotas import StorageQuota, tree_size
from server.domain.runtimes import Runtime, RuntimeCatalog
from server.store.db import database
from server.store.models import Build, Deployment, Function

log = logging.getLogger(__name__)

OUTPUT_TAIL = 16_384
CLAIM_ATTEMPTS = 8


class BuildInterrupted(Exception):
    """The build's container was removed under it (the service stopping, or an
    operator): not the build's fault, so it is queued again."""


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
    quota: StorageQuota
    uncompressed_limit: int
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

    def stopping(self) -> None:
        """From now on the service is stopping: a build cut off by it (its
        container removed, killed mid-run) is queued again, never failed."""
        self._stop.set()

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
        """The oldest queued build, now `building`. One UPDATE statement: a
        read-then-write transaction would have to upgrade its SQLite lock,
        which fails at once ("database is locked") when another writer
        committed in between, without waiting for the busy timeout."""
        oldest = Build.select(Build.seq).where(Build.status == "processing").order_by(Build.seq).limit(1)
        rows = list(Build.update(status="building", start_time=int(time.time())).where(
            (Build.seq == oldest) & (Build.status == "processing")
        ).returning(Build.seq).execute())
        return Build.get_by_id(rows[0].seq) if rows else None

    def _claim_with_retry(self) -> Build | None:
        """A claim that meets a busy database is tried again, not given up."""
        for attempt in range(CLAIM_ATTEMPTS):
            try:
                return self._claim()
            except pw.OperationalError as error:  # "database is locked" and friends
                if attempt == CLAIM_ATTEMPTS - 1:
                    log.warning("claiming a build failed; the next round tries again", extra={"error": str(error)})
                    return None
                self._stop.wait(min(0.05 * 2 ** attempt, 1.0))

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                build = self._claim_with_retry()
            except Exception:
                log.exception("claiming a build failed")
                build = None
            if build is None:
                with self._wake:
                    self._wake.wait(timeout=2.0)
                continue
            try:
                self._run(build)
            except BuildInterrupted:
                Build.update(status="processing", start_time=0).where(
                    (Build.seq == build.seq) & (Build.status == "building")).execute()
                log.info("build interrupted: its container went away; queued again", extra={"build": build.uid})
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
        if not result.ok and self._stop.is_set():
            raise BuildInterrupted("the service stopped during the build")
        ok, stderr, output_bytes = result.ok, result.stderr, 0
        if ok:
            output_bytes = tree_size(output)
            problem = self.quota.build_output_problem(build.project, output_bytes, self.uncompressed_limit)
            if problem is not None:
                shutil.rmtree(output, ignore_errors=True)
                ok, stderr, output_bytes = False, f"{stderr}{problem}\n", 0
        self._finish(build, ok=ok, stdout=result.stdout, stderr=stderr, duration=result.duration,
                     output=str(output) if ok else "", output_bytes=output_bytes)

    def _finish(self, build: Build, *, ok: bool, stdout: str, stderr: str, duration: float, output: str = "",
                output_bytes: int = 0) -> None:
        now = int(time.time())
        with database.atomic():
            updated = Build.update(
                status="ready" if ok else "failed", stdout=stdout[-OUTPUT_TAIL:], stderr=stderr[-OUTPUT_TAIL:],
                output_path=output, output_bytes=output_bytes, end_time=now, duration=int(round(duration)),
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
