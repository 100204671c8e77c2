"""Code packages: checking an uploaded tar.gz and where packages live on disk.

An archive is accepted only if it is a gzip-compressed tar whose members all
stay inside the code directory: no absolute paths, no `..`, no links leading
outside, no device files or FIFOs, and an uncompressed size under a cap (a
decompression bomb stops being read as soon as it passes the cap).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from server.domain.errors import file_type_unsupported, invalid_argument, invalid_file

MAX_MEMBERS = 100_000


def normalize_member(name: str) -> str:
    """`./src/main.py` -> `src/main.py`; '' for the archive root."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


@dataclass(frozen=True)
class ArchiveSummary:
    members: int
    uncompressed_bytes: int


def check_archive(path: Path, entrypoint: str, max_uncompressed: int) -> ArchiveSummary:
    """Validate the archive at `path`; raises ApiError 400 with a clear message."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            raise file_type_unsupported()
    wanted = normalize_member(entrypoint)
    found_entrypoint = False
    total = 0
    count = 0
    try:
        with tarfile.open(path, mode="r|gz") as archive:
            for member in archive:
                count += 1
                if count > MAX_MEMBERS:
                    raise invalid_file(f"The archive has more than {MAX_MEMBERS} members.")
                _check_member(member)
                total += max(member.size, 0)
                if total > max_uncompressed:
                    raise invalid_file(f"The archive unpacks to more than {max_uncompressed} bytes.")
                if member.isfile() and normalize_member(member.name) == wanted:
                    found_entrypoint = True
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise invalid_file(f"The code is not a valid tar.gz archive: {error}") from None
    if count == 0:
        raise invalid_file("The archive is empty.")
    if not found_entrypoint:
        raise invalid_argument("entrypoint", f"File '{entrypoint}' not found in the code archive.")
    return ArchiveSummary(members=count, uncompressed_bytes=total)


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise invalid_file(f"Archive member '{member.name}' has an absolute path.")
    if ".." in name.split("/"):
        raise invalid_file(f"Archive member '{member.name}' leaves the code directory ('..').")
    if member.isdev() or member.isfifo():
        raise invalid_file(f"Archive member '{member.name}' is a device file or FIFO.")
    if member.issym() or member.islnk():
        target = member.linkname.replace("\\", "/")
        base = posixpath.dirname(normalize_member(name)) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise invalid_file(f"Archive member '{member.name}' links outside the code directory.")
    elif not (member.isfile() or member.isdir()):
        raise invalid_file(f"Archive member '{member.name}' has an unsupported type.")


@dataclass(frozen=True)
class PackageStore:
    """Files of deployments under the data directory.

    uploads/   partial and in-flight uploads (never served)
    packages/  complete, validated archives: packages/<project>/<deployment>.tar.gz
    builds/    build outputs: builds/<project>/<build>/
    """

    root: Path

    def upload_path(self, project: str, name: str) -> Path:
        path = self.root / "uploads" / project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def package_path(self, project: str, deployment: str) -> Path:
        return self.root / "packages" / project / f"{deployment}.tar.gz"

    def build_dir(self, project: str, build: str) -> Path:
        return self.root / "builds" / project / build

    def commit(self, source: Path, project: str, deployment: str) -> Path:
        """Move a checked upload into place atomically (same filesystem)."""
        target = self.package_path(project, deployment)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(source, target)
        return target

    def remove(self, project: str, deployment: str, build: str = "") -> None:
        for path in (self.package_path(project, deployment), self.upload_path(project, f"{deployment}.part")):
            path.unlink(missing_ok=True)
        if build:
            shutil.rmtree(self.build_dir(project, build), ignore_errors=True)
