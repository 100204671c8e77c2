"""Per-project storage quotas: what a project's code may cost on disk.

A project's storage is the declared size of its deployments' archives
(complete ones and chunked uploads in flight: their part files have that
size) plus the size of its build outputs. Unfinished chunked uploads are also
capped in number and in declared bytes, so a client cannot park gigabytes in
half-done uploads for a day.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import peewee as pw

from server.domain.errors import invalid_file_size, rate_limited, storage_quota_exceeded
from server.store.models import Build, Deployment

MB = 1024 * 1024


@dataclass(frozen=True)
class StorageQuota:
    project_bytes: int
    pending_uploads: int
    pending_upload_bytes: int

    def used(self, project: str) -> int:
        packages = Deployment.select(pw.fn.COALESCE(pw.fn.SUM(Deployment.size), 0)).where(Deployment.project == project).scalar()
        builds = Build.select(pw.fn.COALESCE(pw.fn.SUM(Build.output_bytes), 0)).where(Build.project == project).scalar()
        return int(packages or 0) + int(builds or 0)

    def room_for_upload(self, project: str) -> int:
        """Bytes a new upload may still take; ApiError 400 when none are left."""
        room = self.project_bytes - self.used(project)
        if room <= 0:
            raise storage_quota_exceeded(self.project_bytes)
        return room

    def admit_chunked_upload(self, project: str, size: int) -> None:
        """A new chunked upload of `size` bytes (its first chunk): within the caps on unfinished ones."""
        pending = Deployment.select(pw.fn.COUNT(Deployment.seq), pw.fn.COALESCE(pw.fn.SUM(Deployment.size), 0)).where(
            (Deployment.project == project) & (Deployment.path == "")).tuples().first()
        count, declared = int(pending[0] or 0), int(pending[1] or 0)
        if count >= self.pending_uploads:
            raise rate_limited(
                f"The project has {count} unfinished chunked uploads, the most allowed "
                "(FUNCTIONS_MAX_PENDING_UPLOADS): finish or delete some first.")
        if declared + size > self.pending_upload_bytes:
            raise invalid_file_size(
                f"Unfinished chunked uploads of the project would declare {declared + size} bytes; the limit is "
                f"{self.pending_upload_bytes // MB} MB (FUNCTIONS_PENDING_UPLOAD_MB).")
        if size > self.room_for_upload(project):
            raise storage_quota_exceeded(self.project_bytes)

    def build_output_problem(self, project: str, output_bytes: int, uncompressed_limit: int) -> str | None:
        """Why a finished build's output may not be kept, or None."""
        if output_bytes > uncompressed_limit:
            return (f"Build failed: its output is {output_bytes} bytes, more than the limit of {uncompressed_limit} "
                    "bytes (FUNCTIONS_CODE_UNCOMPRESSED_LIMIT).")
        if self.used(project) + output_bytes > self.project_bytes:
            return (f"Build failed: its output of {output_bytes} bytes does not fit in the project's storage quota of "
                    f"{self.project_bytes // MB} MB (FUNCTIONS_PROJECT_STORAGE_MB).")
        return None


def tree_size(root: Path) -> int:
    """Bytes of the regular files under `root` (links not followed)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            total += st.st_size
    return total
