"""The build queue: durable in the database, worked by background threads.

A Build row with status `processing` is a queued build; a worker claims the
oldest one atomically (processing -> building), runs it in a container of the
function's runtime image (server.engine.Builder) and stores `ready` or
`failed` with the output. A build left `building` by a stopped service is
queued again at start-up (`requeue_interrupted`), so none stays stuck. The
workers are a job (`BuildQueue.workers`) of server.jobs.
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

from server.domain.livelogs import ThreadedLog
from server.domain.packages import PackageStore, normalize_member
from server.domain.quotas import StorageQuota, tree_size
from server.domain.runtimes import Runtime, RuntimeCatalog
from server.engine.errors import BuildInterrupted
from server.jobs import ThreadWorkers
from server.limits import OUTPUT_TAIL
from server.store import generation
from server.store.db import database, skip_locked
from server.store.lifecycles import BuildStatus, transition
from server.store.models import Build, Deployment, Function

log = logging.getLogger(__name__)

CLAIM_ATTEMPTS = 8


class BuildRunner(Protocol):
    """What the queue needs from the Docker side (server.engine.Builder)."""

    def build(self, runtime: Runtime, image: str, source: Path, entrypoint: str, output_dir: Path, env: dict[str, str],
              on_output=None): ...

    def interrupt(self) -> None: ...


def declares_dependencies(package: Path, manifests: frozenset[str]) -> bool:
    """Whether the archive has one of the language's dependency manifests
    (`requirements.txt`, `composer.json`, ...) at its root."""
    if not manifests:
        return False
    with tarfile.open(package, mode="r|gz") as archive:
        return any(normalize_member(m.name) in manifests for m in archive)


@dataclass
class BuildQueue:
    """`offline` runs builds with no network; `online` (the build network)
    runs only those whose code declares dependencies to fetch."""

    catalog: RuntimeCatalog
    packages: PackageStore
    offline: BuildRunner | None
    online: BuildRunner | None
    ensure_image: Callable[[Runtime], str]
    quota: StorageQuota
    uncompressed_limit: int
    workers_count: int = 1
    replica: str = ""  # this replica's id: the owner of the builds it runs
    on_ready: list[Callable[[Build, Deployment, Function], None]] = field(default_factory=list)
    live: ThreadedLog | None = None  # live build logs (set once the event loop runs)

    def __post_init__(self):
        self._stopping = threading.Event()
        interrupts = tuple(runner.interrupt for runner in (self.offline, self.online) if runner is not None)
        # On stop: first mark the queue stopping, then cut off running builds (queued again, never failed).
        self.workers = ThreadWorkers("build-workers", self.workers_count, self._claim_with_retry, self._work_on,
                                     on_signal=(self._stopping.set, *interrupts))

    def requeue_interrupted(self) -> None:
        """At start-up: builds this replica's previous run (or a service of
        before replicas) left `building` are queued again."""
        requeued = sum(self.requeue_of(owner) for owner in {self.replica, ""})
        if requeued:
            log.warning("builds interrupted by a restart queued again", extra={"count": requeued})

    @staticmethod
    def requeue_of(owner: str) -> int:
        """The builds a stopped replica (`owner`) was running, queued again."""
        return transition(Build, BuildStatus.BUILDING, BuildStatus.PROCESSING, Build.owner == owner, owner="",
                          stdout="", stderr="Build restarted: the service stopped while it ran.\n").execute()

    def enqueue(self) -> None:
        """A build was queued (status `processing`): wake a worker."""
        self.workers.wake()

    def _claim(self) -> Build | None:
        """The oldest queued build, now `building`. One UPDATE statement: a
        read-then-write transaction would have to upgrade its SQLite lock,
        which fails at once ("database is locked") when another writer
        committed in between, without waiting for the busy timeout."""
        oldest = skip_locked(Build.select(Build.seq).where(Build.status == BuildStatus.PROCESSING).order_by(Build.seq).limit(1))
        rows = list(transition(Build, BuildStatus.PROCESSING, BuildStatus.BUILDING, Build.seq == oldest,
                               start_time=int(time.time()), owner=self.replica).returning(Build.seq).execute())
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
                self._stopping.wait(min(0.05 * 2 ** attempt, 1.0))
        return None

    def _work_on(self, build: Build) -> None:
        try:
            self._run(build)
        except Exception as error:  # a broken build must not stop the worker
            if isinstance(error, BuildInterrupted) or self._stopping.is_set():
                # Its container went away, or the stop cut it off (e.g. cancelled its image build): not its fault.
                transition(Build, BuildStatus.BUILDING, BuildStatus.PROCESSING, Build.seq == build.seq,
                           Build.owner == self.replica, start_time=0, owner="").execute()
                log.info("build interrupted; queued again", extra={"build": build.uid, "reason": str(error)})
                return
            log.exception("build crashed", extra={"build": build.uid})
            self._finish(build, ok=False, stdout="", stderr=f"Build failed: internal error: {error}", duration=0.0)
        finally:
            database.close()

    def _sources(self, build: Build) -> tuple[Deployment | None, Function | None]:
        dep = Deployment.find(build.project, build.deployment)
        return dep, dep and Function.find(dep.project, dep.function)

    def _run(self, build: Build) -> None:
        dep, fn = self._sources(build)
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
        package = self.packages.local_package(build.project, dep.uid)
        runner = self.online if declares_dependencies(package, runtime.manifests) else self.offline
        channel = self.live.open(build.project, fn.uid, dep.uid) if self.live is not None else None
        try:
            result = runner.build(runtime, image, package, dep.entrypoint, output, dict(fn.vars),
                                  on_output=channel.write if channel is not None else None)
        finally:
            if channel is not None:
                channel.flush()
        if not result.ok and self._stopping.is_set():
            if channel is not None:
                channel.discard()  # it runs again: the stream goes on then
            raise BuildInterrupted("the service stopped during the build")
        ok, stderr, output_bytes = result.ok, result.stderr, 0
        if ok:
            output_bytes = tree_size(output)
            problem = self.quota.build_output_problem(build.project, output_bytes, self.uncompressed_limit)
            if problem is not None:
                shutil.rmtree(output, ignore_errors=True)
                ok, stderr, output_bytes = False, f"{stderr}{problem}\n", 0
            else:
                self.packages.share_build(build.project, build.uid)
        self._finish(build, ok=ok, stdout=result.stdout, stderr=stderr, duration=result.duration,
                     output=str(output) if ok else "", output_bytes=output_bytes)
        if channel is not None:
            channel.end((BuildStatus.READY if ok else BuildStatus.FAILED).value, 0, float(round(result.duration)))

    def _finish(self, build: Build, *, ok: bool, stdout: str, stderr: str, duration: float, output: str = "",
                output_bytes: int = 0) -> None:
        now = int(time.time())
        with database.atomic():
            updated = transition(
                Build, BuildStatus.BUILDING, BuildStatus.READY if ok else BuildStatus.FAILED, Build.seq == build.seq,
                Build.owner == self.replica,
                stdout=stdout[-OUTPUT_TAIL:], stderr=stderr[-OUTPUT_TAIL:], output_path=output, output_bytes=output_bytes,
                end_time=now, duration=int(round(duration)),
            ).execute()
            if not updated:
                return  # deleted meanwhile
            build = Build.get_by_id(build.seq)
            dep, fn = self._sources(build)
            if ok and dep is not None and fn is not None and dep.activate:
                fn.deployment = dep.uid
                fn.save()
        generation.bump()
        log.info("build finished", extra={"build": build.uid, "status": build.status.value})
        if ok and dep is not None and fn is not None:
            for hook in self.on_ready:
                hook(build, dep, fn)
