"""Deployments: receiving code, activation, deletion and build retries.

An upload becomes a deployment only once its archive is complete and valid;
then a build is queued (see server.domain.builds). A chunked upload has a
deployment row from its first chunk (so clients get its `$id`), holding the
byte ranges received so far; a failed check on the assembled archive removes
the row and every file, leaving nothing behind.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import peewee as pw

from server.domain import livelogs
from server.domain import validation as v
from server.domain.errors import (
    ApiError,
    bad_request,
    build_not_failed,
    build_not_found,
    build_not_ready,
    deployment_not_found,
    file_empty,
    file_too_large,
    invalid_content_range,
    missing_argument,
    storage_quota_exceeded,
)
from server.domain.events import NO_EVENTS, EventSink
from server.domain.functions import FunctionRules
from server.domain.listing import page_request
from server.domain.packages import PackageStore, check_archive
from server.domain.quotas import StorageQuota
from server.domain.uploads import ContentRange, FileSink, UploadReader, parse_bool
from server.store import counts, generation, search
from server.store.db import database
from server.store.lifecycles import BuildStatus, transition
from server.store.models import Build, Deployment, Function
from server.store.paging import Page, find_page

SEARCH_KIND = "deployment"


def _merge(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges + [[start, end]]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


@dataclass
class DeploymentRules:
    functions: FunctionRules
    packages: PackageStore
    code_size_limit: int
    uncompressed_limit: int
    build_queued: Callable[[], None]  # wakes the build workers
    quota: StorageQuota
    on_delete: list[Callable[[Deployment], None]] = field(default_factory=list)
    on_activate: list[Callable[[Function], None]] = field(default_factory=list)
    events: EventSink = NO_EVENTS

    # ---- reading ----------------------------------------------------------

    def get(self, project: str, function_id: str, deployment_id: str) -> tuple[Deployment, Build | None]:
        v.uid("functionId", function_id)
        v.uid("deploymentId", deployment_id)  # every path ID before any lookup
        self.functions.get(project, function_id)
        dep = Deployment.find(project, deployment_id, Deployment.function == function_id)
        if dep is None:
            raise deployment_not_found()
        return dep, self.build_of(dep)

    def list(self, project: str, function_id: str, *, search: str, limit: int | None, offset: int, cursor: str,
             cursor_direction: str, order_type: str) -> Page[tuple[Deployment, Build | None]]:
        self.functions.get(project, function_id)
        in_list = (Deployment.project == project) & (Deployment.function == function_id)

        req = page_request(search=search, limit=limit, offset=offset, cursor=cursor, cursor_direction=cursor_direction,
                           order_type=order_type, cursor_label="Tag",
                           cursor_seq=lambda uid: Deployment.seq_of(project, uid, in_list))
        page = find_page(Deployment.select().where(in_list), Deployment, SEARCH_KIND, project, function_id, req)
        builds = {b.uid: b for b in Build.select().where((Build.project == project) & Build.uid.in_([d.build for d in page.items if d.build]))}
        return Page(total=page.total, items=[(d, builds.get(d.build)) for d in page.items])

    def build_of(self, dep: Deployment) -> Build | None:
        return Build.find(dep.project, dep.build)

    # ---- uploads ----------------------------------------------------------

    def begin_upload(self, project: str, function_id: str, headers: Mapping[str, str], content_type: str,
                     entrypoint: str = "", activate: bool | None = None) -> "Upload":
        """Checks that can be made before any byte is stored (unknown function: 404)."""
        fn = self.functions.get(project, function_id)
        chunk = ContentRange.parse(headers["content-range"]) if headers.get("content-range") else None
        if chunk and chunk.size > self.code_size_limit:
            raise file_too_large(self.code_size_limit)
        existing = None
        upload_id = headers.get("x-appwrite-id", "").strip()
        if chunk and upload_id:
            existing = Deployment.find(project, upload_id, Deployment.function == fn.uid)
            if existing is None:
                raise deployment_not_found()
            if existing.path:
                raise invalid_content_range("This deployment's upload is already complete.")
            if existing.size != chunk.size:
                raise invalid_content_range("Content-Range total differs from the upload's first chunk.")
        deployment_id = existing.uid if existing else v.new_id()
        overflow = None
        if chunk:
            if existing is None:
                self.quota.admit_chunked_upload(project, chunk.size)
            path = self.packages.upload_path(project, f"{deployment_id}.part")
            limit, offset, truncate = chunk.length, chunk.start, False
            earlier = existing.received if existing else []
        else:
            room = self.quota.room_for_upload(project)
            if room < self.code_size_limit:
                overflow = storage_quota_exceeded(self.quota.project_bytes)
            path = self.packages.upload_path(project, f"{deployment_id}.{uuid.uuid4().hex[:8]}.upload")
            limit, offset, truncate = min(self.code_size_limit, room), 0, True
            earlier = []
        return Upload(self, fn, deployment_id, existing, chunk, path,
                      UploadReader(content_type, lambda: FileSink(path, offset, limit, truncate, overflow, earlier)),
                      entrypoint, activate)

    def finish_upload(self, upload: "Upload") -> Deployment:
        received = upload.reader.finish()
        upload.reader.close()
        fields = received.fields
        entrypoint = fields.get("entrypoint", upload.entrypoint)
        activate = parse_bool("activate", fields["activate"]) if "activate" in fields else bool(upload.activate)
        if received.sink is None or received.sink.count == 0 and upload.chunk is None:
            raise file_empty()
        if upload.existing is None:
            if entrypoint == "":
                raise missing_argument("entrypoint")
            v.text("entrypoint", entrypoint, 1028)
        if upload.chunk is None:
            return self._complete(upload, upload.path, entrypoint, activate, received.sink.count,
                                  received.sink.sha256.hexdigest(), chunks=(1, 1))
        if received.sink.count != upload.chunk.length:
            raise invalid_content_range(
                f"The chunk holds {received.sink.count} bytes; Content-Range says {upload.chunk.length}.")
        return self._record_chunk(upload, entrypoint, activate)

    def _record_chunk(self, upload: "Upload", entrypoint: str, activate: bool) -> Deployment:
        """Merge the chunk into the upload's row under a row lock, so chunks
        may arrive at any replica at once; the one chunk that completes the
        byte ranges assembles the archive, exactly once."""
        dep, completed = self._merge_chunk(upload, entrypoint, activate)
        if not completed:
            return dep
        try:
            return self._complete(upload, upload.path, dep.entrypoint, dep.activate, upload.chunk.size,
                                  _sha256_of(upload.path), chunks=(dep.chunks_total, dep.chunks_uploaded))
        except ApiError:
            self._discard(dep)
            raise

    def _merge_chunk(self, upload: "Upload", entrypoint: str, activate: bool) -> tuple[Deployment, bool]:
        """(the row, whether this chunk completed it). One short write
        transaction: the part file holds the bytes already."""
        chunk = upload.chunk
        for attempt in range(2):  # two first chunks racing to create the row: the loser merges into it
            try:
                with database.atomic():
                    dep = Deployment.locked(upload.fn.project, upload.deployment_id)
                    if dep is None:
                        if upload.existing is not None:  # deleted while this chunk was in flight
                            raise deployment_not_found()
                        dep = Deployment.create(
                            project=upload.fn.project, uid=upload.deployment_id, function=upload.fn.uid, entrypoint=entrypoint,
                            size=chunk.size, activate=activate, chunks_total=-(-chunk.size // chunk.length) if chunk.end < chunk.size else 1,
                            chunks_uploaded=0, received=[], date_created=int(time.time()),
                        )
                        _index(dep)
                        counts.adjust(SEARCH_KIND, dep.project, dep.function, 1)
                    whole = [[0, chunk.size]]
                    if dep.received == whole:  # a chunk sent again while another assembles it: nothing new
                        return dep, False
                    if chunk.end < chunk.size:  # non-last chunks tell the chunk size
                        dep.chunks_total = -(-chunk.size // chunk.length)
                    before = sum(hi - lo for lo, hi in dep.received)
                    dep.received = _merge(dep.received, chunk.start, chunk.end)
                    if sum(hi - lo for lo, hi in dep.received) > before:
                        dep.chunks_uploaded += 1
                    completed = dep.received == whole
                    if completed:
                        dep.chunks_uploaded = dep.chunks_total = max(dep.chunks_total, dep.chunks_uploaded)
                    dep.save()
                    return dep, completed
            except pw.IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _complete(self, upload: "Upload", source: Path, entrypoint: str, activate: bool, size: int, sha256: str,
                  chunks: tuple[int, int]) -> Deployment:
        """The archive is whole: check it, move it into place, queue its build."""
        check_archive(source, entrypoint, self.uncompressed_limit)
        project, deployment_id = upload.fn.project, upload.deployment_id
        package = self.packages.commit(source, project, deployment_id)
        try:
            with database.atomic():
                dep = Deployment.find(project, deployment_id)
                if dep is None:
                    dep = Deployment.create(project=project, uid=deployment_id, function=upload.fn.uid, entrypoint=entrypoint,
                                            activate=activate, size=size, date_created=int(time.time()), received=[])
                    _index(dep)
                    counts.adjust(SEARCH_KIND, project, dep.function, 1)
                build = Build.create(project=project, uid=v.new_id(), deployment=deployment_id,
                                     runtime=upload.fn.runtime, status=BuildStatus.PROCESSING, start_time=0)
                dep.size, dep.sha256, dep.path, dep.build = size, sha256, str(package), build.uid
                dep.chunks_total, dep.chunks_uploaded = chunks
                dep.received = [[0, size]] if upload.chunk else []
                dep.save()
                if activate:
                    # As in Appwrite: the newest upload with activate=true wins.
                    Deployment.update(activate=False).where(
                        (Deployment.project == project) & (Deployment.function == dep.function)
                        & (Deployment.uid != dep.uid) & (Deployment.activate == True)  # noqa: E712
                    ).execute()
                # Once per deployment, when its upload is whole (Appwrite 0.13: every chunk).
                self.events.emit(project, "functions.deployments.create", dep)
        except Exception:
            package.unlink(missing_ok=True)
            raise
        self.build_queued()
        return dep

    def discard_stale_uploads(self, max_age: float) -> int:
        """Remove chunked uploads left unfinished for longer than `max_age` seconds."""
        stale = list(Deployment.select().where((Deployment.path == "") & (Deployment.date_created < time.time() - max_age)))
        for dep in stale:
            self._discard(dep)
        return len(stale)

    def _discard(self, dep: Deployment) -> None:
        """Remove an unfinished upload's row and files, once: replicas
        sweeping stale uploads at the same moment must not count it twice."""
        with database.atomic():
            if not Deployment.delete().where((Deployment.seq == dep.seq) & (Deployment.path == "")).execute():
                return  # removed by another replica, or completed meanwhile
            search.unindex(SEARCH_KIND, [dep.seq])
            counts.adjust(SEARCH_KIND, dep.project, dep.function, -1)
        self.packages.remove(dep.project, dep.uid)

    # ---- activation, deletion, retry ---------------------------------------

    def activate(self, project: str, function_id: str, deployment_id: str) -> Function:
        fn = self.functions.get(project, function_id)
        dep, build = self.get(project, function_id, deployment_id)
        if build is None:
            raise build_not_found()
        if build.status is not BuildStatus.READY:
            raise build_not_ready()
        with database.atomic():
            fn.deployment = dep.uid
            fn.save()
            # Appwrite's payload for this route: the function it answers with.
            self.events.emit(project, "functions.deployments.update", fn)
        generation.bump()
        for hook in self.on_activate:
            hook(fn)
        return fn

    def delete(self, project: str, function_id: str, deployment_id: str) -> None:
        dep, build = self.get(project, function_id, deployment_id)
        with database.atomic():
            Function.update(deployment="").where(
                (Function.project == project) & (Function.uid == function_id) & (Function.deployment == dep.uid)
            ).execute()
            self.events.emit(project, "functions.deployments.delete", dep)  # while its build row tells its status
            if build is not None:
                build.delete_instance()
            search.unindex(SEARCH_KIND, [dep.seq])
            counts.adjust(SEARCH_KIND, project, function_id, -1)
            livelogs.forget(project, source=dep.uid)
            dep.delete_instance()
        self.packages.remove(project, dep.uid, dep.build)
        generation.bump()
        for hook in self.on_delete:
            hook(dep)

    def retry_build(self, project: str, function_id: str, deployment_id: str, build_id: str) -> None:
        v.uid("buildId", build_id)
        dep, build = self.get(project, function_id, deployment_id)
        if build is None or build.uid != build_id:
            raise build_not_found()
        if build.status is not BuildStatus.FAILED:
            raise build_not_failed()
        with database.atomic():
            updated = transition(Build, BuildStatus.FAILED, BuildStatus.PROCESSING, Build.seq == build.seq,
                                 stdout="", stderr="", start_time=0, end_time=0, duration=0).execute()
            if updated:
                livelogs.forget(project, source=dep.uid)  # the new build's log starts afresh
                self.events.emit(project, "functions.deployments.update", dep)
        if not updated:
            raise build_not_failed()
        generation.bump()
        self.build_queued()


@dataclass
class Upload:
    """One request of an upload in flight (a whole file or one chunk)."""

    rules: DeploymentRules
    fn: Function
    deployment_id: str
    existing: Deployment | None
    chunk: ContentRange | None
    path: Path
    reader: UploadReader
    entrypoint: str
    activate: bool | None

    # feed, finish and abort run on blocking threads, one at a time (the lock),
    # and once the upload is finished or aborted nothing touches its file
    # again: a client that hangs up mid-feed gets its abort queued behind that
    # feed, never a second close of a file descriptor another thread may reuse.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _ended: bool = False

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self._ended:
                raise bad_request("The upload was aborted.")
            self.reader.feed(data)

    def finish(self) -> Deployment:
        with self._lock:
            if self._ended:
                raise bad_request("The upload was aborted.")
            self._ended = True
            try:
                return self.rules.finish_upload(self)
            except BaseException:
                self._remove_leftovers()
                raise

    def abort(self) -> None:
        """Leave nothing behind (once; a no-op after finish or an earlier abort)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """A whole-file upload's temp file goes; a chunk's bytes stay only in
        its own range of the part file, which a re-send overwrites. The first
        chunk of an upload that never got a row removes its part file."""
        self.reader.close()
        if self.chunk is None:
            self.path.unlink(missing_ok=True)
        elif self.existing is None and Deployment.find(self.fn.project, self.deployment_id) is None:
            self.path.unlink(missing_ok=True)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _index(dep: Deployment) -> None:
    search.index(SEARCH_KIND, dep.project, dep.function, dep.seq, [dep.uid, dep.entrypoint])
