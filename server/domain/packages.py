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
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from server.domain.errors import file_type_unsupported, invalid_argument, invalid_file
from server.store import blobs

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

    `shared` (FUNCTIONS_STORAGE=database): packages and build outputs are also
    kept in the database (server.store.blobs), and this data directory is the
    host's cache of them: `local_package` and `local_build` fetch what another
    host made. Paths are always this host's; the ones stored in rows are not read.
    """

    root: Path
    shared: bool = False

    def upload_path(self, project: str, name: str) -> Path:
        path = self.root / "uploads" / project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def package_path(self, project: str, deployment: str) -> Path:
        return self.root / "packages" / project / f"{deployment}.tar.gz"

    def build_dir(self, project: str, build: str) -> Path:
        return self.root / "builds" / project / build

    def commit(self, source: Path, project: str, deployment: str) -> Path:
        """Move a checked upload into place atomically (same filesystem), and
        into the database when shared."""
        target = self.package_path(project, deployment)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(source, target)
        if self.shared:
            try:
                blobs.put(_package_key(project, deployment), target)
            except BaseException:
                target.unlink(missing_ok=True)
                raise
        return target

    def local_package(self, project: str, deployment: str) -> Path:
        """The package on this host (fetched from the database if another host took the upload). Blocking."""
        path = self.package_path(project, deployment)
        if self.shared and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.fetch")
            try:
                if not blobs.get(_package_key(project, deployment), tmp):
                    raise FileNotFoundError(f"the package of deployment {deployment} is not in the database")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def share_build(self, project: str, build: str) -> None:
        """A finished build's output, into the database (when shared). Blocking."""
        if not self.shared:
            return
        archive = self.root / "uploads" / f"build-{build}.{os.getpid()}.tar.gz"
        archive.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
                tar.add(self.build_dir(project, build), arcname=".")
            blobs.put(_build_key(project, build), archive)
        finally:
            archive.unlink(missing_ok=True)

    def local_build(self, project: str, build: str) -> Path:
        """The build output on this host (fetched from the database and
        unpacked if another host built it). Blocking."""
        target = self.build_dir(project, build)
        if not self.shared or target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        stamp = f"{os.getpid()}.{threading.get_ident()}"
        archive, unpacked = target.with_name(f"{build}.{stamp}.tar.gz"), target.with_name(f"{build}.{stamp}.tmp")
        try:
            if not blobs.get(_build_key(project, build), archive):
                raise FileNotFoundError(f"the output of build {build} is not in the database")
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(unpacked, filter="data")  # our own archive; still no links or paths outside
            os.chmod(unpacked, 0o755)
            try:
                os.rename(unpacked, target)
            except OSError:  # another replica of this host unpacked it first
                if not target.exists():
                    raise
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(unpacked, ignore_errors=True)
        return target

    def remove(self, project: str, deployment: str, build: str = "") -> None:
        for path in (self.package_path(project, deployment), self.upload_path(project, f"{deployment}.part")):
            path.unlink(missing_ok=True)
        if build:
            shutil.rmtree(self.build_dir(project, build), ignore_errors=True)
        if self.shared:
            blobs.delete(_package_key(project, deployment), *([_build_key(project, build)] if build else []))


def _package_key(project: str, deployment: str) -> str:
    return f"package/{project}/{deployment}"


def _build_key(project: str, build: str) -> str:
    return f"build/{project}/{build}"
