"""Runtime images: make sure the image of each runtime exists locally.

Our own images (tags under `functions-runtime/`) are built here from
`runtimes/<recipe>/recipe.toml` (server/engine/recipes.py), because no
container registry is reachable: a recipe is a layer over a shared Debian
root (`runtimes/base/<suite>`), built by server/engine/rootfs.py. An image
carries a label with its recipe's digest, so an edited recipe (or a new way
of building) causes a rebuild.

Any other image (an operator override such as `python:3.12-slim`) has no
recipe: it is used when present locally and pulled otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import docker
import requests

from server.domain.runtimes import Runtime
from server.engine import rootfs
from server.engine.recipes import Recipe, RecipeError
from server.engine.rootfs import Budget, Progress, Reporter, RuntimeImageError

OWN_IMAGE_PREFIX = "functions-runtime/"
RECIPE_HASH_LABEL = "functions.recipe-hash"
RECIPE_LABEL = "functions.recipe"
ROOT_STAMP = ".functions-image-id"  # in a kept root directory: the image it was made for

# How long `available` trusts an answer: it runs on every runtime listing.
AVAILABILITY_TTL = 5.0
# Images built at once by `ensure_all` (each is mostly downloads and dpkg).
PARALLEL_BUILDS = 2


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
        if not runtime.recipe:
            raise RuntimeImageError(f"image {runtime.image} of runtime {runtime.id} has no recipe")
        try:
            return Recipe.load(self._runtimes_dir, runtime.recipe)
        except RecipeError as exc:
            if not (self._runtimes_dir / runtime.recipe / "recipe.toml").exists():
                raise RuntimeImageError(f"image {runtime.image} of runtime {runtime.id} has no recipe: {exc}") from None
            raise RuntimeImageError(str(exc)) from exc

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
        return self._current(runtime.image, self.recipe(runtime) if is_own_image(runtime.image) else None)

    def _current(self, tag: str, recipe: Recipe | None):
        """The image `tag`, or None when it is absent or not built from `recipe` (when given)."""
        try:
            image = self._client.images.get(tag)
        except docker.errors.ImageNotFound:
            return None
        return image if recipe is None or image.labels.get(RECIPE_HASH_LABEL) == recipe.digest else None

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

        with ThreadPoolExecutor(max_workers=PARALLEL_BUILDS, thread_name_prefix="image-build") as pool:
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
        say = Reporter(progress, self._log, prefix=f"[{runtime.id}] ", extra=extra)
        old = rootfs.image_id_or_none(self._client, runtime.image)
        started = time.monotonic()
        budget = Budget(self._build_timeout, self._cancelled)
        say.info(f"building image {runtime.image} from {recipe.name}/recipe.toml")
        if recipe.is_layer:
            image_id = self._build_layer(recipe, runtime.image, say, budget)
        else:
            image_id = self._build_root(recipe, runtime.image, say, budget)
        if old and old != image_id:
            rootfs.remove_quietly(self._client, old)  # the stale image is now untagged
        size = self._client.images.get(image_id).attrs.get("Size", 0)
        if recipe.is_layer:
            base_size = self._client.images.get(recipe.base.base_image).attrs.get("Size", 0)
            sizes = f"{(size - base_size) / 1e6:.0f} MB over {recipe.base.base_image} ({base_size / 1e6:.0f} MB, shared)"
        else:
            sizes = f"{size / 1e6:.0f} MB"
        say.info(f"built {runtime.image}: {sizes}, in {time.monotonic() - started:.1f} s")
        return image_id

    def _root_dir(self, recipe: Recipe) -> Path:
        """Where a root's directory is kept: the lower layer of its layers."""
        return self._work_dir / f"root-{_slug(recipe.name)}@{recipe.digest[:16]}"

    def _build_root(self, recipe: Recipe, tag: str, say: Reporter, budget: Budget) -> str:
        """debootstrap, apt, slim, import; the directory is kept for layers."""

        def bootstrap(tree: Path) -> str:
            rootfs.bootstrap(recipe.suite, recipe.mirror, tree, say, budget)
            rootfs.apt_install(tree, recipe.packages, say, budget)
            rootfs.slim(tree, rootfs.SLIM_GLOBS + recipe.remove)
            say.info("importing the root filesystem into Docker")
            return rootfs.import_rootfs(self._client, tree, tag, _image_changes(recipe), exclude=[rootfs.APT_LISTS + "/*"])

        return self._keep_root(recipe, bootstrap)

    def _keep_root(self, recipe: Recipe, fill: Callable[[Path], str]) -> str:
        """`fill` makes a root's tree in a new directory and returns its image's
        ID; the tree is then kept (stamped with that ID) as the lower layer of
        the root's layers. Called holding the root image's lock, so other
        versions and crashed attempts of this root's directory can go."""
        for stale in self._work_dir.glob(f"root-{_slug(recipe.name)}@*"):
            rootfs.remove_tree(stale)
        tree = Path(tempfile.mkdtemp(prefix=f"root-{_slug(recipe.name)}@new-", dir=self._work_dir))
        try:
            image_id = fill(tree)
            (tree / ROOT_STAMP).write_text(image_id)
            os.rename(tree, self._root_dir(recipe))
            return image_id
        except BaseException:
            rootfs.remove_tree(tree)
            raise

    def _ensure_root(self, recipe: Recipe, say: Reporter, budget: Budget) -> tuple[str, Path]:
        """The image of a layer's base and its directory, built if needed."""
        tag = recipe.base_image
        keep = self._root_dir(recipe)
        with self._exclusive(tag):
            image = self._current(tag, recipe)
            if image is None:
                say.info(f"building the shared base {tag} from {recipe.name}/recipe.toml")
                old = rootfs.image_id_or_none(self._client, tag)
                image_id = self._build_root(recipe, tag, say, budget)
                if old and old != image_id:
                    rootfs.remove_quietly(self._client, old)  # untagged; kept while images use it
                return image_id, keep
            stamp = keep / ROOT_STAMP
            if not (stamp.is_file() and stamp.read_text() == image.id):
                # The directory is gone (a cleaned /var/tmp) or belongs to another
                # image: unpack the image instead (without apt's lists: the layer fetches them).
                say.info(f"unpacking the shared base {tag}")

                def unpack(tree: Path) -> str:
                    rootfs.export_image(self._client, image.id, tree)
                    return image.id

                self._keep_root(recipe, unpack)
            return image.id, keep

    def _build_layer(self, recipe: Recipe, tag: str, say: Reporter, budget: Budget) -> str:
        """The recipe's packages and binaries, as one layer over its base's image."""
        base_id, lower = self._ensure_root(recipe.base, say, budget)
        for stale in self._work_dir.glob(f"layer-{_slug(tag)}@*"):
            rootfs.remove_tree(stale)
        scratch = Path(tempfile.mkdtemp(prefix=f"layer-{_slug(tag)}@", dir=self._work_dir))
        try:
            with rootfs.Overlay(lower, scratch) as overlay:
                if Path("/etc/resolv.conf").is_file():  # apt resolves the mirror inside the tree
                    shutil.copyfile("/etc/resolv.conf", overlay.merged / "etc" / "resolv.conf")
                has_lists = any((lower / rootfs.APT_LISTS).glob("*_Packages*"))
                rootfs.apt_install(overlay.merged, recipe.packages, say, budget, update=not has_lists)
                for binary in recipe.binaries:
                    fetched = rootfs.fetch_binary(binary, self._work_dir / "downloads", say, budget)
                    rootfs.install_file(fetched, overlay.merged, binary.install)
            upper = overlay.upper
            # Only what the install added: not the build's own resolv.conf or package lists.
            for own in ("etc/resolv.conf", rootfs.APT_LISTS):
                if (upper / own).exists() or (upper / own).is_symlink():
                    rootfs.remove_path(upper / own)
            rootfs.slim(upper, rootfs.SLIM_GLOBS + recipe.remove)
            deleted = rootfs.take_whiteouts(upper, lower)
            say.info(f"committing the layer over {recipe.base.base_image} into Docker")
            return rootfs.commit_layer(self._client, base_id, upper, deleted, tag, _image_changes(recipe))
        finally:
            rootfs.remove_tree(scratch)


def _image_changes(recipe: Recipe) -> list[str]:
    changes = [f"ENV {key}={_quote(value)}" for key, value in recipe.env.items()]
    changes.append(f"LABEL {RECIPE_HASH_LABEL}={recipe.digest} {RECIPE_LABEL}={recipe.name}")
    return changes


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _slug(image: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in image)
