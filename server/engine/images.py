"""Runtime images: make sure the image of each runtime exists locally.

Our own images (tags under `functions-runtime/`) are built here from
`runtimes/<recipe>/recipe.toml`, because no container registry is reachable:
`debootstrap --variant=minbase` into a temporary directory, `apt-get install`
the recipe's packages in it, slim it, then `tar | docker import`. The image carries a label with a hash of its recipe, so
an edited recipe (or a new way of building, `IMAGE_BUILDER_VERSION`) causes a
rebuild.

Any other image (an operator override such as `python:3.12-slim`) has no
recipe: it is used when present locally and pulled otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import docker
import requests
from docker.utils import parse_repository_tag

from server.domain.runtimes import Runtime

OWN_IMAGE_PREFIX = "functions-runtime/"
RECIPE_HASH_LABEL = "functions.recipe-hash"
RECIPE_LABEL = "functions.recipe"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bump when the build below changes in a way that changes the images, so
# existing images no longer count as built from the current recipe.
IMAGE_BUILDER_VERSION = "1"

# How long `available` trusts an answer: it runs on every runtime listing.
AVAILABILITY_TTL = 5.0

# Removed from every rootfs before import: package caches and lists (no apt
# runs in a function container), documentation, translations and logs.
# Copyright files under usr/share/doc are kept.
SLIM_GLOBS = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/archives/partial",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/log/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
)

Progress = Callable[[str], None]


class RuntimeImageError(Exception):
    """A runtime image is missing and could not be built or pulled."""


@dataclass(frozen=True)
class Recipe:
    """A parsed `recipe.toml`: the Debian suite and packages, and the image's config."""

    path: Path
    digest: str
    suite: str
    packages: tuple[str, ...]
    mirror: str = DEFAULT_MIRROR
    env: dict[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()

    _KEYS = frozenset({"suite", "packages", "mirror", "env", "remove"})

    @classmethod
    def load(cls, path: Path) -> "Recipe":
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
        unknown = set(data) - cls._KEYS
        if unknown:
            raise RuntimeImageError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
        if not data.get("suite") or not data.get("packages"):
            raise RuntimeImageError(f"{path}: `suite` and `packages` are required")
        digest = hashlib.sha256(f"builder {IMAGE_BUILDER_VERSION}\n".encode() + raw).hexdigest()
        return cls(
            path=path,
            digest=digest,
            suite=data["suite"],
            packages=tuple(data["packages"]),
            mirror=data.get("mirror", DEFAULT_MIRROR),
            env={str(k): str(v) for k, v in data.get("env", {}).items()},
            remove=tuple(data.get("remove", ())),
        )


def is_own_image(image: str) -> bool:
    return image.startswith(OWN_IMAGE_PREFIX)


class RuntimeImages:
    """Knows whether runtime images exist and makes them exist."""

    def __init__(
        self,
        client: docker.DockerClient,
        runtimes_dir: Path,
        log: logging.Logger = logging.getLogger("server.engine.images"),
        work_dir: Path = Path("/var/tmp"),
        build_timeout: float = 1800.0,
    ):
        self._client = client
        self._runtimes_dir = Path(runtimes_dir)
        self._log = log
        # Lock files and temporary root filesystems live here.
        self._work_dir = Path(work_dir) / "functions-images"
        self._build_timeout = build_timeout
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._seen: dict[str, tuple[float, bool]] = {}
        self._cancelled = threading.Event()  # the service is stopping: image builds end at once

    def cancel(self) -> None:
        """Kill running image builds (they fail with RuntimeImageError) and start no more."""
        self._cancelled.set()

    # -- queries -------------------------------------------------------------

    def recipe(self, runtime: Runtime) -> Recipe:
        path = self._runtimes_dir / runtime.recipe / "recipe.toml"
        try:
            return Recipe.load(path)
        except FileNotFoundError:
            raise RuntimeImageError(f"image {runtime.image} of runtime {runtime.id} has no recipe: {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RuntimeImageError(f"{path}: {exc}") from exc

    def available(self, runtime: Runtime) -> bool:
        """True when the image exists (for ours: built from the current recipe). Never builds."""
        seen = self._seen.get(runtime.image)
        if seen and time.monotonic() - seen[0] < AVAILABILITY_TTL:
            return seen[1]
        try:
            present = self._current_image(runtime) is not None
        except (docker.errors.DockerException, requests.RequestException, RuntimeImageError, OSError) as exc:
            self._log.warning("runtime image check failed", extra={"runtime": runtime.id, "image": runtime.image, "error": str(exc)})
            present = False
        self._seen[runtime.image] = (time.monotonic(), present)
        return present

    def _current_image(self, runtime: Runtime):
        """The usable local image, or None when it is absent or (ours) stale."""
        try:
            image = self._client.images.get(runtime.image)
        except docker.errors.ImageNotFound:
            return None
        if not is_own_image(runtime.image):
            return image
        return image if image.labels.get(RECIPE_HASH_LABEL) == self.recipe(runtime).digest else None

    # -- making images exist -------------------------------------------------

    def ensure(self, runtime: Runtime, progress: Progress | None = None) -> str:
        """The image's ID, after building (ours) or pulling (overrides) it if needed."""
        with self._exclusive(runtime.image):
            try:
                image = self._current_image(runtime)
                if image is not None:
                    return image.id
                if is_own_image(runtime.image):
                    return self._build(runtime, progress or (lambda line: None))
                return self._pull(runtime)
            finally:
                self._seen.pop(runtime.image, None)

    def ensure_all(self, runtimes: Iterable[Runtime], progress: Progress | None = None) -> dict[str, str | Exception]:
        """`ensure` for each runtime (two at a time); maps runtime ID to image ID or the error."""
        runtimes = list(runtimes)

        def one(runtime: Runtime) -> str | Exception:
            try:
                return self.ensure(runtime, progress)
            except Exception as exc:  # reported per runtime; one failure must not hide the others
                self._log.error("runtime image unavailable", extra={"runtime": runtime.id, "image": runtime.image, "error": str(exc)})
                return exc

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="image-build") as pool:
            return dict(zip((r.id for r in runtimes), pool.map(one, runtimes)))

    @contextlib.contextmanager
    def _exclusive(self, image: str) -> Iterator[None]:
        """One `ensure` per image at a time: across threads, and across processes
        (the service and a test run share the Docker engine) by a lock file."""
        with self._locks_guard:
            thread_lock = self._locks.setdefault(image, threading.Lock())
        with thread_lock:
            self._work_dir.mkdir(parents=True, exist_ok=True)
            lock_path = self._work_dir / f"{_slug(image)}.lock"
            with open(lock_path, "a") as lock_file:
                deadline = time.monotonic() + self._build_timeout
                while True:  # polled, so the wait for another process's build is bounded
                    try:
                        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise RuntimeImageError(f"another process has been building {image} for too long ({lock_path})") from None
                        if self._cancelled.wait(0.5):
                            raise RuntimeImageError("the image build was cancelled: the service is stopping") from None
                try:
                    yield
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _pull(self, runtime: Runtime) -> str:
        self._log.info("pulling runtime image", extra={"runtime": runtime.id, "image": runtime.image})
        try:
            return self._client.images.pull(runtime.image).id
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise RuntimeImageError(
                f"image {runtime.image} of runtime {runtime.id} is not present locally and could not be pulled: {exc}"
            ) from exc

    def _build(self, runtime: Runtime, progress: Progress) -> str:
        recipe = self.recipe(runtime)
        extra = {"runtime": runtime.id, "image": runtime.image, "recipe": str(recipe.path)}
        say = _Reporter(progress, self._log, prefix=f"[{runtime.id}] ", extra=extra)
        old = _image_id_or_none(self._client, runtime.image)
        started = time.monotonic()
        say.info(f"building image {runtime.image} from {recipe.path.parent.name}/recipe.toml")
        # Holding the image's lock, so leftovers of a crashed build of it can go.
        for stale in self._work_dir.glob(f"rootfs-{_slug(runtime.image)}@*"):
            _remove_rootfs(stale, self._log)
        rootfs = Path(tempfile.mkdtemp(prefix=f"rootfs-{_slug(runtime.image)}@", dir=self._work_dir))
        try:
            _bootstrap(recipe, rootfs, say, timeout=self._build_timeout, cancelled=self._cancelled)
            _slim(rootfs, SLIM_GLOBS + recipe.remove)
            say.info("importing the root filesystem into Docker")
            image_id = _import(self._client, rootfs, runtime.image, _image_changes(recipe))
        finally:
            _remove_rootfs(rootfs, self._log)
        if old and old != image_id:
            _remove_quietly(self._client, old)  # the stale image is now untagged
        size_mb = self._client.images.get(image_id).attrs.get("Size", 0) / 1e6
        say.info(f"built {runtime.image} ({size_mb:.0f} MB) in {time.monotonic() - started:.1f} s")
        return image_id


class _Reporter:
    """Sends build messages both to the caller's progress callback and to the log."""

    def __init__(self, progress: Progress, log: logging.Logger, prefix: str, extra: dict):
        self._progress, self._log, self._prefix, self._extra = progress, log, prefix, extra

    def info(self, message: str) -> None:
        self._log.info(message, extra=self._extra)
        self._progress(self._prefix + message)

    def line(self, line: str) -> None:
        self._log.debug(line, extra=self._extra)
        self._progress(self._prefix + line)


def _bootstrap(recipe: Recipe, rootfs: Path, say: _Reporter, timeout: float, cancelled: threading.Event) -> None:
    """A minbase Debian in `rootfs` plus the recipe's packages.

    The packages are installed by apt inside the new system rather than by
    `debootstrap --include`: debootstrap cannot resolve virtual packages
    (Debian's npm depends on several), apt can.
    """
    if shutil.which("debootstrap") is None:
        raise RuntimeImageError("debootstrap is not installed (scripts/docker.sh installs it as root)")
    if os.geteuid() != 0:
        raise RuntimeImageError("building runtime images needs root (debootstrap); build them once as root or point the runtime at another image")
    deadline = time.monotonic() + timeout
    _run_streaming(["debootstrap", "--variant=minbase", recipe.suite, str(rootfs), recipe.mirror], say, deadline, cancelled)
    apt_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    _run_streaming(
        ["chroot", str(rootfs), "apt-get", "install", "--yes", "--quiet", "--no-install-recommends",
         # The rootfs is thrown away if the build fails, so skipping fsync is safe and much faster.
         "-o", "Dpkg::Options::=--force-unsafe-io",
         # Downloads as root: debootstrap leaves the archive dir unreadable for the _apt user.
         "-o", "APT::Sandbox::User=root", *recipe.packages],
        say, deadline, cancelled, env=apt_env,
    )


def _run_streaming(command: list[str], say: _Reporter, deadline: float, cancelled: threading.Event,
                   env: dict[str, str] | None = None) -> None:
    """Run `command`, reporting each output line; kill it (and its children)
    at `deadline`, or once `cancelled` is set."""
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


def _slim(rootfs: Path, globs: Iterable[str]) -> None:
    for pattern in globs:
        for path in rootfs.glob(pattern):
            _remove_path(path)
    docs = rootfs / "usr/share/doc"
    if docs.is_dir():
        # Deepest first, so directories are empty by the time they are checked.
        for path in sorted(docs.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_symlink() or path.is_file():
                if path.name != "copyright":
                    path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _image_changes(recipe: Recipe) -> list[str]:
    changes = [f"ENV {key}={_quote(value)}" for key, value in recipe.env.items()]
    changes.append(f"LABEL {RECIPE_HASH_LABEL}={recipe.digest} {RECIPE_LABEL}={recipe.path.parent.name}")
    return changes


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _import(client: docker.DockerClient, rootfs: Path, tag: str, changes: list[str]) -> str:
    # The rootfs directory comes from mkdtemp (0700); it becomes the image's "/",
    # which every (non-root) user must be able to traverse.
    rootfs.chmod(0o755)
    repository, tag_part = parse_repository_tag(tag)
    with tempfile.TemporaryFile() as tar_errors:  # a file, not a pipe: stderr can never block tar
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "--one-file-system", "-C", str(rootfs), "-c", "."],
            stdout=subprocess.PIPE, stderr=tar_errors,
        )
        try:
            # A generator makes the SDK stream the tar with chunked encoding: no copy on disk.
            chunks = iter(lambda: tar.stdout.read(1 << 20), b"")
            response = client.api.import_image(src=chunks, stream_src=True, repository=repository, tag=tag_part or "latest", changes=changes)
        finally:
            tar.stdout.close()
            returncode = tar.wait(timeout=60)
        tar_errors.seek(0)
        tar_message = tar_errors.read().decode(errors="replace").strip()
    image_id = _image_id_or_none(client, tag)
    if returncode != 0:
        if image_id:  # imported from a truncated stream: it must not pass for a good build
            _remove_quietly(client, image_id)
        raise RuntimeImageError(f"tar of the root filesystem failed: {tar_message}")
    if image_id is None:
        raise RuntimeImageError(f"docker import did not produce {tag}: {response}")
    return image_id


def _remove_rootfs(rootfs: Path, log: logging.Logger) -> None:
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


def _slug(image: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in image)


def _image_id_or_none(client: docker.DockerClient, image: str) -> str | None:
    try:
        return client.images.get(image).id
    except docker.errors.ImageNotFound:
        return None


def _remove_quietly(client: docker.DockerClient, image_id: str) -> None:
    try:
        client.images.remove(image_id)
    except docker.errors.APIError:
        pass  # still used by a container; Docker keeps it until then
